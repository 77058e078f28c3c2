//! End-to-end latency per deposit, from the services' own timestamps:
//!
//! `max over the four consumers of processed_events.processed_at − deposits.created_at`.
//!
//! `deposits.created_at` is taken by the deposit service just before it inserts the deposit,
//! so it includes the producer's own transaction and commit. `processed_at` is the consumer's
//! `now()`, the start of the transaction that recorded the event, so the consumer's own
//! statements, commit and ack are not included (one consumer transaction, a few ms at most).
//! Both clocks are this machine's.

use anyhow::Result;
use chrono::{DateTime, Utc};
use eventbank_e2e::{Svc, TestWorld};
use hdrhistogram::Histogram;
use std::collections::HashMap;
use uuid::Uuid;

pub struct EndToEnd {
    pub histogram: Histogram<u64>,
    /// Deposits found committed by all four consumers.
    pub complete: u64,
    /// First deposit created → last consumer commit of any of them.
    pub span_s: f64,
    /// The longest time between two deposits created one after the other: how long the
    /// producer's stream stopped at worst (a broker node dying does not stop it: deposits need
    /// only PostgreSQL).
    pub created_gap_max_s: f64,
    /// The longest time between two deposits becoming complete (applied by all four consumers)
    /// one after the other: how long the pipeline's output stopped at worst.
    pub completed_gap_max_s: f64,
}

/// The longest step between consecutive instants, in seconds (0 for fewer than two).
fn longest_gap(mut instants: Vec<DateTime<Utc>>) -> f64 {
    instants.sort_unstable();
    instants
        .windows(2)
        .map(|w| (w[1] - w[0]).num_microseconds().unwrap_or(0))
        .max()
        .unwrap_or(0) as f64
        / 1e6
}

/// How many of `ids` each consumer has recorded in `processed_events`.
pub async fn consumer_counts(world: &TestWorld, ids: &[Uuid]) -> Result<Vec<(Svc, i64)>> {
    let mut out = Vec::new();
    for svc in Svc::CONSUMERS {
        let pool = world.pool(svc).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM processed_events WHERE event_id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_one(&pool)
        .await?;
        out.push((svc, n));
    }
    Ok(out)
}

pub async fn compute(world: &TestWorld, ids: &[Uuid]) -> Result<EndToEnd> {
    let deposit = world.pool(Svc::Deposit).await?;
    let created: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
        "SELECT event_id, created_at FROM deposits WHERE event_id = ANY($1::uuid[])",
    )
    .bind(ids)
    .fetch_all(&deposit)
    .await?;
    let mut last: HashMap<Uuid, (DateTime<Utc>, u8)> = HashMap::with_capacity(ids.len());
    for svc in Svc::CONSUMERS {
        let pool = world.pool(svc).await?;
        let rows: Vec<(Uuid, DateTime<Utc>)> = sqlx::query_as(
            "SELECT event_id, processed_at FROM processed_events WHERE event_id = ANY($1::uuid[])",
        )
        .bind(ids)
        .fetch_all(&pool)
        .await?;
        for (id, at) in rows {
            let entry = last.entry(id).or_insert((at, 0));
            entry.0 = entry.0.max(at);
            entry.1 += 1;
        }
    }
    let mut histogram = crate::drive::new_histogram()?;
    let mut complete = 0;
    let mut first_created: Option<DateTime<Utc>> = None;
    let mut last_processed: Option<DateTime<Utc>> = None;
    let mut created_at_all = Vec::with_capacity(created.len());
    let mut completed_at_all = Vec::with_capacity(created.len());
    for (id, created_at) in created {
        created_at_all.push(created_at);
        let Some((processed_at, consumers)) = last.get(&id) else {
            continue;
        };
        if usize::from(*consumers) != Svc::CONSUMERS.len() {
            continue;
        }
        complete += 1;
        completed_at_all.push(*processed_at);
        let micros = (*processed_at - created_at).num_microseconds().unwrap_or(0);
        histogram.saturating_record(micros.max(1) as u64);
        first_created = Some(first_created.map_or(created_at, |f| f.min(created_at)));
        last_processed = Some(last_processed.map_or(*processed_at, |l| l.max(*processed_at)));
    }
    let span_s = match (first_created, last_processed) {
        (Some(a), Some(b)) => (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6,
        _ => 0.0,
    };
    Ok(EndToEnd {
        histogram,
        complete,
        span_s,
        created_gap_max_s: longest_gap(created_at_all),
        completed_gap_max_s: longest_gap(completed_at_all),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_gap_is_between_neighbours_in_time_order() {
        let t = |ms: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::milliseconds(ms);
        assert_eq!(longest_gap(vec![]), 0.0);
        assert_eq!(longest_gap(vec![t(5)]), 0.0);
        // Out of order on purpose: 0, 100, 150, 1150, 1200 -> the gap 150..1150.
        assert_eq!(
            longest_gap(vec![t(1150), t(0), t(150), t(1200), t(100)]),
            1.0
        );
    }
}

/// A service database's counters from `pg_stat_database` (flushed by Postgres about once a
/// second, so a phase's figures are off by at most that).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct DbStats {
    pub commits: i64,
    pub rollbacks: i64,
    /// Milliseconds backends spent executing statements in this database.
    pub active_ms: f64,
    pub rows_inserted: i64,
    pub rows_updated: i64,
    pub rows_fetched: i64,
}

impl DbStats {
    pub fn minus(&self, before: &DbStats) -> DbStats {
        DbStats {
            commits: self.commits - before.commits,
            rollbacks: self.rollbacks - before.rollbacks,
            active_ms: self.active_ms - before.active_ms,
            rows_inserted: self.rows_inserted - before.rows_inserted,
            rows_updated: self.rows_updated - before.rows_updated,
            rows_fetched: self.rows_fetched - before.rows_fetched,
        }
    }
}

pub async fn db_stats(world: &TestWorld) -> Result<Vec<(Svc, DbStats)>> {
    let mut out = Vec::new();
    for svc in Svc::ALL {
        let pool = world.pool(svc).await?;
        let (commits, rollbacks, active_ms, ins, upd, fetched): (i64, i64, f64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT xact_commit, xact_rollback, COALESCE(active_time, 0), tup_inserted, \
                 tup_updated, tup_fetched FROM pg_stat_database WHERE datname = current_database()",
            )
            .fetch_one(&pool)
            .await?;
        out.push((
            svc,
            DbStats {
                commits,
                rollbacks,
                active_ms,
                rows_inserted: ins,
                rows_updated: upd,
                rows_fetched: fetched,
            },
        ));
    }
    Ok(out)
}
