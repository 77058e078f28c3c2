//! The invariant checker of `bankctl` (tools/bankctl), run against a test world's databases.

use crate::svc::Svc;
use crate::world::TestWorld;
use anyhow::Result;

pub use bankctl::invariants::{Kind, Options, Report, Violation};

/// Pools for the world's five databases, in the shape bankctl's checks take.
pub async fn pools(world: &TestWorld) -> Result<bankctl::Pools> {
    Ok(bankctl::Pools {
        deposit: world.pool(Svc::Deposit).await?,
        account: world.pool(Svc::Account).await?,
        email: world.pool(Svc::Email).await?,
        interest: world.pool(Svc::Interest).await?,
        compliance: world.pool(Svc::Compliance).await?,
    })
}

/// The checker's options for this world: the CTR threshold its compliance service runs with
/// (its `CTR_THRESHOLD_MINOR`, else the default), and emails still `queued` tolerated (a test
/// may hold the mail server away, or SIGKILL the sender and leave its claims leased; a `failed`
/// email is a violation).
pub fn options(world: &TestWorld) -> Options {
    let defaults = Options::default();
    let ctr_threshold_minor = world
        .service(Svc::Compliance)
        .and_then(|h| h.env_var("CTR_THRESHOLD_MINOR").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(defaults.ctr_threshold_minor);
    Options {
        ctr_threshold_minor,
        allow_queued_emails: true,
    }
}

/// Checks every database invariant once (no waiting; no dead-letter queues, which some tests
/// fill on purpose) with [`options`]; poll it with `eventually` until `ok()`.
pub async fn check(world: &TestWorld) -> Result<Report> {
    bankctl::invariants::check_with(&pools(world).await?, &options(world)).await
}
