//! `GET /accounts/{id}/balance?as_of=`: the balance at several instants, from the event store
//! (snapshot + replay), equals a reference fold over the deposits computed here.

use crate::{event_at, fresh_db, get_json, handle_with, serve};
use account::handler::AccountHandler;
use chrono::{DateTime, Duration, SecondsFormat, TimeZone, Utc};

#[tokio::test]
async fn the_balance_at_an_instant_matches_a_reference_fold() {
    let db = fresh_db().await;
    let served = serve(&db).await;
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let deposits: Vec<_> = (1..=30i64)
        .map(|s| {
            let at = start + Duration::minutes(s * 10) + Duration::microseconds(s * 7);
            event_at("ACC-0007", s, 1_000 + s * 37, at)
        })
        .collect();
    let handler = AccountHandler::new(4);
    for batch in deposits.chunks(3) {
        handle_with(&db, &handler, batch).await;
    }

    let reference = |t: DateTime<Utc>| -> (i64, i64, i64) {
        let counted: Vec<_> = deposits.iter().filter(|d| d.occurred_at <= t).collect();
        (
            counted.iter().map(|d| d.amount_minor).sum(),
            counted.len() as i64,
            counted.last().map_or(0, |d| d.sequence),
        )
    };
    let instants = [
        deposits[0].occurred_at, // the first deposit, inclusive
        deposits[0].occurred_at + Duration::minutes(5), // between two deposits
        deposits[6].occurred_at - Duration::microseconds(1), // just before one
        deposits[6].occurred_at, // exactly at one
        deposits[17].occurred_at + Duration::seconds(1),
        deposits[29].occurred_at,                       // the last one
        deposits[29].occurred_at + Duration::days(365), // long after
    ];
    for t in instants {
        let as_of = t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let (status, body) = get_json(&format!(
            "{}/accounts/ACC-0007/balance?as_of={as_of}",
            served.base
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        let (balance, count, last) = reference(t);
        assert_eq!(body["balance_minor"], balance, "as of {as_of}: {body}");
        assert_eq!(body["deposit_count"], count, "as of {as_of}");
        assert_eq!(body["last_sequence"], last, "as of {as_of}");
        assert_eq!(body["version"], count + 1, "as of {as_of}");
        assert_eq!(body["as_of"], as_of);
    }
    // Late instants start from a snapshot instead of replaying the whole stream.
    let (_, late) = get_json(&format!(
        "{}/accounts/ACC-0007/balance?as_of={}",
        served.base,
        (deposits[29].occurred_at).to_rfc3339_opts(SecondsFormat::Micros, true)
    ))
    .await;
    assert_eq!(late["computed_from"]["snapshot_version"], 28, "{late}");
    assert_eq!(late["computed_from"]["replayed_events"], 3, "{late}");
    assert_eq!(
        late["balance"],
        format!(
            "{}.{:02}",
            late["balance_minor"].as_i64().unwrap() / 100,
            late["balance_minor"].as_i64().unwrap() % 100
        )
    );

    let before = (start - Duration::days(1)).to_rfc3339_opts(SecondsFormat::Secs, true);
    let (status, problem) = get_json(&format!(
        "{}/accounts/ACC-0007/balance?as_of={before}",
        served.base
    ))
    .await;
    assert_eq!(status, 404, "{problem}");
    let (status, _) = get_json(&format!(
        "{}/accounts/ACC-0007/balance?as_of=yesterday",
        served.base
    ))
    .await;
    assert_eq!(status, 400);
    drop(served);
    db.drop_db().await.unwrap();
}
