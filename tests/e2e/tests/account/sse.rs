use crate::{deposit_event, publish};
use eventbank_e2e::{Svc, TestWorld, http_client};
use std::time::Duration;

#[tokio::test]
async fn an_sse_client_of_one_replica_sees_a_change_applied_by_another() {
    let world = TestWorld::new().await.unwrap();
    // The only consumer, and a replica that consumes nothing: whatever the second one's
    // clients see was applied by the first and reached them through Postgres NOTIFY.
    let _consumer = world.start(Svc::Account, &[]).await.unwrap();
    let reader = world
        .start(Svc::Account, &[("CONSUME_EVENTS", "false")])
        .await
        .unwrap();
    let mut res = http_client()
        .get(reader.url("/accounts/ACC-8001/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);

    let event = deposit_event("ACC-8001", 1, 4_200);
    publish(&world, 0, &event).await.unwrap();

    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(60), async {
        while !text.contains("event: deposited") || !text.contains("\n\n") {
            let chunk = res.chunk().await.unwrap().expect("stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no deposited event on the other replica; got {text:?}"));
    assert!(text.contains("event: opened"), "{text}");
    let data = text
        .lines()
        .skip_while(|l| *l != "event: deposited")
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(data).unwrap();
    assert_eq!(data["event_id"], event.event_id.to_string());
    assert_eq!(data["balance"], "42.00");
    assert_eq!(data["version"], 2);
    drop(res);
    world.cleanup().await.unwrap();
}
