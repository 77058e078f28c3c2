//! The invariant checker of `bankctl` (tools/bankctl), run against a test world's databases.

use crate::svc::Svc;
use crate::world::TestWorld;
use anyhow::Result;

pub use bankctl::invariants::Report;

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

/// Checks every invariant once (no waiting); poll it with `eventually` until `ok()`.
pub async fn check(world: &TestWorld) -> Result<Report> {
    bankctl::invariants::check(&pools(world).await?).await
}
