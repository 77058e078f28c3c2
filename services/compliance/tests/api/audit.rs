//! The hash-chained audit log: one entry per event, verification, tamper evidence.

use crate::helpers::{at, hours, setup, usd};
use compliance::chain::{self, GENESIS};

#[tokio::test]
async fn the_chain_of_a_thousand_entries_verifies_and_continues_across_batches() {
    let app = setup().await;
    let base = app.serve().await;
    let start = at("2024-01-01T00:00:00Z");
    // 1,000 small deposits over 20 accounts, one batch: one transaction, one INSERT.
    let events: Vec<_> = (0..1_000)
        .map(|i| {
            usd(
                &format!("ACC-{:03}", i % 20),
                100 + i,
                start + chrono::TimeDelta::minutes(i),
            )
        })
        .collect();
    app.apply(&events).await;
    let (status, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["entries"], 1_000);
    assert_eq!(body["head_position"], 1_000);

    // Positions follow delivery order.
    let (position, event_id): (i64, uuid::Uuid) =
        sqlx::query_as("SELECT position, event_id FROM audit_log WHERE position = 500")
            .fetch_one(&app.db.pool)
            .await
            .unwrap();
    assert_eq!((position, event_id), (500, events[499].event_id));

    // A second batch links to the first.
    let more: Vec<_> = (0..5)
        .map(|i| usd("ACC-MORE", 10 + i, start + hours(i)))
        .collect();
    app.apply(&more).await;
    let (_, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["entries"], 1_005);
    app.finish().await;
}

#[tokio::test]
async fn tampering_with_a_row_is_reported_at_that_position() {
    let app = setup().await;
    let base = app.serve().await;
    let start = at("2024-02-01T09:00:00Z");
    let events: Vec<_> = (0..20)
        .map(|i| usd("ACC-TAMPER", 1_000 + i, start + hours(i)))
        .collect();
    app.apply(&events).await;
    let original: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE position = 12")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();

    // Overwrite one stored hash.
    app.tamper("UPDATE audit_log SET hash = sha256('forged'::bytea) WHERE position = 12")
        .await;
    let (status, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["first_broken_position"], 12);
    assert_eq!(body["entries_checked"], 11);
    assert_eq!(body["reason"], "hash_mismatch");
    assert_eq!(body["expected_hash"], chain::hex(&original));

    // Rewrite an earlier entry's amount: that becomes the first broken link.
    app.tamper(
        "UPDATE audit_log SET entry = replace(entry, '\"amount_minor\":1006', '\"amount_minor\":1') \
         WHERE position = 7",
    )
    .await;
    let (_, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["first_broken_position"], 7);
    assert_eq!(body["entries_checked"], 6);
    assert_eq!(body["reason"], "hash_mismatch");
    app.finish().await;
}

#[tokio::test]
async fn deleting_the_last_entry_is_reported_by_the_head() {
    let app = setup().await;
    let base = app.serve().await;
    let events: Vec<_> = (0..3)
        .map(|i| usd("ACC-TAIL", 10 + i, at("2024-03-01T00:00:00Z") + hours(i)))
        .collect();
    app.apply(&events).await;
    app.tamper("DELETE FROM audit_log WHERE position = 3").await;
    let (_, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["first_broken_position"], 3);
    assert_eq!(body["reason"], "head_mismatch");
    app.finish().await;
}

#[tokio::test]
async fn the_audit_log_refuses_update_delete_and_truncate() {
    let app = setup().await;
    app.apply(&[usd("ACC-RO", 500, at("2024-01-01T00:00:00Z"))])
        .await;
    for statement in [
        "UPDATE audit_log SET account_id = 'ACC-OTHER'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(statement)
            .execute(&app.db.pool)
            .await
            .unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert!(
            db.message().contains("append-only"),
            "{statement}: {}",
            db.message()
        );
        assert_eq!(db.code().as_deref(), Some("42501"), "{statement}");
    }
    assert_eq!(app.count("audit_log").await, 1);
    app.finish().await;
}

#[tokio::test]
async fn the_same_event_twice_gets_one_entry_and_one_alert() {
    let app = setup().await;
    let big = usd("ACC-TWICE", 2_000_000, at("2024-01-01T00:00:00Z"));
    assert_eq!(app.deliver(std::slice::from_ref(&big)).await, 1);
    assert_eq!(app.deliver(std::slice::from_ref(&big)).await, 0);
    // Past the runtime's dedup (a redrive after a restore, or a repeated id in one batch), the
    // handler still writes one entry per event.
    app.apply(&[big.clone(), big.clone()]).await;
    assert_eq!(app.count("audit_log").await, 1);
    assert_eq!(app.count("alerts").await, 1);
    let head: i64 = sqlx::query_scalar("SELECT position FROM chain_head")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(head, 1);
    app.finish().await;
}

#[tokio::test]
async fn audit_entries_page_by_account_and_can_be_checked_by_anyone() {
    let app = setup().await;
    let base = app.serve().await;
    let start = at("2024-04-01T00:00:00Z");
    let mut events = Vec::new();
    for i in 0..5 {
        events.push(usd("ACC-PAGE-A", 100 + i, start + hours(i)));
        if i < 3 {
            events.push(usd("ACC-PAGE-B", 200 + i, start + hours(i)));
        }
    }
    app.apply(&events).await;

    let (status, _, page1) = app
        .get(&base, "/compliance/audit?account_id=ACC-PAGE-A&limit=3")
        .await;
    assert_eq!(status, 200);
    let items = page1["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|i| i["account_id"] == "ACC-PAGE-A"));
    let after = page1["next_after"].as_i64().unwrap();
    let (_, _, page2) = app
        .get(
            &base,
            &format!("/compliance/audit?account_id=ACC-PAGE-A&limit=3&after={after}"),
        )
        .await;
    assert_eq!(page2["items"].as_array().unwrap().len(), 2);
    assert!(page2["next_after"].is_null());

    // The whole chain, recomputed from what the API shows.
    let (_, _, all) = app.get(&base, "/compliance/audit?limit=1000").await;
    let mut prev = chain::hex(&GENESIS);
    for item in all["items"].as_array().unwrap() {
        assert_eq!(item["prev_hash"], prev.as_str());
        let recomputed = chain::hex(&chain::link_hash(
            &decode_hex(item["prev_hash"].as_str().unwrap()),
            item["entry"].as_str().unwrap(),
        ));
        assert_eq!(item["hash"], recomputed.as_str());
        assert_eq!(recomputed.len(), 64);
        prev = recomputed;
    }
    assert_eq!(all["items"].as_array().unwrap().len(), 8);
    app.finish().await;
}

fn decode_hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[tokio::test]
async fn the_owner_of_the_audit_log_holds_no_update_delete_or_truncate_privilege() {
    let app = setup().await;
    // The migration's role owns the table; in deployment that is the service's role, which
    // must be able to INSERT and SELECT only. (Tests migrate as a superuser, who bypasses
    // privileges: the ACL itself is what is checked here, and the trigger test above covers
    // the superuser.)
    let owner_privileges: Vec<String> = sqlx::query_scalar(
        "SELECT a.privilege_type FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a \
          WHERE c.oid = 'audit_log'::regclass AND a.grantee = c.relowner ORDER BY 1",
    )
    .fetch_all(&app.db.pool)
    .await
    .unwrap();
    assert!(
        owner_privileges.contains(&"INSERT".to_owned()),
        "{owner_privileges:?}"
    );
    assert!(
        owner_privileges.contains(&"SELECT".to_owned()),
        "{owner_privileges:?}"
    );
    for forbidden in ["UPDATE", "DELETE", "TRUNCATE"] {
        assert!(
            !owner_privileges.contains(&forbidden.to_owned()),
            "{owner_privileges:?}"
        );
    }
    let public: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a \
          WHERE c.oid = 'audit_log'::regclass AND a.grantee = 0",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(public, 0);
    app.finish().await;
}
