use crate::SETTLE;
use eventbank_e2e::{Svc, TestWorld, eventually, get_json, post_json};
use serde_json::json;

#[tokio::test]
async fn a_deposit_is_readable_at_once_and_a_stopped_consumer_gives_the_documented_problem() {
    let world = TestWorld::new().await.unwrap();
    let deposit = world.start(Svc::Deposit, &[]).await.unwrap();
    let account = world.start(Svc::Account, &[]).await.unwrap();
    let body = json!({"account_id": "ACC-0001", "amount": "12.34", "currency": "USD"});

    // POST, then immediately ask for that sequence: the answer includes the deposit.
    let first = post_json(&deposit.url("/deposits"), &body, &[])
        .await
        .unwrap()
        .require(201)
        .unwrap();
    let sequence = first["sequence"].as_i64().unwrap();
    let r = get_json(&account.url(&format!(
        "/accounts/ACC-0001?min_sequence={sequence}&wait=5s"
    )))
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["last_sequence"], sequence);
    assert_eq!(r.body["balance"], "12.34");

    // The consumer stops; a query-only replica keeps answering.
    account.kill().await.unwrap();
    let query_only = world
        .start(Svc::Account, &[("CONSUME_EVENTS", "false")])
        .await
        .unwrap();
    let second = post_json(&deposit.url("/deposits"), &body, &[])
        .await
        .unwrap()
        .require(201)
        .unwrap();
    let wanted = second["sequence"].as_i64().unwrap();
    let r = get_json(&query_only.url(&format!(
        "/accounts/ACC-0001?min_sequence={wanted}&wait=500ms"
    )))
    .await
    .unwrap();
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.content_type, "application/problem+json");
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(r.body["type"], "urn:eventbank:problem:not-yet-consistent");
    assert_eq!(r.body["current_sequence"], sequence);
    assert_eq!(r.body["min_sequence"], wanted);
    assert!(
        r.body["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("sequence {wanted}")),
        "{}",
        r.text
    );

    // The consumer comes back: a waiting query on the other replica is answered by its
    // notification.
    account.restart().await.unwrap();
    let r = eventually(SETTLE, || async {
        let r =
            get_json(&query_only.url(&format!("/accounts/ACC-0001?min_sequence={wanted}&wait=5s")))
                .await?;
        anyhow::ensure!(r.status == 200, "{}", r.text);
        Ok(r)
    })
    .await
    .unwrap();
    assert_eq!(r.body["balance"], "24.68");
    world.cleanup().await.unwrap();
}
