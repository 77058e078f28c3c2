//! The HTTP contract: an empty chain, alerts listing, problems for bad parameters.

use crate::helpers::{at, hours, setup, usd};

#[tokio::test]
async fn an_empty_chain_verifies() {
    let app = setup().await;
    let base = app.serve().await;
    let (status, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true);
    assert_eq!(body["entries"], 0);
    assert_eq!(body["head_hash"], "0".repeat(64));
    app.finish().await;
}

#[tokio::test]
async fn alerts_are_listed_by_account_and_kind() {
    let app = setup().await;
    let base = app.serve().await;
    let start = at("2024-06-01T00:00:00Z");
    app.apply(&[
        usd("ACC-L1", 2_000_000, start),
        usd("ACC-L2", 3_000_000, start),
        usd("ACC-L2", 600_000, start + hours(1)),
        usd("ACC-L2", 600_000, start + hours(2)),
    ])
    .await;
    let (status, _, body) = app.get(&base, "/compliance/alerts?account_id=ACC-L2").await;
    assert_eq!(status, 200);
    let kinds: Vec<&str> = body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["ctr", "structuring"]);
    let (_, _, body) = app.get(&base, "/compliance/alerts?kind=ctr").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    let (_, _, body) = app.get(&base, "/compliance/alerts?kind=structuring").await;
    let item = &body["items"][0];
    assert_eq!(item["account_id"], "ACC-L2");
    assert_eq!(item["amount_minor"], 1_200_000);
    assert_eq!(item["currency"], "USD");
    assert_eq!(item["details"]["threshold_minor"], 1_000_000);
    let (_, _, body) = app.get(&base, "/compliance/alerts?limit=1").await;
    assert_eq!(body["items"].as_array().unwrap().len(), 1);
    let after = body["next_after"].as_i64().unwrap();
    let (_, _, body) = app
        .get(&base, &format!("/compliance/alerts?limit=10&after={after}"))
        .await;
    assert_eq!(body["items"].as_array().unwrap().len(), 2);
    app.finish().await;
}

#[tokio::test]
async fn bad_query_parameters_are_problems() {
    let app = setup().await;
    let base = app.serve().await;
    for path in [
        "/compliance/audit?limit=0",
        "/compliance/audit?limit=1001",
        "/compliance/audit?after=-1",
        "/compliance/audit?after=abc",
        "/compliance/audit?account_id=lower-case",
        "/compliance/alerts?kind=other",
        "/compliance/alerts?account_id=%00",
    ] {
        let (status, content_type, body) = app.get(&base, path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(content_type, "application/problem+json", "{path}");
        assert_eq!(body["type"], "urn:eventbank:problem:bad-request", "{path}");
    }
    app.finish().await;
}
