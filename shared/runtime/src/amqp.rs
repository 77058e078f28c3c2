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

/// Opens a connection named after the service (visible in the management UI).
pub async fn connect(config: &CommonConfig) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default()
        .with_connection_name(LongString::from(config.service.to_owned()));
    // The URL carries a password: the error says which service failed, never the URL.
    Connection::connect(config.amqp_url.expose(), properties)
        .await
        .with_context(|| format!("connecting to RabbitMQ as {}", config.service))
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

    for partition in 0..partitions {
        let queue = names.partition_queue(service, partition);
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
            AMQPValue::LongString(dlx.as_str().into()),
        );
        channel
            .queue_declare(ShortString::from(queue.clone()), queue_options(), args)
            .await
            .with_context(|| format!("declaring partition queue {queue}"))?;
        channel
            .queue_bind(
                ShortString::from(queue),
                ShortString::from(hash_exchange.clone()),
                // For a consistent-hash binding the routing key is the partition's weight.
                ShortString::from("1"),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding a partition queue")?;
    }
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
}
