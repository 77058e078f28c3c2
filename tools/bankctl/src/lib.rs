//! bankctl's library: what an operator (and the tests) run against a live system.
//!
//! - [`invariants`]: the system's invariants checked across the five databases and the dead-letter queues.
//! - [`dlq`]: list and redrive dead-lettered messages.
//! - [`tail`]: watch events as they are published.

pub mod dlq;
pub mod invariants;
pub mod tail;

use anyhow::Context;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// One pool per service database.
#[derive(Clone)]
pub struct Pools {
    pub deposit: PgPool,
    pub account: PgPool,
    pub email: PgPool,
    pub interest: PgPool,
    pub compliance: PgPool,
}

/// The database URLs, one per service.
#[derive(Debug, Clone)]
pub struct DatabaseUrls {
    pub deposit: String,
    pub account: String,
    pub email: String,
    pub interest: String,
    pub compliance: String,
}

impl Pools {
    pub async fn connect(urls: &DatabaseUrls) -> anyhow::Result<Self> {
        async fn one(service: &str, url: &str) -> anyhow::Result<PgPool> {
            PgPoolOptions::new()
                .max_connections(2)
                .connect(url)
                .await
                .with_context(|| format!("connecting to the {service} database"))
        }
        Ok(Self {
            deposit: one("deposit", &urls.deposit).await?,
            account: one("account", &urls.account).await?,
            email: one("email", &urls.email).await?,
            interest: one("interest", &urls.interest).await?,
            compliance: one("compliance", &urls.compliance).await?,
        })
    }

    pub async fn close(&self) {
        for pool in [
            &self.deposit,
            &self.account,
            &self.email,
            &self.interest,
            &self.compliance,
        ] {
            pool.close().await;
        }
    }
}
