//! Talking to the broker directly: publishing raw messages (bypassing the deposit service),
//! counting and fetching queue contents, and deleting a world's broker objects.

use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

use crate::util::redact;
use crate::world::TestWorld;

/// Routing key of `DepositCompleted`.
pub const DEPOSIT_COMPLETED: &str = "deposit.completed";
/// Content type of CloudEvents in structured JSON mode.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a connection, with a hint about the vhost when it fails. `url` may be a comma-separated
/// list (a cluster's nodes): the first that accepts, in order.
pub(crate) async fn connect(url: &str) -> Result<Connection> {
    let urls: Vec<&str> = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    if urls.len() <= 1 {
        return connect_one(url).await;
    }
    let mut errors = Vec::new();
    for one in urls {
        match connect_one(one).await {
            Ok(conn) => return Ok(conn),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!("no broker of the list accepted: {}", errors.join("; "))
}

async fn connect_one(url: &str) -> Result<Connection> {
    let connecting = Connection::connect(url, ConnectionProperties::default());
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(anyhow!(e)).with_context(|| {
            format!(
                "connecting to RabbitMQ at {} (set TEST_AMQP_URL; the vhost must exist: \
                 `rabbitmqctl add_vhost eventbank; rabbitmqctl set_permissions -p eventbank \
                 guest '.*' '.*' '.*'`)",
                redact(url)
            )
        }),
        Err(_) => bail!(
            "connecting to RabbitMQ at {} timed out after {CONNECT_TIMEOUT:?}",
            redact(url)
        ),
    }
}

/// A header table of string (AMQP long string) values, e.g.
/// `headers(&[("account_id", "ACC-1")])`.
pub fn headers(pairs: &[(&str, &str)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (k, v) in pairs {
        table.insert(
            ShortString::from(*k),
            AMQPValue::LongString(LongString::from(*v)),
        );
    }
    table
}

/// A header as text: strings as they are, numbers and booleans formatted, anything else in
/// its debug form. `None` if absent.
pub fn header_str(table: Option<&FieldTable>, key: &str) -> Option<String> {
    let value = table?.inner().get(key)?;
    Some(match value {
        AMQPValue::LongString(s) => s.to_string(),
        AMQPValue::ShortString(s) => s.as_str().to_string(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(n) => n.to_string(),
        AMQPValue::ShortShortUInt(n) => n.to_string(),
        AMQPValue::ShortInt(n) => n.to_string(),
        AMQPValue::ShortUInt(n) => n.to_string(),
        AMQPValue::LongInt(n) => n.to_string(),
        AMQPValue::LongUInt(n) => n.to_string(),
        AMQPValue::LongLongInt(n) => n.to_string(),
        AMQPValue::Timestamp(n) => n.to_string(),
        other => format!("{other:?}"),
    })
}

/// Publishes one message with publisher confirms and waits for the confirm. With `mandatory`,
/// a message the broker could not route to any queue is an error. A missing exchange is an
/// error too.
pub async fn publish_with(
    world: &TestWorld,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<()> {
    let channel = world.amqp_channel().await?;
    let result = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("confirm.select")?;
        let confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body,
                properties,
            )
            .await
            .context("basic.publish")?
            .await
            .context("waiting for the publisher confirm")?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => bail!(
                "the broker returned the message as unroutable ({} {}): no queue is bound \
                 for it yet",
                returned.reply_code,
                returned.reply_text
            ),
            Confirmation::Nack(_) => bail!("the broker nacked the message"),
            Confirmation::NotRequested => bail!("publisher confirms were not enabled"),
        }
    }
    .await
    .with_context(|| format!("publishing to exchange `{exchange}` with key `{routing_key}`"));
    close(channel).await;
    result
}

/// Publishes `body` (persistent, mandatory, confirmed) to `exchange` (a full name such as
/// `world.bank_events_exchange()`) with string headers.
pub async fn publish_raw(
    world: &TestWorld,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    header_pairs: &[(&str, &str)],
) -> Result<()> {
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers(header_pairs));
    publish_with(world, exchange, routing_key, body, properties, true).await
}

/// Publishes an event the way the deposit service's relay does, but bypassing it: to
/// `<ns>.bank.events` with key `deposit.completed`, header `account_id` = `account_id` plus
/// `extra_headers` (string values), persistent, content type `application/cloudevents+json`,
/// `message_id` = the body's `"id"` when the body is JSON with a string `id`. Mandatory and
/// confirmed: it fails if no consumer queue is bound yet (start the consumers first).
pub async fn publish_event(
    world: &TestWorld,
    account_id: &str,
    body: &[u8],
    extra_headers: &[(&str, &str)],
) -> Result<()> {
    let mut pairs = vec![("account_id", account_id)];
    pairs.extend_from_slice(extra_headers);
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(CLOUDEVENTS_JSON.into())
        .with_headers(headers(&pairs));
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(id) = json.get("id").and_then(|v| v.as_str())
    {
        properties = properties.with_message_id(id.into());
    }
    publish_with(
        world,
        &world.bank_events_exchange(),
        DEPOSIT_COMPLETED,
        body,
        properties,
        true,
    )
    .await
}

/// Publishes straight into a queue (default exchange, routing key = queue name), persistent,
/// mandatory and confirmed, with string headers.
pub async fn publish_to_queue(
    world: &TestWorld,
    queue: &str,
    body: &[u8],
    header_pairs: &[(&str, &str)],
) -> Result<()> {
    publish_raw(world, "", queue, body, header_pairs).await
}

/// The number of ready messages in a queue (passive declare on a fresh channel; unacked
/// messages are not counted). Errors if the queue does not exist.
pub async fn queue_message_count(world: &TestWorld, queue: &str) -> Result<u32> {
    let channel = world.amqp_channel().await?;
    let result = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("passive declare of queue `{queue}`"));
    close(channel).await;
    Ok(result?.message_count())
}

/// Whether a queue exists (passive declare on a fresh channel).
pub async fn queue_exists(world: &TestWorld, queue: &str) -> Result<bool> {
    let channel = world.amqp_channel().await?;
    let result = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    close(channel).await;
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(anyhow!(e)).with_context(|| format!("passive declare of queue `{queue}`")),
    }
}

/// A message taken from a queue with [`get_message`].
#[derive(Debug, Clone)]
pub struct FetchedMessage {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
}

impl FetchedMessage {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("message body is not JSON")
    }

    /// A header as text (see [`header_str`]).
    pub fn header(&self, key: &str) -> Option<String> {
        header_str(self.properties.headers().as_ref(), key)
    }
}

/// Takes one message from a queue and acks it (so it is gone); `None` if the queue is empty.
pub async fn get_message(world: &TestWorld, queue: &str) -> Result<Option<FetchedMessage>> {
    let channel = world.amqp_channel().await?;
    let result = async {
        let Some(got) = channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .with_context(|| format!("basic.get from `{queue}`"))?
        else {
            return Ok(None);
        };
        let delivery = got.delivery;
        delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .context("ack")?;
        Ok(Some(FetchedMessage {
            body: delivery.data.clone(),
            properties: delivery.properties.clone(),
            exchange: delivery.exchange.as_str().to_string(),
            routing_key: delivery.routing_key.as_str().to_string(),
            redelivered: delivery.redelivered,
        }))
    }
    .await;
    close(channel).await;
    result
}

async fn close(channel: Channel) {
    if channel.status().connected() {
        let _ = channel.close(200, "done".into()).await;
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    let text = e.to_string();
    text.contains("NOT_FOUND") || text.contains("404")
}

/// Deletes queues and exchanges (each group on its own channel, groups concurrently).
/// Absent objects are fine; a channel closed by an error is replaced.
pub(crate) async fn delete_objects(
    url: &str,
    groups: Vec<(Vec<String>, Vec<String>)>,
) -> Result<()> {
    let conn = connect(url).await?;
    let deletions = groups
        .iter()
        .map(|(queues, exchanges)| delete_group(&conn, queues, exchanges));
    let results = futures_util::future::join_all(deletions).await;
    let _ = conn.close(200, "cleanup done".into()).await;
    let errors: Vec<String> = results
        .into_iter()
        .flat_map(|r| r.err())
        .map(|e| format!("{e:#}"))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("deleting broker objects: {}", errors.join("; "))
    }
}

async fn delete_group(conn: &Connection, queues: &[String], exchanges: &[String]) -> Result<()> {
    let mut errors = Vec::new();
    let mut channel = conn.create_channel().await?;
    for queue in queues {
        if !channel.status().connected() {
            channel = conn.create_channel().await?;
        }
        if let Err(e) = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            && !is_not_found(&e)
        {
            errors.push(format!("queue `{queue}`: {e}"));
        }
    }
    for exchange in exchanges {
        if !channel.status().connected() {
            channel = conn.create_channel().await?;
        }
        if let Err(e) = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            && !is_not_found(&e)
        {
            errors.push(format!("exchange `{exchange}`: {e}"));
        }
    }
    close(channel).await;
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}
