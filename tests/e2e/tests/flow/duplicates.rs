use crate::{SETTLE, deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, publish_event};

/// Reads a counter from a service's /metrics.
async fn metric(world: &TestWorld, svc: Svc, name: &str) -> anyhow::Result<i64> {
    world
        .service(svc)
        .ok_or_else(|| anyhow::anyhow!("{svc} not running"))?
        .metric(name)
        .await
}

#[tokio::test]
async fn the_same_event_published_twice_changes_every_consumer_once() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let account = open_account(&services, "Dee Duplicate", "EUR")
        .await
        .unwrap();
    let first = deposit(&services, &account, "42.00", "EUR").await.unwrap();
    settle(&world, 1).await.unwrap();

    // Re-publish the exact stored event twice, straight to the exchange (as a relay that
    // crashed after the confirm but before marking the row would).
    let pool = world.pool(Svc::Deposit).await.unwrap();
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1::uuid")
            .bind(first["event_id"].as_str().unwrap())
            .fetch_one(&pool)
            .await
            .unwrap();
    publish_event(&world, &account, &payload, &[])
        .await
        .unwrap();
    publish_event(&world, &account, &payload, &[])
        .await
        .unwrap();

    for svc in Svc::CONSUMERS {
        eventually(SETTLE, || async {
            let skipped = metric(&world, svc, "duplicates_skipped_total").await?;
            anyhow::ensure!(skipped == 2, "{svc}: {skipped} duplicates skipped so far");
            Ok(())
        })
        .await
        .unwrap();
    }
    let report = settle(&world, 1).await.unwrap();
    assert!(report.ok(), "{report}");
    let balance: i64 =
        sqlx::query_scalar("SELECT balance_minor FROM balances WHERE account_id = $1")
            .bind(&account)
            .fetch_one(&world.pool(Svc::Account).await.unwrap())
            .await
            .unwrap();
    assert_eq!(balance, 4_200);
    world.cleanup().await.unwrap();
}
