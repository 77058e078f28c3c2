//! The sender with the file transport: one `.eml` per event, then the row is `sent`.

use crate::helpers::{
    TempDir, alice, database, event, fast_settings, handle, header, row, start_sender,
    wait_all_sent, wait_for,
};
use email::store::EmailStatus;
use email::{Mailer, Transport};
use std::time::Duration;

fn file_mailer(dir: &TempDir) -> Mailer {
    Mailer::new(
        &Transport::File { dir: dir.0.clone() },
        Duration::from_secs(5),
    )
}

#[tokio::test]
async fn the_file_transport_writes_one_eml_per_event_and_marks_rows_sent() {
    let db = database().await;
    let dir = TempDir::new();
    let events = vec![
        alice(123_450),
        alice(7),
        event(
            "ACC-0009",
            1_500_000,
            "JPY",
            "Chiyo Rei",
            "chiyo@example.com",
        ),
    ];
    handle(&db.pool, &events).await;

    let sender = start_sender(&db.pool, file_mailer(&dir), fast_settings());
    wait_all_sent(&db.pool, &events, Duration::from_secs(20)).await;
    sender.stop().await;

    let mut names: Vec<String> = std::fs::read_dir(&dir.0)
        .expect("mail dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    let mut expected: Vec<String> = events
        .iter()
        .map(|e| format!("{}.eml", e.event_id))
        .collect();
    expected.sort();
    assert_eq!(
        names, expected,
        "exactly one .eml per event, no temporary files left"
    );

    let first =
        std::fs::read_to_string(dir.0.join(format!("{}.eml", events[0].event_id))).expect("eml");
    assert_eq!(
        header(&first, "Message-ID").as_deref(),
        Some(format!("<{}@eventbank.example>", events[0].event_id).as_str())
    );
    let to = header(&first, "To").expect("To");
    assert!(
        to.contains("<alice@example.com>") && to.contains("Alice Example"),
        "{to}"
    );
    assert_eq!(
        header(&first, "Subject").as_deref(),
        Some("Deposit of 1,234.50 USD received")
    );
    assert!(
        header(&first, "From")
            .expect("From")
            .contains("no-reply@eventbank.example")
    );
    assert!(
        header(&first, "Content-Type")
            .expect("Content-Type")
            .starts_with("multipart/alternative")
    );
    assert!(
        first.contains("Content-Type: text/plain; charset=utf-8"),
        "{first}"
    );
    assert!(
        first.contains("Content-Type: text/html; charset=utf-8"),
        "{first}"
    );
    assert!(first.contains("Hello Alice Example,"), "{first}");
    assert!(first.contains("****0042"), "{first}");

    let jpy =
        std::fs::read_to_string(dir.0.join(format!("{}.eml", events[2].event_id))).expect("eml");
    assert_eq!(
        header(&jpy, "Subject").as_deref(),
        Some("Deposit of 1,500,000 JPY received")
    );

    for e in &events {
        let stored = row(&db.pool, e.event_id).await.expect("row");
        assert_eq!(stored.summary.attempts, 1);
        assert!(stored.summary.sent_at.is_some());
    }
    dir.remove();
    db.drop_db().await.expect("drop");
}

#[tokio::test]
async fn an_invalid_address_fails_at_once_and_does_not_hold_up_the_others() {
    let db = database().await;
    let dir = TempDir::new();
    let bad = event("ACC-0042", 100, "USD", "Nobody", "not an address");
    let good = alice(200);
    handle(&db.pool, &[bad.clone(), good.clone()]).await;

    let sender = start_sender(&db.pool, file_mailer(&dir), fast_settings());
    let failed = wait_for(
        "the bad email to be marked failed",
        Duration::from_secs(20),
        || async {
            row(&db.pool, bad.event_id)
                .await
                .filter(|r| r.summary.status == EmailStatus::Failed)
        },
    )
    .await;
    wait_all_sent(
        &db.pool,
        std::slice::from_ref(&good),
        Duration::from_secs(20),
    )
    .await;
    sender.stop().await;

    assert_eq!(
        failed.summary.attempts, 1,
        "a permanent error is not retried"
    );
    let reason = failed.summary.last_error.expect("reason");
    assert!(reason.contains("invalid recipient address"), "{reason}");
    assert!(!dir.0.join(format!("{}.eml", bad.event_id)).exists());
    assert!(dir.0.join(format!("{}.eml", good.event_id)).exists());
    dir.remove();
    db.drop_db().await.expect("drop");
}
