use crate::{SETTLE, deposit_event, publish, settled};
use eventbank_e2e::{Svc, TestWorld, eventually, get_json};
use eventbank_events::DepositCompleted;

/// A small deterministic generator, so a failure names the seed that reproduces it.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

#[tokio::test]
async fn shuffled_and_repeated_deliveries_into_the_queues_end_exactly_right() {
    let world = TestWorld::new().await.unwrap();
    let account = world.start(Svc::Account, &[]).await.unwrap();
    let seed = u64::from(uuid::Uuid::new_v4().as_fields().0) | 1;
    let mut rng = XorShift(seed);
    let accounts = ["ACC-7001", "ACC-7002", "ACC-7003"];
    let n = 15i64;
    let mut originals: Vec<DepositCompleted> = Vec::new();
    for a in accounts {
        for s in 1..=n {
            originals.push(deposit_event(a, s, 100 * s + 7));
        }
    }
    // Every event once, then 12 exact repeats (same event id) and 6 republications under a
    // new event id (the dedup table cannot catch those; the sequence rule must), shuffled.
    let mut delivery = originals.clone();
    for _ in 0..12 {
        delivery.push(originals[rng.next(originals.len())].clone());
    }
    for _ in 0..6 {
        let mut again = originals[rng.next(originals.len())].clone();
        again.event_id = uuid::Uuid::now_v7();
        delivery.push(again);
    }
    for i in (1..delivery.len()).rev() {
        delivery.swap(i, rng.next(i + 1));
    }
    // Into random partitions: the same account's events are handled concurrently too.
    for event in &delivery {
        publish(&world, rng.next(4), event).await.unwrap();
    }

    for a in accounts {
        let body = settled(&account, a, n)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: {e:#}"));
        let expected: i64 = (1..=n).map(|s| 100 * s + 7).sum();
        assert_eq!(body["balance_minor"], expected, "seed {seed}: {a}");
        assert_eq!(body["deposit_count"], n, "seed {seed}: {a}");
        let page = eventually(SETTLE, || async {
            let r =
                get_json(&account.url(&format!("/accounts/{a}/transactions?limit=100"))).await?;
            anyhow::ensure!(r.body["parked_events"] == 0, "{}", r.text);
            Ok(r.body)
        })
        .await
        .unwrap();
        let got: Vec<(i64, String, i64)> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["sequence"].as_i64().unwrap(),
                    t["deposit_id"].as_str().unwrap().to_owned(),
                    t["amount_minor"].as_i64().unwrap(),
                )
            })
            .collect();
        let want: Vec<(i64, String, i64)> = originals
            .iter()
            .filter(|e| e.account_id.as_str() == a)
            .map(|e| (e.sequence, e.deposit_id.to_string(), e.amount_minor))
            .collect();
        assert_eq!(got, want, "seed {seed}: {a}");
    }
    let pool = world.pool(Svc::Account).await.unwrap();
    let (events, parked): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM pending_events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((events, parked), (3 * (n + 1), 0), "seed {seed}");
    world.cleanup().await.unwrap();
}
