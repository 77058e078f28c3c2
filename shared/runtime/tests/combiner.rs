//! The applier that puts several partitions' batches in one dedup transaction, against the real
//! Postgres: batches waiting together share one `handle` call and one commit, each partition gets
//! back only its own new events, and a failure stays with the partition that caused it.
// Test helpers, outside #[test] functions, fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::combiner::{Combiner, Outcome};
use eventbank_runtime::consumer::{Handler, HandlerError};
use eventbank_runtime::testing::TestDatabase;
use sqlx::PgConnection;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use uuid::Uuid;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("tests/combiner_migrations");

/// What the test handler does with an event of this amount.
const FAILS: i64 = -1;
const PANICS: i64 = -2;
const DATABASE_GONE: i64 = -3;

/// Records every call's event ids, writes one `applied` row per event, and waits for a permit of
/// `gate` on each call (so a test can hold the applier in its first round while others queue).
struct Recorder {
    calls: Mutex<Vec<Vec<Uuid>>>,
    gate: Semaphore,
}

impl Recorder {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            calls: Mutex::new(Vec::new()),
            gate: Semaphore::new(0),
        })
    }

    fn calls(&self) -> Vec<Vec<Uuid>> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Handler for Recorder {
    async fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[DepositCompleted],
    ) -> Result<(), HandlerError> {
        if let Ok(mut calls) = self.calls.lock() {
            calls.push(events.iter().map(|e| e.event_id).collect());
        }
        self.gate
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!("gate closed: {e}"))?
            .forget();
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        sqlx::query("INSERT INTO applied (event_id) SELECT UNNEST($1::uuid[])")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        for event in events {
            match event.amount_minor {
                FAILS => return Err(anyhow::anyhow!("event {} fails", event.event_id).into()),
                PANICS => panic!("event {} panics", event.event_id),
                DATABASE_GONE => return Err(sqlx::Error::PoolTimedOut.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

fn event(amount_minor: i64) -> DepositCompleted {
    let now = Utc::now();
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: 1,
        time: now,
        traceparent: None,
        schema_version: eventbank_events::deposit::CURRENT_VERSION,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(&format!(
            "ACC-{}",
            Uuid::new_v4().simple().to_string()[..12].to_uppercase()
        ))
        .expect("a valid account id"),
        amount_minor,
        currency: Currency::parse("EUR").expect("a valid currency"),
        account: AccountSnapshot {
            holder_name: "Combiner Test".into(),
            email: "combiner@example.com".into(),
        },
        occurred_at: now,
        channel: None,
        reference: None,
    }
}

fn ids(events: &[DepositCompleted]) -> Vec<Uuid> {
    events.iter().map(|e| e.event_id).collect()
}

fn submit(combiner: &Combiner, events: &[DepositCompleted]) -> JoinHandle<Outcome> {
    let combiner = combiner.clone();
    let events = events.to_vec();
    tokio::spawn(async move { combiner.apply(events).await })
}

/// Polls until `n` batches wait in the applier's queue (the first round is held at the gate).
async fn until_queued(combiner: &Combiner, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while combiner.queued() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} batches queued after 10 s",
            combiner.queued()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Polls until the handler has been called `n` times.
async fn until_calls(recorder: &Recorder, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while recorder.calls().len() < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} handler calls after 10 s",
            recorder.calls().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The event ids in `table`: `applied` (what the handler wrote) or `processed_events` (what
/// the dedup transaction recorded).
async fn ids_in(db: &TestDatabase, table: &'static str) -> HashSet<Uuid> {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT event_id FROM {table}")))
        .fetch_all(&db.pool)
        .await
        .expect("read the table")
        .into_iter()
        .collect()
}

async fn applied(db: &TestDatabase) -> HashSet<Uuid> {
    ids_in(db, "applied").await
}

async fn processed(db: &TestDatabase) -> HashSet<Uuid> {
    ids_in(db, "processed_events").await
}

/// A batch's answer, within 10 s (a handler waiting for a permit the test never gives would
/// otherwise hang the test).
async fn outcome(task: JoinHandle<Outcome>) -> Outcome {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("no answer within 10 s")
        .expect("the submitting task panicked")
}

/// Starts an applier and holds its first round (one event) at the gate until `queue` batches
/// wait behind it. Returns the first round's task.
async fn hold_first_round(
    combiner: &Combiner,
    recorder: &Recorder,
    queue: usize,
    rest: &[&[DepositCompleted]],
) -> (
    JoinHandle<Outcome>,
    Vec<JoinHandle<Outcome>>,
    DepositCompleted,
) {
    let first = event(100);
    let held = submit(combiner, std::slice::from_ref(&first));
    until_calls(recorder, 1).await;
    let tasks = rest.iter().map(|batch| submit(combiner, batch)).collect();
    until_queued(combiner, queue).await;
    (held, tasks, first)
}

/// A fresh database, the recording handler and an applier on them.
async fn start() -> (TestDatabase, Arc<Recorder>, Combiner, JoinHandle<()>) {
    let db = TestDatabase::create("combiner", &MIGRATOR)
        .await
        .expect("test database");
    let recorder = Recorder::new();
    let (combiner, applier) = Combiner::start(db.pool.clone(), Arc::clone(&recorder));
    (db, recorder, combiner, applier)
}

/// The applier ends when its last handle goes; then the database is dropped.
async fn finish(db: TestDatabase, combiner: Combiner, applier: JoinHandle<()>) {
    drop(combiner);
    applier
        .await
        .expect("the applier ends when its last handle goes");
    db.drop_db().await.expect("drop test database");
}

#[tokio::test]
async fn batches_waiting_together_share_one_transaction_and_each_gets_its_own_events() {
    let (db, recorder, combiner, applier) = start().await;

    let a = [event(1), event(2)];
    let b = [event(3)];
    // The same event twice across two partitions' batches: applied once, for the first.
    let c = [event(4), a[1].clone()];
    let (held, tasks, first) = hold_first_round(&combiner, &recorder, 3, &[&a, &b, &c]).await;
    recorder.gate.add_permits(2);

    assert_eq!(
        ids(&outcome(held).await.expect("first round")),
        vec![first.event_id]
    );
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(ids(&outcome(task).await.expect("combined round")));
    }
    assert_eq!(answers, vec![ids(&a), ids(&b), vec![c[0].event_id]]);
    // One handler call (one transaction) for the three batches, in their order.
    let combined: Vec<Uuid> = [ids(&a), ids(&b), vec![c[0].event_id]].concat();
    assert_eq!(
        recorder.calls(),
        vec![vec![first.event_id], combined.clone()]
    );
    let everything: HashSet<Uuid> = combined.into_iter().chain([first.event_id]).collect();
    assert_eq!(applied(&db).await, everything);
    assert_eq!(processed(&db).await, everything);

    // Delivered again (a redelivery after a lost ack): nothing new, no handler call.
    let again = outcome(submit(&combiner, &a)).await.expect("redelivery");
    assert!(
        again.is_empty(),
        "a redelivered batch came back as new: {again:?}"
    );
    assert_eq!(recorder.calls().len(), 2);

    finish(db, combiner, applier).await;
}

#[tokio::test]
async fn a_failing_combined_transaction_fails_only_the_partition_that_caused_it() {
    let (db, recorder, combiner, applier) = start().await;

    let good = [event(5)];
    let poison = [event(6), event(FAILS)];
    let other = [event(7)];
    let (held, tasks, _) =
        hold_first_round(&combiner, &recorder, 3, &[&good, &poison, &other]).await;
    // The held round, the combined one (fails), then each batch alone.
    recorder.gate.add_permits(5);
    outcome(held).await.expect("first round");
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(outcome(task).await);
    }
    let [good_answer, poison_answer, other_answer] = answers.try_into().expect("three answers");
    assert_eq!(ids(&good_answer.expect("good batch")), ids(&good));
    assert_eq!(ids(&other_answer.expect("other batch")), ids(&other));
    match poison_answer {
        Err(HandlerError::Other(e)) => assert!(e.to_string().contains("fails"), "{e}"),
        other => panic!("the poison batch answered {other:?}"),
    }
    assert_eq!(
        recorder.calls()[1..].to_vec(),
        vec![
            [ids(&good), ids(&poison), ids(&other)].concat(),
            ids(&good),
            ids(&poison),
            ids(&other)
        ]
    );
    // Nothing of the poison batch is stored, the neighbours are.
    let stored = applied(&db).await;
    assert!(
        ids(&good)
            .iter()
            .chain(&ids(&other))
            .all(|id| stored.contains(id))
    );
    assert!(ids(&poison).iter().all(|id| !stored.contains(id)));
    let done = processed(&db).await;
    assert!(ids(&poison).iter().all(|id| !done.contains(id)));

    finish(db, combiner, applier).await;
}

#[tokio::test]
async fn a_transient_failure_is_transient_for_every_batch_of_the_round_and_nothing_is_stored() {
    let (db, recorder, combiner, applier) = start().await;

    let gone = [event(DATABASE_GONE)];
    let other = [event(8)];
    let (held, tasks, _) = hold_first_round(&combiner, &recorder, 2, &[&gone, &other]).await;
    recorder.gate.add_permits(2);
    outcome(held).await.expect("first round");
    for task in tasks {
        match outcome(task).await {
            Err(HandlerError::Unavailable(reason)) => {
                assert!(reason.contains("pool timed out"), "{reason}")
            }
            other => panic!("expected a transient failure, got {other:?}"),
        }
    }
    // Not retried alone: a transient failure is retried by the partitions, with backoff.
    assert_eq!(recorder.calls().len(), 2);
    assert_eq!(
        applied(&db).await.len(),
        1,
        "only the first round's event is stored"
    );
    assert_eq!(
        processed(&db).await.len(),
        1,
        "only the first round's event is recorded"
    );

    finish(db, combiner, applier).await;
}

#[tokio::test]
async fn a_handler_panic_is_an_error_for_its_batch_and_the_applier_keeps_going() {
    let (db, recorder, combiner, applier) = start().await;

    recorder.gate.add_permits(2);
    match outcome(submit(&combiner, &[event(PANICS)])).await {
        Err(HandlerError::Other(e)) => {
            assert!(e.to_string().contains("the handler panicked"), "{e}")
        }
        other => panic!("expected the panic as an error, got {other:?}"),
    }
    let after = [event(9)];
    let answer = outcome(submit(&combiner, &after))
        .await
        .expect("the next batch");
    assert_eq!(ids(&answer), ids(&after));
    assert_eq!(applied(&db).await, ids(&after).into_iter().collect());

    finish(db, combiner, applier).await;
}
