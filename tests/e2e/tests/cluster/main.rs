//! The five services on a three-node RabbitMQ cluster (`scripts/cluster`), their `AMQP_URL` the
//! list of the three nodes. A concurrent stream of deposits runs; mid-stream the node that leads
//! most of the world's quorum queues is SIGKILLed. While it is down, everything accepted must
//! reach every consumer through the other two nodes (the services that were connected to it
//! must have moved); then it is started again, mid-stream, and rejoins; at the end the
//! invariant checker passes with every accepted deposit stored once everywhere, and each
//! account's event store holds its deposits in sequence order, 1..n.
//!
//! If the cluster is not up, the test brings it up (`scripts/cluster up`) and takes it down
//! (`scripts/cluster down`, which removes its data) at the end, also when it fails. That needs
//! root and this machine's rabbitmq-server, like `scripts/cluster`.
//!
//! Prints the pause the deposit stream saw (the longest gap between two accepted deposits), the
//! longest deposit-to-account delay, how long the consumers took to catch up without the node,
//! and how long the node took to rejoin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, bail, ensure};
use eventbank_e2e::{
    ServiceHandle, Svc, TestWorld, WorldOptions, eventually, flows::deposit_until_accepted,
    invariants, post_json,
};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deposit clients running at once.
const CLIENTS: usize = 4;
const ACCOUNTS: usize = 12;
/// Each client's pause between two deposits: about 30 deposits/s in all, which the dev build's
/// consumers keep up with on a 2-core machine.
const PACE: Duration = Duration::from_millis(120);
/// Deposits the stream makes before the kill, and after it (at PACE: about 4 s and 6 s).
const BEFORE_KILL: usize = 120;
const AFTER_KILL: usize = 180;
/// Deposits of the second stream before the node is started again, and after it rejoined.
const BEFORE_REJOIN: usize = 60;
const AFTER_REJOIN: usize = 120;
const SETTLE: Duration = Duration::from_secs(120);

fn cluster_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/cluster")
}

/// Runs `scripts/cluster ARGS` without blocking the runtime (the deposit stream goes on
/// meanwhile); its output is returned, a failure is an error carrying the output.
async fn cluster(args: &[&str]) -> Result<String> {
    let output = tokio::process::Command::new(cluster_script())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("running scripts/cluster {}", args.join(" ")))?;
    checked(args, &output)
}

/// The same, blocking: for `Drop`.
fn cluster_blocking(args: &[&str]) -> Result<String> {
    let output = std::process::Command::new(cluster_script())
        .args(args)
        .output()
        .with_context(|| format!("running scripts/cluster {}", args.join(" ")))?;
    checked(args, &output)
}

fn checked(args: &[&str], output: &std::process::Output) -> Result<String> {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!(
            "scripts/cluster {} failed ({}):\n{stdout}{stderr}",
            args.join(" "),
            output.status
        );
    }
    Ok(stdout)
}

/// Brings the cluster up if it is not, and takes it down again on drop if it did; restarts a
/// node the test killed and did not start again (a failed test leaves a cluster it found up as
/// it found it).
struct ClusterGuard {
    brought_up: bool,
    killed: Mutex<Option<String>>,
}

impl ClusterGuard {
    async fn ensure_up() -> Result<ClusterGuard> {
        let up = cluster(&["status"]).await.is_ok();
        if up {
            println!("CLUSTER | using the running cluster (left up at the end)");
        } else {
            let started = Instant::now();
            let out = cluster(&["up"]).await?;
            print!("{out}");
            println!(
                "CLUSTER | scripts/cluster up took {:.1} s (taken down at the end)",
                started.elapsed().as_secs_f64()
            );
        }
        Ok(ClusterGuard {
            brought_up: !up,
            killed: Mutex::new(None),
        })
    }

    async fn kill(&self, node: &str) -> Result<()> {
        print!("{}", cluster(&["kill", node]).await?);
        *self.killed.lock().unwrap() = Some(node.to_owned());
        Ok(())
    }

    async fn start(&self, node: &str) -> Result<()> {
        print!("{}", cluster(&["start", node]).await?);
        *self.killed.lock().unwrap() = None;
        Ok(())
    }
}

impl Drop for ClusterGuard {
    fn drop(&mut self) {
        let result = if self.brought_up {
            cluster_blocking(&["down"])
        } else if let Some(node) = self.killed.lock().unwrap().take() {
            cluster_blocking(&["start", &node])
        } else {
            return;
        };
        match result {
            Ok(out) => print!("{out}"),
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
}

/// One quorum queue of the world, as `scripts/cluster leaders` prints it.
struct QueueLeader {
    name: String,
    leader: String,
    online: String,
}

async fn leaders(prefix: &str) -> Result<Vec<QueueLeader>> {
    let out = cluster(&["leaders", prefix]).await?;
    Ok(out
        .lines()
        .filter_map(|line| {
            let mut cols = line.split('\t');
            Some(QueueLeader {
                name: cols.next()?.to_owned(),
                leader: cols.next()?.to_owned(),
                online: cols.next().unwrap_or_default().to_owned(),
            })
        })
        .collect())
}

fn leader_counts(queues: &[QueueLeader]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for q in queues {
        *counts.entry(q.leader.clone()).or_insert(0) += 1;
    }
    counts
}

/// Concurrent clients posting deposits until stopped. Each deposit has its own
/// Idempotency-Key and is retried until the service answers 201, so every deposit is stored
/// exactly once whatever happens to a request.
struct Stream {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    times: Arc<Mutex<Vec<Instant>>>,
    tasks: Vec<tokio::task::JoinHandle<Result<()>>>,
}

impl Stream {
    fn start(deposit: &ServiceHandle, accounts: &[String], run: &str, seed: u64) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let times = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..CLIENTS)
            .map(|client| {
                let (stop, accepted, times) = (stop.clone(), accepted.clone(), times.clone());
                let url = deposit.url("/deposits");
                let accounts = accounts.to_vec();
                let run = format!("{run}-c{client}");
                let mut rng = StdRng::seed_from_u64(seed ^ client as u64);
                tokio::spawn(async move {
                    let mut i = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let cents: i64 = rng.random_range(1..100_000);
                        let body = json!({
                            "account_id": accounts[rng.random_range(0..accounts.len())],
                            "amount": format!("{}.{:02}", cents / 100, cents % 100),
                            "currency": "USD",
                        });
                        let key = format!("{run}-{i}");
                        deposit_until_accepted(&url, &body, &key, Duration::from_secs(40)).await?;
                        times.lock().unwrap().push(Instant::now());
                        accepted.fetch_add(1, Ordering::SeqCst);
                        i += 1;
                        tokio::time::sleep(PACE).await;
                    }
                    Ok(())
                })
            })
            .collect();
        Stream {
            stop,
            accepted,
            times,
            tasks,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Waits until the stream has accepted `n` deposits: faults strike a stream under way.
    async fn reached(&self, n: usize) -> Result<()> {
        eventually(SETTLE, || async {
            let got = self.accepted();
            ensure!(got >= n, "{got} of {n} deposits accepted");
            Ok(())
        })
        .await
    }

    /// Stops the clients (each finishes the deposit it is posting) and returns how many were
    /// accepted and the longest gap between two accepted deposits.
    async fn finish(self) -> Result<(usize, Duration)> {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks {
            task.await??;
        }
        let mut times = self.times.lock().unwrap().clone();
        times.sort();
        let gap = times
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or_default();
        Ok((times.len(), gap))
    }
}

/// Polls the invariant checker until it passes with exactly `expected` deposits.
async fn settled(world: &TestWorld, expected: usize) -> Result<invariants::Report> {
    eventually(SETTLE, || async {
        let report = invariants::check(world).await?;
        let result = (|| {
            ensure!(
                report.deposits == expected as i64,
                "{} of {expected} deposits stored",
                report.deposits
            );
            ensure!(report.ok(), "{report}");
            Ok(())
        })();
        if result.is_err() {
            // The checker reads every store: no need to run it 20 times a second.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        result.map(|()| report)
    })
    .await
}

/// The longest time from a deposit's acceptance to its application by the account service,
/// over all deposits and over those accepted in `[from, to]` (seconds since the epoch).
async fn longest_delays(world: &TestWorld, from: f64, to: f64) -> Result<(f64, f64)> {
    let account = world.pool(Svc::Account).await?;
    let (all, window): (Option<f64>, Option<f64>) = sqlx::query_as(
        "SELECT max(extract(epoch FROM applied_at - occurred_at))::float8, \
                max(extract(epoch FROM applied_at - occurred_at)) \
                    FILTER (WHERE extract(epoch FROM occurred_at) BETWEEN $1 AND $2)::float8 \
         FROM transactions",
    )
    .bind(from)
    .bind(to)
    .fetch_one(&account)
    .await?;
    Ok((all.unwrap_or_default(), window.unwrap_or_default()))
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

async fn open_accounts(deposit: &ServiceHandle) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for i in 0..ACCOUNTS {
        let body = json!({"holder_name": format!("Cluster {i}"), "email": format!("cluster{i}@example.com"), "currency": "USD"});
        let account = post_json(&deposit.url("/accounts"), &body, &[])
            .await?
            .require(201)?;
        out.push(
            account["account_id"]
                .as_str()
                .context("account_id")?
                .to_owned(),
        );
    }
    Ok(out)
}

// Two workers: the deposit clients, the services' HTTP calls and the checker run side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_node_leading_most_queues_mid_stream() {
    let guard = ClusterGuard::ensure_up().await.unwrap();
    let urls = cluster(&["urls"]).await.unwrap().trim().to_owned();
    let world = TestWorld::with_broker(WorldOptions::default(), urls)
        .await
        .unwrap();
    // Every service gets the three nodes as its AMQP_URL (the world's broker URL).
    for svc in Svc::CONSUMERS {
        world.start(svc, &[]).await.unwrap();
    }
    let deposit = world.start(Svc::Deposit, &[]).await.unwrap();
    let accounts = open_accounts(&deposit).await.unwrap();

    let prefix = format!("{}.", world.ns());
    let queues = leaders(&prefix).await.unwrap();
    assert_eq!(queues.len(), 4 * 5, "4 consumers x (4 partitions + DLQ)");
    for q in &queues {
        assert_eq!(
            q.online.matches('@').count(),
            3,
            "{} has not three members online: {}",
            q.name,
            q.online
        );
    }
    let counts = leader_counts(&queues);
    let (victim, led) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(node, n)| (node.clone(), *n))
        .unwrap();
    println!(
        "CLUSTER | world {}: queue leaders {counts:?}; the victim: {victim} ({led} of {} queues)",
        world.ns(),
        queues.len()
    );

    // Phase 1: the stream, with the kill in the middle of it.
    let run_started = Instant::now();
    let stream = Stream::start(&deposit, &accounts, world.ns(), 1);
    stream.reached(BEFORE_KILL).await.unwrap();
    let before = stream.accepted();
    let killed_at = Instant::now();
    let killed_epoch = epoch_now();
    guard.kill(&victim).await.unwrap();
    stream.reached(before + AFTER_KILL).await.unwrap();
    let (phase1, gap1) = stream.finish().await.unwrap();
    let stopped = Instant::now();
    println!(
        "CLUSTER | phase 1: {phase1} deposits accepted ({before} before the kill, {} after it)",
        phase1 - before
    );
    assert!(phase1 > before, "the stream must go on after the kill");

    // While the node is down: everything accepted reaches every consumer via the other two.
    let report = settled(&world, phase1)
        .await
        .context("catching up without the killed node (did every service move to another node?)")
        .unwrap();
    let caught_up = killed_at.elapsed();
    println!(
        "CLUSTER | without {victim}: {report} ({:.1} s after the kill, {:.1} s after the stream \
         stopped)",
        caught_up.as_secs_f64(),
        stopped.elapsed().as_secs_f64()
    );
    let moved = leader_counts(&leaders(&prefix).await.unwrap());
    assert!(
        !moved.contains_key(&victim),
        "a queue is still led by the dead node: {moved:?}"
    );
    println!("CLUSTER | queue leaders while {victim} is down: {moved:?}");

    // Phase 2: the stream again, and the node started mid-stream; it rejoins.
    let stream = Stream::start(&deposit, &accounts, &format!("{}-2", world.ns()), 2);
    stream.reached(BEFORE_REJOIN).await.unwrap();
    let rejoin_started = Instant::now();
    guard.start(&victim).await.unwrap();
    let rejoined = rejoin_started.elapsed();
    let members_back = eventually(SETTLE, || async {
        let queues = leaders(&prefix).await?;
        let missing: Vec<&str> = queues
            .iter()
            .filter(|q| !q.online.contains(victim.as_str()))
            .map(|q| q.name.as_str())
            .collect();
        ensure!(missing.is_empty(), "{victim} not online in {missing:?}");
        Ok(())
    })
    .await
    .map(|()| rejoin_started.elapsed())
    .unwrap();
    let at_rejoin = stream.accepted();
    stream.reached(at_rejoin + AFTER_REJOIN).await.unwrap();
    let (phase2, gap2) = stream.finish().await.unwrap();
    let total = phase1 + phase2;

    let report = settled(&world, total).await.unwrap();
    let accounts_in_order = invariants::event_store_in_order(&world).await.unwrap();
    let (delay_all, delay_kill) = longest_delays(&world, killed_epoch - 1.0, killed_epoch + 10.0)
        .await
        .unwrap();

    println!(
        "CLUSTER | final: {report}; {accounts_in_order} accounts' event streams in order, 1..n"
    );
    println!(
        "CLUSTER | stream pause (longest gap between two accepted deposits): {:.0} ms across the \
         kill, {:.0} ms across the restart",
        gap1.as_secs_f64() * 1e3,
        gap2.as_secs_f64() * 1e3
    );
    println!(
        "CLUSTER | longest deposit -> account delay: {:.0} ms for deposits accepted around the \
         kill (-1 s..+10 s), {:.0} ms overall",
        delay_kill * 1e3,
        delay_all * 1e3
    );
    println!(
        "CLUSTER | consumers caught up without {victim} {:.1} s after the kill; {victim} \
         restarted and rejoined in {:.1} s (scripts/cluster start), its queue members online \
         after {:.1} s; whole run {:.0} s, {total} deposits",
        caught_up.as_secs_f64(),
        rejoined.as_secs_f64(),
        members_back.as_secs_f64(),
        run_started.elapsed().as_secs_f64()
    );
    world.cleanup().await.unwrap();
    drop(guard);
}
