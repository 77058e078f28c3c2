use crate::TestApp;
use serde_json::json;

#[tokio::test]
async fn a_valid_deposit_is_stored_with_its_outbox_row_in_sequence() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0001", "amount": "100.50", "currency": "USD"}).to_string();
    let (status, first, content_type) = app.post("/deposits", &body, &[]).await;
    assert_eq!(status, 201, "{first}");
    assert!(content_type.starts_with("application/json"));
    assert_eq!(first["amount_minor"], 10_050);
    assert_eq!(first["sequence"], 1);
    let (_, second, _) = app.post("/deposits", &body, &[]).await;
    assert_eq!(second["sequence"], 2);

    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1")
        .bind(uuid::Uuid::parse_str(first["event_id"].as_str().unwrap()).unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let event = eventbank_events::decode(&payload).expect("outbox payload decodes");
    assert_eq!(event.sequence, 1);
    assert_eq!(event.amount_minor, 10_050);
    assert_eq!(event.account.email, "alice@example.com");
    assert_eq!(app.count("deposits").await, 2);
    assert_eq!(app.count("outbox").await, 2);
    app.cleanup().await;
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_stores_nothing() {
    let app = TestApp::spawn().await;
    let big = format!(
        "{{\"account_id\":\"ACC-0001\",\"amount\":\"1.00\",\"currency\":\"USD\",\"pad\":\"{}\"}}",
        "x".repeat(20 * 1024)
    );
    let cases: Vec<(&str, String, u16, &str)> = vec![
        ("malformed JSON", "{\"account_id\": ".into(), 400, "malformed-json"),
        ("missing field", json!({"account_id": "ACC-0001", "currency": "USD"}).to_string(), 422, "invalid-body"),
        ("number amount", json!({"account_id": "ACC-0001", "amount": 100.5, "currency": "USD"}).to_string(), 422, "invalid-body"),
        ("zero", json!({"account_id": "ACC-0001", "amount": "0.00", "currency": "USD"}).to_string(), 422, "validation"),
        ("negative", json!({"account_id": "ACC-0001", "amount": "-5.00", "currency": "USD"}).to_string(), 422, "validation"),
        ("too precise", json!({"account_id": "ACC-0001", "amount": "1.001", "currency": "USD"}).to_string(), 422, "validation"),
        ("over the maximum", json!({"account_id": "ACC-0001", "amount": "1000000.01", "currency": "USD"}).to_string(), 422, "validation"),
        ("i64 overflow", json!({"account_id": "ACC-0001", "amount": "92233720368547758.08", "currency": "USD"}).to_string(), 422, "validation"),
        ("unknown currency", json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "XXX"}).to_string(), 422, "validation"),
        ("wrong currency", json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "EUR"}).to_string(), 422, "currency-mismatch"),
        ("unknown account", json!({"account_id": "ACC-9999", "amount": "1.00", "currency": "USD"}).to_string(), 422, "unknown-account"),
        ("unicode id", json!({"account_id": "ACC-０００１", "amount": "1.00", "currency": "USD"}).to_string(), 422, "validation"),
        ("sql-looking id", json!({"account_id": "ACC-1'; DROP TABLE deposits;--", "amount": "1.00", "currency": "USD"}).to_string(), 422, "validation"),
        ("body too large", big, 413, "body-too-large"),
    ];
    for (name, body, status, kind) in cases {
        let (got, problem, content_type) = app.post("/deposits", &body, &[]).await;
        assert_eq!(got, status, "{name}: {problem}");
        assert_eq!(content_type, "application/problem+json", "{name}");
        assert_eq!(
            problem["type"],
            format!("urn:eventbank:problem:{kind}"),
            "{name}: {problem}"
        );
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{name}"
        );
    }
    // Wrong content type.
    let res = app
        .client
        .post(format!("{}/deposits", app.base))
        .header("content-type", "text/plain")
        .header("x-api-key", crate::API_KEY)
        .body(json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 415);
    assert_eq!(app.count("deposits").await, 0);
    assert_eq!(app.count("outbox").await, 0);
    let last: i64 =
        sqlx::query_scalar("SELECT last_sequence FROM accounts WHERE account_id = 'ACC-0001'")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(
        last, 0,
        "a refused deposit must not consume a sequence number"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn idempotency_key_replays_the_same_response_and_refuses_another_body() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0001", "amount": "25.00", "currency": "USD"}).to_string();
    let (s1, r1, _) = app
        .post("/deposits", &body, &[("Idempotency-Key", "key-1")])
        .await;
    let equivalent =
        json!({"account_id": "ACC-0001", "amount": "25.0", "currency": "USD"}).to_string();
    let (s2, r2, _) = app
        .post("/deposits", &equivalent, &[("Idempotency-Key", "key-1")])
        .await;
    assert_eq!((s1, s2), (201, 201));
    assert_eq!(r1, r2);
    let other = json!({"account_id": "ACC-0001", "amount": "26.00", "currency": "USD"}).to_string();
    let (s3, p3, ct) = app
        .post("/deposits", &other, &[("Idempotency-Key", "key-1")])
        .await;
    assert_eq!(s3, 422);
    assert_eq!(ct, "application/problem+json");
    assert_eq!(p3["type"], "urn:eventbank:problem:idempotency-key-reused");
    assert_eq!(app.count("deposits").await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_deposit() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0001", "amount": "5.00", "currency": "USD"}).to_string();
    let futures = (0..8).map(|_| app.post("/deposits", &body, &[("Idempotency-Key", "same")]));
    let results = futures_util::future::join_all(futures).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, r, _)| {
            assert_eq!(*s, 201, "{r}");
            r["deposit_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(app.count("deposits").await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn concurrent_deposits_get_gap_free_sequences() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0004", "amount": "1.00", "currency": "USD"}).to_string();
    let results =
        futures_util::future::join_all((0..20).map(|_| app.post("/deposits", &body, &[]))).await;
    let mut sequences: Vec<i64> = results
        .iter()
        .map(|(_, r, _)| r["sequence"].as_i64().unwrap())
        .collect();
    sequences.sort_unstable();
    assert_eq!(sequences, (1..=20).collect::<Vec<_>>());
    // Outbox id order equals sequence order within the account (the relay relies on it).
    let outbox: Vec<i64> =
        sqlx::query_scalar("SELECT sequence FROM outbox WHERE account_id = 'ACC-0004' ORDER BY id")
            .fetch_all(&app.db.pool)
            .await
            .unwrap();
    assert_eq!(outbox, (1..=20).collect::<Vec<_>>());
    app.cleanup().await;
}

#[tokio::test]
async fn accounts_can_be_opened_and_validated() {
    let app = TestApp::spawn().await;
    let (status, account, _) = app
        .post(
            "/accounts",
            &json!({"holder_name": "Erin Example", "email": "erin@example.com", "currency": "GBP"})
                .to_string(),
            &[],
        )
        .await;
    assert_eq!(status, 201, "{account}");
    let id = account["account_id"].as_str().unwrap();
    assert!(id.starts_with("ACC-"));
    let (status, problem, _) = app
        .post(
            "/accounts",
            &json!({"holder_name": "", "email": "nope", "currency": "gbp"}).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        problem["errors"].as_array().map(Vec::len),
        Some(3),
        "{problem}"
    );
    let deposit = json!({"account_id": id, "amount": "10.00", "currency": "GBP"}).to_string();
    let (status, _, _) = app.post("/deposits", &deposit, &[]).await;
    assert_eq!(status, 201);
    app.cleanup().await;
}

#[tokio::test]
async fn a_closed_account_refuses_deposits() {
    let app = TestApp::spawn().await;
    sqlx::query("UPDATE accounts SET status = 'closed' WHERE account_id = 'ACC-0004'")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let body = json!({"account_id": "ACC-0004", "amount": "1.00", "currency": "USD"}).to_string();
    let (status, problem, _) = app.post("/deposits", &body, &[]).await;
    assert_eq!(status, 409);
    assert_eq!(problem["type"], "urn:eventbank:problem:account-closed");
    assert_eq!(app.count("deposits").await, 0);
    app.cleanup().await;
}

#[tokio::test]
async fn writes_without_the_api_key_are_refused_and_store_nothing() {
    let app = TestApp::spawn().await;
    let deposit =
        json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"}).to_string();
    let account =
        json!({"holder_name": "Mallory", "email": "m@example.com", "currency": "USD"}).to_string();
    for key in ["", "wrong-key", "test-api-keyX", "TEST-API-KEY"] {
        for (path, body) in [("/deposits", &deposit), ("/accounts", &account)] {
            let (status, problem, content_type) = app.post(path, body, &[("x-api-key", key)]).await;
            assert_eq!(status, 401, "{path} with key {key:?}");
            assert_eq!(content_type, "application/problem+json");
            assert_eq!(problem["type"], "urn:eventbank:problem:unauthorized");
        }
    }
    // Reads need no key.
    let res = app
        .client
        .get(format!("{}/accounts/ACC-0001", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(app.count("deposits").await, 0);
    assert_eq!(
        app.count("accounts").await,
        4,
        "only the seeded demo accounts"
    );
    app.cleanup().await;
}

#[tokio::test]
async fn channel_and_reference_travel_in_a_version_2_event() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0001", "amount": "9.99", "currency": "USD", "channel": "atm", "reference": "Rent March"}).to_string();
    let (status, created, _) = app.post("/deposits", &body, &[]).await;
    assert_eq!(status, 201, "{created}");
    let payload: Vec<u8> = sqlx::query_scalar("SELECT payload FROM outbox WHERE event_id = $1")
        .bind(uuid::Uuid::parse_str(created["event_id"].as_str().unwrap()).unwrap())
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    let wire: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(wire["dataschemaversion"], 2);
    assert_eq!(wire["data"]["channel"], "atm");
    assert_eq!(wire["data"]["reference"], "Rent March");
    let event = eventbank_events::decode(&payload).unwrap();
    assert_eq!(event.channel, Some(eventbank_events::Channel::Atm));

    for (field, value) in [
        ("channel", json!("pigeon")),
        ("reference", json!("x".repeat(141))),
        ("reference", json!("a\u{7}b")),
    ] {
        let mut bad = json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"});
        bad[field] = value;
        let (status, problem, _) = app.post("/deposits", &bad.to_string(), &[]).await;
        assert_eq!(status, 422, "{field}: {problem}");
        assert_eq!(problem["errors"][0]["field"], field);
    }
    assert_eq!(app.count("deposits").await, 1);
    app.cleanup().await;
}

#[tokio::test]
async fn every_answer_carries_a_request_id() {
    let app = TestApp::spawn().await;
    let body = json!({"account_id": "ACC-0001", "amount": "1.00", "currency": "USD"}).to_string();
    let request = |id: Option<&str>| {
        let mut request = app
            .client
            .post(format!("{}/deposits", app.base))
            .header("content-type", "application/json")
            .header("x-api-key", crate::API_KEY)
            .body(body.clone());
        if let Some(id) = id {
            request = request.header("x-request-id", id);
        }
        request
    };
    let given = request(Some("req-42")).send().await.unwrap();
    assert_eq!(given.status().as_u16(), 201);
    assert_eq!(given.headers()["x-request-id"], "req-42");
    // A refused request (the 413 answered before any handler) is named too.
    let fresh = request(None)
        .body("x".repeat(20 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status().as_u16(), 413);
    let id = fresh.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
    app.cleanup().await;
}
