//! Read-your-writes: `GET /accounts/{id}?min_sequence=N&wait=...` answers as soon as sequence
//! N is applied, or a 503 problem naming both sequences with `Retry-After`.

use crate::{event, fresh_db, handle, serve};
use std::time::{Duration, Instant};

#[tokio::test]
async fn read_your_writes_waits_for_the_sequence_or_answers_a_problem() {
    let db = fresh_db().await;
    let served = serve(&db).await;
    let base = &served.base;
    handle(&db, &[event("ACC-0001", 1, 500)]).await;
    let client = reqwest::Client::new();

    // Sequence 2 arrives while the query waits: the answer includes it, and it comes on the
    // change notification, well before the wait is over.
    let asked = Instant::now();
    let waiting = client
        .get(format!("{base}/accounts/ACC-0001?min_sequence=2&wait=5s"))
        .send();
    let before = served.changes.waiting();
    let apply_later = async {
        // Once the query waits for a change notification, apply sequence 2.
        let deadline = Instant::now() + Duration::from_secs(5);
        while served.changes.waiting() <= before {
            assert!(
                Instant::now() < deadline,
                "the query never waited for a change"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        handle(&db, &[event("ACC-0001", 2, 250)]).await;
    };
    let (res, ()) = tokio::join!(waiting, apply_later);
    let res = res.unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert!(
        asked.elapsed() < Duration::from_secs(4),
        "{:?}",
        asked.elapsed()
    );
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["balance_minor"], 750);
    assert_eq!(body["balance"], "7.50");
    assert_eq!(body["last_sequence"], 2);

    // Sequence 5 never arrives: a problem naming both sequences, with Retry-After.
    let res = client
        .get(format!(
            "{base}/accounts/ACC-0001?min_sequence=5&wait=200ms"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 503);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(res.headers()["retry-after"], "1");
    let problem: serde_json::Value = res.json().await.unwrap();
    assert_eq!(problem["type"], "urn:eventbank:problem:not-yet-consistent");
    assert_eq!(problem["current_sequence"], 2);
    assert_eq!(problem["min_sequence"], 5);

    let res = client
        .get(format!("{base}/accounts/ACC-0001?wait=forever"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = client
        .get(format!("{base}/accounts/ACC-0404"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 404);
    let res = client
        .get(format!("{base}/accounts/ACC-0001/transactions?limit=1"))
        .send()
        .await
        .unwrap();
    let page: serde_json::Value = res.json().await.unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["next_after_sequence"], 1);
    drop(served);
    db.drop_db().await.unwrap();
}
