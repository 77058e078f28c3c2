//! The HTTP API: lists and single emails; unknown or invalid ids are problem responses.

use crate::helpers::{alice, database, event, handle};
use eventbank_runtime::http::not_found_fallback;
use serde_json::Value;
use uuid::Uuid;

/// Serves `email::app` on port 0, like `run` does (with the runtime's fallback).
async fn serve(pool: sqlx::PgPool) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    let router = email::app(email::AppState { pool }).fallback(not_found_fallback);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn listing_by_account_returns_its_emails_newest_first() {
    let db = database().await;
    let older = alice(100);
    let newer = alice(200);
    let someone_else = event("ACC-0007", 300, "EUR", "Bob", "bob@example.com");
    // Separate transactions, so created_at orders them.
    handle(&db.pool, std::slice::from_ref(&older)).await;
    handle(&db.pool, std::slice::from_ref(&newer)).await;
    handle(&db.pool, std::slice::from_ref(&someone_else)).await;
    let (base, server) = serve(db.pool.clone()).await;
    let client = reqwest::Client::new();

    let response = client
        .get(format!("{base}/emails?account_id=ACC-0042"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let list: Vec<Value> = response.json().await.expect("json");
    let ids: Vec<&str> = list
        .iter()
        .map(|v| v["event_id"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(
        ids,
        [newer.event_id.to_string(), older.event_id.to_string()]
    );
    let first = &list[0];
    assert_eq!(first["deposit_id"], newer.deposit_id.to_string());
    assert_eq!(first["account_id"], "ACC-0042");
    assert_eq!(first["to"], "alice@example.com");
    assert_eq!(first["subject"], "Deposit of 2.00 USD received");
    assert_eq!(first["status"], "queued");
    assert_eq!(first["attempts"], 0);
    assert!(first["last_error"].is_null());
    assert!(first["created_at"].is_string());
    assert!(first["sent_at"].is_null());
    assert!(
        first.get("body_text").is_none(),
        "the list leaves the bodies out"
    );

    let queued: Vec<Value> = client
        .get(format!("{base}/emails?status=queued"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(queued.len(), 3);
    server.abort();
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn one_email_includes_its_bodies() {
    let db = database().await;
    let e = alice(123_450);
    handle(&db.pool, std::slice::from_ref(&e)).await;
    let (base, server) = serve(db.pool.clone()).await;

    let response = reqwest::get(format!("{base}/emails/{}", e.event_id))
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["event_id"], e.event_id.to_string());
    assert_eq!(body["subject"], "Deposit of 1,234.50 USD received");
    assert_eq!(
        body["message_id"],
        format!("<{}@eventbank.example>", e.event_id)
    );
    assert!(
        body["body_text"]
            .as_str()
            .is_some_and(|t| t.contains("Hello Alice Example,")),
        "{body}"
    );
    server.abort();
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn unknown_and_invalid_ids_are_problem_responses() {
    let db = database().await;
    let (base, server) = serve(db.pool.clone()).await;

    let cases = [
        (format!("{base}/emails/{}", Uuid::now_v7()), 404),
        (format!("{base}/emails/not-a-uuid"), 400),
        (format!("{base}/emails?account_id=acc%201"), 400),
        (format!("{base}/emails?status=lost"), 400),
    ];
    for (url, status) in cases {
        let response = reqwest::get(&url).await.expect("request");
        assert_eq!(response.status(), status, "{url}");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/problem+json"),
            "{url}"
        );
        let problem: Value = response.json().await.expect("json");
        assert_eq!(problem["status"], status, "{url}");
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:eventbank:problem:"))
        );
        assert!(problem["detail"].is_string());
    }
    server.abort();
    db.drop_db().await.expect("drop");
}
