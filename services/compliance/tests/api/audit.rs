//! The hash-chained audit log: one entry per event, verification, tamper evidence.

use crate::helpers::{RoleDatabase, at, hours, setup, usd};
use compliance::ComplianceHandler;
use compliance::chain::{self, GENESIS};
use eventbank_runtime::consumer::Handler;

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
    let mut prev = chain::hex(GENESIS);
    for item in all["items"].as_array().unwrap() {
        assert_eq!(item["prev_hash"], prev.as_str());
        let recomputed = chain::hex(chain::link_hash(
            &hex::decode(item["prev_hash"].as_str().unwrap()).unwrap(),
            item["entry"].as_str().unwrap(),
        ));
        assert_eq!(item["hash"], recomputed.as_str());
        assert_eq!(recomputed.len(), 64);
        prev = recomputed;
    }
    assert_eq!(all["items"].as_array().unwrap().len(), 8);
    app.finish().await;
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

#[tokio::test]
async fn the_chain_of_ten_thousand_entries_verifies_and_a_tampered_entry_is_found() {
    let app = setup().await;
    let base = app.serve().await;
    let start = at("2024-01-01T00:00:00Z");
    // 10,000 deposits over 100 accounts, in batches of 50 (the runtime's default batch size):
    // 200 transactions, each continuing the chain where the previous one ended.
    let events: Vec<_> = (0..10_000)
        .map(|i| {
            usd(
                &format!("ACC-{:04}", i % 100),
                1 + i % 997,
                start + chrono::TimeDelta::seconds(i * 37),
            )
        })
        .collect();
    for batch in events.chunks(50) {
        app.deliver(batch).await;
    }
    let (status, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(status, 200);
    assert_eq!(body["ok"], true, "{body}");
    assert_eq!(body["entries"], 10_000);
    assert_eq!(body["head_position"], 10_000);
    let last: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE position = 10000")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(body["head_hash"], chain::hex(&last));

    // A superuser rewrites the amount of entry 7,777 (and nothing else): the walk stops there.
    let original: Vec<u8> = sqlx::query_scalar("SELECT hash FROM audit_log WHERE position = 7777")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    app.tamper(
        "UPDATE audit_log SET entry = regexp_replace(entry, '\"amount_minor\":[0-9]+', \
         '\"amount_minor\":1') WHERE position = 7777",
    )
    .await;
    let (_, _, body) = app.get(&base, "/compliance/verify").await;
    assert_eq!(body["ok"], false, "{body}");
    assert_eq!(body["first_broken_position"], 7_777);
    assert_eq!(body["entries_checked"], 7_776);
    assert_eq!(body["reason"], "hash_mismatch");
    assert_eq!(body["stored_hash"], chain::hex(&original));
    app.finish().await;
}

#[tokio::test]
async fn the_service_role_can_insert_and_select_the_audit_log_but_never_update_or_delete_it() {
    // Arrange: like scripts/setup and compose, a login role that is not a superuser owns the
    // database and runs the migrations, so it owns the audit_log table too.
    let owned = RoleDatabase::create().await;
    let (is_superuser, owner): (bool, String) = sqlx::query_as(
        "SELECT r.rolsuper, pg_get_userbyid(c.relowner) FROM pg_roles r, pg_class c \
          WHERE r.rolname = current_user AND c.oid = 'audit_log'::regclass",
    )
    .fetch_one(&owned.pool)
    .await
    .unwrap();
    assert!(!is_superuser);
    assert_eq!(owner, owned.role, "the service role owns the table");

    // INSERT and SELECT: the handler appends, verification reads.
    let handler = ComplianceHandler::default();
    let mut tx = owned.pool.begin().await.unwrap();
    handler
        .handle(
            &mut tx,
            &[
                usd("ACC-ROLE", 100, at("2024-01-01T00:00:00Z")),
                usd("ACC-ROLE", 2_000_000, at("2024-01-01T01:00:00Z")),
            ],
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let verified = compliance::store::verify_snapshot(&owned.pool)
        .await
        .unwrap();
    assert!(
        matches!(
            verified,
            compliance::store::Verification::Intact { entries: 2, .. }
        ),
        "{verified:?}"
    );

    // UPDATE, DELETE, TRUNCATE: refused by privilege (42501 "permission denied"), before any
    // trigger runs.
    for statement in [
        "UPDATE audit_log SET account_id = 'ACC-OTHER'",
        "UPDATE audit_log SET hash = sha256('forged'::bytea) WHERE position = 1",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE position = 2",
        "TRUNCATE audit_log",
    ] {
        let err = sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&owned.pool)
            .await
            .unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("42501"), "{statement}: {db}");
        assert!(
            db.message().contains("permission denied"),
            "{statement}: {}",
            db.message()
        );
    }
    // Switching the append-only trigger off, which the owner may do, does not help: the
    // privilege is gone.
    let mut conn = owned.pool.acquire().await.unwrap();
    sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete")
        .execute(&mut *conn)
        .await
        .unwrap();
    let err = sqlx::query("DELETE FROM audit_log")
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("42501")
    );
    drop(conn);
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log")
        .fetch_one(&owned.pool)
        .await
        .unwrap();
    assert_eq!(count, 2);
    owned.drop_all().await;
}

/// Rows of `audit_log` read by sequential scans so far. `pool`'s one connection flushes its
/// statistics first: a backend reports them before it answers, when told to.
async fn audit_log_rows_scanned(app: &crate::helpers::TestApp, pool: &sqlx::PgPool) -> i64 {
    sqlx::query("SELECT pg_stat_force_next_flush()")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'audit_log'")
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// A service starts on an empty audit log, and a busy one reuses each of its connections. The
/// lookup of the events already recorded must not keep a plan made for the empty table: once
/// the log has grown, a batch reads the index, not the whole log (Postgres caches a prepared
/// statement's generic plan after five executions, until an ANALYZE invalidates it).
#[tokio::test]
async fn a_batch_does_not_scan_the_whole_audit_log_once_it_has_grown() {
    let app = setup().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&app.db.url)
        .await
        .unwrap();
    let start = at("2024-01-01T00:00:00Z");
    // Batches of 60 events, each of its own account, as a busy service's batches are.
    let apply_on_pool = |batch: i64| {
        let pool = pool.clone();
        let handler = &app.handler;
        async move {
            let events: Vec<_> = (0..60)
                .map(|i| usd(&format!("ACC-{batch}-{i}"), 100 + i, start + hours(batch)))
                .collect();
            let mut tx = pool.begin().await.unwrap();
            handler.handle(&mut tx, &events).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    // Eight batches while the log is small: a prepared lookup of 60 ids costs more planned
    // with its values than a generic sequential scan of a small table, so Postgres would keep
    // the scan.
    for batch in 0..8 {
        apply_on_pool(batch).await;
    }
    // The log grows by 20,000 entries (outside the chain: only their number matters here).
    sqlx::query(
        "INSERT INTO audit_log (position, event_id, account_id, entry, prev_hash, hash, recorded_at)
         SELECT 1000000000 + g, gen_random_uuid(), 'ACC-BULK', 'bulk',
                decode(repeat('00', 32), 'hex'), decode(repeat('00', 32), 'hex'), now()
         FROM generate_series(1, 20000) g",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    let before = audit_log_rows_scanned(&app, &pool).await;
    for batch in 8..11 {
        apply_on_pool(batch).await;
    }
    let scanned = audit_log_rows_scanned(&app, &pool).await - before;
    assert!(
        scanned < 20_000,
        "three batches read {scanned} audit log rows by sequential scan: a plan made for the \
         empty log is still in use"
    );
    pool.close().await;
    app.finish().await;
}
