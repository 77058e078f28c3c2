//! `bankctl tail`: a private, exclusive, auto-deleted queue bound to the events exchange, so an
//! operator sees every event as it is published without taking anything from the consumers.

use anyhow::Result;
use eventbank_runtime::amqp::Names;
use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};

pub async fn run(connection: &Connection, names: &Names, count: Option<usize>) -> Result<()> {
    let channel = connection.create_channel().await?;
    // Server-named, exclusive, auto-delete: it disappears with this connection.
    let queue = channel
        .queue_declare(
            ShortString::from(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            ShortString::from(names.events_exchange()),
            ShortString::from(eventbank_events::ROUTING_KEY),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            ShortString::from("bankctl-tail"),
            // no_ack: a private copy, nothing to hand back.
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    eprintln!(
        "bankctl: tailing {} (Ctrl-C to stop)",
        names.events_exchange()
    );
    let mut seen = 0;
    while count.is_none_or(|n| seen < n) {
        let next = tokio::select! {
            next = deliveries.next() => next,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(delivery) = next else { break };
        let delivery = delivery?;
        match eventbank_events::decode(&delivery.data) {
            Ok(e) => println!(
                "{}",
                serde_json::json!({
                    "event_id": e.event_id, "account_id": e.account_id, "sequence": e.sequence,
                    "amount_minor": e.amount_minor, "currency": e.currency, "deposit_id": e.deposit_id,
                    "schema_version": e.schema_version, "channel": e.channel, "reference": e.reference,
                    "time": e.time,
                })
            ),
            Err(error) => println!(
                "{}",
                serde_json::json!({ "undecodable": error.to_string() })
            ),
        }
        seen += 1;
    }
    Ok(())
}
