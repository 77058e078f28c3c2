//! Poison messages, the DLQ and `bankctl dlq` (list, redrive) against real processes.

use eventbank_e2e::{
    Svc, TestWorld, eventually, post_json, publish_event, publish_to_queue, service_binary,
};
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn event(account: &str, sequence: i64, amount_minor: i64) -> (String, Vec<u8>) {
    let id = uuid::Uuid::now_v7().to_string();
    let body = json!({
        "specversion": "1.0", "id": id, "source": "/eventbank/deposit", "type": "bank.deposit.completed",
        "dataschemaversion": 1, "subject": account, "time": "2026-11-27T10:00:00Z", "sequence": sequence,
        "datacontenttype": "application/json",
        "data": {
            "deposit_id": uuid::Uuid::now_v7(), "account_id": account, "amount_minor": amount_minor,
            "currency": "USD", "account": {"holder_name": "Pat Poison", "email": "pat@example.com"},
            "occurred_at": "2026-11-27T10:00:00Z"
        }
    });
    (id, body.to_string().into_bytes())
}

/// bankctl configured for the world (databases, broker namespace, service URLs, API key).
pub(crate) fn bankctl_command(world: &TestWorld) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(service_binary("bankctl").unwrap());
    if let Some(deposit) = world.service(Svc::Deposit) {
        command.env("DEPOSIT_URL", deposit.base_url());
    }
    if let Some(account) = world.service(Svc::Account) {
        command.env("ACCOUNT_URL", account.base_url());
    }
    command
        .env("API_KEY", eventbank_e2e::API_KEY)
        .env("DEPOSIT_DATABASE_URL", world.db_url(Svc::Deposit))
        .env("ACCOUNT_DATABASE_URL", world.db_url(Svc::Account))
        .env("EMAIL_DATABASE_URL", world.db_url(Svc::Email))
        .env("INTEREST_DATABASE_URL", world.db_url(Svc::Interest))
        .env("COMPLIANCE_DATABASE_URL", world.db_url(Svc::Compliance))
        .env("AMQP_URL", world.amqp_url())
        .env("AMQP_NAMESPACE", world.ns());
    command
}

/// Runs bankctl against the world; returns (exit code, stdout).
pub(crate) async fn bankctl(world: &TestWorld, args: &[&str]) -> (i32, String) {
    let output = bankctl_command(world).args(args).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.is_empty() || output.status.code() != Some(0),
        "bankctl stderr: {stderr}"
    );
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

async fn metric(world: &TestWorld, svc: Svc, name: &str) -> anyhow::Result<i64> {
    world
        .service(svc)
        .ok_or_else(|| anyhow::anyhow!("{svc} not running"))?
        .metric(name)
        .await
}

/// A message that always fails (its amount overflows the account's balance) is dead-lettered
/// with the database's reason while its partition keeps flowing; `bankctl dlq list` shows it;
/// a redriven copy of an already-applied event is deduplicated.
#[tokio::test]
async fn a_poison_message_goes_to_the_dlq_and_the_partition_keeps_flowing() {
    let world = TestWorld::new().await.unwrap();
    // One partition: the poison and the next deposit share a queue.
    let services = world.start_all(&[("PARTITIONS", "1")]).await.unwrap();

    let (_, first) = event("ACC-7777", 1, i64::MAX - 5);
    publish_event(&world, "ACC-7777", &first, &[])
        .await
        .unwrap();
    let (poison_id, poison) = event("ACC-7777", 2, 100);
    publish_event(&world, "ACC-7777", &poison, &[])
        .await
        .unwrap();
    // A normal deposit behind it, on the same (only) partition.
    let ok = post_json(
        &services.deposit.url("/deposits"),
        &json!({"account_id": "ACC-0001", "amount": "3.00", "currency": "USD"}),
        &[],
    )
    .await
    .unwrap()
    .require(201)
    .unwrap();

    let account = world.pool(Svc::Account).await.unwrap();
    eventually(WAIT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM transactions WHERE account_id = 'ACC-0001'")
                .fetch_one(&account)
                .await?;
        anyhow::ensure!(n == 1, "the deposit behind the poison is not applied yet");
        Ok(())
    })
    .await
    .unwrap();

    // bankctl lists it with the reason (the database refused the overflow).
    let listed: Value = eventually(WAIT, || async {
        let (code, out) = bankctl(&world, &["--json", "dlq", "list", "account"]).await;
        anyhow::ensure!(code == 0, "exit {code}");
        let v: Value = serde_json::from_str(&out)?;
        anyhow::ensure!(v.as_array().is_some_and(|a| a.len() == 1), "dlq: {v}");
        Ok(v)
    })
    .await
    .unwrap();
    assert_eq!(listed[0]["message_id"], poison_id.as_str());
    assert_eq!(listed[0]["account_id"], "ACC-7777");
    assert!(
        listed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("out of range"),
        "{listed}"
    );
    assert_eq!(
        listed[0]["original_queue"],
        world.partition_queue(Svc::Account, 0).as_str()
    );
    // Listing removed nothing.
    let (_, again) = bankctl(&world, &["--json", "dlq", "list", "account"]).await;
    assert_eq!(
        serde_json::from_str::<Value>(&again)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let (code, text) = bankctl(&world, &["dlq", "list", "account"]).await;
    assert_eq!(code, 0);
    assert!(
        text.contains(&poison_id) && text.contains("out of range"),
        "{text}"
    );

    // Redrive an event that was already applied (a copy put in the DLQ by hand): deduplicated.
    let deposit_pool = world.pool(Svc::Deposit).await.unwrap();
    let applied: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1::uuid")
            .bind(ok["event_id"].as_str().unwrap())
            .fetch_one(&deposit_pool)
            .await
            .unwrap();
    let queue = world.partition_queue(Svc::Account, 0);
    publish_to_queue(
        &world,
        &world.dlq(Svc::Account),
        &applied,
        &[("account_id", "ACC-0001"), ("x-eventbank-queue", &queue)],
    )
    .await
    .unwrap();
    let before = metric(&world, Svc::Account, "duplicates_skipped_total")
        .await
        .unwrap();
    // message_id is unset on the hand-made copy, so redrive everything: the poison fails again
    // (back in the DLQ), the applied copy is skipped as a duplicate.
    let (code, out) = bankctl(&world, &["dlq", "redrive", "account", "--all"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 message(s) redriven"), "{out}");
    eventually(WAIT, || async {
        let skipped = metric(&world, Svc::Account, "duplicates_skipped_total").await?;
        anyhow::ensure!(skipped == before + 1, "duplicates skipped: {skipped}");
        let (_, out) = bankctl(&world, &["--json", "dlq", "list", "account"]).await;
        let v: Value = serde_json::from_str(&out)?;
        anyhow::ensure!(
            v.as_array().is_some_and(|a| a.len() == 1),
            "dlq after redrive: {v}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM balances WHERE account_id = 'ACC-0001'")
            .fetch_one(&account)
            .await
            .unwrap();
    assert_eq!(balance, 300, "the redriven duplicate changed nothing");

    // Usage errors and unknown services exit 2; an empty redrive selection exits 1.
    let (code, _) = bankctl(&world, &["dlq", "list", "nosuch"]).await;
    assert_eq!(code, 2);
    let (code, _) = bankctl(&world, &["dlq", "redrive", "email", "--id", "no-such-id"]).await;
    assert_eq!(code, 1);
    world.cleanup().await.unwrap();
}

/// The broker's own backstop: a message redelivered more than `DELIVERY_LIMIT` times (as when
/// it crashes its consumer every time) is dead-lettered by the quorum queue, and bankctl shows
/// the broker's reason.
#[tokio::test]
async fn the_delivery_limit_dead_letters_a_message_that_keeps_coming_back() {
    use lapin::options::BasicNackOptions;
    let world = TestWorld::new().await.unwrap();
    // Declare email's topology with a delivery limit of 2, then stop the service so that only
    // this test consumes (it plays a consumer that dies on every delivery).
    let email = world
        .start(Svc::Email, &[("DELIVERY_LIMIT", "2"), ("PARTITIONS", "1")])
        .await
        .unwrap();
    email.kill().await.unwrap();
    let (id, body) = event("ACC-0001", 1, 100);
    publish_event(&world, "ACC-0001", &body, &[]).await.unwrap();

    let connection =
        lapin::Connection::connect(world.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let queue = world.partition_queue(Svc::Email, 0);
    // basic.get is refused on single-active-consumer queues: consume, and nack every delivery.
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "crasher".into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let deliveries = std::sync::atomic::AtomicUsize::new(0);
    let nacker = async {
        use futures_util::StreamExt;
        while let Some(Ok(delivery)) = consumer.next().await {
            deliveries.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    };
    let listed = eventually(WAIT, || async {
        let (_, out) = bankctl(&world, &["--json", "dlq", "list", "email"]).await;
        let v: Value = serde_json::from_str(&out)?;
        anyhow::ensure!(v.as_array().is_some_and(|a| a.len() == 1), "dlq: {v}");
        Ok(v)
    });
    let listed = tokio::select! {
        listed = listed => listed.unwrap(),
        () = nacker => panic!("the consumer stream ended"),
    };
    let deliveries = deliveries.into_inner();
    assert!(deliveries >= 2, "delivered {deliveries} times");
    assert_eq!(listed[0]["message_id"], id.as_str());
    assert_eq!(
        listed[0]["reason"], "dead-lettered by the broker: delivery_limit",
        "{listed}"
    );
    assert_eq!(listed[0]["original_queue"], queue.as_str());
    connection.close(200, "done".into()).await.unwrap();
    world.cleanup().await.unwrap();
}
