//! `GET /applied` and CORS against the real binaries, broker and databases.

use crate::next_event;
use eventbank_e2e::{Svc, TestWorld, http_client, post_json, request_json};
use reqwest::Method;
use std::time::Duration;

const ORIGIN: &str = "http://console.test:8090";

#[tokio::test]
async fn every_consumer_pushes_each_deposit_it_applies() {
    let world = TestWorld::new().await.unwrap();
    let services = world
        .start_all(&[("CORS_ALLOW_ORIGINS", ORIGIN)])
        .await
        .unwrap();

    // Subscribed before the deposit: the feed has no replay.
    let mut streams = Vec::new();
    for consumer in services.consumers() {
        let response = http_client()
            .get(consumer.url("/applied"))
            .header("origin", ORIGIN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 200, "{}", consumer.label());
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("text/event-stream"),
            "{}",
            consumer.label()
        );
        // An EventSource of the console's origin may read it.
        assert_eq!(
            header("access-control-allow-origin").as_deref(),
            Some(ORIGIN),
            "{}",
            consumer.label()
        );
        streams.push((consumer.svc(), response, String::new()));
    }

    let deposit = post_json(
        &services.deposit.url("/deposits"),
        &serde_json::json!({"account_id": "ACC-0001", "amount": "12.34", "currency": "USD"}),
        &[],
    )
    .await
    .unwrap()
    .require(201)
    .unwrap();
    let deposit_id = deposit["deposit_id"].as_str().unwrap().to_owned();

    for (svc, response, buffer) in &mut streams {
        let data = next_event(
            response,
            buffer,
            "applied",
            &deposit_id,
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{svc}: {e:#}"));
        assert_eq!(data["service"], svc.name());
        assert_eq!(data["event_id"], deposit["event_id"]);
        assert_eq!(data["account_id"], "ACC-0001");
        assert_eq!(data["sequence"], deposit["sequence"]);
        assert_eq!(data["amount_minor"], 1234);
        assert_eq!(data["currency"], "USD");
        let created: chrono::DateTime<chrono::Utc> =
            data["created_at"].as_str().unwrap().parse().unwrap();
        let applied: chrono::DateTime<chrono::Utc> =
            data["applied_at"].as_str().unwrap().parse().unwrap();
        assert!(applied >= created, "{svc}: applied before created: {data}");
    }

    // The route is in each consumer's spec, like every other.
    for consumer in services.consumers() {
        let spec = eventbank_e2e::get_json(&consumer.url("/openapi.json"))
            .await
            .unwrap()
            .require(200)
            .unwrap();
        assert!(
            spec["paths"]["/applied"]["get"].is_object(),
            "{}: /applied not in the spec",
            consumer.label()
        );
    }
    drop(streams);
    world.cleanup().await.unwrap();
}

#[tokio::test]
async fn cors_headers_follow_cors_allow_origins() {
    let world = TestWorld::new().await.unwrap();
    let with = world
        .start(Svc::Deposit, &[("CORS_ALLOW_ORIGINS", ORIGIN)])
        .await
        .unwrap();
    let without = world.start(Svc::Deposit, &[]).await.unwrap();

    // A preflight of the console's POST: answered, naming what may be sent and read.
    let preflight = |url: String, origin: &'static str| async move {
        request_json(
            Method::OPTIONS,
            &url,
            None,
            &[
                ("origin", origin),
                ("access-control-request-method", "POST"),
                (
                    "access-control-request-headers",
                    "content-type,idempotency-key,x-api-key",
                ),
            ],
        )
        .await
        .unwrap()
    };
    let answer = preflight(with.url("/deposits"), ORIGIN).await;
    assert!(
        (200..300).contains(&answer.status),
        "preflight answered {}",
        answer.status
    );
    assert_eq!(answer.header("access-control-allow-origin"), Some(ORIGIN));
    let methods = answer.header("access-control-allow-methods").unwrap_or("");
    assert!(methods.contains("POST"), "{methods}");
    let headers = answer
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for needed in [
        "content-type",
        "idempotency-key",
        "x-api-key",
        "last-event-id",
    ] {
        assert!(headers.contains(needed), "{needed} not allowed: {headers}");
    }

    // The real POST from that origin: answered with the headers the page reads exposed.
    let created = post_json(
        &with.url("/deposits"),
        &serde_json::json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"}),
        &[("origin", ORIGIN), ("idempotency-key", "cors-1")],
    )
    .await
    .unwrap();
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = created
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for needed in ["location", "idempotent-replayed", "retry-after"] {
        assert!(exposed.contains(needed), "{needed} not exposed: {exposed}");
    }

    // Another origin gets no grant, and without the setting nobody does.
    let other = request_json(
        Method::GET,
        &with.url("/healthz"),
        None,
        &[("origin", "http://elsewhere.test")],
    )
    .await
    .unwrap();
    assert_eq!(other.status, 200);
    assert_eq!(other.header("access-control-allow-origin"), None);
    let plain = request_json(
        Method::GET,
        &without.url("/healthz"),
        None,
        &[("origin", ORIGIN)],
    )
    .await
    .unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("access-control-allow-origin"), None);
    let refused = preflight(without.url("/deposits"), ORIGIN).await;
    assert_eq!(refused.header("access-control-allow-origin"), None);
    assert_eq!(refused.header("access-control-allow-methods"), None);
    world.cleanup().await.unwrap();
}
