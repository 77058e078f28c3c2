//! Event notification vs event-carried state transfer, measured side by side on one stream.
//!
//! The five services stay as they are. Beside them the demo runs two small consumers of its own,
//! each on its own queue bound to the world's bank events exchange: one uses the fat
//! `DepositCompleted` as it is (state transfer), the other reads only what a thin notification
//! would carry (event id, type, deposit id, account id) and calls the deposit service's API back
//! for the details.

use crate::narrate::{Outcome, look, ok, say};
use crate::support::{WAIT, millis, outbox_payload};
use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, SubsecRound, Utc};
use eventbank_e2e::flows::{deposit, open_account, settle};
use eventbank_e2e::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions,
};
use eventbank_e2e::lapin::types::FieldTable;
use eventbank_e2e::lapin::{Connection, ConnectionProperties};
use eventbank_e2e::{Services, Svc, TestWorld, eventually, http_client, publish_event};
use futures_util::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Deposits POSTed for the measurement.
const N: usize = 200;
/// Events published by hand while the deposit service is stopped.
const OUTAGE_EVENTS: usize = 3;
/// How long the outage is held once the state-transfer side has applied everything.
const OUTAGE_HOLD: Duration = Duration::from_secs(2);

/// What a consumer knew about one deposit, and when it knew it.
#[derive(Clone)]
struct Details {
    amount_minor: i64,
    email: String,
    at: DateTime<Utc>,
}

/// One consumer's counters, shared with its task.
#[derive(Default)]
struct Tally {
    /// By deposit id.
    details: Mutex<HashMap<String, Details>>,
    /// Bytes of the message each consumer needs: the fat body, or the thin notification.
    event_bytes: AtomicU64,
    events: AtomicU64,
    /// Callbacks to the deposit service that answered 200, and the bytes they returned.
    calls_ok: AtomicU64,
    callback_bytes: AtomicU64,
    /// Callbacks that failed (refused, timed out, not 200).
    calls_failed: AtomicU64,
    /// While set, the consumer takes no further message (a consumer lagging behind).
    hold: AtomicBool,
}

impl Tally {
    fn get(&self, deposit_id: &str) -> Option<Details> {
        self.details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(deposit_id)
            .cloned()
    }

    fn has_all(&self, ids: &[String]) -> usize {
        let map = self.details.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter().filter(|id| map.contains_key(*id)).count()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Style {
    StateTransfer,
    Notification,
}

/// Declares an exclusive, auto-deleted queue bound to the bank events exchange with
/// `deposit.completed` and consumes it in a task until the connection closes.
async fn start_consumer(
    world: &TestWorld,
    conn: &Connection,
    style: Style,
    deposit_base: String,
) -> Result<Arc<Tally>> {
    let name = match style {
        Style::StateTransfer => "state-transfer",
        Style::Notification => "notification",
    };
    let queue = format!("{}.demo.{name}", world.ns());
    let channel = conn.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("declaring {queue}"))?;
    channel
        .queue_bind(
            queue.as_str().into(),
            world.bank_events_exchange().as_str().into(),
            "deposit.completed".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("binding {queue}"))?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            name.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let tally = Arc::new(Tally::default());
    let mine = tally.clone();
    tokio::spawn(async move {
        let _channel = channel;
        while let Some(Ok(delivery)) = consumer.next().await {
            while mine.hold.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let handled = match style {
                Style::StateTransfer => state_transfer(&mine, &delivery.data),
                Style::Notification => notification(&mine, &deposit_base, &delivery.data).await,
            };
            if let Err(e) = handled {
                eprintln!("  {name} consumer: {e:#}");
            }
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    Ok(tally)
}

/// The fat event has everything: no call anywhere.
fn state_transfer(tally: &Tally, body: &[u8]) -> Result<()> {
    let event: Value = serde_json::from_slice(body)?;
    let data = &event["data"];
    let deposit_id = data["deposit_id"]
        .as_str()
        .context("deposit_id")?
        .to_owned();
    let details = Details {
        amount_minor: data["amount_minor"].as_i64().context("amount_minor")?,
        email: data["account"]["email"]
            .as_str()
            .context("email")?
            .to_owned(),
        at: Utc::now(),
    };
    tally
        .event_bytes
        .fetch_add(body.len() as u64, Ordering::SeqCst);
    tally.events.fetch_add(1, Ordering::SeqCst);
    tally
        .details
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(deposit_id, details);
    Ok(())
}

/// The thin notification a producer would send instead of the fat event.
fn thin(event: &Value) -> Value {
    json!({
        "id": event["id"],
        "type": event["type"],
        "deposit_id": event["data"]["deposit_id"],
        "account_id": event["data"]["account_id"],
    })
}

/// Only the ids: the amount and the holder's address come from the source, retried until it
/// answers (the consumer stalls meanwhile, its queue behind it).
async fn notification(tally: &Tally, base: &str, body: &[u8]) -> Result<()> {
    let note = thin(&serde_json::from_slice(body)?);
    tally
        .event_bytes
        .fetch_add(serde_json::to_vec(&note)?.len() as u64, Ordering::SeqCst);
    tally.events.fetch_add(1, Ordering::SeqCst);
    let deposit_id = note["deposit_id"].as_str().context("deposit_id")?;
    let account_id = note["account_id"].as_str().context("account_id")?;
    let deposit = callback(tally, &format!("{base}/deposits/{deposit_id}")).await;
    let account = callback(tally, &format!("{base}/accounts/{account_id}")).await;
    let details = Details {
        amount_minor: deposit["amount_minor"].as_i64().context("amount_minor")?,
        email: account["email"].as_str().context("email")?.to_owned(),
        at: Utc::now(),
    };
    tally
        .details
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(deposit_id.to_owned(), details);
    Ok(())
}

/// GETs `url` until it answers 200; counts every attempt.
async fn callback(tally: &Tally, url: &str) -> Value {
    let client = http_client();
    loop {
        let attempt = async {
            let response = client
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await?;
            ensure!(response.status() == 200, "{}", response.status());
            Ok(response.bytes().await?)
        };
        match attempt.await {
            Ok(bytes) => {
                tally.calls_ok.fetch_add(1, Ordering::SeqCst);
                tally
                    .callback_bytes
                    .fetch_add(bytes.len() as u64, Ordering::SeqCst);
                if let Ok(value) = serde_json::from_slice(&bytes) {
                    return value;
                }
            }
            Err(_) => {
                tally.calls_failed.fetch_add(1, Ordering::SeqCst);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Mean and p99 of `at - created_at` over the measured deposits.
fn latency(
    tally: &Tally,
    created: &HashMap<String, DateTime<Utc>>,
) -> Result<(Duration, Duration)> {
    let map = tally.details.lock().unwrap_or_else(PoisonError::into_inner);
    let mut micros: Vec<u64> = Vec::with_capacity(created.len());
    for (id, at) in created {
        let got = map
            .get(id)
            .with_context(|| format!("no details for {id}"))?;
        let us = (got.at - *at).num_microseconds().context("latency")?;
        micros.push(u64::try_from(us).unwrap_or(0));
    }
    micros.sort_unstable();
    let n = micros.len() as u64;
    ensure!(n > 0, "no latencies");
    let mean = micros.iter().sum::<u64>() / n;
    let p99 = micros[(micros.len() * 99).div_ceil(100) - 1];
    Ok((Duration::from_micros(mean), Duration::from_micros(p99)))
}

/// Waits until `tally` has the details of every deposit of `ids`.
async fn until_has(tally: &Tally, ids: &[String], who: &str) -> Result<()> {
    eventually(WAIT, || async {
        let n = tally.has_all(ids);
        ensure!(n == ids.len(), "{who} {n}/{}", ids.len());
        Ok(())
    })
    .await
}

/// `total / events`, rounded to a whole number.
fn per_event(total: &AtomicU64, events: usize) -> u64 {
    let events = events as u64;
    (total.load(Ordering::SeqCst) + events / 2) / events
}

/// `total / events` with two decimals, e.g. `2.00` (integer arithmetic only).
fn ratio(total: &AtomicU64, events: usize) -> String {
    let hundredths = total.load(Ordering::SeqCst) * 100 / events as u64;
    format!("{}.{:02}", hundredths / 100, hundredths % 100)
}

pub async fn notification_vs_state_transfer(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    let base = s.deposit.base_url();
    say(
        "beside the five services, two demo consumers on their own queues, bound to the bank \
         events exchange with `deposit.completed`: state transfer (uses the fat event) and \
         notification (reads only event id, type, deposit id, account id; GETs \
         /deposits/{id} and /accounts/{id} from the deposit service for the rest)",
    );
    let conn = Connection::connect(world.amqp_url(), ConnectionProperties::default()).await?;
    let fat = start_consumer(world, &conn, Style::StateTransfer, base.clone()).await?;
    let note = start_consumer(world, &conn, Style::Notification, base.clone()).await?;

    let mut accounts = Vec::new();
    for name in ["Nora Notify", "Sam State", "Fay Fat", "Tim Thin"] {
        accounts.push(open_account(&s, name, "USD").await?);
    }
    let m = measure(&s, &fat, &note, &accounts).await?;
    let deposit_db = world.pool(Svc::Deposit).await?;
    let o = outage(world, &s, &deposit_db, &fat, &note, &m.last).await?;
    let (stale, fresh) = late_email(&s, &deposit_db, &fat, &note, &accounts[0]).await?;
    let _ = conn.close(200, "demo done".into()).await;
    print_table(&m, &o, &stale, &fresh);
    look(
        "the notification consumer pays in calls, latency and source load, and stops with the \
         source; the fat event pays in bytes and in a copy that is as of the event, not as of now",
    );

    Ok(Outcome::new(
        format!(
            "ran a fat-event consumer and a thin-notification consumer on the same {N} deposits, \
             stopped deposit while {OUTAGE_EVENTS} more events arrived, changed a holder's email after a deposit"
        ),
        format!(
            "notification: {} calls per event, mean {} ms vs {} ms, \
             +{} requests on deposit, 0/{OUTAGE_EVENTS} during the outage ({} failed calls) \
             then caught up; state transfer: no calls, applied all during the outage (so did the real four), \
             {} vs {} bytes per event, and its email copy was stale ({stale} vs {fresh})",
            m.note_calls,
            millis(m.note_mean),
            millis(m.fat_mean),
            m.note_requests,
            o.failed,
            m.fat_bytes,
            m.thin_bytes,
        ),
    ))
}

/// The two consumers on the same `N` deposits, side by side.
struct Measured {
    fat_calls: String,
    note_calls: String,
    note_requests: u64,
    fat_mean: Duration,
    fat_p99: Duration,
    note_mean: Duration,
    note_p99: Duration,
    fat_bytes: u64,
    thin_bytes: u64,
    fetched: u64,
    /// The last deposit's answer: the outage copies its event.
    last: Value,
}

/// POSTs `N` deposits, waits until both consumers have them all and checks they agree.
async fn measure(s: &Services, fat: &Tally, note: &Tally, accounts: &[String]) -> Result<Measured> {
    say(&format!(
        "POST {N} deposits over {} accounts",
        accounts.len()
    ));
    let mut created: HashMap<String, DateTime<Utc>> = HashMap::new();
    let mut ids = Vec::new();
    let mut last = Value::Null;
    for i in 0..N {
        let account = &accounts[i % accounts.len()];
        let d = deposit(s, account, &format!("{}.{:02}", 1 + i % 50, i % 100), "USD").await?;
        let id = d["deposit_id"].as_str().context("deposit_id")?.to_owned();
        let at = d["created_at"].as_str().context("created_at")?.parse()?;
        created.insert(id.clone(), at);
        ids.push(id);
        last = d;
    }
    eventually(WAIT, || async {
        let (f, n) = (fat.has_all(&ids), note.has_all(&ids));
        ensure!(
            f == N && n == N,
            "state transfer {f}/{N}, notification {n}/{N}"
        );
        Ok(())
    })
    .await?;
    let (fat_mean, fat_p99) = latency(fat, &created)?;
    let (note_mean, note_p99) = latency(note, &created)?;
    let m = Measured {
        fat_calls: ratio(&fat.calls_ok, N),
        note_calls: ratio(&note.calls_ok, N),
        note_requests: note.calls_ok.load(Ordering::SeqCst),
        fat_mean,
        fat_p99,
        note_mean,
        note_p99,
        fat_bytes: per_event(&fat.event_bytes, N),
        thin_bytes: per_event(&note.event_bytes, N),
        fetched: per_event(&note.callback_bytes, N),
        last,
    };
    ensure!(
        fat.calls_ok.load(Ordering::SeqCst) == 0,
        "the state-transfer consumer called {} per event",
        m.fat_calls
    );
    ensure!(
        m.note_requests == 2 * N as u64,
        "notification made {} callbacks for {N} events",
        m.note_requests
    );
    ensure!(
        m.note_mean > m.fat_mean,
        "notification mean {} ms not above state transfer {} ms",
        millis(m.note_mean),
        millis(m.fat_mean)
    );
    ensure!(
        m.fat_bytes > m.thin_bytes && m.thin_bytes > 0 && m.fetched > 0,
        "bytes: fat {}, thin {}, fetched {}",
        m.fat_bytes,
        m.thin_bytes,
        m.fetched
    );
    for id in &ids {
        let (a, b) = (fat.get(id), note.get(id));
        let (a, b) = (a.context("fat")?, b.context("note")?);
        ensure!(
            a.amount_minor == b.amount_minor && a.email == b.email,
            "the two consumers disagree on {id}"
        );
    }
    ok(&format!(
        "both have all {N} with the same amounts and addresses; notification needed {} \
         GETs for it (2 per event), state transfer none",
        m.note_requests
    ));
    Ok(m)
}

/// What the deposit service's outage did to the notification consumer.
struct Outage {
    /// Callbacks that failed while the service was down.
    failed: u64,
    /// From the restart (ready) until the notification consumer had every outage event.
    catch_up: Duration,
}

/// Stops the deposit service, publishes `OUTAGE_EVENTS` copies of the last event by hand, and
/// shows state transfer carrying on while notification waits for the service to come back.
async fn outage(
    world: &TestWorld,
    s: &Services,
    deposit_db: &PgPool,
    fat: &Tally,
    note: &Tally,
    last: &Value,
) -> Result<Outage> {
    say(
        "stop the deposit service (SIGKILL); publish 3 more events ourselves: copies of a real \
         fat payload with new ids and the next sequence numbers, their rows written to the \
         deposit database as the service would have before it went down",
    );
    let account = last["account_id"]
        .as_str()
        .context("account_id")?
        .to_owned();
    let payload: Value = serde_json::from_slice(&outbox_payload(world, last).await?)?;
    // A quiet relay marks its last rows published up to RELAY_MARK_DELAY_MS after sending them.
    // A kill before then would leave them to be sent again after the restart (deduplicated
    // downstream), but the invariant check during the outage would count them as unpublished.
    eventually(WAIT, || async {
        let unmarked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(deposit_db)
                .await?;
        ensure!(
            unmarked == 0,
            "{unmarked} outbox rows not yet marked published"
        );
        Ok(())
    })
    .await?;
    s.deposit.kill().await?;
    let failed_before = note.calls_failed.load(Ordering::SeqCst);
    let mut outage_ids = Vec::new();
    let stopped = Instant::now();
    for k in 1..=OUTAGE_EVENTS as i64 {
        let deposit_id = publish_copy(world, deposit_db, &account, &payload, k).await?;
        outage_ids.push(deposit_id.to_string());
    }
    until_has(fat, &outage_ids, "state transfer").await?;
    let fat_outage = stopped.elapsed();
    settle(world, (N + OUTAGE_EVENTS) as i64).await?;
    ok(&format!(
        "state transfer applied all {OUTAGE_EVENTS} in {} ms, and the real account, email, interest \
         and compliance applied them too (invariant checker: {} deposits, each once everywhere)",
        millis(fat_outage),
        N + OUTAGE_EVENTS
    ));
    tokio::time::sleep(OUTAGE_HOLD).await;
    let stalled = note.has_all(&outage_ids);
    let failed = note.calls_failed.load(Ordering::SeqCst) - failed_before;
    let down_for = stopped.elapsed();
    ensure!(
        stalled == 0 && failed > 0,
        "notification applied {stalled}/{OUTAGE_EVENTS} with {failed} failed callbacks while deposit was down"
    );
    ok(&format!(
        "notification: 0/{OUTAGE_EVENTS} after {:.1} s down, {failed} callbacks failed; its queue waits behind the first",
        down_for.as_secs_f64()
    ));

    say("start the deposit service again");
    s.deposit.restart().await?;
    let restarted = Instant::now();
    until_has(note, &outage_ids, "notification").await?;
    let catch_up = restarted.elapsed();
    ok(&format!(
        "notification caught up: {OUTAGE_EVENTS}/{OUTAGE_EVENTS}, {} ms after the restart was ready",
        millis(catch_up)
    ));
    Ok(Outage { failed, catch_up })
}

/// Writes the `k`th copy of `payload` (new ids, sequence + k) to the deposit database as the
/// service would have (deposit, published outbox row, the account's last sequence) and
/// publishes it; answers its deposit id.
async fn publish_copy(
    world: &TestWorld,
    deposit_db: &PgPool,
    account: &str,
    payload: &Value,
    k: i64,
) -> Result<uuid::Uuid> {
    let now = Utc::now().trunc_subsecs(6);
    let sequence = payload["sequence"].as_i64().context("sequence")? + k;
    let (event_id, deposit_id) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let mut copy = payload.clone();
    copy["id"] = json!(event_id);
    copy["time"] = json!(now);
    copy["sequence"] = json!(sequence);
    copy["data"]["deposit_id"] = json!(deposit_id);
    copy["data"]["occurred_at"] = json!(now);
    let body = serde_json::to_vec(&copy)?;
    let mut tx = deposit_db.begin().await?;
    sqlx::query(
        "INSERT INTO deposits (deposit_id, event_id, account_id, sequence, amount_minor, currency, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(deposit_id)
    .bind(event_id)
    .bind(account)
    .bind(sequence)
    .bind(copy["data"]["amount_minor"].as_i64().context("amount")?)
    .bind(copy["data"]["currency"].as_str().context("currency")?)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO outbox (event_id, account_id, sequence, payload, published_at)
             VALUES ($1, $2, $3, $4, now())",
    )
    .bind(event_id)
    .bind(account)
    .bind(sequence)
    .bind(&body)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE accounts SET last_sequence = $2 WHERE account_id = $1")
        .bind(account)
        .bind(sequence)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    publish_event(world, account, &body, &[]).await?;
    Ok(deposit_id)
}

/// Changes `holder`'s email while the notification consumer is held back after a deposit;
/// answers the address each consumer has for that deposit (state transfer, notification).
async fn late_email(
    s: &Services,
    deposit_db: &PgPool,
    fat: &Tally,
    note: &Tally,
    holder: &str,
) -> Result<(String, String)> {
    say(
        "change the holder's email after a deposit: hold the notification consumer back (as a \
         lagging one would be), POST a deposit, UPDATE accounts.email in the deposit database \
         (there is no API to change it: this is the only way without a service change), release it",
    );
    let old: String = sqlx::query_scalar("SELECT email FROM accounts WHERE account_id = $1")
        .bind(holder)
        .fetch_one(deposit_db)
        .await?;
    note.hold.store(true, Ordering::SeqCst);
    let d = deposit(s, holder, "7.77", "USD").await?;
    let late = d["deposit_id"].as_str().context("deposit_id")?.to_owned();
    let late_ids = [late.clone()];
    until_has(fat, &late_ids, "state transfer").await?;
    let new = "nora.moved@example.org";
    sqlx::query("UPDATE accounts SET email = $2 WHERE account_id = $1")
        .bind(holder)
        .bind(new)
        .execute(deposit_db)
        .await?;
    note.hold.store(false, Ordering::SeqCst);
    until_has(note, &late_ids, "notification").await?;
    let (stale, fresh) = (
        fat.get(&late).context("fat")?.email,
        note.get(&late).context("note")?.email,
    );
    if stale != old || fresh != new {
        bail!("fat event's address {stale} (expected {old}), callback's {fresh} (expected {new})");
    }
    ok(&format!(
        "the fat event carries {stale} (the address when it happened); the callback read {fresh} (now)"
    ));
    Ok((stale, fresh))
}

fn print_table(m: &Measured, o: &Outage, stale: &str, fresh: &str) {
    println!();
    println!(
        "  {:<44} {:>24} {:>24}",
        "", "state transfer", "notification"
    );
    let row = |label: &str, a: String, b: String| println!("  {label:<44} {a:>24} {b:>24}");
    row(
        "calls to the deposit service per event",
        m.fat_calls.clone(),
        m.note_calls.clone(),
    );
    row(
        "created_at -> has the details, mean (ms)",
        millis(m.fat_mean),
        millis(m.note_mean),
    );
    row(
        "created_at -> has the details, p99 (ms)",
        millis(m.fat_p99),
        millis(m.note_p99),
    );
    row(
        &format!("requests added on deposit ({N} POSTs served)"),
        "0 (+0%)".into(),
        format!(
            "{} (+{:.0}%)",
            m.note_requests,
            m.note_requests * 100 / N as u64
        ),
    );
    row(
        "bytes per event on the wire",
        m.fat_bytes.to_string(),
        m.thin_bytes.to_string(),
    );
    row(
        "bytes fetched by callbacks per event",
        "0".into(),
        m.fetched.to_string(),
    );
    row(
        "applied while deposit was down",
        format!("{OUTAGE_EVENTS}/{OUTAGE_EVENTS}"),
        format!("0/{OUTAGE_EVENTS} ({} failed calls)", o.failed),
    );
    row(
        "caught up after the restart (ms)",
        "-".into(),
        millis(o.catch_up),
    );
    row(
        "holder's email for the late deposit",
        stale.to_owned(),
        fresh.to_owned(),
    );
}
