//! Publishing with publisher confirms.
//!
//! A message counts as published only when the broker has confirmed it. Every publish is
//! `mandatory`, and a message the broker returns as unroutable is a failure, not a success: it
//! means no queue is bound yet, and the outbox keeps it until one is.

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker connection error: {0}")]
    Broker(#[from] lapin::Error),
    #[error("broker nacked the message")]
    Nacked,
    #[error("message was unroutable (returned by the broker: {0}); no queue is bound yet")]
    Returned(String),
    #[error("the broker did not confirm the batch within {0:?}")]
    Timeout(std::time::Duration),
}

/// The longest a batch may wait for its confirms. lapin can leave a confirm pending for good
/// when the connection is reset under it, and a relay waiting on it would never publish again;
/// past this the batch counts as failed, the connection is dropped, and what was not marked is
/// published again on a new one (consumers deduplicate).
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A message ready to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// A confirm-mode channel.
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn new(connection: &Connection) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self { channel })
    }

    /// Publishes on `channel`, which must already be in confirm mode (a consumer's channel,
    /// which also acks, or a tool's).
    pub fn on(channel: Channel) -> Self {
        Self { channel }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes all messages pipelined (all sent before any confirm is awaited, so a batch
    /// costs one confirm round trip, not one per message), then awaits the confirms in order.
    ///
    /// Returns how many messages, from the start, were confirmed, and the first failure if any.
    /// Messages after a failure may or may not have reached the broker; the caller republishes
    /// them, and consumers' dedup makes that harmless.
    pub async fn publish_all(&self, messages: &[Outgoing]) -> (usize, Option<PublishError>) {
        match tokio::time::timeout(CONFIRM_TIMEOUT, self.publish_and_confirm(messages)).await {
            Ok(outcome) => outcome,
            // Which of them the broker has is unknown: none counts as confirmed.
            Err(_) => (0, Some(PublishError::Timeout(CONFIRM_TIMEOUT))),
        }
    }

    async fn publish_and_confirm(&self, messages: &[Outgoing]) -> (usize, Option<PublishError>) {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let sent = self
                .channel
                .basic_publish(
                    ShortString::from(message.exchange.as_str()),
                    ShortString::from(message.routing_key.as_str()),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &message.body,
                    message.properties.clone(),
                )
                .await;
            match sent {
                Ok(confirm) => pending.push(confirm),
                Err(e) => {
                    // Nothing after this was sent; wait for what was, to report a true prefix.
                    let (confirmed, first) = await_confirms(pending).await;
                    return (confirmed, Some(first.unwrap_or(PublishError::Broker(e))));
                }
            }
        }
        await_confirms(pending).await
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish_one(&self, message: &Outgoing) -> Result<(), PublishError> {
        match self.publish_all(std::slice::from_ref(message)).await {
            (_, Some(e)) => Err(e),
            _ => Ok(()),
        }
    }
}

async fn await_confirms(pending: Vec<lapin::PublisherConfirm>) -> (usize, Option<PublishError>) {
    let mut confirmed = 0;
    for confirm in pending {
        let outcome = match confirm.await {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                Err(PublishError::Returned(returned.reply_text.to_string()))
            }
            Ok(Confirmation::Nack(_)) => Err(PublishError::Nacked),
            Err(e) => Err(PublishError::Broker(e)),
        };
        match outcome {
            Ok(()) => confirmed += 1,
            Err(e) => return (confirmed, Some(e)),
        }
    }
    (confirmed, None)
}

/// The AMQP message for a `DepositCompleted` body: persistent, `message_id` = event id, the
/// partition key, schema version and trace context in headers, CloudEvents content type.
pub fn deposit_message(
    exchange: &str,
    event_id: uuid::Uuid,
    account_id: &str,
    traceparent: Option<&str>,
    body: Vec<u8>,
) -> Outgoing {
    let mut headers = FieldTable::default();
    headers.insert(
        crate::amqp::PARTITION_HEADER.into(),
        AMQPValue::LongString(LongString::from(account_id)),
    );
    headers.insert(
        "dataschemaversion".into(),
        AMQPValue::LongLongInt(i64::from(eventbank_events::deposit::CURRENT_VERSION)),
    );
    if let Some(traceparent) = traceparent {
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(traceparent.into()),
        );
    }
    let properties = BasicProperties::default()
        .with_content_type(eventbank_events::CONTENT_TYPE.into())
        // 2 = persistent: written to disk, survives a broker restart.
        .with_delivery_mode(2)
        .with_message_id(event_id.to_string().into())
        .with_type(eventbank_events::EVENT_TYPE.into())
        .with_app_id("deposit".into())
        .with_headers(headers);
    Outgoing {
        exchange: exchange.to_owned(),
        routing_key: eventbank_events::ROUTING_KEY.to_owned(),
        body,
        properties,
    }
}
