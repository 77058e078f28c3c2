//! The consumer runtime: one supervised connection, one task per partition queue this replica
//! owns ([`crate::membership`] spreads the partitions over the live replicas), batches.
//!
//! For each partition the loop takes the deliveries already waiting (up to `BATCH_SIZE`) and hands
//! them to the replica's applier ([`crate::combiner`]), which puts the batches of every partition
//! waiting at that moment in ONE Postgres transaction:
//! 1. inserts all their event ids into `processed_events` in one statement that returns the ids
//!    that were new (a conflict means "already applied": a duplicate);
//! 2. lets the service's [`Handler`] apply only the new events, in delivery order;
//! 3. commits,
//!
//! and only then acks the deliveries (one `multiple` ack per partition). A crash anywhere before
//! the ack means redelivery, and the dedup row makes the redelivery a no-op: exactly-once in
//! effect.
//!
//! Failure handling:
//! - undecodable / unsupported message: published to the service's dead-letter exchange with the
//!   reason in the `x-eventbank-reason` header, then acked (never silently dropped);
//! - transient failure (database unreachable): the batch is retried in-process with backoff and
//!   stays unacked; on shutdown it is left unacked so the broker redelivers it;
//! - any other failure of a batch: the batch is retried message by message, so only the poison
//!   message is dead-lettered (after a few attempts) and its neighbours are applied;
//! - a message that crashes the process: the quorum queue counts the redeliveries and dead-letters
//!   it at `x-delivery-limit`.

use crate::Shutdown;
use crate::amqp::{self, Names};
use crate::applied::AppliedFeed;
use crate::backoff::Backoff;
use crate::combiner::Combiner;
use crate::config::CommonConfig;
use crate::membership;
use crate::metrics::ConsumerMetrics;
use crate::publisher::{Outgoing, Publisher};
use eventbank_events::{DepositCompleted, decode};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Channel, Connection};
use prometheus_client::metrics::gauge::Gauge;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Why a handler could not apply events.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The event can never be applied (it contradicts this service's state or rules). It is
    /// dead-lettered with this reason without further attempts.
    #[error("rejected: {0}")]
    Rejected(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
    /// The database was unreachable for a transaction this batch shared with other partitions'
    /// (see [`crate::combiner`]): transient, like a connectivity error of its own.
    #[error("database unavailable: {0}")]
    Unavailable(String),
}

impl HandlerError {
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            HandlerError::Database(e) => crate::db::is_connectivity_error(e),
            HandlerError::Unavailable(_) => true,
            HandlerError::Rejected(_) | HandlerError::Other(_) => false,
        }
    }
}

/// A consumer service's domain logic.
pub trait Handler: Send + Sync + 'static {
    /// Applies `events` (new to this service, in delivery order) inside the transaction that
    /// recorded their ids. Prefer set-based statements over one statement per event.
    fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// Called after the transaction committed, before the ack (wake a sender, log).
    fn committed(&self, _events: &[DepositCompleted]) {}

    /// Writes of the service's own that ride this transaction instead of committing on their
    /// own ([`crate::piggyback`]): called last in every dedup transaction, after `handle`. The
    /// ride is reported landed once the transaction has committed, and goes back to its owner
    /// if it does not. Return a transient error ([`HandlerError::Unavailable`]) on failure, so
    /// the batch is retried (without the ride) rather than isolated.
    fn ride_along(
        &self,
        _tx: &mut PgConnection,
    ) -> impl Future<Output = Result<Option<Box<dyn Landing>>, HandlerError>> + Send {
        async { Ok(None) }
    }
}

/// A ride a transaction carried ([`Handler::ride_along`]), to report once it has committed.
pub trait Landing: Send {
    fn landed(self: Box<Self>);
}

impl<T: Eq + std::hash::Hash + Send> Landing for crate::piggyback::Ride<T> {
    fn landed(self: Box<Self>) {
        (*self).landed();
    }
}

/// Everything the consumer runtime needs.
pub struct Consumer<H> {
    pub config: CommonConfig,
    pub pool: PgPool,
    pub handler: Arc<H>,
    pub metrics: ConsumerMetrics,
    pub broker_connected: Gauge,
    /// Told of every newly applied event right after its commit (`GET /applied`).
    pub applied: AppliedFeed,
}

struct Shared<H> {
    config: CommonConfig,
    names: Names,
    pool: PgPool,
    handler: Arc<H>,
    metrics: ConsumerMetrics,
    applied: AppliedFeed,
    combiner: Combiner,
}

/// A `DepositCompleted` is well under 2 KiB; anything this large is not one, and would only
/// cost memory and database space downstream.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// What the consumer makes of a delivery's body before any database work: the event, or the
/// reason it is dead-lettered (the text of the `x-eventbank-reason` header). Pure, no I/O: the
/// properties and headers of a delivery play no part in it.
pub fn decode_delivery(data: &[u8]) -> Result<DepositCompleted, String> {
    if data.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "message of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
            data.len()
        ));
    }
    decode(data).map_err(|e| e.to_string())
}

/// The longest dead-letter reason kept in the header, in characters.
pub const MAX_REASON_CHARS: usize = 1000;

/// The headers of a dead-lettered copy: the original's (`None`: it had none), with the reason
/// (cut to [`MAX_REASON_CHARS`] characters), the queue and the time of failure set, replacing
/// whatever the sender put under those names.
pub fn dead_letter_headers(
    original: Option<&FieldTable>,
    reason: &str,
    queue: &str,
    failed_at: &str,
) -> FieldTable {
    let mut headers: FieldTable = original.cloned().unwrap_or_default();
    let reason: String = reason.chars().take(MAX_REASON_CHARS).collect();
    headers.insert(
        amqp::REASON_HEADER.into(),
        AMQPValue::LongString(reason.as_str().into()),
    );
    headers.insert(
        amqp::QUEUE_HEADER.into(),
        AMQPValue::LongString(queue.into()),
    );
    headers.insert(
        amqp::FAILED_AT_HEADER.into(),
        AMQPValue::LongString(failed_at.into()),
    );
    headers
}

/// Attempts at a non-transient failure of one message before it is dead-lettered.
const POISON_ATTEMPTS: u32 = 3;

impl<H: Handler> Consumer<H> {
    /// The supervising loop: connect, declare, consume the partitions this replica owns (see
    /// [`crate::membership`]); on any connection or channel failure, tear everything down and
    /// start again with backoff. Returns on shutdown after the partitions finished the batch
    /// they held.
    pub async fn run(self, shutdown: Shutdown) {
        let (combiner, applier) = Combiner::start(self.pool.clone(), Arc::clone(&self.handler));
        let shared = Arc::new(Shared {
            names: Names::new(&self.config.namespace),
            config: self.config,
            pool: self.pool,
            handler: self.handler,
            metrics: self.metrics,
            applied: self.applied,
            combiner,
        });
        let (owned_tx, mut owned) = watch::channel(BTreeSet::new());
        let membership = tokio::spawn(membership::run(
            shared.config.clone(),
            owned_tx,
            shared.metrics.partitions_owned.clone(),
            shutdown.clone(),
        ));
        let mut backoff = Backoff::new();
        while !shutdown.is_triggered() {
            match run_connection(&shared, &shutdown, &self.broker_connected, &mut owned).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    self.broker_connected.set(0);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "broker connection lost; reconnecting");
                    tokio::select! {
                        _ = shutdown.triggered() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        self.broker_connected.set(0);
        // The membership task ends on the same signal and gives up its slot.
        let _ = membership.await;
        // Every partition task has finished: the last handle on the applier goes, and it ends.
        drop(shared);
        let _ = applier.await;
    }
}

/// A running partition consumer: its stop signal and which start of the partition it is (a
/// partition lost and regained quickly may have its old task still handing over).
struct Running {
    stop: CancellationToken,
    generation: u64,
}

/// The partition consumers of one connection.
struct Partitions<H> {
    shared: Arc<Shared<H>>,
    connection: Arc<Connection>,
    stop_all: CancellationToken,
    running: BTreeMap<u16, Running>,
    tasks: JoinSet<(u16, u64, anyhow::Result<()>)>,
    generation: u64,
}

impl<H: Handler> Partitions<H> {
    fn new(shared: &Arc<Shared<H>>, connection: &Arc<Connection>) -> Self {
        Self {
            shared: Arc::clone(shared),
            connection: Arc::clone(connection),
            stop_all: CancellationToken::new(),
            running: BTreeMap::new(),
            tasks: JoinSet::new(),
            generation: 0,
        }
    }

    /// Brings the running partitions in line with the assignment `want`: a lost partition
    /// finishes the batch it holds, acks it and closes its channel, which hands its unacked
    /// deliveries to the next consumer registered on the queue; a gained one starts consuming.
    fn reconcile(&mut self, want: BTreeSet<u16>) {
        self.running.retain(|partition, run| {
            let keep = want.contains(partition);
            if !keep {
                run.stop.cancel();
            }
            keep
        });
        for partition in want {
            if !self.running.contains_key(&partition) {
                self.start(partition);
            }
        }
        tracing::debug!(owned = ?self.running.keys().collect::<Vec<_>>(), "partitions consumed");
    }

    fn start(&mut self, partition: u16) {
        self.generation += 1;
        let this = self.generation;
        let stop = self.stop_all.child_token();
        self.running.insert(
            partition,
            Running {
                stop: stop.clone(),
                generation: this,
            },
        );
        let shared = Arc::clone(&self.shared);
        let connection = Arc::clone(&self.connection);
        self.tasks.spawn(async move {
            let result = consume_partition(shared, connection, partition, stop).await;
            (partition, this, result)
        });
    }

    /// What a finished partition task means: `Some(error)` when the connection must be given up
    /// (a failure, or the current consumer of a partition stopping), `None` when it was an old
    /// start handing over.
    fn finished(
        &self,
        joined: Result<(u16, u64, anyhow::Result<()>), tokio::task::JoinError>,
    ) -> Option<anyhow::Error> {
        match joined {
            Ok((partition, this, Ok(()))) => {
                let current = self
                    .running
                    .get(&partition)
                    .is_some_and(|r| r.generation == this);
                if current {
                    return Some(anyhow::anyhow!(
                        "the consumer of partition {partition} stopped"
                    ));
                }
                tracing::debug!(partition, "partition handed over");
                None
            }
            Ok((_, _, Err(e))) => Some(e),
            Err(e) => Some(anyhow::anyhow!("a partition task panicked: {e}")),
        }
    }

    /// Stops every partition consumer and waits until each has finished its batch.
    async fn stop(mut self) {
        self.stop_all.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Connects and declares the service's topology (idempotent), on a channel of its own.
async fn connect_and_declare<H>(shared: &Shared<H>) -> anyhow::Result<Connection> {
    let connection = amqp::connect(&shared.config).await?;
    let setup = connection.create_channel().await?;
    amqp::declare_consumer_topology(
        &setup,
        &shared.names,
        shared.config.service,
        shared.config.partitions,
        shared.config.delivery_limit,
    )
    .await?;
    amqp::close_channel(&setup, "topology declared").await;
    Ok(connection)
}

async fn run_connection<H: Handler>(
    shared: &Arc<Shared<H>>,
    shutdown: &Shutdown,
    broker_connected: &Gauge,
    owned: &mut watch::Receiver<BTreeSet<u16>>,
) -> anyhow::Result<()> {
    let connection = Arc::new(connect_and_declare(shared).await?);
    broker_connected.set(1);
    tracing::info!(
        partitions = shared.config.partitions,
        batch_size = shared.config.batch_size,
        prefetch = shared.config.prefetch,
        "consuming"
    );
    let mut partitions = Partitions::new(shared, &connection);
    let outcome = loop {
        partitions.reconcile(owned.borrow_and_update().clone());
        // Shutdown or a partition failing (the connection or its channel is gone) stops the
        // others, which finish the batch they hold; an assignment change is applied above.
        tokio::select! {
            biased;
            _ = shutdown.triggered() => break Ok(()),
            changed = owned.changed() => {
                if changed.is_err() {
                    break Err(anyhow::anyhow!("the membership task ended"));
                }
            }
            Some(joined) = partitions.tasks.join_next() => {
                if let Some(e) = partitions.finished(joined) {
                    break Err(e);
                }
            }
        }
    };
    partitions.stop().await;
    broker_connected.set(0);
    amqp::close_connection(&connection, "shutting down").await;
    outcome
}

async fn consume_partition<H: Handler>(
    shared: Arc<Shared<H>>,
    connection: Arc<Connection>,
    partition: u16,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let queue = shared
        .names
        .partition_queue(shared.config.service, partition);
    let channel = connection.create_channel().await?;
    // The prefetch bounds unacked deliveries; it must exceed the batch size or batches starve.
    channel
        .basic_qos(shared.config.prefetch, BasicQosOptions::default())
        .await?;
    // Confirm mode on the same channel: a message we dead-letter ourselves is acked only after
    // the broker confirmed its copy in the DLQ.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            ShortString::from(queue.clone()),
            ShortString::from(format!(
                "{}-{}-{partition}",
                shared.config.service,
                Uuid::new_v4().simple()
            )),
            // Manual ack (no_ack = false): we ack only after the transaction committed.
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::debug!(queue, "partition consumer started");
    let result = consume_deliveries(&shared, &channel, &queue, &mut deliveries, &stop).await;
    if result.is_ok() {
        // Stopped: closing the channel returns the deliveries it still holds to the queue, and
        // single active consumer makes the next registered consumer (another replica, when the
        // partition was handed over) the active one.
        amqp::close_channel(&channel, "partition released").await;
    }
    result
}

async fn consume_deliveries<H: Handler>(
    shared: &Shared<H>,
    channel: &Channel,
    queue: &str,
    deliveries: &mut lapin::Consumer,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(e.into()),
                None => anyhow::bail!("consumer on {queue} was cancelled"),
            },
        };
        let mut batch = vec![first];
        // Take what is already waiting, without waiting for more: latency stays low when idle
        // and batches grow by themselves under load.
        while batch.len() < shared.config.batch_size {
            match deliveries.next().now_or_never() {
                Some(Some(Ok(delivery))) => batch.push(delivery),
                _ => break,
            }
        }
        process_batch(shared, channel, queue, batch, stop).await?;
    }
}

async fn process_batch<H: Handler>(
    shared: &Shared<H>,
    channel: &Channel,
    queue: &str,
    batch: Vec<Delivery>,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut decoded: Vec<(Delivery, DepositCompleted)> = Vec::with_capacity(batch.len());
    for delivery in batch {
        match decode_delivery(&delivery.data) {
            Ok(event) => decoded.push((delivery, event)),
            Err(reason) => {
                tracing::warn!(queue, reason, message_id = ?delivery.properties.message_id(), "undecodable message: dead-lettering");
                dead_letter(shared, channel, queue, &delivery, &reason).await?;
            }
        }
    }
    if decoded.is_empty() {
        return Ok(());
    }
    let size = decoded.len();
    let events: Vec<DepositCompleted> = decoded.iter().map(|(_, e)| e.clone()).collect();
    // One span per event, child of the producer's span named by the event's traceparent: with
    // OTLP export on, this service's work on a deposit joins that deposit's trace. The spans
    // close when the batch is done.
    let _spans: Vec<tracing::Span> = events
        .iter()
        .map(|e| event_span(shared.config.service, e))
        .collect();
    let mut backoff = Backoff::new();
    loop {
        match shared.combiner.apply(events.clone()).await {
            Ok(fresh) => {
                shared.handler.committed(&fresh);
                shared.applied.send(&fresh);
                // Counted at the commit, not after the ack: a batch whose ack is lost with
                // its channel was applied all the same, and its redelivery counts as duplicates.
                record(shared, size, fresh.len(), started);
                ack_up_to(channel, decoded.last().map(|(d, _)| d)).await?;
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                shared.metrics.retries.inc();
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "database unavailable; batch kept unacked and retried");
                tokio::select! {
                    // Leave the batch unacked: closing the channel hands it back to the broker.
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                if size > 1 {
                    tracing::warn!(error = %e, size, "batch failed; retrying message by message to isolate the cause");
                }
                break;
            }
        }
    }
    for (delivery, event) in decoded {
        process_one(shared, channel, queue, delivery, event, stop).await?;
    }
    Ok(())
}

fn event_span(service: &str, event: &DepositCompleted) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.name = %format!("{service} consume deposit.completed"),
        otel.kind = "consumer",
        event_id = %event.event_id,
        account_id = %event.account_id,
        deposit_id = %event.deposit_id,
        sequence = event.sequence,
    );
    if let Some(traceparent) = &event.traceparent {
        crate::trace::set_parent(&span, traceparent);
    }
    span
}

/// Applies one message alone: after `POISON_ATTEMPTS` non-transient failures (or one
/// `Rejected`), it goes to the dead-letter queue with the reason, and the partition moves on.
async fn process_one<H: Handler>(
    shared: &Shared<H>,
    channel: &Channel,
    queue: &str,
    delivery: Delivery,
    event: DepositCompleted,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let events = [event];
    let mut backoff = Backoff::new();
    let mut failures = 0;
    loop {
        // Alone, not through the combiner: this message is being isolated.
        match deliver(&shared.pool, shared.handler.as_ref(), &events).await {
            Ok(fresh) => {
                shared.handler.committed(&fresh);
                shared.applied.send(&fresh);
                record(shared, 1, fresh.len(), started);
                ack_up_to(channel, Some(&delivery)).await?;
                return Ok(());
            }
            Err(e) if e.is_transient() => {
                shared.metrics.retries.inc();
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
            Err(e) => {
                failures += 1;
                let rejected = matches!(e, HandlerError::Rejected(_));
                if rejected || failures >= POISON_ATTEMPTS {
                    let reason = format!("{e:#}");
                    let [event] = &events;
                    tracing::error!(
                        event_id = %event.event_id, account_id = %event.account_id,
                        deposit_id = %event.deposit_id, reason, "message cannot be applied: dead-lettering"
                    );
                    return dead_letter(shared, channel, queue, &delivery, &reason).await;
                }
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}

/// The dedup transaction, exactly as the consumer loop runs it (public so that services' tests
/// exercise the real path without a broker): insert the ids into `processed_events`, hand only
/// the new events to the handler, add its ride ([`Handler::ride_along`]), commit. Returns the
/// events that were new, in order. Does not call [`Handler::committed`]; the loop does, before
/// it acks.
pub async fn deliver<H: Handler>(
    pool: &PgPool,
    handler: &H,
    events: &[DepositCompleted],
) -> Result<Vec<DepositCompleted>, HandlerError> {
    let mut tx = pool.begin().await?;
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let inserted: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (event_id) SELECT DISTINCT UNNEST($1::uuid[]) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .fetch_all(&mut *tx)
    .await?;
    let mut new_ids: HashSet<Uuid> = inserted.into_iter().collect();
    // `remove` keeps only the first copy when one batch holds the same event twice.
    let fresh: Vec<DepositCompleted> = events
        .iter()
        .filter(|e| new_ids.remove(&e.event_id))
        .cloned()
        .collect();
    if !fresh.is_empty() {
        handler.handle(&mut tx, &fresh).await?;
    }
    let ride = handler.ride_along(&mut tx).await?;
    tx.commit().await?;
    if let Some(ride) = ride {
        ride.landed();
    }
    for duplicate in duplicates(events, &fresh) {
        tracing::info!(
            event_id = %duplicate.event_id, account_id = %duplicate.account_id,
            deposit_id = %duplicate.deposit_id, "duplicate delivery skipped"
        );
    }
    Ok(fresh)
}

/// Events of `all` that are not in `fresh` (by position: the first copy of an id is fresh).
fn duplicates<'a>(
    all: &'a [DepositCompleted],
    fresh: &[DepositCompleted],
) -> Vec<&'a DepositCompleted> {
    let mut fresh_iter = fresh.iter().peekable();
    let mut out = Vec::new();
    for event in all {
        match fresh_iter.peek() {
            Some(f) if f.event_id == event.event_id => {
                fresh_iter.next();
            }
            _ => out.push(event),
        }
    }
    out
}

fn record<H>(shared: &Shared<H>, size: usize, fresh: usize, started: Instant) {
    let size_u64 = size as u64;
    shared.metrics.consumed.inc_by(size_u64);
    shared
        .metrics
        .duplicates
        .inc_by(size_u64.saturating_sub(fresh as u64));
    shared.metrics.batch_size.observe(size as f64);
    shared
        .metrics
        .batch_seconds
        .observe(started.elapsed().as_secs_f64());
}

/// Acks every delivery of this channel up to and including `last`.
async fn ack_up_to(channel: &Channel, last: Option<&Delivery>) -> anyhow::Result<()> {
    if let Some(last) = last {
        channel
            .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
            .await?;
    }
    Ok(())
}

/// Publishes a copy of `delivery` to the service's dead-letter exchange with the reason in its
/// headers, waits for the broker's confirm, then acks the original.
async fn dead_letter<H>(
    shared: &Shared<H>,
    channel: &Channel,
    queue: &str,
    delivery: &Delivery,
    reason: &str,
) -> anyhow::Result<()> {
    let headers = dead_letter_headers(
        delivery.properties.headers().as_ref(),
        reason,
        queue,
        &chrono::Utc::now().to_rfc3339(),
    );
    Publisher::on(channel.clone())
        .publish_one(&Outgoing {
            exchange: shared.names.dead_letter_exchange(shared.config.service),
            routing_key: queue.to_owned(),
            body: delivery.data.clone(),
            properties: delivery.properties.clone().with_headers(headers),
        })
        .await
        .map_err(|e| anyhow::anyhow!("dead-letter publish failed: {e}"))?;
    channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions { multiple: false })
        .await?;
    shared.metrics.dead_lettered.inc();
    Ok(())
}
