//! The OpenAPI spec and the routes agree: the spec holds exactly the routes below, each answers
//! on the router `run` serves (ops routes, `/openapi.json` and `/docs` included), and answers
//! match their documented schemas.

use crate::helpers::{TestApp, setup, usd};
use eventbank_runtime::http::service_router;
use eventbank_runtime::testing::{Case, check_answers, check_spec_against_router, ops_state};
use interest::AppState;

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/interest/accounts/{account_id}"),
    ("GET", "/interest/accounts/{account_id}/balance"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

fn full_router(app: &TestApp) -> (axum::Router, utoipa::openapi::OpenApi) {
    let pool = app.db.pool.clone();
    service_router(
        interest::api::router(AppState { pool: pool.clone() }),
        ops_state(pool),
    )
}

#[tokio::test]
async fn spec_and_routes_agree() {
    let app = setup().await;
    app.apply(&[usd("ACC-0001", 25_000, "2024-04-01T10:00:00Z")])
        .await;
    let (router, spec) = full_router(&app);
    let answers = check_spec_against_router(router, &spec, ROUTES, &[("account_id", "ACC-0001")])
        .await
        .expect("spec and routes agree");
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    app.finish().await;
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let app = setup().await;
    app.apply(&[usd("ACC-0001", 25_000, "2024-04-01T10:00:00Z")])
        .await;
    let (router, spec) = full_router(&app);
    const ACCRUAL: &str = "/interest/accounts/{account_id}";
    const BALANCE: &str = "/interest/accounts/{account_id}/balance";
    let get = Case::get;
    check_answers(
        &router,
        &spec,
        &[
            get(
                ACCRUAL,
                "/interest/accounts/ACC-0001?from=2024-04-01&to=2024-04-10",
                200,
            ),
            get(ACCRUAL, "/interest/accounts/ACC-0001?from=2030-01-01", 200),
            get(
                ACCRUAL,
                "/interest/accounts/ACC-0001?from=2024-04-05&to=2024-04-01",
                400,
            ),
            get(ACCRUAL, "/interest/accounts/not-an-id", 400),
            get(ACCRUAL, "/interest/accounts/ACC-9999", 404),
            get(BALANCE, "/interest/accounts/ACC-0001/balance", 200),
            get(BALANCE, "/interest/accounts/ACC-9999/balance", 404),
        ],
    )
    .await
    .expect("answers match the spec");
    app.finish().await;
}
