//! Schema evolution: stored version-1 events (fixtures written as a v1 producer wrote them)
//! are read by every consumer, side by side with the version-2 events the producer emits now.

use crate::SETTLE;
use eventbank_e2e::{Svc, TestWorld, eventually, publish_event};

const V1_FIXTURES: &[(&str, &str)] = &[
    (
        "ACC-0101",
        include_str!("../../../../shared/schemas/fixtures/deposit-completed.v1.usd.json"),
    ),
    (
        "ACC-0102",
        include_str!("../../../../shared/schemas/fixtures/deposit-completed.v1.jpy.json"),
    ),
    (
        "ACC-0101",
        include_str!(
            "../../../../shared/schemas/fixtures/deposit-completed.v1.unknown-fields.json"
        ),
    ),
];

async fn count(world: &TestWorld, svc: Svc, sql: &'static str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .fetch_one(&world.pool(svc).await?)
        .await?)
}

#[tokio::test]
async fn stored_v1_events_are_read_by_every_consumer() {
    let world = TestWorld::new().await.unwrap();
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    for (account, fixture) in V1_FIXTURES {
        publish_event(&world, account, fixture.as_bytes(), &[])
            .await
            .unwrap();
    }
    eventually(SETTLE, || async {
        for svc in Svc::CONSUMERS {
            let n = count(&world, svc, "SELECT count(*) FROM processed_events").await?;
            anyhow::ensure!(n == 3, "{svc}: {n} of 3 processed");
        }
        Ok(())
    })
    .await
    .unwrap();
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM balances WHERE account_id = 'ACC-0101'")
            .fetch_one(&world.pool(Svc::Account).await.unwrap())
            .await
            .unwrap();
    assert_eq!(balance, 12_551);
    assert_eq!(
        count(&world, Svc::Email, "SELECT count(*) FROM emails")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        count(&world, Svc::Compliance, "SELECT count(*) FROM audit_log")
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        count(&world, Svc::Interest, "SELECT count(*) FROM deposits")
            .await
            .unwrap(),
        3
    );
    for svc in Svc::CONSUMERS {
        let dead = eventbank_e2e::queue_message_count(&world, &world.dlq(svc))
            .await
            .unwrap();
        assert_eq!(dead, 0, "{svc} dead-lettered a v1 event");
    }
    world.cleanup().await.unwrap();
}
