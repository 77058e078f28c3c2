//! The shared runtime and the relay against the real broker and real processes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod dlq;

use eventbank_e2e::{ServiceHandle, Svc, TestWorld, eventually, get_text, post_json};
use eventbank_runtime::amqp::{Names, declare_events_exchange};
use eventbank_runtime::publisher::{PublishError, Publisher};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
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
    declare_events_exchange(publisher.channel(), &Names::new(world.id()))
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
    // Polled: the last rows published are marked up to RELAY_MARK_DELAY_MS later.
    eventbank_e2e::flows::settle(&world, 10).await.unwrap();
    world.cleanup().await.unwrap();
}

/// Two replicas take deposits for the same accounts at once while one relay leads: it is
/// handed its own replica's rows in memory and must read the other's from the outbox, yet
/// every account's events reach the broker in sequence order, each once. A relay that published
/// a handed row without checking its account's previous sequence sends some of them early.
#[tokio::test]
async fn with_two_writers_each_accounts_events_are_published_in_sequence_order() {
    use futures_util::StreamExt;
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions,
    };
    use std::collections::BTreeMap;
    const PER_REPLICA: usize = 120;
    // The demo accounts, with their currencies.
    const ACCOUNTS: [(&str, &str); 3] = [
        ("ACC-0001", "USD"),
        ("ACC-0004", "USD"),
        ("ACC-0002", "EUR"),
    ];

    let world = TestWorld::new().await.unwrap();
    let connection = Connection::connect(world.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let exchange = world.bank_events_exchange();
    declare_events_exchange(&channel, &Names::new(world.id()))
        .await
        .unwrap();
    let probe = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            probe.name().as_str().into(),
            exchange.as_str().into(),
            "deposit.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut received = channel
        .basic_consume(
            probe.name().as_str().into(),
            "order-probe".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let first = world.start(Svc::Deposit, &[]).await.unwrap();
    let second = world.start(Svc::Deposit, &[]).await.unwrap();
    let writer = |handle: ServiceHandle| async move {
        // Eight requests at a time per replica, spread over the accounts: both replicas'
        // group commits interleave on every account.
        let bodies: Vec<_> = (0..PER_REPLICA)
            .map(|i| {
                let (account, currency) = ACCOUNTS[i % ACCOUNTS.len()];
                json!({"account_id": account, "amount": "1.00", "currency": currency})
            })
            .collect();
        for chunk in bodies.chunks(8) {
            let posts = chunk.iter().map(|body| {
                let url = handle.url("/deposits");
                async move { post_json(&url, body, &[]).await?.require(201) }
            });
            for outcome in futures_util::future::join_all(posts).await {
                outcome.unwrap();
            }
        }
    };
    tokio::join!(writer(first.clone()), writer(second.clone()));

    let mut by_account: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let total = 2 * PER_REPLICA;
    let collect = async {
        let mut seen = 0;
        while seen < total {
            let delivery = received.next().await.unwrap().unwrap();
            let event = eventbank_events::decode(&delivery.data).unwrap();
            by_account
                .entry(event.account_id.as_str().to_owned())
                .or_default()
                .push(event.sequence);
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            seen += 1;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), collect)
        .await
        .expect("every deposit is published within 60 s");
    for (account, sequences) in &by_account {
        let expected: Vec<i64> = (1..=sequences.len() as i64).collect();
        assert_eq!(
            sequences, &expected,
            "{account}'s events in the order published"
        );
    }
    assert_eq!(by_account.values().map(Vec::len).sum::<usize>(), total);
    connection.close(200, "done".into()).await.unwrap();
    world.cleanup().await.unwrap();
}
