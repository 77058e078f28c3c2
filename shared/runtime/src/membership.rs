//! Which partitions this replica of a consumer service consumes.
//!
//! RabbitMQ 3.10's single active consumer never rebalances: the first replica to register on a
//! partition queue stays active on it, so without help the first replica would hold every
//! partition and the others would only wait. The replicas therefore agree on a share themselves,
//! through the service's own database:
//!
//! - each replica holds a session advisory lock `(MEMBERSHIP_LOCK_CLASS, slot)` for the first
//!   free slot of `0..MAX_REPLICAS`, on a connection of its own (application name
//!   `<service>-membership`); a replica that dies loses its session, so its slot is free at once;
//! - every [`POLL`] it reads the slots held (`pg_locks`), sorts them, and owns partition `p` when
//!   `p % live == its index` ([`assign`]);
//! - when that connection fails, the replica owns nothing until it holds a slot again: a replica
//!   that cannot see the others must not keep partitions another may have taken.
//!
//! The queues keep single active consumer, so while two replicas briefly disagree (one has seen
//! a change, the other not yet) only one of them gets deliveries from a partition.

use crate::Shutdown;
use crate::backoff::Backoff;
use crate::config::CommonConfig;
use anyhow::Context;
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::watch;

/// The advisory lock class of membership slots (the key's first int4). Distinct from the other
/// classes used in the services' databases (`0x4143_....` account, `0x434f_....` compliance).
pub const MEMBERSHIP_LOCK_CLASS: i32 = 0x4d42_0001;

/// The most replicas of one service that can hold a slot; a further replica waits for one.
pub const MAX_REPLICAS: i32 = 64;

/// How often a replica reads who is live. A dead replica's partitions are taken over within
/// about this long (plus the time to open a channel).
pub const POLL: Duration = Duration::from_secs(1);

/// How long one membership statement may take before the connection counts as lost.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// The partitions of `0..partitions` owned by the replica whose slot is `mine`, among the live
/// slots `live`: `p` belongs to the replica at index `p % live.len()` of the sorted slots. Empty
/// when `mine` is not live.
pub fn assign(partitions: u16, live: &BTreeSet<i32>, mine: i32) -> BTreeSet<u16> {
    let Some(index) = live.iter().position(|slot| *slot == mine) else {
        return BTreeSet::new();
    };
    let count = live.len();
    (0..partitions)
        .filter(|p| usize::from(*p) % count == index)
        .collect()
}

/// Keeps a slot and publishes this replica's partitions in `owned` (empty while it holds no
/// slot) and in `gauge`, until `shutdown`.
pub async fn run(
    config: CommonConfig,
    owned: watch::Sender<BTreeSet<u16>>,
    gauge: Gauge,
    shutdown: Shutdown,
) {
    let mut backoff = Backoff::new();
    while !shutdown.is_triggered() {
        let result = hold_slot(&config, &owned, &gauge, &shutdown, &mut backoff).await;
        release(&owned, &gauge);
        match result {
            Ok(()) => {}
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in = ?delay,
                    "membership lost: consuming no partition until it is back"
                );
                tokio::select! {
                    _ = shutdown.triggered() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn release(owned: &watch::Sender<BTreeSet<u16>>, gauge: &Gauge) {
    gauge.set(0);
    owned.send_if_modified(|current| {
        let changed = !current.is_empty();
        current.clear();
        changed
    });
}

async fn hold_slot(
    config: &CommonConfig,
    owned: &watch::Sender<BTreeSet<u16>>,
    gauge: &Gauge,
    shutdown: &Shutdown,
    backoff: &mut Backoff,
) -> anyhow::Result<()> {
    let options = PgConnectOptions::from_str(config.database_url.expose())
        .context("DATABASE_URL is not a valid postgres:// URL")?
        .application_name(&format!("{}-membership", config.service))
        // A replica whose host vanishes sends no FIN: Postgres keeps its session, and so its
        // slot and its partitions, until keepalive gives up on it (5 s idle + 3 probes 2 s
        // apart here, instead of the system's default of hours).
        .options([
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"),
            ("tcp_keepalives_count", "3"),
        ]);
    let mut conn = bounded(options.connect())
        .await
        .context("connecting the membership session")?;
    let slot = loop {
        if let Some(slot) = claim_slot(&mut conn).await? {
            break slot;
        }
        tracing::warn!(
            max = MAX_REPLICAS,
            "every membership slot is held: waiting for one"
        );
        tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    };
    backoff.reset();
    let result = follow(config, &mut conn, slot, owned, gauge, shutdown).await;
    // Only an orderly end unlocks; a lost connection has released the lock already.
    if result.is_ok() {
        let _ = bounded(
            sqlx::query("SELECT pg_advisory_unlock($1, $2)")
                .bind(MEMBERSHIP_LOCK_CLASS)
                .bind(slot)
                .execute(&mut conn),
        )
        .await;
        let _ = conn.close().await;
    }
    result
}

/// The first free slot, now held by this session; `None` when all are taken.
async fn claim_slot(conn: &mut PgConnection) -> anyhow::Result<Option<i32>> {
    for slot in 0..MAX_REPLICAS {
        let locked: bool = bounded(
            sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
                .bind(MEMBERSHIP_LOCK_CLASS)
                .bind(slot)
                .fetch_one(&mut *conn),
        )
        .await
        .context("claiming a membership slot")?;
        if locked {
            return Ok(Some(slot));
        }
    }
    Ok(None)
}

/// Reads the live slots every [`POLL`] and publishes the partitions they give this replica.
async fn follow(
    config: &CommonConfig,
    conn: &mut PgConnection,
    slot: i32,
    owned: &watch::Sender<BTreeSet<u16>>,
    gauge: &Gauge,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    loop {
        let live: Vec<i64> = bounded(
            sqlx::query_scalar(
                "SELECT objid::int8 FROM pg_locks \
                 WHERE locktype = 'advisory' AND granted AND objsubid = 2 AND classid::int8 = $1 \
                   AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 ORDER BY 1",
            )
            .bind(i64::from(MEMBERSHIP_LOCK_CLASS))
            .fetch_all(&mut *conn),
        )
        .await
        .context("reading the live replicas")?;
        let live: BTreeSet<i32> = live
            .into_iter()
            .filter_map(|s| i32::try_from(s).ok())
            .collect();
        let mine = assign(config.partitions, &live, slot);
        let count = i64::try_from(mine.len()).unwrap_or(i64::MAX);
        gauge.set(count);
        let changed = owned.send_if_modified(|current| {
            if *current == mine {
                false
            } else {
                *current = mine.clone();
                true
            }
        });
        if changed {
            tracing::info!(
                slot,
                replicas = live.len(),
                partitions = config.partitions,
                owned = ?mine,
                "partition assignment changed"
            );
        }
        tokio::select! {
            _ = shutdown.triggered() => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn bounded<T, E>(fut: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match tokio::time::timeout(STATEMENT_TIMEOUT, fut).await {
        Ok(result) => Ok(result?),
        Err(_) => anyhow::bail!("no answer within {STATEMENT_TIMEOUT:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(s: &[i32]) -> BTreeSet<i32> {
        s.iter().copied().collect()
    }

    #[test]
    fn one_replica_owns_every_partition() {
        assert_eq!(assign(4, &slots(&[3]), 3), (0..4).collect());
    }

    #[test]
    fn two_replicas_split_the_partitions() {
        let live = slots(&[0, 5]);
        assert_eq!(assign(4, &live, 0), [0, 2].into_iter().collect());
        assert_eq!(assign(4, &live, 5), [1, 3].into_iter().collect());
    }

    #[test]
    fn every_partition_has_exactly_one_owner() {
        for partitions in 1..10u16 {
            for n in 1..8 {
                let live: BTreeSet<i32> = (0..n).map(|i| i * 3).collect();
                let mut seen = Vec::new();
                for slot in &live {
                    seen.extend(assign(partitions, &live, *slot));
                }
                seen.sort_unstable();
                assert_eq!(seen, (0..partitions).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn a_replica_not_live_owns_nothing() {
        assert!(assign(4, &slots(&[0, 1]), 2).is_empty());
    }
}
