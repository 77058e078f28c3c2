use crate::{deposit, open_account, settle};
use eventbank_e2e::{Svc, TestWorld, eventually, post_json};
use serde_json::json;
use std::time::Duration;

/// PostgreSQL becomes unreachable for the deposit service (a proxy we control cuts its
/// connections; the shared server keeps running): a deposit is answered 503 with `Retry-After`
/// as a problem, not a 500, and the client's retry with the same Idempotency-Key after the
/// database is back stores the deposit once.
#[tokio::test]
async fn a_deposit_during_a_database_outage_gets_503_and_its_retry_is_stored_once() {
    let world = TestWorld::new().await.unwrap();
    let proxy = world.db_proxy().await.unwrap();
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    let via_proxy = world.db_url_via(Svc::Deposit, &proxy);
    world
        .start(Svc::Deposit, &[("DATABASE_URL", via_proxy.as_str())])
        .await
        .unwrap();
    let services = world.started().unwrap();
    let account = open_account(&services, "Dora Downtime", "USD")
        .await
        .unwrap();
    deposit(&services, &account, "1.00", "USD").await.unwrap();

    proxy.cut().await;
    let url = services.deposit.url("/deposits");
    let body = json!({"account_id": account, "amount": "2.00", "currency": "USD"});
    let key = [("Idempotency-Key", "outage-retry-1")];
    let answer = post_json(&url, &body, &key).await.unwrap();
    assert_eq!(answer.status, 503, "{}", answer.text);
    assert_eq!(answer.content_type, "application/problem+json");
    assert_eq!(answer.header("retry-after"), Some("1"));
    assert_eq!(answer.body["type"], "urn:eventbank:problem:unavailable");
    assert_eq!(answer.body["status"], 503);

    proxy.restore().await;
    // The client retries after Retry-After with the same key until the database is back.
    let stored = eventually(Duration::from_secs(30), || async {
        post_json(&url, &body, &key).await?.require(201)
    })
    .await
    .unwrap();
    let replay = post_json(&url, &body, &key).await.unwrap();
    assert_eq!(replay.status, 201, "{}", replay.text);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.body["deposit_id"], stored["deposit_id"]);

    let report = settle(&world, 2).await.unwrap();
    assert!(report.ok(), "{report}");
    world.cleanup().await.unwrap();
}
