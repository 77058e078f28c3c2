use crate::{SETTLE, deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, get_message, publish_event};

/// A malformed message ends in each consumer's DLQ with the reason in a header, and the next
/// message on the same partition is still processed.
#[tokio::test]
async fn a_malformed_message_is_dead_lettered_with_a_reason_and_the_partition_flows() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let account = open_account(&services, "Pia Poison", "USD").await.unwrap();

    publish_event(&world, &account, b"this is not json", &[])
        .await
        .unwrap();
    let mut future_version = serde_json::json!({
        "specversion": "1.0", "id": uuid::Uuid::now_v7(), "source": "/eventbank/deposit",
        "type": "bank.deposit.completed", "dataschemaversion": 99, "subject": account,
        "time": "2026-01-01T00:00:00Z", "sequence": 1, "datacontenttype": "application/json",
        "data": {}
    });
    future_version["data"]["anything"] = serde_json::json!(true);
    publish_event(&world, &account, future_version.to_string().as_bytes(), &[])
        .await
        .unwrap();
    // Same account, so same partition, right behind the poison.
    deposit(&services, &account, "7.00", "USD").await.unwrap();
    settle(&world, 1).await.unwrap();

    for svc in Svc::CONSUMERS {
        let dlq = world.dlq(svc);
        let collected = std::sync::Mutex::new(Vec::new());
        eventually(SETTLE, || {
            let (collected, world, dlq) = (&collected, &world, &dlq);
            async move {
                if let Some(message) = get_message(world, dlq).await? {
                    let reason = message.header("x-eventbank-reason").unwrap_or_default();
                    collected
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push(reason);
                }
                let n = collected
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .len();
                anyhow::ensure!(n == 2, "{svc}: {n} dead letters so far");
                Ok(())
            }
        })
        .await
        .unwrap();
        let mut reasons = collected.into_inner().unwrap();
        reasons.sort();
        assert!(
            reasons[0].contains("not a JSON CloudEvent"),
            "{svc}: {reasons:?}"
        );
        assert!(
            reasons[1].contains("unsupported dataschemaversion 99"),
            "{svc}: {reasons:?}"
        );
    }
    world.cleanup().await.unwrap();
}
