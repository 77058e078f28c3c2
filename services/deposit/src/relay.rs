//! The outbox relay: publishes outbox rows in id order with publisher confirms.
//!
//! - One leader at a time: the relay holds a Postgres session advisory lock on a dedicated
//!   connection; a second replica waits as a hot standby and takes over within a second of the
//!   leader's connection dying (a SIGKILLed leader's session ends, releasing the lock).
//! - Reads and marks rows on that same connection, so a relay that lost its lock connection can
//!   never mark anything published.
//! - Woken in-process when a deposit of this replica commits, by `LISTEN outbox` when one of
//!   another replica does (see [`crate::wakeup`]), with a 1 s poll as a safety net.
//! - Once the outbox is empty, this replica's writers hand the relay their committed rows in
//!   memory ([`crate::wakeup`]), and it publishes them without reading the outbox when each
//!   one is the next of its account: its sequence follows the last one this relay published
//!   for the account (or it is the account's first). One account's rows are committed in
//!   sequence order (the writers lock the account), so nothing of that account can be waiting
//!   in between. Any other case (an account it has not published for lately, a row of another
//!   replica before it, a full hand-off) reads the outbox, which is always safe.
//! - A row is marked published only after the broker confirmed it; a returned (unroutable) or
//!   nacked message stops the round and is retried with backoff. Rows published but not yet
//!   marked when the relay dies are published again: consumers deduplicate by event id.
//! - Marks are sent with the next read of the outbox, or once the oldest has waited
//!   [`Relay::mark_delay`], or when a batch of them is waiting, and before the relay stops or
//!   reconnects.

use crate::wakeup::{self, OutboxSignal};
use crate::{DepositMetrics, store};
use eventbank_runtime::amqp::{self, Names};
use eventbank_runtime::backoff::Backoff;
use eventbank_runtime::publisher::{Outgoing, Publisher, deposit_message};
use eventbank_runtime::{CommonConfig, Shutdown};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The advisory lock key: "evbkrely" as bytes, so it is recognisable in pg_locks.
pub const RELAY_LOCK_KEY: i64 = 0x6576_626b_7265_6c79;
const POLL_INTERVAL: Duration = Duration::from_secs(1);

pub struct Relay {
    pub config: CommonConfig,
    pub pool: PgPool,
    pub batch: i64,
    /// How long confirmed rows wait, at most, to be marked published in one statement with
    /// the rows confirmed after them. At light load a mark per deposit would be a commit per
    /// deposit; a relay that dies before marking publishes those rows again.
    pub mark_delay: Duration,
    pub metrics: DepositMetrics,
    pub broker_connected: Gauge,
    pub outbox: Arc<OutboxSignal>,
}

impl Relay {
    /// Runs until shutdown: become leader, then publish; on any failure start over with backoff.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            match self.lead(&shutdown).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.metrics.relay_leader.set(0);
                    self.outbox.set_leader(false);
                    self.broker_connected.set(0);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "relay interrupted; retrying");
                    tokio::select! {
                        _ = shutdown.triggered() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.metrics.relay_leader.set(0);
        self.outbox.set_leader(false);
    }

    async fn lock_connection(&self) -> anyhow::Result<PgConnection> {
        let options =
            sqlx::postgres::PgConnectOptions::from_str(self.config.database_url.expose())?
                .application_name("deposit-relay");
        Ok(PgConnection::connect_with(&options).await?)
    }

    /// Waits for the lock (standby), then publishes until shutdown or failure.
    async fn lead(&self, shutdown: &Shutdown) -> anyhow::Result<()> {
        let mut lock = self.lock_connection().await?;
        loop {
            let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK_KEY)
                .fetch_one(&mut lock)
                .await?;
            if acquired {
                break;
            }
            self.metrics.relay_leader.set(0);
            self.outbox.set_leader(false);
            tracing::debug!("another relay is the leader; standing by");
            tokio::select! {
                _ = shutdown.triggered() => return Ok(()),
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
            }
        }
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(wakeup::CHANNEL).await?;
        self.metrics.relay_leader.set(1);
        self.outbox.set_leader(true);
        tracing::info!("relay is the leader");

        let names = Names::new(&self.config.namespace);
        let mut broker_backoff = Backoff::new();
        while !shutdown.is_triggered() {
            let connection = match amqp::connect(&self.config).await {
                Ok(c) => c,
                Err(e) => {
                    // Keep the lock while the broker is away: deposits keep landing in the
                    // outbox, and we publish them as soon as it is back.
                    self.broker_connected.set(0);
                    self.refresh_backlog(&mut lock).await?;
                    let delay = broker_backoff.next_delay();
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "broker unreachable; deposits wait in the outbox");
                    tokio::select! {
                        _ = shutdown.triggered() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            let outcome = self
                .publish_loop(&connection, &names, &mut lock, &mut listener, shutdown)
                .await;
            self.broker_connected.set(0);
            amqp::close_connection(&connection, "relay stopping").await;
            match outcome {
                Ok(()) => break,
                Err(RelayError::Database(e)) => return Err(e),
                Err(RelayError::Broker(e)) => {
                    let delay = broker_backoff.next_delay();
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "publishing failed; will retry");
                    tokio::select! {
                        _ = shutdown.triggered() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        // Releasing explicitly lets a standby take over at once on a clean shutdown.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(RELAY_LOCK_KEY)
            .execute(&mut lock)
            .await;
        self.metrics.relay_leader.set(0);
        self.outbox.set_leader(false);
        Ok(())
    }

    /// Publishes rounds until shutdown or failure, then marks what was confirmed and is not
    /// marked yet (unless the lock connection failed: then nothing may be marked, and those rows
    /// are published again by the next leader; consumers deduplicate).
    async fn publish_loop(
        &self,
        connection: &lapin::Connection,
        names: &Names,
        lock: &mut PgConnection,
        listener: &mut PgListener,
        shutdown: &Shutdown,
    ) -> Result<(), RelayError> {
        let mut unmarked = Vec::new();
        let outcome = self
            .publish_rounds(connection, names, lock, listener, shutdown, &mut unmarked)
            .await;
        if matches!(outcome, Err(RelayError::Database(_))) {
            return outcome;
        }
        self.mark_and_fetch(lock, &mut unmarked, 0).await?;
        outcome
    }

    /// Marks `unmarked` (confirmed rows) published and reads the next round of up to `limit`
    /// rows, in one statement; with nothing to mark, only reads.
    async fn mark_and_fetch(
        &self,
        lock: &mut PgConnection,
        unmarked: &mut Vec<store::OutboxRow>,
        limit: i64,
    ) -> Result<Vec<store::OutboxRow>, RelayError> {
        let database = |e: sqlx::Error| RelayError::Database(e.into());
        if unmarked.is_empty() {
            return if limit > 0 {
                store::unpublished(lock, limit).await.map_err(database)
            } else {
                Ok(Vec::new())
            };
        }
        let ids: Vec<i64> = unmarked.iter().map(|r| r.id).collect();
        let next = store::mark_published_and_fetch(lock, &ids, limit)
            .await
            .map_err(database)?;
        self.metrics.published.inc_by(unmarked.len() as u64);
        unmarked.clear();
        Ok(next)
    }

    async fn publish_rounds(
        &self,
        connection: &lapin::Connection,
        names: &Names,
        lock: &mut PgConnection,
        listener: &mut PgListener,
        shutdown: &Shutdown,
        unmarked: &mut Vec<store::OutboxRow>,
    ) -> Result<(), RelayError> {
        let publisher = Publisher::new(connection)
            .await
            .map_err(|e| RelayError::Broker(e.into()))?;
        amqp::declare_events_exchange(publisher.channel(), names)
            .await
            .map_err(RelayError::Broker)?;
        self.broker_connected.set(1);
        let exchange = names.events_exchange();
        let mut order = AccountOrder::default();
        let mut backlog_read = Instant::now();
        let mut last_read = Instant::now();
        // When the oldest unmarked row was confirmed.
        let mut oldest_unmarked: Option<Instant> = None;
        let mut rows = self.read(lock, unmarked).await?;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            if unmarked.is_empty() {
                oldest_unmarked = None;
            }
            if rows.is_empty() {
                // Idle: notice a dead broker connection now, not at the next deposit, so
                // readiness and metrics tell the truth while nothing is being published.
                if !connection.status().connected() {
                    return Err(RelayError::Broker(anyhow::anyhow!(
                        "broker connection lost"
                    )));
                }
                // What the last read saw, and the rows handed over since (rows confirmed and
                // not yet marked are published); no query needed.
                self.metrics.outbox_backlog.set(0);
                self.metrics.outbox_oldest_age_seconds.set(0);
                let poll_at = last_read + POLL_INTERVAL;
                let mark_at =
                    oldest_unmarked.map_or(poll_at, |t| (t + self.mark_delay).min(poll_at));
                let wake = tokio::select! {
                    _ = shutdown.triggered() => return Ok(()),
                    _ = tokio::time::sleep_until(mark_at.into()) => Wake::Timer,
                    _ = self.outbox.wait_local() => Wake::Local,
                    notification = listener.recv() => {
                        notification.map_err(|e| RelayError::Database(e.into()))?;
                        Wake::Remote
                    }
                };
                let handed = match wake {
                    Wake::Local => self.outbox.take().and_then(|h| order.next_round(h)),
                    Wake::Timer | Wake::Remote => None,
                };
                rows = match handed {
                    Some(handed) => {
                        self.metrics.relay_handed.inc_by(handed.len() as u64);
                        handed
                    }
                    None if wake == Wake::Timer && Instant::now() < poll_at => {
                        self.mark_and_fetch(lock, unmarked, 0).await?
                    }
                    None => {
                        last_read = Instant::now();
                        self.read(lock, unmarked).await?
                    }
                };
                continue;
            }
            if backlog_read.elapsed() >= POLL_INTERVAL {
                self.refresh_backlog(lock)
                    .await
                    .map_err(RelayError::Database)?;
                backlog_read = Instant::now();
            }
            let messages: Vec<Outgoing> = rows
                .iter()
                .map(|r| {
                    deposit_message(
                        &exchange,
                        r.event_id,
                        &r.account_id,
                        r.traceparent.as_deref(),
                        r.payload.clone(),
                    )
                })
                .collect();
            let (confirmed, failure) = publisher.publish_all(&messages).await;
            let full = rows.len() as i64 >= self.batch;
            // Only the confirmed prefix is marked: order is kept, and anything after a failure
            // is published again (consumers deduplicate); the caller marks it on the way out.
            rows.truncate(confirmed);
            confirmed_log(&rows);
            order.published(&rows);
            unmarked.append(&mut rows);
            oldest_unmarked.get_or_insert_with(Instant::now);
            if let Some(e) = failure {
                return Err(RelayError::Broker(e.into()));
            }
            // A full round means more is waiting: mark it and read the next one at once (one
            // statement). Otherwise the outbox was emptied: what follows is handed over, and
            // the marks wait (above) unless a batch of them is waiting.
            if full {
                last_read = Instant::now();
                rows = self.read(lock, unmarked).await?;
            } else if unmarked.len() as i64 >= self.batch {
                rows = self.mark_and_fetch(lock, unmarked, 0).await?;
            }
        }
    }

    /// Marks `unmarked` and reads the next round from the outbox, arming the hand-off first
    /// (see [`crate::wakeup`]).
    async fn read(
        &self,
        lock: &mut PgConnection,
        unmarked: &mut Vec<store::OutboxRow>,
    ) -> Result<Vec<store::OutboxRow>, RelayError> {
        self.outbox.arm();
        self.metrics.relay_reads.inc();
        self.mark_and_fetch(lock, unmarked, self.batch).await
    }

    async fn refresh_backlog(&self, lock: &mut PgConnection) -> anyhow::Result<()> {
        let (count, age) = store::outbox_backlog(lock).await?;
        self.metrics.outbox_backlog.set(count);
        self.metrics.outbox_oldest_age_seconds.set(age);
        Ok(())
    }
}

/// Logs rows the broker confirmed.
fn confirmed_log(rows: &[store::OutboxRow]) {
    for row in rows {
        tracing::debug!(event_id = %row.event_id, account_id = %row.account_id, "published");
    }
    if let Some(first) = rows.first() {
        tracing::info!(
            count = rows.len(),
            first_id = first.id,
            "outbox rows published"
        );
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// The mark delay or the poll interval ran out.
    Timer,
    /// This replica committed deposits.
    Local,
    /// Another replica committed deposits (`NOTIFY outbox`).
    Remote,
}

/// Accounts whose last published sequence this relay remembers, at most; beyond it, it forgets
/// them all (and reads the outbox for their next rows).
const REMEMBERED_ACCOUNTS: usize = 100_000;

/// The last sequence number this relay published for each account (lately).
#[derive(Default)]
struct AccountOrder {
    last: HashMap<String, i64>,
}

impl AccountOrder {
    /// `rows` were confirmed by the broker.
    fn published(&mut self, rows: &[store::OutboxRow]) {
        if self.last.len() > REMEMBERED_ACCOUNTS {
            self.last.clear();
        }
        for row in rows {
            let last = self.last.entry(row.account_id.clone()).or_insert(0);
            *last = (*last).max(row.sequence);
        }
    }

    /// The handed-over rows to publish now, in id order: each the next of its account, those
    /// already published left out. `None` when one row's predecessor is not known to be
    /// published: the outbox must be read.
    fn next_round(&self, mut handed: Vec<store::OutboxRow>) -> Option<Vec<store::OutboxRow>> {
        handed.sort_by_key(|r| r.id);
        let mut next: HashMap<String, i64> = HashMap::new();
        let mut round = Vec::with_capacity(handed.len());
        for row in handed {
            let known = next.get(&row.account_id).or(self.last.get(&row.account_id));
            let last = match known {
                Some(&last) => last,
                None if row.sequence == 1 => 0,
                None => return None,
            };
            if row.sequence > last + 1 {
                return None;
            }
            // At or below the last one: published already (the read that armed the hand-off
            // saw it too).
            if row.sequence == last + 1 {
                next.insert(row.account_id.clone(), row.sequence);
                round.push(row);
            }
        }
        Some(round)
    }
}

enum RelayError {
    /// The lock connection failed: leadership is uncertain, start over.
    Database(anyhow::Error),
    /// The broker failed: reconnect, keep the lock.
    Broker(anyhow::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, account: &str, sequence: i64) -> store::OutboxRow {
        store::OutboxRow {
            id,
            event_id: uuid::Uuid::now_v7(),
            account_id: account.into(),
            sequence,
            traceparent: None,
            payload: Vec::new(),
        }
    }

    fn round(order: &AccountOrder, handed: Vec<store::OutboxRow>) -> Option<Vec<i64>> {
        order
            .next_round(handed)
            .map(|rows| rows.iter().map(|r| r.id).collect())
    }

    #[test]
    fn rows_that_follow_the_last_published_go_out_in_id_order() {
        let mut order = AccountOrder::default();
        order.published(&[row(1, "A", 4), row(2, "B", 9)]);
        let handed = vec![
            row(5, "A", 6),
            row(3, "A", 5),
            row(4, "B", 10),
            row(6, "C", 1),
        ];
        assert_eq!(round(&order, handed), Some(vec![3, 4, 5, 6]));
    }

    #[test]
    fn rows_the_arming_read_published_are_left_out() {
        let mut order = AccountOrder::default();
        order.published(&[row(1, "A", 4), row(2, "A", 5)]);
        let handed = vec![row(2, "A", 5), row(3, "A", 6)];
        assert_eq!(round(&order, handed), Some(vec![3]));
    }

    #[test]
    fn a_gap_or_an_account_not_published_lately_means_reading_the_outbox() {
        let mut order = AccountOrder::default();
        order.published(&[row(1, "A", 4)]);
        // A's sequence 5 is not handed over: another replica committed it.
        assert_eq!(round(&order, vec![row(7, "A", 6)]), None);
        // B was last published by another leader, or forgotten.
        assert_eq!(round(&order, vec![row(8, "B", 3)]), None);
        assert_eq!(round(&order, vec![row(9, "A", 5), row(10, "B", 3)]), None);
    }
}
