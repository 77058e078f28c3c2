//! The outbox relay: publishes outbox rows in id order with publisher confirms.
//!
//! - One leader at a time: the relay holds a Postgres session advisory lock on a dedicated
//!   connection; a second replica waits as a hot standby and takes over within a second of the
//!   leader's connection dying (a SIGKILLed leader's session ends, releasing the lock).
//! - Reads and marks rows on that same connection, so a relay that lost its lock connection can
//!   never mark anything published.
//! - Woken in-process when a deposit of this replica commits, by `LISTEN outbox` when one of
//!   another replica does (see [`crate::wakeup`]), with a 1 s poll as a safety net.
//! - A row is marked published only after the broker confirmed it; a returned (unroutable) or
//!   nacked message stops the round and is retried with backoff. Rows published but not yet
//!   marked when the relay dies are published again: consumers deduplicate by event id.
//! - The marks of a round that emptied the outbox go with the next round's read, or after
//!   [`Relay::mark_delay`] if no deposit comes, and before the relay stops or reconnects.

use crate::wakeup::{self, OutboxSignal};
use crate::{DepositMetrics, store};
use eventbank_runtime::amqp::{self, Names};
use eventbank_runtime::backoff::Backoff;
use eventbank_runtime::publisher::{Outgoing, Publisher, deposit_message};
use eventbank_runtime::{CommonConfig, Shutdown};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
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
    /// How long the confirmed rows of a round that emptied the outbox wait to be marked with the
    /// next round's read. At light load every deposit woke a read and a mark of its own (two
    /// commits); a deposit that comes within this delay makes them one statement.
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
        self.published(unmarked);
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
        let mut backlog_read = Instant::now();
        let mut rows = store::unpublished(lock, self.batch)
            .await
            .map_err(|e| RelayError::Database(e.into()))?;
        loop {
            if shutdown.is_triggered() {
                return Ok(());
            }
            if rows.is_empty() {
                // Idle: notice a dead broker connection now, not at the next deposit, so
                // readiness and metrics tell the truth while nothing is being published.
                if !connection.status().connected() {
                    return Err(RelayError::Broker(anyhow::anyhow!(
                        "broker connection lost"
                    )));
                }
                // What the last read saw (rows confirmed and not yet marked are published); no
                // query needed.
                self.metrics.outbox_backlog.set(0);
                self.metrics.outbox_oldest_age_seconds.set(0);
                let wait = if unmarked.is_empty() {
                    POLL_INTERVAL
                } else {
                    self.mark_delay
                };
                tokio::select! {
                    _ = shutdown.triggered() => return Ok(()),
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.outbox.wait_local() => {}
                    notification = listener.recv() => {
                        notification.map_err(|e| RelayError::Database(e.into()))?;
                    }
                }
                rows = self.mark_and_fetch(lock, unmarked, self.batch).await?;
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
            unmarked.append(&mut rows);
            if let Some(e) = failure {
                return Err(RelayError::Broker(e.into()));
            }
            // Marking a round and reading the next is one statement. A full round means more
            // is waiting: at once. Otherwise the outbox was emptied: the marks wait (above) for
            // the next deposit's wake-up, or the mark delay, so at light load a deposit costs
            // one relay statement instead of a read and a mark.
            if full {
                rows = self.mark_and_fetch(lock, unmarked, self.batch).await?;
            }
        }
    }

    fn published(&self, rows: &[store::OutboxRow]) {
        self.metrics.published.inc_by(rows.len() as u64);
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

    async fn refresh_backlog(&self, lock: &mut PgConnection) -> anyhow::Result<()> {
        let (count, age) = store::outbox_backlog(lock).await?;
        self.metrics.outbox_backlog.set(count);
        self.metrics.outbox_oldest_age_seconds.set(age);
        Ok(())
    }
}

enum RelayError {
    /// The lock connection failed: leadership is uncertain, start over.
    Database(anyhow::Error),
    /// The broker failed: reconnect, keep the lock.
    Broker(anyhow::Error),
}
