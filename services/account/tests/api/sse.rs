//! `GET /accounts/{id}/stream`: the current state first, then one event per applied change,
//! driven by NOTIFY; resumable with `Last-Event-ID`.

use crate::{event, fresh_db, handle, serve};
use std::time::Duration;

/// Reads SSE events (name, id, data) from a streaming response until `n` arrived.
async fn read_events(
    res: &mut reqwest::Response,
    n: usize,
) -> Vec<(String, String, serde_json::Value)> {
    let mut text = String::new();
    let mut events = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while events.len() < n {
            let chunk = res.chunk().await.unwrap().expect("stream ended");
            text.push_str(std::str::from_utf8(&chunk).unwrap());
            while let Some(end) = text.find("\n\n") {
                let block: String = text.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::new(), String::new(), String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        name = v.into();
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        id = v.into();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                if !name.is_empty() {
                    events.push((name, id, serde_json::from_str(&data).unwrap()));
                }
            }
        }
    })
    .await
    .expect("SSE events did not arrive in time");
    events
}

#[tokio::test]
async fn the_stream_pushes_every_applied_change_and_resumes_from_last_event_id() {
    let db = fresh_db().await;
    let served = serve(&db).await;
    handle(&db, &[event("ACC-0001", 1, 500)]).await;
    let client = reqwest::Client::new();
    let mut res = client
        .get(format!("{}/accounts/ACC-0001/stream", served.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let first = read_events(&mut res, 1).await;
    assert_eq!(first[0].0, "state");
    assert_eq!(first[0].1, "2");
    assert_eq!(first[0].2["balance_minor"], 500);

    // Two batches, three deposits (one of them parked first): three events, in order.
    handle(&db, &[event("ACC-0001", 3, 30)]).await;
    handle(&db, &[event("ACC-0001", 2, 20), event("ACC-0001", 4, 40)]).await;
    let changes = read_events(&mut res, 3).await;
    let seen: Vec<(String, String, i64, i64)> = changes
        .iter()
        .map(|(name, id, data)| {
            (
                name.clone(),
                id.clone(),
                data["sequence"].as_i64().unwrap(),
                data["balance_minor"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("deposited".into(), "3".into(), 2, 520),
            ("deposited".into(), "4".into(), 3, 550),
            ("deposited".into(), "5".into(), 4, 590),
        ]
    );
    drop(res);

    // A client that saw version 3 reconnects and gets exactly what followed.
    let mut res = client
        .get(format!("{}/accounts/ACC-0001/stream", served.base))
        .header("Last-Event-ID", "3")
        .send()
        .await
        .unwrap();
    let resumed = read_events(&mut res, 2).await;
    assert_eq!(resumed[0].1, "4");
    assert_eq!(resumed[0].2["balance_minor"], 550);
    assert_eq!(resumed[1].1, "5");
    drop(res);
    drop(served);
    db.drop_db().await.unwrap();
}

#[tokio::test]
async fn a_stream_opened_before_the_first_deposit_sees_the_account_open() {
    let db = fresh_db().await;
    let served = serve(&db).await;
    let mut res = reqwest::Client::new()
        .get(format!("{}/accounts/ACC-0009/stream", served.base))
        .send()
        .await
        .unwrap();
    handle(&db, &[event("ACC-0009", 1, 700)]).await;
    let events = read_events(&mut res, 2).await;
    assert_eq!(events[0].0, "opened");
    assert_eq!(events[0].2["currency"], "USD");
    assert_eq!(events[1].0, "deposited");
    assert_eq!(events[1].2["balance"], "7.00");
    drop(res);
    drop(served);
    db.drop_db().await.unwrap();
}
