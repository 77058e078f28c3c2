//! The account service's event store and what it makes possible: read-your-writes, point in
//! time, replay, snapshots, and a change stream.

use crate::narrate::{Outcome, look, ok, say, show};
use crate::support::{WAIT, balance, event_at, expect, get_ok, millis, next_sse_event};
use anyhow::{Context, Result, ensure};
use eventbank_e2e::flows::{deposit, settle};
use eventbank_e2e::{
    ServiceHandle, Svc, TestWorld, eventually, get_json, http_client, publish_event,
};
use serde_json::Value;
use std::time::{Duration, Instant};

pub async fn read_your_writes(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    let d = deposit(&s, "ACC-0001", "50.00", "USD").await?;
    let seq = d["sequence"].as_i64().context("sequence")?;
    say(&format!(
        "GET /accounts/ACC-0001?min_sequence={seq}&wait=2s right after the POST"
    ));
    let b = balance(&s, "ACC-0001", seq).await?;
    show("answer", &b);
    ensure!(b["last_sequence"].as_i64() >= Some(seq), "{b}");
    ok("the answer includes the deposit just made");
    say(
        "stop the account service's consumer side (SIGKILL, restart without broker), deposit again",
    );
    s.account.kill().await?;
    let d2 = deposit(&s, "ACC-0001", "1.00", "USD").await?;
    let seq2 = d2["sequence"].as_i64().context("sequence")?;
    let dead_broker = format!(
        "amqp://guest:guest@127.0.0.1:{}/eventbank",
        eventbank_e2e::free_port()?
    );
    let reader = world
        .spawn(Svc::Account, &[("AMQP_URL", dead_broker.as_str())])
        .await?;
    let r = eventually(WAIT, || async {
        let r = get_json(&reader.url(&format!(
            "/accounts/ACC-0001?min_sequence={seq2}&wait=500ms"
        )))
        .await?;
        ensure!(r.status == 503, "{}", r.text);
        Ok(r)
    })
    .await?;
    show("answer", &r.body);
    look(&format!(
        "a problem naming current_sequence and min_sequence, with Retry-After: {:?}",
        r.header("retry-after")
    ));
    ok("no stale balance is passed off as current");
    Ok(Outcome::new(
        format!(
            "asked for sequence {seq} right after its POST; then for {seq2} with the consumer stopped"
        ),
        format!(
            "the first answer already included it; the second was a 503 problem (current_sequence {}, Retry-After {})",
            r.body["current_sequence"],
            r.header("retry-after").unwrap_or("-")
        ),
    ))
}

pub async fn point_in_time(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("deposit 100.00, note the time, then deposit 20.00 and 3.00");
    deposit(&s, "ACC-0001", "100.00", "USD").await?;
    balance(&s, "ACC-0001", 1).await?;
    let instant = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    deposit(&s, "ACC-0001", "20.00", "USD").await?;
    deposit(&s, "ACC-0001", "3.00", "USD").await?;
    let now = balance(&s, "ACC-0001", 3).await?;
    show("balance now", &now);
    let path = format!(
        "/accounts/ACC-0001/balance?as_of={}",
        instant.replace('+', "%2B")
    );
    let at = get_ok(&s.account, &path).await?;
    show(&format!("GET {path}"), &at);
    expect(&at, "balance_minor", 10_000)?;
    expect(&at, "last_sequence", 1)?;
    look("computed_from: a snapshot plus the events replayed after it, not the projection");
    ok("the past balance is 100.00 while the current one is 123.00");
    Ok(Outcome::new(
        format!(
            "deposited 100.00, then 20.00 and 3.00 after {instant}; asked for the balance as of that instant"
        ),
        format!(
            "as_of answered 100.00 at sequence 1 (replayed {} events) while the balance now is {}",
            at["computed_from"]["replayed_events"],
            now["balance"].as_str().unwrap_or("?")
        ),
    ))
}

pub async fn replay(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say(
        "deposit 100.00, 20.00 and 3.00, then replay the whole event store: account rebuild --check",
    );
    for amount in ["100.00", "20.00", "3.00"] {
        deposit(&s, "ACC-0001", amount, "USD").await?;
    }
    settle(world, 3).await?;
    ensure!(
        rebuild(world, &["--check"]).await? == 0,
        "rebuild --check found differences"
    );
    ok("replaying the store reproduces the live projections exactly");
    say("damage the projection (UPDATE balances SET balance_minor = 1), then rebuild");
    sqlx::query("UPDATE balances SET balance_minor = 1 WHERE account_id = 'ACC-0001'")
        .execute(&world.pool(Svc::Account).await?)
        .await?;
    let damaged = get_ok(&s.account, "/accounts/ACC-0001").await?;
    show("the damaged projection", &damaged);
    ensure!(
        rebuild(world, &["--check"]).await? == 1,
        "the damage was not found"
    );
    ok("rebuild --check names the difference (exit 1) and changes nothing");
    ensure!(
        rebuild(world, &[]).await? == 1,
        "rebuild did not replace the projections"
    );
    let repaired = get_ok(&s.account, "/accounts/ACC-0001").await?;
    show("after account rebuild", &repaired);
    expect(&repaired, "balance_minor", 12_300)?;
    ensure!(
        rebuild(world, &["--check"]).await? == 0,
        "still different after the rebuild"
    );
    ok("the rebuilt projection says 123.00 again, and a new check finds nothing");
    Ok(Outcome::new(
        "replayed the event store with account rebuild: checked, damaged the balances projection, rebuilt",
        "the first check was identical, the damage (0.01) was named, and the rebuild restored 123.00 from the events alone",
    ))
}

/// `account rebuild [args]` against this world; its exit code (0 identical, 1 differed).
async fn rebuild(world: &TestWorld, args: &[&str]) -> Result<i32> {
    let mut all = vec!["rebuild"];
    all.extend_from_slice(args);
    let out = world
        .run_cli(Svc::Account, &all, &[], Duration::from_secs(120))
        .await?;
    println!("  $ account {}", all.join(" "));
    for line in out.stdout.lines() {
        println!("    {line}");
    }
    out.status
        .code()
        .filter(|c| *c <= 1)
        .with_context(|| format!("account rebuild failed: {}", out.stderr))
}

/// The synthetic stream of the snapshots demo: `SYN-0000001` (EUR), 99,999 events bulk-loaded,
/// and one more delivered through the broker, which makes it 100,000.
const SYN: &str = "SYN-0000001";
const SYN_DEPOSITS: i64 = 99_998;

pub async fn snapshots(world: &TestWorld) -> Result<Outcome> {
    let account = world.start(Svc::Account, &[]).await?;
    let pool = world.pool(Svc::Account).await?;
    say("bulk-load 99,999 events of SYN-0000001 into account's event store (SQL, not the broker)");
    let loading = Instant::now();
    let written = account::synthetic::generate(&pool, 1, SYN_DEPOSITS).await?;
    println!("  {written} events written in {:.1?}", loading.elapsed());
    say(
        "deliver its next deposit through the broker: event 100,000, a multiple of SNAPSHOT_EVERY (50)",
    );
    let next = event_at(SYN, SYN_DEPOSITS + 1, 1_234, "EUR", chrono::Utc::now());
    publish_event(world, SYN, &next, &[]).await?;
    get_ok(
        &account,
        &format!("/accounts/{SYN}?min_sequence={}&wait=10s", SYN_DEPOSITS + 1),
    )
    .await?;
    let taken: i64 = sqlx::query_scalar("SELECT max(version) FROM snapshots WHERE account_id = $1")
        .bind(SYN)
        .fetch_one(&pool)
        .await?;
    ensure!(taken == 100_000, "snapshot at version {taken}");
    ok("the handler appended it and wrote a snapshot of the state at version 100,000");
    let (with, with_took) = timed_balance(&account).await?;
    say("set the snapshot aside (it is only a cache: DELETE it) and load the same stream again");
    sqlx::query("DELETE FROM snapshots WHERE account_id = $1")
        .bind(SYN)
        .execute(&pool)
        .await?;
    let (without, without_took) = timed_balance(&account).await?;
    let projected = get_ok(&account, &format!("/accounts/{SYN}")).await?;
    expect(&with["computed_from"], "snapshot_version", 100_000)?;
    expect(&with["computed_from"], "replayed_events", 0)?;
    expect(&without["computed_from"], "replayed_events", 100_000)?;
    expect(&without, "balance_minor", with["balance_minor"].clone())?;
    expect(&projected, "balance_minor", with["balance_minor"].clone())?;
    ensure!(with_took < without_took, "the snapshot load was not faster");
    let (fast, slow) = (millis(with_took), millis(without_took));
    let times = without_took.as_micros() / with_took.as_micros().max(1);
    let euros = with["balance"].as_str().unwrap_or("?").to_owned();
    ok(&format!(
        "with the snapshot {fast} ms, without {slow} ms ({times}x); both EUR {euros}"
    ));
    Ok(Outcome::new(
        "loaded one 100,000-event stream through GET /accounts/SYN-0000001/balance, with its snapshot and without",
        format!(
            "snapshot + 0 events in {fast} ms vs 100,000 events replayed in {slow} ms; the same balance EUR {euros}, equal to the projection"
        ),
    ))
}

/// The balance folded from the event store now, and how long the service took to answer.
async fn timed_balance(account: &ServiceHandle) -> Result<(Value, Duration)> {
    let started = Instant::now();
    let body = get_ok(account, &format!("/accounts/{SYN}/balance")).await?;
    let took = started.elapsed();
    show(&format!("GET /accounts/{SYN}/balance in {took:.1?}"), &body);
    Ok((body, took))
}

pub async fn sse(world: &TestWorld) -> Result<Outcome> {
    let s = world.start_all(&[]).await?;
    say("open GET /accounts/ACC-0001/stream (text/event-stream) and keep reading it");
    let mut stream = http_client()
        .get(s.account.url("/accounts/ACC-0001/stream"))
        .send()
        .await?;
    let content_type = stream
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    ensure!(stream.status().as_u16() == 200, "{}", stream.status());
    ensure!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    say("POST a deposit of 30.00 to ACC-0001");
    let posted = Instant::now();
    let d = deposit(&s, "ACC-0001", "30.00", "USD").await?;
    let pushed = next_sse_event(&mut stream, "deposited").await?;
    let after = posted.elapsed();
    show("event: deposited", &pushed);
    expect(&pushed, "deposit_id", d["deposit_id"].clone())?;
    expect(&pushed, "balance", "30.00")?;
    look(
        "the account service pushed it when it applied the deposit (Postgres NOTIFY), not on a poll",
    );
    ok(&format!(
        "received {} ms after the POST, on the response opened before it",
        millis(after)
    ));
    Ok(Outcome::new(
        "opened one SSE response on ACC-0001's stream, then POSTed a deposit of 30.00",
        format!(
            "the `deposited` event with that deposit_id and balance 30.00 arrived on the open response {} ms after the POST, with no further request",
            millis(after)
        ),
    ))
}
