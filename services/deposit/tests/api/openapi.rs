//! The OpenAPI spec and the routes agree: the spec holds exactly the routes below, each answers
//! on the router `run` serves (ops routes, `/openapi.json` and `/docs` included), answers match
//! their documented schemas, and the write endpoints carry the `x-api-key` scheme.

use crate::API_KEY;
use deposit::{DepositMetrics, api};
use eventbank_runtime::http::service_router;
use eventbank_runtime::testing::{
    Case, TestDatabase, check_answers, check_spec_against_router, ops_state,
};
use std::sync::Arc;

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/accounts"),
    ("GET", "/accounts/{account_id}"),
    ("POST", "/deposits"),
    ("GET", "/deposits/{deposit_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// A database with the demo accounts, and the router `run` serves on it.
async fn setup() -> (TestDatabase, axum::Router, utoipa::openapi::OpenApi) {
    let db = TestDatabase::create("deposit", &deposit::MIGRATOR)
        .await
        .unwrap();
    deposit::store::seed_demo_accounts(&db.pool).await.unwrap();
    let mut registry = eventbank_runtime::metrics::new_registry("deposit");
    let state = api::AppState {
        pool: db.pool.clone(),
        config: Arc::new(crate::config(&db)),
        metrics: DepositMetrics::register(&mut registry),
        writer: deposit::writer::Writer::start(
            db.pool.clone(),
            Arc::new(deposit::wakeup::OutboxSignal::new()),
            1,
            8,
        ),
    };
    let (router, spec) = service_router(api::router(state), ops_state(db.pool.clone()));
    (db, router, spec)
}

#[tokio::test]
async fn spec_and_routes_agree() {
    let (db, router, spec) = setup().await;
    let answers = check_spec_against_router(router, &spec, ROUTES, &[("account_id", "ACC-0001")])
        .await
        .unwrap();
    // The writes answer 401 (no key) before anything else, the unknown deposit 422 (not a
    // UUID): routed, documented.
    let statuses: Vec<(&str, &str, u16)> = answers
        .iter()
        .map(|a| (a.method.as_str(), a.path.as_str(), a.status))
        .collect();
    assert!(
        statuses.contains(&("POST", "/deposits", 401)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("POST", "/accounts", 401)),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&("GET", "/deposits/{deposit_id}", 422)),
        "{statuses:?}"
    );
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn writes_require_the_api_key_scheme_and_reads_do_not() {
    let (db, _, spec) = setup().await;
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(
        json["components"]["securitySchemes"]["api_key"],
        serde_json::json!({"type": "apiKey", "in": "header", "name": "x-api-key",
            "description": "The service's API_KEY (eventbank-demo-key when it runs without one)"})
    );
    for (method, path) in ROUTES {
        let operation = &json["paths"][path][method.to_ascii_lowercase()];
        let secured = operation["security"] == serde_json::json!([{"api_key": []}]);
        assert_eq!(secured, *method == "POST", "{method} {path}");
    }
    let parameters = json["paths"]["/deposits"]["post"]["parameters"]
        .as_array()
        .unwrap();
    assert!(
        parameters
            .iter()
            .any(|p| p["name"] == "Idempotency-Key" && p["in"] == "header")
    );
    assert_eq!(
        json["paths"]["/deposits"]["post"]["requestBody"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/CreateDeposit"
    );
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let (db, router, spec) = setup().await;
    let key = [("x-api-key", API_KEY)];
    let keyed = [("x-api-key", API_KEY), ("Idempotency-Key", "openapi-1")];
    let post = |path, headers, body, status| Case {
        method: "POST",
        path,
        uri: path,
        headers,
        body: Some(body),
        status,
    };
    let deposit = r#"{"account_id":"ACC-0001","amount":"250.00","currency":"USD"}"#;
    let bodies = check_answers(
        &router,
        &spec,
        &[
            post("/deposits", &keyed, deposit, 201),
            // The replay answers the stored response.
            post("/deposits", &keyed, deposit, 201),
            post(
                "/deposits",
                &keyed,
                r#"{"account_id":"ACC-0001","amount":"1.00","currency":"USD"}"#,
                422,
            ),
            post(
                "/deposits",
                &key,
                r#"{"account_id":"ACC-0001","amount":"1.001","currency":"USD"}"#,
                422,
            ),
            post(
                "/deposits",
                &key,
                r#"{"account_id":"ACC-9999","amount":"1.00","currency":"USD"}"#,
                422,
            ),
            post(
                "/deposits",
                &key,
                r#"{"account_id":"ACC-0001","amount":"1.00","currency":"EUR"}"#,
                422,
            ),
            post("/deposits", &key, "{", 400),
            post("/deposits", &[], deposit, 401),
            post(
                "/accounts",
                &key,
                r#"{"holder_name":"Alice Example","email":"alice@example.com","currency":"USD"}"#,
                201,
            ),
            post(
                "/accounts",
                &key,
                r#"{"holder_name":"","email":"x","currency":"usd"}"#,
                422,
            ),
            Case::get("/accounts/{account_id}", "/accounts/ACC-0001", 200),
            Case::get("/accounts/{account_id}", "/accounts/ACC-9999", 404),
            Case::get("/deposits/{deposit_id}", "/deposits/not-a-uuid", 422),
            Case::get(
                "/deposits/{deposit_id}",
                "/deposits/019ac4f0-0000-7000-8000-000000000000",
                404,
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(bodies[0], bodies[1]);
    assert_eq!(bodies[0]["sequence"], 1);
    let deposit_id = bodies[0]["deposit_id"].as_str().unwrap().to_owned();
    let one = format!("/deposits/{deposit_id}");
    let bodies = check_answers(
        &router,
        &spec,
        &[Case::get("/deposits/{deposit_id}", &one, 200)],
    )
    .await
    .unwrap();
    assert_eq!(bodies[0]["amount_minor"], 25_000);
    db.drop_db().await.unwrap();
}
