//! The OpenAPI spec and the routes agree: the spec holds exactly the routes below, each answers
//! on the router `run` serves (ops routes, `/openapi.json` and `/docs` included), and answers
//! match their documented schemas.

use crate::{event, fresh_db, handle};
use account::changes::Changes;
use eventbank_runtime::http::service_router;
use eventbank_runtime::testing::{
    Case, TestDatabase, check_answers, check_spec_against_router, ops_state,
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/accounts/{account_id}"),
    ("GET", "/accounts/{account_id}/transactions"),
    ("GET", "/accounts/{account_id}/balance"),
    ("GET", "/accounts/{account_id}/stream"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// The router `run` serves; the listener of change notifications is not started (a query that
/// waits falls back to polling), and `stop` ends the SSE streams.
fn full_router(
    db: &TestDatabase,
    stop: &CancellationToken,
) -> (axum::Router, utoipa::openapi::OpenApi) {
    let state = account::api::AppState {
        pool: db.pool.clone(),
        max_wait: Duration::from_secs(1),
        changes: Changes::new(),
        stop: stop.clone(),
    };
    service_router(account::api::router(state), ops_state(db.pool.clone()))
}

#[tokio::test]
async fn spec_and_routes_agree() {
    let db = fresh_db().await;
    handle(&db, &[event("ACC-0001", 1, 25_000)]).await;
    let stop = CancellationToken::new();
    let (router, spec) = full_router(&db, &stop);
    let answers = check_spec_against_router(router, &spec, ROUTES, &[("account_id", "ACC-0001")])
        .await
        .unwrap();
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    stop.cancel();
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let db = fresh_db().await;
    handle(
        &db,
        &[event("ACC-0001", 1, 25_000), event("ACC-0001", 2, 1_000)],
    )
    .await;
    let stop = CancellationToken::new();
    let (router, spec) = full_router(&db, &stop);
    const ACCOUNT: &str = "/accounts/{account_id}";
    const TRANSACTIONS: &str = "/accounts/{account_id}/transactions";
    const BALANCE: &str = "/accounts/{account_id}/balance";
    let get = Case::get;
    let bodies = check_answers(
        &router,
        &spec,
        &[
            get(ACCOUNT, "/accounts/ACC-0001?min_sequence=2&wait=1s", 200),
            get(ACCOUNT, "/accounts/ACC-0001?min_sequence=99&wait=10ms", 503),
            get(ACCOUNT, "/accounts/ACC-0001?wait=forever", 400),
            get(ACCOUNT, "/accounts/ACC-9999", 404),
            get(TRANSACTIONS, "/accounts/ACC-0001/transactions?limit=1", 200),
            get(TRANSACTIONS, "/accounts/ACC-0001/transactions", 200),
            get(TRANSACTIONS, "/accounts/ACC-0001/transactions?limit=0", 400),
            get(TRANSACTIONS, "/accounts/ACC-9999/transactions", 404),
            get(BALANCE, "/accounts/ACC-0001/balance", 200),
            get(BALANCE, "/accounts/ACC-0001/balance?as_of=yesterday", 400),
            get(
                BALANCE,
                "/accounts/ACC-0001/balance?as_of=2020-01-01T00:00:00Z",
                404,
            ),
        ],
    )
    .await
    .unwrap();
    assert_eq!(bodies[0]["balance"], "260.00");
    assert_eq!(bodies[1]["current_sequence"], 2);
    assert_eq!(bodies[4]["next_after_sequence"], 1);
    assert!(bodies[5]["next_after_sequence"].is_null());
    assert_eq!(bodies[8]["computed_from"]["replayed_events"], 3);
    stop.cancel();
    db.drop_db().await.unwrap();
}
