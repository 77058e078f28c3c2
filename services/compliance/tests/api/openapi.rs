//! The OpenAPI spec and the routes agree: the spec holds exactly the routes below, each answers
//! on the router `run` serves (ops routes, `/openapi.json` and `/docs` included), and answers
//! match their documented schemas (both shapes of the verification report included).

use crate::helpers::{TestApp, at, hours, setup, usd};
use compliance::AppState;
use eventbank_runtime::http::service_router;
use eventbank_runtime::testing::{Case, check_answers, check_spec_against_router, ops_state};

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/compliance/audit"),
    ("GET", "/compliance/alerts"),
    ("GET", "/compliance/verify"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

fn full_router(app: &TestApp) -> (axum::Router, utoipa::openapi::OpenApi) {
    let pool = app.db.pool.clone();
    service_router(
        compliance::api::router(AppState { pool: pool.clone() }),
        ops_state(pool),
    )
}

#[tokio::test]
async fn spec_and_routes_agree() {
    let app = setup().await;
    let (router, spec) = full_router(&app);
    let answers = check_spec_against_router(router, &spec, ROUTES, &[])
        .await
        .expect("spec and routes agree");
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    app.finish().await;
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let app = setup().await;
    let start = at("2024-06-01T00:00:00Z");
    app.apply(&[
        usd("ACC-0002", 3_000_000, start),
        usd("ACC-0002", 600_000, start + hours(1)),
        usd("ACC-0002", 600_000, start + hours(2)),
    ])
    .await;
    let (router, spec) = full_router(&app);
    let bodies = check_answers(
        &router,
        &spec,
        &[
            Case::get(
                "/compliance/audit",
                "/compliance/audit?account_id=ACC-0002",
                200,
            ),
            Case::get("/compliance/audit", "/compliance/audit?limit=0", 400),
            Case::get(
                "/compliance/alerts",
                "/compliance/alerts?include_superseded=true",
                200,
            ),
            Case::get("/compliance/alerts", "/compliance/alerts?kind=other", 400),
            Case::get("/compliance/verify", "/compliance/verify", 200),
        ],
    )
    .await
    .expect("answers match the spec");
    assert_eq!(bodies[0]["items"].as_array().map(Vec::len), Some(3));
    assert_eq!(bodies[2]["items"].as_array().map(Vec::len), Some(2));
    assert_eq!(bodies[4]["ok"], true);

    // The other shape of the report.
    app.tamper("UPDATE audit_log SET hash = sha256('forged'::bytea) WHERE position = 2")
        .await;
    let bodies = check_answers(
        &router,
        &spec,
        &[Case::get("/compliance/verify", "/compliance/verify", 200)],
    )
    .await
    .expect("a broken chain's report matches the spec");
    assert_eq!(bodies[0]["ok"], false);
    assert_eq!(bodies[0]["first_broken_position"], 2);
    app.finish().await;
}
