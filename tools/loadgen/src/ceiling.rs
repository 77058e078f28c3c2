//! The machine's own ceilings, measured in the same run as the load, before the services start:
//!
//! - **Postgres**: commits/s of a consumer-shaped transaction (dedup insert + one row + one
//!   upsert, the statements the consumer runtime and a handler issue) from as many connections
//!   as the consumers run partition tasks, once with one event per transaction and once with
//!   the consumers' batch size (the same statements over `UNNEST` arrays). Each connection owns
//!   its own accounts, as a partition does, so upserts never wait for each other.
//! - **RabbitMQ**: publishes/s with confirms (pipelined windows, as the relay publishes) of a
//!   real `DepositCompleted` message, fanned out to as many quorum queues as there are consumer
//!   services, each consumed with manual multiple-acks at the consumers' prefetch; counted until
//!   every queue has consumed every message.

use anyhow::{Context as _, Result};
use eventbank_runtime::publisher::{Outgoing, Publisher};
use futures_util::{FutureExt as _, StreamExt as _};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Not counted: connections warm up, plans are cached, the WAL settles.
const WARMUP: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, serde::Serialize)]
pub struct PgCeiling {
    pub connections: usize,
    pub events_per_transaction: usize,
    pub commits_per_s: f64,
    pub events_per_s: f64,
}

/// Creates database `db_name` next to the world's, measures, drops it (also on failure).
pub async fn postgres(
    admin_url: &str,
    db_url: &str,
    db_name: &str,
    connections: usize,
    batches: &[usize],
    secs: f64,
) -> Result<Vec<PgCeiling>> {
    with_database(admin_url, db_name, async || {
        let pool = PgPoolOptions::new()
            .max_connections(connections as u32)
            .min_connections(connections as u32)
            .connect(db_url)
            .await
            .with_context(|| format!("connecting to {db_name}"))?;
        let outcome = async {
            setup_schema(&mut *pool.acquire().await?).await?;
            let mut out = Vec::new();
            for &batch in batches {
                out.push(measure_pg(&pool, connections, batch, secs).await?);
            }
            anyhow::Ok(out)
        }
        .await;
        pool.close().await;
        outcome
    })
    .await
}

/// Creates database `db_name` next to the world's, runs `f`, drops it (also when `f` failed).
pub async fn with_database<T>(
    admin_url: &str,
    db_name: &str,
    f: impl AsyncFnOnce() -> Result<T>,
) -> Result<T> {
    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url)
        .await
        .context("connecting to Postgres as admin")?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{db_name}\""
    )))
    .execute(&admin)
    .await
    .with_context(|| format!("creating database {db_name}"))?;
    let outcome = f().await;
    let dropped = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{db_name}\" WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
    admin.close().await;
    let out = outcome?;
    dropped.with_context(|| format!("dropping database {db_name}"))?;
    Ok(out)
}

/// The consumer-shaped tables [`apply_batch`] writes.
pub async fn setup_schema(conn: &mut PgConnection) -> Result<()> {
    for sql in [
        "CREATE TABLE processed_events (event_id uuid PRIMARY KEY, \
         processed_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE entries (event_id uuid PRIMARY KEY, account_id text NOT NULL, \
         amount_minor bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE balances (account_id text PRIMARY KEY, balance_minor bigint NOT NULL, \
         deposit_count bigint NOT NULL, updated_at timestamptz NOT NULL)",
    ] {
        sqlx::query(sql).execute(&mut *conn).await?;
    }
    Ok(())
}

async fn measure_pg(
    pool: &PgPool,
    connections: usize,
    batch: usize,
    secs: f64,
) -> Result<PgCeiling> {
    let commits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..connections {
        let pool = pool.clone();
        let commits = Arc::clone(&commits);
        let stop = Arc::clone(&stop);
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            // 1,000 accounts split between the connections, as partitions split them.
            let accounts: Vec<String> = (0..1000)
                .filter(|i| i % connections == worker)
                .map(|i| format!("ACC-{i:04}"))
                .collect();
            while !stop.load(Ordering::Relaxed) {
                let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
                let mut picked: Vec<&String> = (0..batch)
                    .map(|_| &accounts[rand::random_range(0..accounts.len())])
                    .collect();
                picked.sort();
                let account_ids: Vec<String> = picked.into_iter().cloned().collect();
                let amounts: Vec<i64> = (0..batch)
                    .map(|_| rand::random_range(100..10_000))
                    .collect();
                let fresh = apply_batch(&mut conn, &ids, &account_ids, &amounts).await?;
                anyhow::ensure!(fresh == batch, "dedup insert lost ids");
                commits.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let commits_per_s = rate_after_warmup(&commits, secs).await;
    stop.store(true, Ordering::Relaxed);
    while let Some(joined) = tasks.join_next().await {
        joined.context("ceiling worker panicked")??;
    }
    Ok(PgCeiling {
        connections,
        events_per_transaction: batch,
        commits_per_s,
        events_per_s: commits_per_s * batch as f64,
    })
}

/// Per second, how fast `counter` grows over `secs` after [`WARMUP`].
pub async fn rate_after_warmup(counter: &AtomicU64, secs: f64) -> f64 {
    tokio::time::sleep(WARMUP).await;
    let (c0, t0) = (counter.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let (c1, t1) = (counter.load(Ordering::Relaxed), Instant::now());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

/// One consumer-shaped transaction over a batch of events (the tables of [`setup_schema`]):
/// dedup insert, one row per event, one balance upsert per account (`account_ids` sorted, so
/// concurrent batches lock accounts in the same order). Answers how many ids were new.
pub async fn apply_batch(
    conn: &mut PgConnection,
    ids: &[Uuid],
    account_ids: &[String],
    amounts: &[i64],
) -> Result<usize> {
    let mut tx = conn.begin().await?;
    let fresh: Vec<Uuid> = sqlx::query_scalar(
        "INSERT INTO processed_events (event_id) SELECT DISTINCT UNNEST($1::uuid[]) \
         ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO entries (event_id, account_id, amount_minor) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[])",
    )
    .bind(ids)
    .bind(account_ids)
    .bind(amounts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO balances (account_id, balance_minor, deposit_count, updated_at) \
         SELECT a, sum(m), count(*), now() FROM UNNEST($1::text[], $2::bigint[]) \
         AS t(a, m) GROUP BY a ORDER BY a \
         ON CONFLICT (account_id) DO UPDATE SET \
         balance_minor = balances.balance_minor + EXCLUDED.balance_minor, \
         deposit_count = balances.deposit_count + EXCLUDED.deposit_count, \
         updated_at = EXCLUDED.updated_at",
    )
    .bind(account_ids)
    .bind(amounts)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(fresh.len())
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BrokerCeiling {
    pub queues: usize,
    pub message_bytes: usize,
    pub publish_window: usize,
    pub prefetch: u16,
    pub published: u64,
    /// Messages published per second, counted until every queue consumed every one of them.
    pub publishes_per_s: f64,
    /// Deliveries acked per second over all queues (= publishes_per_s x queues).
    pub deliveries_per_s: f64,
}

/// Declares `<ns>.ceiling.x` and `queues` quorum queues bound to it, measures, deletes them.
pub async fn broker(
    amqp_url: &str,
    ns: &str,
    queues: usize,
    message: Outgoing,
    window: usize,
    prefetch: u16,
    secs: f64,
) -> Result<BrokerCeiling> {
    let exchange = format!("{ns}.ceiling.x");
    let queue_names: Vec<String> = (0..queues).map(|i| format!("{ns}.ceiling.q{i}")).collect();
    let routing_key = message.routing_key.clone();
    with_fanout(
        amqp_url,
        &exchange,
        &queue_names,
        &routing_key,
        async |connection| {
            measure_broker(
                connection,
                &exchange,
                &queue_names,
                message,
                window,
                prefetch,
                secs,
            )
            .await
        },
    )
    .await
}

/// Connects to `amqp_url`, declares `exchange` and `queues` (see [`declare_fanout`]), runs
/// `f`, deletes them again (also when `f` failed) and closes the connection.
pub async fn with_fanout<T>(
    amqp_url: &str,
    exchange: &str,
    queues: &[String],
    routing_key: &str,
    f: impl AsyncFnOnce(&Connection) -> Result<T>,
) -> Result<T> {
    let connection = Connection::connect(amqp_url, ConnectionProperties::default())
        .await
        .context("connecting to RabbitMQ")?;
    let outcome = match declare_fanout(&connection, exchange, queues, routing_key).await {
        Ok(()) => f(&connection).await,
        Err(e) => Err(e),
    };
    let cleanup = delete_fanout(&connection, exchange, queues).await;
    let _ = connection.close(200, "measured".into()).await;
    let out = outcome?;
    cleanup.with_context(|| format!("deleting {exchange} and its queues"))?;
    Ok(out)
}

async fn measure_broker(
    connection: &Connection,
    exchange: &str,
    queues: &[String],
    mut message: Outgoing,
    window: usize,
    prefetch: u16,
    secs: f64,
) -> Result<BrokerCeiling> {
    message.exchange = exchange.to_owned();
    let message_bytes = message.body.len();

    let consumed: Arc<Vec<AtomicU64>> =
        Arc::new(queues.iter().map(|_| AtomicU64::new(0)).collect());
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers = tokio::task::JoinSet::new();
    for (i, q) in queues.iter().enumerate() {
        let channel = connection.create_channel().await?;
        let deliveries = consume(&channel, q, prefetch, &format!("ceiling-{i}")).await?;
        let consumed = Arc::clone(&consumed);
        let stop = Arc::clone(&stop);
        consumers.spawn(async move {
            let mut batches = Batches::new(deliveries);
            while batches.next(&stop).await?.is_some() {
                let n = batches.ack(&channel).await?;
                consumed[i].fetch_add(n as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }

    let publisher = Publisher::new(connection).await?;
    let batch: Vec<Outgoing> = (0..window).map(|_| message.clone()).collect();
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut published = 0u64;
    while Instant::now() < deadline {
        let (confirmed, failure) = publisher.publish_all(&batch).await;
        published += confirmed as u64;
        if let Some(e) = failure {
            stop.store(true, Ordering::Relaxed);
            return Err(anyhow::anyhow!(e).context("publishing"));
        }
    }
    let drained = wait_until(Duration::from_secs(60), || {
        consumed
            .iter()
            .all(|c| c.load(Ordering::Relaxed) >= published)
    })
    .await;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    drained.context("the ceiling's consumers did not drain within 60 s")?;
    while let Some(joined) = consumers.join_next().await {
        joined.context("ceiling consumer panicked")??;
    }
    let publishes_per_s = published as f64 / elapsed;
    Ok(BrokerCeiling {
        queues: queues.len(),
        message_bytes,
        publish_window: window,
        prefetch,
        published,
        publishes_per_s,
        deliveries_per_s: publishes_per_s * queues.len() as f64,
    })
}

/// Checks `done` every 5 ms until it holds; an error once `limit` has passed.
pub async fn wait_until(limit: Duration, done: impl Fn() -> bool) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !done() {
        anyhow::ensure!(Instant::now() <= deadline, "not done within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// A durable topic exchange and durable quorum queues, each bound to it with `routing_key`.
pub async fn declare_fanout(
    connection: &Connection,
    exchange: &str,
    queues: &[String],
    routing_key: &str,
) -> Result<()> {
    let setup = connection.create_channel().await?;
    setup
        .exchange_declare(
            ShortString::from(exchange),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    for q in queues {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        setup
            .queue_declare(
                ShortString::from(q.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        setup
            .queue_bind(
                ShortString::from(q.as_str()),
                ShortString::from(exchange),
                ShortString::from(routing_key),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Deletes what [`declare_fanout`] declared, on a channel of its own (the measuring channels
/// may be gone after a failure).
pub async fn delete_fanout(
    connection: &Connection,
    exchange: &str,
    queues: &[String],
) -> Result<()> {
    let channel = connection.create_channel().await?;
    for q in queues {
        channel
            .queue_delete(ShortString::from(q.as_str()), QueueDeleteOptions::default())
            .await?;
    }
    channel
        .exchange_delete(
            ShortString::from(exchange),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    Ok(())
}

/// Consumes `queue` on `channel` with manual acks and `prefetch` unacked deliveries.
pub async fn consume(
    channel: &lapin::Channel,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Result<lapin::Consumer> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    Ok(channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

/// A consumer's deliveries in batches: what is waiting when one arrives (up to 50, as the
/// consumer runtime takes them), acked at once with `multiple`.
pub struct Batches {
    deliveries: lapin::Consumer,
    batch: Vec<Delivery>,
}

impl Batches {
    pub fn new(deliveries: lapin::Consumer) -> Self {
        Self {
            deliveries,
            batch: Vec::with_capacity(50),
        }
    }

    /// The next batch; `None` once `stop` is set (looked at every 100 ms) or the consumer
    /// ended.
    pub async fn next(&mut self, stop: &AtomicBool) -> Result<Option<&[Delivery]>> {
        while !stop.load(Ordering::Relaxed) {
            let first = tokio::select! {
                next = self.deliveries.next() => next,
                _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
            };
            let Some(first) = first else { break };
            self.batch.clear();
            self.batch.push(first?);
            while self.batch.len() < 50 {
                match self.deliveries.next().now_or_never() {
                    Some(Some(Ok(d))) => self.batch.push(d),
                    _ => break,
                }
            }
            return Ok(Some(&self.batch));
        }
        Ok(None)
    }

    /// Acks the last batch (all of it: `multiple`) and answers its size.
    pub async fn ack(&self, channel: &lapin::Channel) -> Result<usize> {
        if let Some(last) = self.batch.last() {
            channel
                .basic_ack(last.delivery_tag, BasicAckOptions { multiple: true })
                .await?;
        }
        Ok(self.batch.len())
    }
}
