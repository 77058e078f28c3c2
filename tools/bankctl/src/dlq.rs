//! Dead-letter queues: list what is in `<svc>.deposits.dlq` and send messages back.
//!
//! Listing takes messages with `basic.get` WITHOUT acking them and closes the channel at the
//! end, which hands every message back to the queue: a listing never removes anything.
//! Redriving publishes a message (with publisher confirms) to the partition queue it came from,
//! and only then acks it in the DLQ. A redriven message that had in fact been applied is
//! skipped by the consumer's dedup table, so redriving is always safe.

use anyhow::{Context, Result, bail};
use eventbank_runtime::amqp::{self, Names};
use eventbank_runtime::publisher::{Outgoing, Publisher};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};
use serde::Serialize;

pub const CONSUMERS: [&str; 4] = ["account", "email", "interest", "compliance"];

/// One dead-lettered message as an operator sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// The AMQP message id: the event id for well-formed events.
    pub message_id: Option<String>,
    pub account_id: Option<String>,
    /// Why it was dead-lettered: the consumer's reason, or the broker's (e.g. `delivery_limit`).
    pub reason: String,
    /// The partition queue it came from, where a redrive sends it.
    pub original_queue: Option<String>,
    /// How many times it was dead-lettered (from `x-death`), at least 1.
    pub times_dead_lettered: i64,
    pub failed_at: Option<String>,
    pub age_seconds: Option<i64>,
    pub body_bytes: usize,
}

pub fn check_service(service: &str) -> Result<()> {
    if !CONSUMERS.contains(&service) {
        bail!(
            "unknown service {service:?}: one of {}",
            CONSUMERS.join(", ")
        );
    }
    Ok(())
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn int(value: &AMQPValue) -> Option<i64> {
    match value {
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongInt(v) => Some(i64::from(*v)),
        AMQPValue::Timestamp(v) => i64::try_from(*v).ok(),
        _ => None,
    }
}

/// The first `x-death` entry RabbitMQ added, if any.
fn first_death(headers: &FieldTable) -> Option<&FieldTable> {
    match headers.inner().get("x-death")? {
        AMQPValue::FieldArray(array) => array.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn describe(properties: &BasicProperties, body_bytes: usize) -> DeadLetter {
    let empty = FieldTable::default();
    let headers = properties.headers().as_ref().unwrap_or(&empty);
    let get = |k: &str| headers.inner().get(k).and_then(text);
    let death = first_death(headers);
    let reason = get(amqp::REASON_HEADER)
        .or_else(|| {
            get("x-first-death-reason").map(|r| format!("dead-lettered by the broker: {r}"))
        })
        .unwrap_or_else(|| "unknown".into());
    let original_queue = get(amqp::QUEUE_HEADER)
        .or_else(|| get("x-first-death-queue"))
        .or_else(|| death.and_then(|d| d.inner().get("queue")).and_then(text));
    let times = death
        .and_then(|d| d.inner().get("count"))
        .and_then(int)
        .unwrap_or(1)
        .max(1);
    let failed_at = get(amqp::FAILED_AT_HEADER);
    let failed_epoch = failed_at
        .as_deref()
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp())
        .or_else(|| death.and_then(|d| d.inner().get("time")).and_then(int));
    DeadLetter {
        message_id: properties.message_id().as_ref().map(|m| m.to_string()),
        account_id: get(amqp::PARTITION_HEADER),
        reason,
        original_queue,
        times_dead_lettered: times,
        failed_at,
        age_seconds: failed_epoch.map(|t| chrono::Utc::now().timestamp() - t),
        body_bytes,
    }
}

async fn ready_count(channel: &Channel, queue: &str) -> Result<u32> {
    let declared = channel
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {queue} does not exist (has the service ever started?)"))?;
    Ok(declared.message_count())
}

/// The next message of `queue`, if any, unacked (`no_ack = false`): it stays ours until it is
/// acked or the channel closes, which returns it to the queue.
async fn take(channel: &Channel, queue: &str) -> Result<Option<lapin::message::Delivery>> {
    let got = channel
        .basic_get(ShortString::from(queue), BasicGetOptions { no_ack: false })
        .await?;
    Ok(got.map(|got| got.delivery))
}

/// Lists up to `limit` messages of a service's DLQ, oldest first, without removing any.
pub async fn list(
    connection: &Connection,
    names: &Names,
    service: &str,
    limit: usize,
) -> Result<Vec<DeadLetter>> {
    check_service(service)?;
    let queue = names.dead_letter_queue(service);
    let channel = connection.create_channel().await?;
    let count = ready_count(&channel, &queue).await? as usize;
    let mut out = Vec::new();
    for _ in 0..count.min(limit) {
        let Some(delivery) = take(&channel, &queue).await? else {
            break;
        };
        out.push(describe(&delivery.properties, delivery.data.len()));
    }
    // Closing returns every unacked message to the queue.
    channel.close(200, "listed".into()).await?;
    Ok(out)
}

/// Which messages to redrive.
#[derive(Debug, Clone)]
pub enum Selection {
    All,
    MessageId(String),
}

/// Sends the selected DLQ messages back to their partition queues. Returns how many.
pub async fn redrive(
    connection: &Connection,
    names: &Names,
    service: &str,
    selection: &Selection,
) -> Result<usize> {
    check_service(service)?;
    let queue = names.dead_letter_queue(service);
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let count = ready_count(&channel, &queue).await?;
    let mut redriven = 0;
    for _ in 0..count {
        let Some(delivery) = take(&channel, &queue).await? else {
            break;
        };
        let letter = describe(&delivery.properties, delivery.data.len());
        let selected = match selection {
            Selection::All => true,
            Selection::MessageId(id) => letter.message_id.as_deref() == Some(id.as_str()),
        };
        if !selected {
            continue; // left unacked: back in the DLQ when the channel closes
        }
        let target = letter
            .original_queue
            .clone()
            .unwrap_or_else(|| names.partition_queue(service, 0));
        let mut headers = delivery.properties.headers().clone().unwrap_or_default();
        headers.insert(
            "x-eventbank-redriven-at".into(),
            AMQPValue::LongString(LongString::from(chrono::Utc::now().to_rfc3339().as_str())),
        );
        // Default exchange, routing key = queue name: straight back to its own partition.
        Publisher::on(channel.clone())
            .publish_one(&Outgoing {
                exchange: String::new(),
                routing_key: target.clone(),
                body: delivery.data.clone(),
                properties: delivery.properties.clone().with_headers(headers),
            })
            .await
            .with_context(|| format!("redrive to {target}"))?;
        delivery.acker.ack(BasicAckOptions::default()).await?;
        redriven += 1;
    }
    channel.close(200, "redriven".into()).await?;
    Ok(redriven)
}
