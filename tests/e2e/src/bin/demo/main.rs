//! Guided demos: each scenario starts a private eventbank (fresh databases, its own broker
//! namespace, the real binaries), makes one pattern happen, narrates what to look for, asserts
//! the outcome, so a demo cannot silently rot, and ends with three plain lines: the idea, what
//! it just did, what proved it. `scripts/demo <scenario>|all|list`.
//!
//! Exit codes: 0 every chosen demo passed; 1 a demo failed (or no such scenario); 2 a world
//! could not be set up or cleaned up.

mod account;
mod compliance;
mod contract;
mod delivery;
mod narrate;
mod notification;
mod outages;
mod support;

use eventbank_e2e::TestWorld;
use narrate::Outcome;
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

/// A scenario's body: it gets a fresh world (nothing started yet) and leaves the cleanup to
/// the runner.
type Run = for<'a> fn(&'a TestWorld) -> Pin<Box<dyn Future<Output = anyhow::Result<Outcome>> + 'a>>;

struct Scenario {
    name: &'static str,
    /// One line for `scripts/demo list`.
    what: &'static str,
    /// The concept, printed once the demo passed.
    idea: &'static str,
    run: Run,
}

macro_rules! scenario {
    ($name:literal, $run:path, $what:literal, $idea:literal $(,)?) => {
        Scenario {
            name: $name,
            what: $what,
            idea: $idea,
            run: |world| Box::pin($run(world)),
        }
    };
}

const SCENARIOS: &[Scenario] = &[
    scenario!(
        "fan-out",
        delivery::fan_out,
        "one deposit, four independent consumers, each in its own database",
        "a fact is published once; every consumer reacts in its own database and none calls another",
    ),
    scenario!(
        "duplicate",
        delivery::duplicate,
        "the same event delivered three times changes every consumer once",
        "delivery is at least once; a dedup table of event ids makes each consumer apply it once",
    ),
    scenario!(
        "out-of-order",
        delivery::out_of_order,
        "events arriving 3, 1, 2: the account parks 3 until the gap fills",
        "per-account sequence numbers let a consumer restore the order the broker did not keep",
    ),
    scenario!(
        "idempotency",
        delivery::idempotency,
        "a POST retried with the same Idempotency-Key deposits once; another body is refused",
        "a client that cannot know whether its request landed retries with a key; the server answers the first result again",
    ),
    scenario!(
        "consumer-down",
        outages::consumer_down,
        "email is down: deposits still flow, email catches up when it returns",
        "queues decouple producer and consumer: a consumer's outage only delays its own work",
    ),
    scenario!(
        "broker-down",
        outages::broker_down,
        "the broker is unreachable: deposits wait in the outbox, then publish",
        "the transactional outbox: the deposit and its event commit together, publishing comes later",
    ),
    scenario!(
        "poison-redrive",
        outages::poison_redrive,
        "a message interest cannot apply goes to its DLQ with a reason; after the fix, bankctl redrives it once",
        "a message that fails for good is set aside with its reason instead of blocking its queue, and sent back once its cause is fixed",
    ),
    scenario!(
        "read-your-writes",
        account::read_your_writes,
        "ask for the sequence you just wrote; with the consumer down, a clear 503",
        "a read can wait for the write it depends on instead of showing a stale answer",
    ),
    scenario!(
        "point-in-time",
        account::point_in_time,
        "the balance at a past instant, folded from the event store",
        "an event store keeps every change, so any past state is a fold of the events up to that instant",
    ),
    scenario!(
        "replay",
        account::replay,
        "projections are disposable: a rebuild from the event store finds and repairs a damaged one",
        "the events are the truth; read models are derived from them and can be rebuilt at will",
    ),
    scenario!(
        "snapshots",
        account::snapshots,
        "one stream of 100,000 events loaded with and without its snapshot: same balance, far faster",
        "a snapshot caches a stream's state, so a load replays only the events after it",
    ),
    scenario!(
        "sse",
        account::sse,
        "an SSE client is pushed a deposit's completion over one open response, without polling",
        "the read side pushes changes to subscribers as it applies them (Server-Sent Events)",
    ),
    scenario!(
        "schema-v1",
        contract::schema_v1,
        "stored version-1 events published today are read by all four consumers",
        "versioned events: consumers upcast older versions in one place and ignore unknown fields",
    ),
    scenario!(
        "back-dated",
        contract::back_dated,
        "a deposit that occurred days ago makes interest recompute its accrual from that day",
        "business time is not arrival time: a late event is applied at the day it happened",
    ),
    scenario!(
        "compliance-alert",
        compliance::compliance_alert,
        "a large deposit raises a CTR alert; split deposits raise one structuring alert",
        "rules over the event stream raise alerts once per finding, not once per event",
    ),
    scenario!(
        "tamper",
        compliance::tamper,
        "an audit entry rewritten by a superuser is caught by the chain verification",
        "a hash chain makes history tamper-evident: each entry's hash covers its text and the hash before it",
    ),
    scenario!(
        "notification-vs-state-transfer",
        notification::notification_vs_state_transfer,
        "a thin-notification consumer that calls deposit back vs the fat-event consumer, measured",
        "a thin notification makes every consumer call the source (calls, latency, load, and it stops with the source); a fat event costs bytes and a copy as of the event",
    ),
];

fn print_list() {
    println!("scripts/demo <scenario>|all\n");
    for s in SCENARIOS {
        println!("  {:<18} {}", s.name, s.what);
    }
}

/// Runs one scenario in a fresh world; the exit code to stop with on failure.
async fn run_one(scenario: &Scenario) -> Result<(), ExitCode> {
    println!("\n=== demo: {}: {}", scenario.name, scenario.what);
    let world = TestWorld::new().await.map_err(|e| {
        eprintln!("demo {}: cannot set up: {e:#}", scenario.name);
        ExitCode::from(2)
    })?;
    let started = Instant::now();
    let outcome = (scenario.run)(&world).await;
    let took = started.elapsed();
    let cleaned = world.cleanup().await;
    let outcome = outcome.map_err(|e| {
        eprintln!("\n✘ demo {} FAILED: {e:#}", scenario.name);
        ExitCode::from(1)
    })?;
    cleaned.map_err(|e| {
        eprintln!("demo {}: cleanup failed: {e:#}", scenario.name);
        ExitCode::from(2)
    })?;
    println!(
        "=== demo {}: passed ({:.1} s)",
        scenario.name,
        took.as_secs_f64()
    );
    println!("  idea:   {}", scenario.idea);
    println!("  did:    {}", outcome.did);
    println!("  proved: {}", outcome.proved);
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let arg = std::env::args().nth(1).unwrap_or_else(|| "list".into());
    if arg == "list" || arg == "--help" || arg == "-h" {
        print_list();
        return ExitCode::SUCCESS;
    }
    let chosen: Vec<&Scenario> = if arg == "all" {
        SCENARIOS.iter().collect()
    } else if let Some(s) = SCENARIOS.iter().find(|s| s.name == arg) {
        vec![s]
    } else {
        eprintln!("unknown scenario {arg:?}; `scripts/demo list` shows them");
        return ExitCode::from(1);
    };
    let started = Instant::now();
    for scenario in &chosen {
        if let Err(code) = run_one(scenario).await {
            return code;
        }
    }
    if chosen.len() > 1 {
        println!(
            "\nall {} demos passed in {:.0} s",
            chosen.len(),
            started.elapsed().as_secs_f64()
        );
    }
    ExitCode::SUCCESS
}
