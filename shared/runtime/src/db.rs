//! Postgres connection pool: waits for the database at start-up instead of crashing, so
//! services can start in any order (compose, scripts/up, a restarted database).

use crate::config::CommonConfig;
use anyhow::Context;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use std::str::FromStr;
use std::time::Duration;

/// Connects (retrying with backoff until `give_up_after`) and runs the service's migrations.
pub async fn connect_and_migrate(
    config: &CommonConfig,
    migrator: &Migrator,
    give_up_after: Duration,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(config.database_url.expose())
        .context("DATABASE_URL is not a valid postgres:// URL")?
        .application_name(config.service);
    let deadline = tokio::time::Instant::now() + give_up_after;
    let mut delay = Duration::from_millis(100);
    let pool = loop {
        let attempt = PgPoolOptions::new()
            .max_connections(config.db_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => break pool,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %e, retry_in = ?delay, "database not reachable yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e).context("connecting to the database"),
        }
    };
    migrator
        .run(&pool)
        .await
        .context("running database migrations")?;
    Ok(pool)
}

/// Is this error about reaching the database rather than about the statement? Such errors are
/// transient: the work is retried, never dead-lettered.
pub fn is_connectivity_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => {
            // Class 08 = connection exception; 57P01..57P03 = admin shutdown / crash shutdown /
            // cannot connect now; 53300 = too many connections; 40001/40P01 = serialization
            // failure / deadlock, which succeed on retry.
            db.code().is_some_and(|c| {
                c.starts_with("08")
                    || matches!(
                        c.as_ref(),
                        "57P01" | "57P02" | "57P03" | "53300" | "40001" | "40P01"
                    )
            })
        }
        _ => false,
    }
}

/// Health probe used by `/readyz`.
pub async fn ping(pool: &PgPool) -> bool {
    tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(pool),
    )
    .await
    .is_ok_and(|r| r.is_ok())
}

/// Takes a transaction-scoped advisory lock of `class` on the `hashtext` of each key, in one
/// statement and one sorted order, so that two transactions locking overlapping sets cannot
/// deadlock. Held until the transaction ends. Services use it to serialise the handling of one
/// account across partitions and replicas.
pub async fn lock_keys(conn: &mut PgConnection, class: i32, keys: &[&str]) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock($2, k)) FROM (
             SELECT DISTINCT hashtext(a) AS k FROM unnest($1::text[]) AS a ORDER BY k
         ) AS keys",
    )
    .bind(keys)
    .bind(class)
    .execute(conn)
    .await?;
    Ok(())
}
