//! Tracing across the broker: with OTLP export on, one deposit is one trace over the five
//! services. A small OTLP/HTTP (JSON) collector in the test receives every service's spans.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::extract::State;
use axum::routing::post;
use eventbank_e2e::{Svc, TestWorld, eventually, post_json};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Received = Arc<Mutex<Vec<Value>>>;

async fn collect(State(received): State<Received>, body: String) -> &'static str {
    if let Ok(value) = serde_json::from_str::<Value>(&body) {
        received.lock().unwrap().push(value);
    }
    "{}"
}

/// (service.name, trace id) of every span received.
fn spans(received: &Received) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for export in received.lock().unwrap().iter() {
        for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
            let service = resource_spans["resource"]["attributes"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["key"] == "service.name")
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_owned();
            for scope in resource_spans["scopeSpans"]
                .as_array()
                .into_iter()
                .flatten()
            {
                for span in scope["spans"].as_array().into_iter().flatten() {
                    out.push((
                        service.clone(),
                        span["traceId"].as_str().unwrap_or_default().to_lowercase(),
                        span["name"].as_str().unwrap_or_default().to_owned(),
                    ));
                }
            }
        }
    }
    out
}

#[tokio::test]
async fn one_deposit_is_one_trace_across_the_five_services() {
    let received: Received = Arc::new(Mutex::new(Vec::new()));
    let collector = axum::Router::new()
        .route("/v1/traces", post(collect))
        .with_state(Arc::clone(&received));
    let endpoint = eventbank_runtime::testing::serve_router(collector)
        .await
        .unwrap();

    let world = TestWorld::new().await.unwrap();
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        // Export within a quarter second instead of the default five.
        ("OTEL_BSP_SCHEDULE_DELAY", "250"),
    ];
    let services = world.start_all(&otel).await.unwrap();

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let deposit = post_json(
        &services.deposit.url("/deposits"),
        &json!({"account_id": "ACC-0001", "amount": "12.00", "currency": "USD"}),
        &[("traceparent", caller.as_str())],
    )
    .await
    .unwrap()
    .require(201)
    .unwrap();

    // The event carries the caller's trace id (a child span of the caller's span).
    let payload: Vec<u8> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1::uuid")
            .bind(deposit["event_id"].as_str().unwrap())
            .fetch_one(&world.pool(Svc::Deposit).await.unwrap())
            .await
            .unwrap();
    let event: Value = serde_json::from_slice(&payload).unwrap();
    let traceparent = event["traceparent"].as_str().unwrap();
    assert!(
        traceparent.starts_with(&format!("00-{trace_id}-")),
        "{traceparent}"
    );
    assert_ne!(
        traceparent, caller,
        "the deposit's own span is a child, not the caller's span"
    );

    let services_in_trace = eventually(Duration::from_secs(60), || async {
        let in_trace: BTreeSet<String> = spans(&received)
            .into_iter()
            .filter(|(_, trace, _)| trace == trace_id)
            .map(|(service, _, _)| service)
            .collect();
        anyhow::ensure!(
            in_trace.len() == 5,
            "services in the trace so far: {in_trace:?}"
        );
        Ok(in_trace)
    })
    .await
    .unwrap();
    let expected: BTreeSet<String> = Svc::ALL.iter().map(|s| s.name().to_owned()).collect();
    assert_eq!(services_in_trace, expected);
    world.cleanup().await.unwrap();
}
