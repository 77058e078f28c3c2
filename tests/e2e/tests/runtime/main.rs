//! The shared runtime and the relay against the real broker and real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod dlq;

use eventbank_e2e::{ServiceHandle, Svc, TestWorld, eventually, get_text, post_json};
use eventbank_runtime::publisher::{PublishError, Publisher};
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn an_unroutable_message_is_a_publish_failure_not_a_success() {
    let world = TestWorld::new().await.unwrap();
    let connection = Connection::connect(world.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let publisher = Publisher::new(&connection).await.unwrap();
    // The events exchange exists but nothing is bound to it: no consumer has declared its queues.
    let exchange = world.bank_events_exchange();
    publisher
        .channel()
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let message = eventbank_runtime::publisher::deposit_message(
        &exchange,
        uuid::Uuid::now_v7(),
        "ACC-0001",
        None,
        b"{}".to_vec(),
    );
    let outcome = publisher.publish_one(&message).await;
    assert!(
        matches!(outcome, Err(PublishError::Returned(_))),
        "{outcome:?}"
    );
    let (confirmed, failure) = publisher.publish_all(&[message.clone(), message]).await;
    assert_eq!(confirmed, 0);
    assert!(failure.is_some());
    connection.close(200, "done".into()).await.unwrap();
    world.cleanup().await.unwrap();
}

async fn is_leader(handle: &ServiceHandle) -> anyhow::Result<bool> {
    let (_, metrics) = get_text(&handle.url("/metrics")).await?;
    Ok(metrics
        .lines()
        .any(|l| l.trim() == "eventbank_deposit_relay_leader 1"))
}

/// Two deposit replicas share one database: exactly one relay publishes; when the leader is
/// SIGKILLed its session ends, the advisory lock is released, and the standby takes over.
#[tokio::test]
async fn a_second_relay_stands_by_and_takes_over_when_the_leader_dies() {
    let world = TestWorld::new().await.unwrap();
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    let first = world.start(Svc::Deposit, &[]).await.unwrap();
    let second = world.start(Svc::Deposit, &[]).await.unwrap();
    eventually(Duration::from_secs(30), || async {
        let leaders = [is_leader(&first).await?, is_leader(&second).await?];
        anyhow::ensure!(
            leaders.iter().filter(|l| **l).count() == 1,
            "leaders: {leaders:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let (leader, standby) = if is_leader(&first).await.unwrap() {
        (first, second)
    } else {
        (second, first)
    };

    let deposit = |handle: ServiceHandle, amount: &'static str| async move {
        let body = json!({"account_id": "ACC-0001", "amount": amount, "currency": "USD"});
        post_json(&handle.url("/deposits"), &body, &[])
            .await
            .unwrap()
            .require(201)
            .unwrap();
    };
    for _ in 0..5 {
        deposit(standby.clone(), "1.00").await;
    }
    let account = world.pool(Svc::Account).await.unwrap();
    let applied = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM transactions")
            .fetch_one(&account)
            .await?;
        Ok::<i64, anyhow::Error>(n)
    };
    eventually(Duration::from_secs(30), || async {
        let n = applied().await?;
        anyhow::ensure!(n == 5, "{n} applied");
        Ok(())
    })
    .await
    .unwrap();

    leader.kill().await.unwrap();
    for _ in 0..5 {
        deposit(standby.clone(), "2.00").await;
    }
    eventually(Duration::from_secs(30), || async {
        anyhow::ensure!(is_leader(&standby).await?, "standby has not taken over");
        let n = applied().await?;
        anyhow::ensure!(n == 10, "{n} applied");
        Ok(())
    })
    .await
    .unwrap();
    let report = eventbank_e2e::invariants::check(&world).await.unwrap();
    assert!(report.ok(), "{report}");
    world.cleanup().await.unwrap();
}
