//! The invariant checker of `bankctl` (tools/bankctl), run against a test world's databases.

use crate::svc::Svc;
use crate::world::TestWorld;
use anyhow::{Result, ensure};
use std::collections::BTreeMap;

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

/// Per-account order in account's event store: each stream's versions are 1..n without a gap,
/// version v > 1 is the deposit of sequence v - 1, and each account holds as many deposits as
/// the deposit service accepted for it. Returns the number of accounts checked.
pub async fn event_store_in_order(world: &TestWorld) -> Result<usize> {
    let account = world.pool(Svc::Account).await?;
    let deposit = world.pool(Svc::Deposit).await?;
    let broken: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT account_id, count(*), min(version), max(version) FROM events \
         GROUP BY account_id HAVING min(version) <> 1 OR max(version) <> count(*)",
    )
    .fetch_all(&account)
    .await?;
    ensure!(
        broken.is_empty(),
        "event streams with gaps (account, count, min, max): {broken:?}"
    );
    let misplaced: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT account_id, version, payload->>'sequence' FROM events \
         WHERE event_type = 'Deposited' \
           AND (payload->>'sequence') IS DISTINCT FROM (version - 1)::text",
    )
    .fetch_all(&account)
    .await?;
    ensure!(
        misplaced.is_empty(),
        "Deposited events out of sequence (account, version, sequence): {misplaced:?}"
    );
    let stored: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT account_id, count(*) FROM events WHERE event_type = 'Deposited' GROUP BY account_id",
    )
    .fetch_all(&account)
    .await?
    .into_iter()
    .collect();
    let accepted: BTreeMap<String, i64> = sqlx::query_as(
        "SELECT account_id, max(sequence) FROM deposits GROUP BY account_id \
         HAVING max(sequence) = count(*)",
    )
    .fetch_all(&deposit)
    .await?
    .into_iter()
    .collect();
    ensure!(
        stored == accepted,
        "deposits per account: event store {stored:?}, deposit service (sequences 1..n) {accepted:?}"
    );
    Ok(stored.len())
}
