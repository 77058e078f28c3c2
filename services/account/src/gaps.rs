//! Sequence gaps that stay open. A parked deposit waits for its predecessor; if the gap is still
//! open after `GAP_ALERT_SECS`, something upstream lost or delayed an event, and an operator
//! should know: each such account is logged (once, when it crosses the threshold, and once when
//! it closes) and counted in the gauge `eventbank_account_sequence_gaps_open`.
//!
//! Every replica computes the same value from the database, so any one of them can be scraped.

use eventbank_events::AccountId;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use sqlx::{PgConnection, PgPool};
use std::collections::BTreeSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// One account whose gap has been open longer than the threshold.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OpenGap {
    #[sqlx(try_from = "String")]
    pub account_id: AccountId,
    /// The sequence the account waits for.
    pub expected_sequence: i64,
    pub parked: i64,
    pub open_for_secs: i64,
}

pub fn register(registry: &mut Registry) -> Gauge {
    let gauge = Gauge::default();
    registry.register(
        "sequence_gaps_open",
        "Accounts whose sequence gap (parked deposits waiting for a predecessor) has been open longer than GAP_ALERT_SECS",
        gauge.clone(),
    );
    gauge
}

/// Accounts whose oldest parked deposit arrived more than `older_than` ago.
pub async fn open_gaps(
    conn: &mut PgConnection,
    older_than: Duration,
) -> sqlx::Result<Vec<OpenGap>> {
    sqlx::query_as(
        "SELECT p.account_id, COALESCE(max(b.last_sequence), 0) + 1 AS expected_sequence,
                count(*) AS parked,
                EXTRACT(EPOCH FROM now() - min(p.received_at))::bigint AS open_for_secs
         FROM pending_events p LEFT JOIN balances b ON b.account_id = p.account_id
         GROUP BY p.account_id
         HAVING min(p.received_at) <= now() - $1::bigint * interval '1 millisecond'
         ORDER BY p.account_id",
    )
    .bind(i64::try_from(older_than.as_millis()).unwrap_or(i64::MAX))
    .fetch_all(conn)
    .await
}

/// Watches the gaps until `stop`.
pub struct GapMonitor {
    pub pool: PgPool,
    pub threshold: Duration,
    pub interval: Duration,
    pub gauge: Gauge,
    /// Accounts reported open at the last check (to log crossings once).
    reported: BTreeSet<AccountId>,
}

impl GapMonitor {
    pub fn new(pool: PgPool, threshold: Duration, gauge: Gauge) -> Self {
        // Check a few times per threshold, but not more often than twice a second.
        let interval = (threshold / 3).clamp(Duration::from_millis(500), Duration::from_secs(10));
        Self {
            pool,
            threshold,
            interval,
            gauge,
            reported: BTreeSet::new(),
        }
    }

    /// One check: updates the gauge and logs crossings. Returns the open gaps.
    pub async fn check(&mut self) -> sqlx::Result<Vec<OpenGap>> {
        let mut conn = self.pool.acquire().await?;
        let gaps = open_gaps(&mut conn, self.threshold).await?;
        drop(conn);
        self.gauge.set(gaps.len() as i64);
        let now_open: BTreeSet<AccountId> = gaps.iter().map(|g| g.account_id.clone()).collect();
        for gap in &gaps {
            if !self.reported.contains(&gap.account_id) {
                tracing::warn!(account_id = %gap.account_id, expected_sequence = gap.expected_sequence,
                    parked = gap.parked, open_for_secs = gap.open_for_secs,
                    "sequence gap open longer than the alert threshold");
            }
        }
        for account_id in self.reported.difference(&now_open) {
            tracing::info!(account_id = %account_id, "sequence gap closed");
        }
        self.reported = now_open;
        Ok(gaps)
    }

    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.check().await {
                tracing::warn!(error = %e, "sequence gap check failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
        }
    }
}
