//! The pipeline's skeleton: the real pipeline's shape with none of its features, run on the
//! same machine in the same run, as the bound the real pipeline is compared with.
//!
//! - **producers**: N tasks, closed loop, each committing a deposit row and an outbox row
//!   (a real `DepositCompleted` body) in one transaction;
//! - **relay**: one task publishing the unpublished outbox rows in id order, up to
//!   [`crate::RELAY_BATCH`] a round with pipelined publisher confirms, to a topic exchange,
//!   then marking them published;
//! - **consumers**: four quorum queues bound to the exchange, one consumer each, writing a
//!   dedup row, one row per event and one balance upsert per account in `UNNEST` transactions
//!   of what is waiting (up to 50), acking with `multiple` after the commit.
//!
//! No HTTP, no validation, no idempotency keys, no partitions, no sequences, no emails, no
//! metrics or tracing. Its own database (consumers in schemas of their own) and its own
//! exchange and queues in the world's namespace, all removed afterwards.

use crate::ceiling::{self, apply_batch};
use crate::report::{round1, round3};
use anyhow::{Context as _, Result};
use eventbank_runtime::publisher::{Outgoing, Publisher, deposit_message};
use lapin::Connection;
use lapin::message::Delivery;
use serde::Serialize;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection as _, PgConnection, PgPool};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Consumers, one queue each, as the pipeline has consumer services.
const CONSUMERS: usize = 4;
/// Accounts the producers deposit into, as loadgen opens by default.
const ACCOUNTS: usize = 1000;

/// What the skeleton sustained and what each deposit cost.
#[derive(Debug, Clone, Serialize)]
pub struct Skeleton {
    pub producers: usize,
    pub secs: f64,
    pub deposits: u64,
    /// Deposits / (start → the last consumer's commit of the last deposit).
    pub deposits_per_s: f64,
    /// Seconds from the producers' stop until every consumer had every deposit.
    pub drain_s: f64,
    /// CPU ms per deposit: postgres, rabbitmq, loadgen (producers, relay and consumers all run
    /// inside it), and their total.
    pub cpu_ms_per_deposit: BTreeMap<String, f64>,
}

/// Where the skeleton runs.
pub struct Place<'a> {
    pub admin_url: &'a str,
    /// A URL of the database `db_name` (which must not exist yet).
    pub db_url: &'a str,
    pub db_name: &'a str,
    pub amqp_url: &'a str,
    /// The world's broker namespace: the skeleton's names are `<ns>.skeleton.*`.
    pub ns: &'a str,
}

/// Runs the skeleton closed loop with `producers` for `secs` seconds, then until every
/// consumer has every deposit.
pub async fn run(
    place: &Place<'_>,
    producers: usize,
    secs: f64,
    prefetch: u16,
) -> Result<Skeleton> {
    let exchange = format!("{}.skeleton.x", place.ns);
    let queues: Vec<String> = (0..CONSUMERS)
        .map(|i| format!("{}.skeleton.q{i}", place.ns))
        .collect();
    ceiling::with_database(place.admin_url, place.db_name, async || {
        let pool = PgPoolOptions::new()
            .max_connections(producers as u32 + 1)
            .connect(place.db_url)
            .await
            .with_context(|| format!("connecting to {}", place.db_name))?;
        let outcome = async {
            setup(&pool, place.db_url).await?;
            ceiling::with_fanout(
                place.amqp_url,
                &exchange,
                &queues,
                ROUTING_KEY,
                async |connection| {
                    let rig = Rig {
                        pool: &pool,
                        db_url: place.db_url,
                        connection,
                        exchange: &exchange,
                        queues: &queues,
                        prefetch,
                    };
                    rig.measure(producers, secs).await
                },
            )
            .await
        }
        .await;
        pool.close().await;
        outcome
    })
    .await
}

/// The routing key of a `DepositCompleted`, as the relay publishes it.
const ROUTING_KEY: &str = "deposit.completed";

/// The producer's tables, and each consumer's (the ceiling's) in a schema of its own.
async fn setup(pool: &PgPool, db_url: &str) -> Result<()> {
    for sql in [
        "CREATE TABLE deposits (deposit_id uuid PRIMARY KEY, account_id text NOT NULL, \
         amount_minor bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
        "CREATE TABLE outbox (id bigserial PRIMARY KEY, event_id uuid NOT NULL, \
         account_id text NOT NULL, payload bytea NOT NULL, published_at timestamptz)",
        "CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL",
    ] {
        sqlx::query(sql).execute(pool).await?;
    }
    for i in 0..CONSUMERS {
        let mut conn = consumer_connection(db_url, i).await?;
        ceiling::setup_schema(&mut conn).await?;
        conn.close().await?;
    }
    Ok(())
}

/// A connection of its own (not the producers' pool's) whose tables are consumer `i`'s.
async fn consumer_connection(db_url: &str, i: usize) -> Result<PgConnection> {
    let mut conn = PgConnection::connect(db_url).await?;
    for sql in [
        format!("CREATE SCHEMA IF NOT EXISTS c{i}"),
        format!("SET search_path TO c{i}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await?;
    }
    Ok(conn)
}

/// Everything one skeleton run works with.
struct Rig<'a> {
    pool: &'a PgPool,
    db_url: &'a str,
    connection: &'a Connection,
    exchange: &'a str,
    queues: &'a [String],
    prefetch: u16,
}

/// Counters shared by the skeleton's tasks.
#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    published: AtomicU64,
    consumed: [AtomicU64; CONSUMERS],
    /// The producers stopped and every transaction of theirs committed.
    producers_done: AtomicBool,
    /// Every consumer may stop.
    stop: AtomicBool,
}

impl Counters {
    fn min_consumed(&self) -> u64 {
        self.consumed
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }
}

impl Rig<'_> {
    async fn measure(&self, producers: usize, secs: f64) -> Result<Skeleton> {
        let counters = Arc::new(Counters::default());
        let mut consumers = tokio::task::JoinSet::new();
        for (i, queue) in self.queues.iter().enumerate() {
            let mut conn = consumer_connection(self.db_url, i).await?;
            let channel = self.connection.create_channel().await?;
            let deliveries =
                ceiling::consume(&channel, queue, self.prefetch, &format!("skeleton-{i}")).await?;
            let counters = Arc::clone(&counters);
            consumers.spawn(async move {
                let mut batches = ceiling::Batches::new(deliveries);
                while let Some(batch) = batches.next(&counters.stop).await? {
                    consume_batch(&mut conn, batch).await?;
                    let n = batches.ack(&channel).await?;
                    counters.consumed[i].fetch_add(n as u64, Ordering::Relaxed);
                }
                anyhow::Ok(())
            });
        }
        let cpu_before = crate::cpu_seconds(&[]);
        let start = Instant::now();
        let relay = tokio::spawn(relay(
            self.pool.clone(),
            Publisher::new(self.connection).await?,
            self.exchange.to_owned(),
            Arc::clone(&counters),
        ));
        let produced = produce(
            self.pool,
            producers,
            start + Duration::from_secs_f64(secs),
            &counters,
        )
        .await;
        counters.producers_done.store(true, Ordering::Relaxed);
        let stopped = Instant::now();
        let outcome = async {
            produced?;
            let deposits = counters.committed.load(Ordering::Relaxed);
            let drained = ceiling::wait_until(Duration::from_secs(120), || {
                // A relay that ended early failed: nothing more will come.
                counters.min_consumed() >= deposits
                    || (relay.is_finished()
                        && counters.published.load(Ordering::Relaxed) < deposits)
            })
            .await;
            let elapsed = start.elapsed().as_secs_f64();
            let drain_s = stopped.elapsed().as_secs_f64();
            drained.context("the skeleton's consumers did not drain within 120 s")?;
            anyhow::Ok((deposits, elapsed, drain_s))
        }
        .await;
        // Before the consumers stop: Postgres's CPU is read from the backends alive, and a
        // consumer's connection closes with it.
        let cpu_after = crate::cpu_seconds(&[]);
        counters.stop.store(true, Ordering::Relaxed);
        let relayed = relay.await.context("the skeleton's relay panicked")?;
        while let Some(joined) = consumers.join_next().await {
            joined.context("a skeleton consumer panicked")??;
        }
        relayed?;
        let (deposits, elapsed, drain_s) = outcome?;
        anyhow::ensure!(
            counters.min_consumed() >= deposits,
            "the skeleton's consumers have {} of {deposits} deposits",
            counters.min_consumed()
        );
        let used = crate::cpu_used(&cpu_before, &cpu_after);
        Ok(Skeleton {
            producers,
            secs,
            deposits,
            deposits_per_s: round1(deposits as f64 / elapsed.max(1e-9)),
            drain_s: round3(drain_s),
            cpu_ms_per_deposit: per_deposit(&used, deposits),
        })
    }
}

/// The producers, closed loop until `deadline`: each commits one deposit and its outbox row
/// per transaction.
async fn produce(
    pool: &PgPool,
    producers: usize,
    deadline: Instant,
    counters: &Arc<Counters>,
) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..producers {
        let pool = pool.clone();
        let counters = Arc::clone(counters);
        tasks.spawn(async move {
            let mut conn = pool.acquire().await?;
            while Instant::now() < deadline {
                let account = format!("ACC-{:04}", rand::random_range(0..ACCOUNTS));
                let amount_minor: i64 = rand::random_range(100..10_000);
                let (deposit_id, event_id, body) = event(&account, amount_minor)?;
                let mut tx = conn.begin().await?;
                sqlx::query(
                    "INSERT INTO deposits (deposit_id, account_id, amount_minor) VALUES ($1, $2, $3)",
                )
                .bind(deposit_id)
                .bind(&account)
                .bind(amount_minor)
                .execute(&mut *tx)
                .await?;
                sqlx::query("INSERT INTO outbox (event_id, account_id, payload) VALUES ($1, $2, $3)")
                    .bind(event_id)
                    .bind(&account)
                    .bind(&body)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                counters.committed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a skeleton producer panicked")??;
    }
    Ok(())
}

/// A `DepositCompleted` for `account`: its deposit id, event id and JSON body.
fn event(account: &str, amount_minor: i64) -> Result<(Uuid, Uuid, Vec<u8>)> {
    let event = crate::deposit_completed(account, amount_minor)?;
    Ok((event.deposit_id, event.event_id, event.to_json()?))
}

/// Publishes the unpublished outbox rows in id order until the producers are done and the
/// outbox is empty.
async fn relay(
    pool: PgPool,
    publisher: Publisher,
    exchange: String,
    counters: Arc<Counters>,
) -> Result<()> {
    let mut conn = pool.acquire().await?;
    loop {
        // Read before the query: rows committed after it are found by the next round.
        let done = counters.producers_done.load(Ordering::Relaxed);
        let rows: Vec<(i64, Uuid, String, Vec<u8>)> = sqlx::query_as(
            "SELECT id, event_id, account_id, payload FROM outbox WHERE published_at IS NULL \
             ORDER BY id LIMIT $1",
        )
        .bind(crate::RELAY_BATCH as i64)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            if done {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let ids: Vec<i64> = rows.iter().map(|(id, ..)| *id).collect();
        let batch: Vec<Outgoing> = rows
            .into_iter()
            .map(|(_, event_id, account, payload)| {
                deposit_message(&exchange, event_id, &account, None, payload)
            })
            .collect();
        let (confirmed, failure) = publisher.publish_all(&batch).await;
        if let Some(e) = failure {
            return Err(anyhow::anyhow!(e).context("the skeleton's relay publishing"));
        }
        sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *conn)
            .await?;
        counters
            .published
            .fetch_add(confirmed as u64, Ordering::Relaxed);
    }
}

/// The fields a consumer reads from a `DepositCompleted`.
#[derive(serde::Deserialize)]
struct Envelope {
    id: Uuid,
    data: Data,
}

#[derive(serde::Deserialize)]
struct Data {
    account_id: String,
    amount_minor: i64,
}

/// One consumer transaction over `batch`, accounts in order.
async fn consume_batch(conn: &mut PgConnection, batch: &[Delivery]) -> Result<()> {
    let mut events: Vec<(String, Uuid, i64)> = batch
        .iter()
        .map(|d| {
            let e: Envelope = serde_json::from_slice(&d.data)?;
            Ok((e.data.account_id, e.id, e.data.amount_minor))
        })
        .collect::<Result<_>>()?;
    events.sort();
    let (mut accounts, mut ids, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
    for (account, id, amount) in events {
        accounts.push(account);
        ids.push(id);
        amounts.push(amount);
    }
    apply_batch(conn, &ids, &accounts, &amounts).await?;
    Ok(())
}

/// CPU ms per deposit of each entry of `used` (CPU seconds), and their `total`.
fn per_deposit(used: &BTreeMap<String, f64>, deposits: u64) -> BTreeMap<String, f64> {
    let deposits = deposits.max(1) as f64;
    let mut out: BTreeMap<String, f64> = used
        .iter()
        .map(|(k, v)| (k.clone(), round3(v * 1000.0 / deposits)))
        .collect();
    out.insert(
        "total".into(),
        round3(used.values().sum::<f64>() * 1000.0 / deposits),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_per_deposit_is_each_process_and_the_total() {
        let before = BTreeMap::from([("postgres".to_owned(), 10.0), ("loadgen".to_owned(), 1.0)]);
        let after = BTreeMap::from([("postgres".to_owned(), 11.0), ("loadgen".to_owned(), 1.5)]);
        let per = per_deposit(&crate::cpu_used(&before, &after), 1000);
        assert_eq!(per["postgres"], 1.0);
        assert_eq!(per["loadgen"], 0.5);
        assert_eq!(per["total"], 1.5);
    }

    #[test]
    fn a_consumer_reads_id_account_and_amount_from_the_real_event() {
        let (_, event_id, body) = event("ACC-0042", 4_217).unwrap();
        let e: Envelope = serde_json::from_slice(&body).unwrap();
        assert_eq!(e.id, event_id);
        assert_eq!(e.data.account_id, "ACC-0042");
        assert_eq!(e.data.amount_minor, 4_217);
    }
}
