//! RabbitMQ connection and topology.
//!
//! ```text
//! <ns>.bank.events (topic) --deposit.completed--> <ns>.<svc>.deposits (x-consistent-hash on header account_id)
//!     --> <ns>.<svc>.deposits.{0..P-1} (quorum, single active consumer, delivery limit, DLX)
//!     dead letters --> <ns>.<svc>.deposits.dlx (fanout) --> <ns>.<svc>.deposits.dlq (quorum)
//! ```
//!
//! Each service declares what it uses at start (declarations are idempotent). We do not use
//! lapin's automatic recovery: after a reconnect, delivery tags of the old channel are
//! meaningless, and in-flight publisher confirms are lost, so the supervising loops in
//! [`crate::consumer`] and the deposit relay rebuild connection, channels, topology and consumers
//! from scratch instead. That path is simple enough to test by cutting connections.

use crate::config::CommonConfig;
use anyhow::Context;
use lapin::options::{
    ExchangeBindOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The header that carries the partition key; the consistent-hash exchange hashes on it.
pub const PARTITION_HEADER: &str = "account_id";
/// Headers this system adds to a message it dead-letters itself.
pub const REASON_HEADER: &str = "x-eventbank-reason";
pub const QUEUE_HEADER: &str = "x-eventbank-queue";
pub const FAILED_AT_HEADER: &str = "x-eventbank-failed-at";

/// Every broker name, under an optional namespace prefix.
#[derive(Debug, Clone)]
pub struct Names {
    namespace: String,
}

impl Names {
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    fn prefixed(&self, name: &str) -> String {
        if self.namespace.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.namespace)
        }
    }

    /// The topic exchange every event is published to.
    pub fn events_exchange(&self) -> String {
        self.prefixed("bank.events")
    }
    /// A consumer service's consistent-hash exchange.
    pub fn hash_exchange(&self, service: &str) -> String {
        self.prefixed(&format!("{service}.deposits"))
    }
    pub fn partition_queue(&self, service: &str, partition: u16) -> String {
        self.prefixed(&format!("{service}.deposits.{partition}"))
    }
    pub fn dead_letter_exchange(&self, service: &str) -> String {
        self.prefixed(&format!("{service}.deposits.dlx"))
    }
    pub fn dead_letter_queue(&self, service: &str) -> String {
        self.prefixed(&format!("{service}.deposits.dlq"))
    }
}

/// How long a broker may take to accept a connection (TCP, AMQP handshake, open) before the
/// attempt counts as failed and the next broker of the list (or the caller's backoff) is tried.
/// Without it, a peer that accepts the socket and then says nothing, or closes it half-way
/// through the handshake, can leave the attempt pending for good.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker addresses in `AMQP_URL`: one amqp URL, or several separated by commas (the nodes
/// of a cluster). Entries are trimmed; empty ones are ignored. A comma inside a password must be
/// percent-encoded (`%2C`).
pub fn broker_urls(spec: &str) -> Vec<&str> {
    spec.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

/// `host:port` of an amqp URL, for logs: never the user or the password.
pub fn broker_address(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// The order in which `n` brokers are tried when the attempt starts at `start`: `start`, the
/// next one, ..., wrapping around.
fn attempt_order(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n)
}

/// Where the next connection attempt of this process starts in the broker list: a random
/// position first (so the replicas of a service, and the services, spread over the nodes), then
/// one further on every attempt (so a reconnect first tries another node than the last one).
fn next_start(n: usize) -> usize {
    static NEXT: OnceLock<AtomicUsize> = OnceLock::new();
    let next = NEXT.get_or_init(|| AtomicUsize::new(rand::random_range(0..1024)));
    next.fetch_add(1, Ordering::Relaxed) % n.max(1)
}

/// Opens a connection named after the service (visible in the management UI). With several
/// brokers in `AMQP_URL`, tries them in order from a rotating start and returns the first that
/// accepts; every reconnect path calls this again, so a service whose node died moves to another.
pub async fn connect(config: &CommonConfig) -> anyhow::Result<Connection> {
    connect_to(config.amqp_url.expose(), config.service).await
}

/// [`connect`] for a client without a service config (bankctl): `spec` is an `AMQP_URL` (one
/// URL or a comma-separated list), `name` the connection's name.
pub async fn connect_to(spec: &str, name: &str) -> anyhow::Result<Connection> {
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_owned()));
    let urls = broker_urls(spec);
    if urls.len() <= 1 {
        // The URL carries a password: the error says which service failed, never the URL.
        let url = urls.first().copied().unwrap_or_default();
        return connect_one(url, properties, CONNECT_TIMEOUT)
            .await
            .with_context(|| format!("connecting to RabbitMQ as {name}"));
    }
    let mut failures = Vec::with_capacity(urls.len());
    for index in attempt_order(urls.len(), next_start(urls.len())) {
        let url = urls[index];
        let address = broker_address(url);
        let error = match connect_one(url, properties.clone(), CONNECT_TIMEOUT).await {
            Ok(connection) => {
                tracing::info!(
                    broker = address,
                    position = index + 1,
                    of = urls.len(),
                    "connected to RabbitMQ"
                );
                return Ok(connection);
            }
            Err(e) => format!("{e:#}"),
        };
        tracing::warn!(
            broker = address,
            error,
            "RabbitMQ broker unreachable; trying the next"
        );
        failures.push(format!("{address}: {error}"));
    }
    anyhow::bail!(
        "connecting to RabbitMQ as {name}: none of the {} brokers of AMQP_URL accepted ({})",
        urls.len(),
        failures.join("; ")
    )
}

/// How long closing a connection or channel may take. Closing waits for the broker's
/// close-ok, which a connection reset under it may never deliver.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Closes `connection` cleanly if the broker answers within `CLOSE_TIMEOUT`; either way the
/// caller goes on (a reconnect, a shutdown). Errors are ignored: the connection is being left.
pub async fn close_connection(connection: &Connection, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, connection.close(200, reason.into())).await;
}

/// [`close_connection`] for a channel.
pub async fn close_channel(channel: &Channel, reason: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
}

/// One connection attempt, bounded by `timeout`: lapin's own connect can stay pending for good
/// when the socket is reset during the AMQP handshake, and a peer that accepts and says nothing
/// never fails it either.
async fn connect_one(
    url: &str,
    properties: ConnectionProperties,
    timeout: Duration,
) -> anyhow::Result<Connection> {
    match tokio::time::timeout(timeout, Connection::connect(url, properties)).await {
        Ok(attempt) => Ok(attempt?),
        Err(_) => anyhow::bail!("no answer within {timeout:?}"),
    }
}

fn durable() -> ExchangeDeclareOptions {
    // Durable: the topology survives a broker restart, so messages published while a consumer
    // is down still have somewhere to go.
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

/// Declares the events exchange (what the producer needs).
pub async fn declare_events_exchange(channel: &Channel, names: &Names) -> anyhow::Result<()> {
    channel
        .exchange_declare(
            ShortString::from(names.events_exchange()),
            ExchangeKind::Topic,
            durable(),
            FieldTable::default(),
        )
        .await
        .context("declaring the events exchange")?;
    Ok(())
}

/// Declares a consumer service's whole topology. Idempotent; changing `partitions` later adds
/// queues but does not remove old ones (drain them first).
pub async fn declare_consumer_topology(
    channel: &Channel,
    names: &Names,
    service: &str,
    partitions: u16,
    delivery_limit: u32,
) -> anyhow::Result<()> {
    declare_events_exchange(channel, names).await?;
    let hash_exchange = declare_hash_exchange(channel, names, service).await?;
    let dlx = declare_dead_letters(channel, names, service).await?;
    for partition in 0..partitions {
        let queue = names.partition_queue(service, partition);
        declare_partition_queue(channel, &queue, &hash_exchange, &dlx, delivery_limit).await?;
    }
    Ok(())
}

/// The service's consistent-hash exchange, bound to the events exchange; returns its name.
async fn declare_hash_exchange(
    channel: &Channel,
    names: &Names,
    service: &str,
) -> anyhow::Result<String> {
    let hash_exchange = names.hash_exchange(service);
    let mut hash_args = FieldTable::default();
    // Hash on the account id header rather than the routing key: all events of one account land
    // in one partition, which is what keeps per-account order.
    hash_args.insert(
        "hash-header".into(),
        AMQPValue::LongString(PARTITION_HEADER.into()),
    );
    channel
        .exchange_declare(
            ShortString::from(hash_exchange.clone()),
            ExchangeKind::Custom("x-consistent-hash".into()),
            durable(),
            hash_args,
        )
        .await
        .context("declaring the consistent-hash exchange (is rabbitmq_consistent_hash_exchange enabled?)")?;
    channel
        .exchange_bind(
            ShortString::from(hash_exchange.clone()),
            ShortString::from(names.events_exchange()),
            ShortString::from(eventbank_events::ROUTING_KEY),
            ExchangeBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the hash exchange to the events exchange")?;
    Ok(hash_exchange)
}

/// The service's dead-letter exchange and the queue bound to it; returns the exchange's name.
async fn declare_dead_letters(
    channel: &Channel,
    names: &Names,
    service: &str,
) -> anyhow::Result<String> {
    let dlx = names.dead_letter_exchange(service);
    channel
        .exchange_declare(
            ShortString::from(dlx.clone()),
            ExchangeKind::Fanout,
            durable(),
            FieldTable::default(),
        )
        .await
        .context("declaring the dead-letter exchange")?;
    let dlq = names.dead_letter_queue(service);
    channel
        .queue_declare(
            ShortString::from(dlq.clone()),
            queue_options(),
            quorum_args(),
        )
        .await
        .context("declaring the dead-letter queue")?;
    channel
        .queue_bind(
            ShortString::from(dlq),
            ShortString::from(dlx.clone()),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the dead-letter queue")?;
    Ok(dlx)
}

/// One partition queue, bound to the hash exchange with weight 1.
async fn declare_partition_queue(
    channel: &Channel,
    queue: &str,
    hash_exchange: &str,
    dlx: &str,
    delivery_limit: u32,
) -> anyhow::Result<()> {
    let mut args = quorum_args();
    // One active consumer per partition even with several replicas: per-account order.
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    // A message that keeps failing (or keeps crashing its consumer) is dead-lettered after
    // this many redeliveries instead of blocking its partition forever.
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.into()),
    );
    channel
        .queue_declare(ShortString::from(queue), queue_options(), args)
        .await
        .with_context(|| format!("declaring partition queue {queue}"))?;
    channel
        .queue_bind(
            ShortString::from(queue),
            ShortString::from(hash_exchange),
            // For a consistent-hash binding the routing key is the partition's weight.
            ShortString::from("1"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding a partition queue")?;
    Ok(())
}

fn queue_options() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

fn quorum_args() -> FieldTable {
    // Quorum queues: replicated and durable, and they count deliveries (x-delivery-count),
    // which is what makes the delivery limit possible.
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Reads a string header (as sent by lapin or by other clients).
pub fn header_str(properties: &lapin::BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Reads an integer header such as `x-delivery-count`.
pub fn header_int(properties: &lapin::BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::LongUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortUInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortInt(v) => Some(i64::from(*v)),
        AMQPValue::ShortShortUInt(v) => Some(i64::from(*v)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_namespace() {
        let plain = Names::new("");
        assert_eq!(plain.events_exchange(), "bank.events");
        assert_eq!(plain.partition_queue("email", 3), "email.deposits.3");
        let ns = Names::new("t1");
        assert_eq!(ns.events_exchange(), "t1.bank.events");
        assert_eq!(ns.dead_letter_queue("account"), "t1.account.deposits.dlq");
    }

    #[tokio::test]
    async fn a_connect_that_gets_no_answer_fails_in_bounded_time() {
        // A peer that accepts the socket and never speaks AMQP: lapin alone would wait forever.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        let url = format!("amqp://guest:guest@{addr}/eventbank");
        let attempt = connect_one(
            &url,
            ConnectionProperties::default(),
            Duration::from_millis(300),
        );
        let outcome = tokio::time::timeout(Duration::from_secs(5), attempt)
            .await
            .expect("connect_one still pending after 5 s: unbounded");
        let Err(error) = outcome else {
            panic!("a silent peer must not count as a broker");
        };
        assert!(
            error.to_string().contains("no answer within 300ms"),
            "{error:#}"
        );
        held.abort();
    }

    #[test]
    fn a_single_url_is_one_broker_unchanged() {
        let url = "amqp://eventbank_email:eventbank_email@127.0.0.1:5672/eventbank";
        assert_eq!(broker_urls(url), vec![url]);
        // Query parameters (heartbeat, ...) stay part of the URL.
        let with_query = "amqps://u:p@rabbit.example:5671/eventbank?heartbeat=10&frame_max=8192";
        assert_eq!(broker_urls(with_query), vec![with_query]);
    }

    #[test]
    fn a_comma_separated_list_is_several_brokers_in_order() {
        let spec = " amqp://g:g@127.0.0.1:5681/eventbank, amqp://g:g@127.0.0.1:5682/eventbank,,\
                    amqp://g:g@127.0.0.1:5683/eventbank ,";
        assert_eq!(
            broker_urls(spec),
            vec![
                "amqp://g:g@127.0.0.1:5681/eventbank",
                "amqp://g:g@127.0.0.1:5682/eventbank",
                "amqp://g:g@127.0.0.1:5683/eventbank",
            ]
        );
        assert!(broker_urls("").is_empty());
        assert!(broker_urls(" , ,").is_empty());
    }

    #[test]
    fn broker_addresses_never_show_credentials() {
        assert_eq!(
            broker_address("amqp://user:hunter2@10.0.0.7:5682/eventbank"),
            "10.0.0.7:5682"
        );
        // A password containing '@' (percent-encoded or not) stays out as well.
        assert_eq!(
            broker_address("amqp://user:p@ss@rabbit:5672/v?x=1"),
            "rabbit:5672"
        );
        assert_eq!(broker_address("amqp://rabbit"), "rabbit");
        for url in broker_urls("amqp://a:s3cret@h1:1/v,amqp://b:s3cret@h2:2/v") {
            assert!(!broker_address(url).contains("s3cret"));
        }
    }

    #[test]
    fn every_broker_is_tried_once_from_the_start_position() {
        assert_eq!(attempt_order(3, 0).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(attempt_order(3, 2).collect::<Vec<_>>(), vec![2, 0, 1]);
        assert_eq!(attempt_order(1, 0).collect::<Vec<_>>(), vec![0]);
    }

    #[test]
    fn the_start_position_rotates() {
        // connect is the only other caller, and no unit test connects: successive attempts
        // start one broker further on each time.
        let starts: Vec<usize> = (0..6).map(|_| next_start(3)).collect();
        for pair in starts.windows(2) {
            assert_eq!(pair[1], (pair[0] + 1) % 3, "{starts:?}");
        }
    }
}
