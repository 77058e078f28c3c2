//! The rebuild: replaying a store of 100,000+ events (written set-based, plus some through the
//! live handler) reproduces the live projections exactly; damage to the live projections is
//! reported precisely, left alone by `--check`, and repaired otherwise.

use crate::{event, fresh_db, handle};
use account::rebuild::{Options, rebuild};
use eventbank_events::{AccountId, Currency};

fn options(check_only: bool) -> Options {
    Options {
        check_only,
        page_size: 7_000,
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rebuilding_a_store_of_100k_events_reproduces_the_live_projections_exactly() {
    let db = fresh_db().await;
    let generated = account::synthetic::generate(&db.pool, 1_000, 99)
        .await
        .unwrap();
    assert_eq!(generated, 100_000);
    // The live handler continues some generated streams (it must read what SQL wrote) and
    // starts new ones, one of them through parking.
    for a in 1..=20i64 {
        let id = format!("SYN-{a:07}");
        let mut e = event("ACC-0001", 100, 1_234);
        e.account_id = AccountId::parse(&id).unwrap();
        e.currency = Currency::parse(["USD", "EUR", "JPY"][(a % 3) as usize]).unwrap();
        handle(&db, &[e]).await;
    }
    handle(&db, &[event("ACC-0001", 1, 10), event("ACC-0001", 3, 30)]).await;
    handle(&db, &[event("ACC-0001", 2, 20), event("ACC-0002", 1, 5)]).await;

    let report = rebuild(&db.pool, &options(false)).await.unwrap();
    assert!(report.identical(), "{report}");
    assert!(!report.replaced);
    assert_eq!(report.events, 100_000 + 20 + 4 + 2);
    assert_eq!(report.accounts, 1_002);
    assert_eq!(report.transactions, 99_000 + 20 + 3 + 1);

    // Damage the live projections three ways.
    sqlx::raw_sql(
        "UPDATE balances SET balance_minor = balance_minor + 1 WHERE account_id = 'SYN-0000005';
         DELETE FROM transactions WHERE account_id = 'SYN-0000007' AND sequence = 50;
         INSERT INTO transactions (event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at)
         VALUES (gen_random_uuid(), 'ACC-0002', 2, gen_random_uuid(), 1, 'USD', now());",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let checked = rebuild(&db.pool, &options(true)).await.unwrap();
    assert_eq!(
        (checked.balance_differences, checked.transaction_differences),
        (1, 2),
        "{checked}"
    );
    let text = checked.to_string();
    assert!(text.contains("balances SYN-0000005"), "{text}");
    assert!(text.contains("transactions SYN-0000007 #50"), "{text}");
    assert!(text.contains("transactions ACC-0002 #2"), "{text}");
    assert!(!checked.replaced);
    let still_damaged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM transactions WHERE account_id = 'ACC-0002'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(still_damaged, 2, "--check changes nothing");

    let repaired = rebuild(&db.pool, &options(false)).await.unwrap();
    assert_eq!(
        (
            repaired.balance_differences,
            repaired.transaction_differences
        ),
        (1, 2)
    );
    assert!(repaired.replaced);
    let after = rebuild(&db.pool, &options(true)).await.unwrap();
    assert!(after.identical(), "{after}");
    db.drop_db().await.unwrap();
}
