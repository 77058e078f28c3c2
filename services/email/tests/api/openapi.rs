//! The OpenAPI spec and the routes agree: the spec holds exactly the routes below, each answers
//! on the router `run` serves (ops routes, `/openapi.json` and `/docs` included).

use crate::helpers::{alice, database, handle};
use eventbank_runtime::http::{OpsState, service_router};
use eventbank_runtime::testing::{Case, check_answers, check_spec_against_router, ops_state};

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/emails"),
    ("GET", "/emails/{event_id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

fn full_router(pool: sqlx::PgPool, ops: OpsState) -> (axum::Router, utoipa::openapi::OpenApi) {
    service_router(email::api::router(email::AppState { pool }), ops)
}

#[tokio::test]
async fn spec_and_routes_agree() {
    let db = database().await;
    let known = alice(100);
    handle(&db.pool, std::slice::from_ref(&known)).await;
    let (router, spec) = full_router(db.pool.clone(), ops_state(db.pool.clone()));
    let event_id = known.event_id.to_string();
    let answers = check_spec_against_router(router, &spec, ROUTES, &[("event_id", &event_id)])
        .await
        .expect("spec and routes agree");
    assert!(answers.iter().all(|a| a.status == 200), "{answers:?}");
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn spec_describes_the_responses() {
    let db = database().await;
    let (_, spec) = full_router(db.pool.clone(), ops_state(db.pool.clone()));
    let json = serde_json::to_value(&spec).expect("spec as JSON");
    assert_eq!(json["info"]["title"], "eventbank email");
    let detail = &json["paths"]["/emails/{event_id}"]["get"]["responses"];
    assert_eq!(
        detail["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EmailDetail"
    );
    assert_eq!(
        detail["404"]["content"]["application/problem+json"]["schema"]["$ref"],
        "#/components/schemas/Problem"
    );
    for schema in ["EmailSummary", "EmailDetail", "EmailStatus", "Problem"] {
        assert!(
            json["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn answers_match_their_documented_schemas() {
    let db = database().await;
    let known = alice(100);
    handle(&db.pool, std::slice::from_ref(&known)).await;
    let (router, spec) = full_router(db.pool.clone(), ops_state(db.pool.clone()));
    let one = format!("/emails/{}", known.event_id);
    let unknown = format!("/emails/{}", uuid::Uuid::now_v7());
    let get = Case::get;
    let bodies = check_answers(
        &router,
        &spec,
        &[
            get("/emails", "/emails?account_id=ACC-0042&status=queued", 200),
            get("/emails", "/emails?status=lost", 400),
            get("/emails", "/emails?account_id=nobody", 400),
            get("/emails/{event_id}", &one, 200),
            get("/emails/{event_id}", "/emails/not-a-uuid", 400),
            get("/emails/{event_id}", &unknown, 404),
            get("/healthz", "/healthz", 200),
            get("/readyz", "/readyz", 200),
        ],
    )
    .await
    .expect("answers match the spec");
    assert_eq!(bodies[0].as_array().map(Vec::len), Some(1));
    db.drop_db().await.expect("drop");
}
