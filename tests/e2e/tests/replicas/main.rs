//! Replicas of a consumer service share the partitions (`eventbank_runtime::membership`): all
//! of one account's events go to one partition queue; two replicas each own and consume
//! partitions; a replica SIGKILLed mid-stream hands its partitions to the other within the
//! bound, the stream goes on in per-account order with every deposit applied once, and the
//! replica started again takes its share back; the same for every consumer service at once
//! (two replicas each of account, email, interest and compliance, one of each killed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Context, Result, ensure};
use eventbank_e2e::flows::{deposit, deposit_until_accepted, open_account, settle};
use eventbank_e2e::{ServiceHandle, Svc, TestWorld, eventually, lapin};
use futures_util::StreamExt;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const PARTITIONS: usize = 4;
/// How long a dead replica's partitions may stay without a consumer: the membership poll
/// (1 s) plus opening channels, with room for a loaded 2-core machine.
const HANDOVER_BOUND: Duration = Duration::from_secs(5);

async fn owned(service: &ServiceHandle) -> Result<i64> {
    service.metric("partitions_owned").await
}

async fn consumed(service: &ServiceHandle) -> Result<i64> {
    service.metric("messages_consumed_total").await
}

/// The management API's consumers of account's partition queues, polled until each queue has
/// exactly one active consumer and the active ones belong to two connections: partition ->
/// the active consumer's connection (client port).
async fn active_consumers(world: &TestWorld) -> Result<BTreeMap<usize, u64>> {
    let client = eventbank_e2e::http_client();
    eventually(Duration::from_secs(15), || async {
        let consumers: serde_json::Value = client
            .get("http://127.0.0.1:15672/api/consumers/eventbank")
            .basic_auth("guest", Some("guest"))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut active: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for consumer in consumers.as_array().context("a list")? {
            let queue = consumer["queue"]["name"].as_str().unwrap_or_default();
            let Some(partition) =
                (0..PARTITIONS).find(|p| queue == world.partition_queue(Svc::Account, *p))
            else {
                continue;
            };
            if consumer["active"] == true {
                let port = consumer["channel_details"]["peer_port"]
                    .as_u64()
                    .context("peer_port")?;
                active.entry(partition).or_default().push(port);
            }
        }
        ensure!(
            active.len() == PARTITIONS && active.values().all(|ports| ports.len() == 1),
            "active consumers per partition (by connection port): {active:?}"
        );
        let by_partition: BTreeMap<usize, u64> =
            active.into_iter().map(|(p, ports)| (p, ports[0])).collect();
        let connections: BTreeSet<u64> = by_partition.values().copied().collect();
        ensure!(
            connections.len() == 2,
            "the active consumers are on {} connection(s): {by_partition:?}",
            connections.len()
        );
        Ok(by_partition)
    })
    .await
}

/// Waits until each replica owns the given number of partitions.
async fn owning(replicas: &[&ServiceHandle], expected: &[i64], within: Duration) -> Result<()> {
    eventually(within, || async {
        let mut got = Vec::new();
        for replica in replicas {
            got.push(owned(replica).await?);
        }
        ensure!(
            got == expected,
            "partitions owned {got:?}, expected {expected:?}"
        );
        Ok(())
    })
    .await
}

async fn open_accounts(world_services: &eventbank_e2e::Services, n: usize) -> Result<Vec<String>> {
    let mut accounts = Vec::new();
    for i in 0..n {
        accounts.push(open_account(world_services, &format!("Rita Replica{i}"), "USD").await?);
    }
    Ok(accounts)
}

/// Each account's deposits, with account's consumers stopped, wait in exactly one of account's
/// partition queues, in sequence order; the accounts spread over more than one queue.
#[tokio::test]
async fn all_of_one_accounts_events_land_on_one_partition() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    // Stopped: its queues stay (durable) and keep what arrives.
    services.account.kill().await.unwrap();
    let accounts = open_accounts(&services, 8).await.unwrap();
    let per_account = 5;
    for round in 0..per_account {
        for account in &accounts {
            deposit(&services, account, &format!("{}.00", round + 1), "USD")
                .await
                .unwrap();
        }
    }
    let total = (accounts.len() * per_account) as u32;
    eventually(Duration::from_secs(30), || async {
        let mut waiting = 0;
        for p in 0..PARTITIONS {
            waiting +=
                eventbank_e2e::queue_message_count(&world, &world.partition_queue(Svc::Account, p))
                    .await?;
        }
        ensure!(
            waiting == total,
            "{waiting} of {total} deposits waiting in account's partitions"
        );
        Ok(())
    })
    .await
    .unwrap();
    // account -> partition -> sequences, in queue order. basic.get is refused on a queue with
    // single active consumer, so the test consumes (without acking) what each queue holds.
    let amqp_url = std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/eventbank".into());
    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let mut seen: BTreeMap<String, BTreeMap<usize, Vec<i64>>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let queue = world.partition_queue(Svc::Account, p);
        let count = eventbank_e2e::queue_message_count(&world, &queue)
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "replicas-test".into(),
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await
            .unwrap();
        for _ in 0..count {
            let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
                .await
                .expect("a waiting message is delivered")
                .expect("consumer open")
                .unwrap();
            let account =
                eventbank_e2e::header_str(delivery.properties.headers().as_ref(), "account_id")
                    .expect("account_id header");
            let body: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
            let sequence = body["sequence"].as_i64().expect("sequence");
            seen.entry(account)
                .or_default()
                .entry(p)
                .or_default()
                .push(sequence);
        }
        let _ = channel.close(200, "counted".into()).await;
    }
    let _ = connection.close(200, "done".into()).await;
    assert_eq!(seen.len(), accounts.len(), "{seen:?}");
    let mut used = BTreeSet::new();
    for (account, partitions) in &seen {
        assert_eq!(
            partitions.len(),
            1,
            "{account} is in several partitions: {partitions:?}"
        );
        let (partition, sequences) = partitions.iter().next().unwrap();
        used.insert(*partition);
        let expected: Vec<i64> = (1..=per_account as i64).collect();
        assert_eq!(sequences, &expected, "{account} in partition {partition}");
    }
    assert!(
        used.len() > 1,
        "8 accounts all hashed to one partition: {seen:?}"
    );
    println!("REPLICAS | 8 accounts over partitions {used:?}, each account in one");
    world.cleanup().await.unwrap();
}

/// Two replicas of account each own two of the four partitions (their gauge), the broker shows
/// each partition queue's one active consumer on the replica that owns it (two connections),
/// and each replica applies deposits.
#[tokio::test]
async fn two_replicas_each_own_and_consume_partitions() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let first = services.account.clone();
    owning(&[&first], &[4], Duration::from_secs(10))
        .await
        .unwrap();
    let second = world.start(Svc::Account, &[]).await.unwrap();
    owning(&[&first, &second], &[2, 2], Duration::from_secs(10))
        .await
        .unwrap();
    // The broker's view: each partition queue has one active consumer, and the active ones
    // are on two connections (one per replica).
    let connections = active_consumers(&world).await.unwrap();
    println!("REPLICAS | active consumer per partition, by connection port: {connections:?}");
    let accounts = open_accounts(&services, 8).await.unwrap();
    for round in 0..3 {
        for account in &accounts {
            deposit(&services, account, &format!("{}.00", round + 1), "USD")
                .await
                .unwrap();
        }
    }
    settle(&world, (accounts.len() * 3) as i64).await.unwrap();
    let (a, b) = (
        consumed(&first).await.unwrap(),
        consumed(&second).await.unwrap(),
    );
    println!("REPLICAS | messages consumed: first {a}, second {b}");
    assert!(
        a > 0 && b > 0,
        "each replica consumes: first {a}, second {b}"
    );
    world.cleanup().await.unwrap();
}

/// Deposits posted by a client until stopped, each with its own Idempotency-Key and retried
/// until 201, over the given accounts in turn.
struct Stream {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Stream {
    fn start(deposit: &ServiceHandle, accounts: &[String]) -> Stream {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let url = deposit.url("/deposits");
        let accounts = accounts.to_vec();
        let task = tokio::spawn({
            let (stop, accepted) = (stop.clone(), accepted.clone());
            async move {
                let mut i = 0usize;
                while !stop.load(Ordering::SeqCst) {
                    let body = json!({
                        "account_id": accounts[i % accounts.len()],
                        "amount": format!("{}.{:02}", 1 + i % 50, i % 100),
                        "currency": "USD",
                    });
                    let key = format!("replicas-{i}");
                    deposit_until_accepted(&url, &body, &key, Duration::from_secs(10)).await?;
                    accepted.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }
        });
        Stream {
            stop,
            accepted,
            task,
        }
    }

    async fn reached(&self, n: usize) -> Result<()> {
        eventually(Duration::from_secs(60), || async {
            let got = self.accepted.load(Ordering::SeqCst);
            ensure!(got >= n, "{got} of {n} deposits accepted");
            Ok(())
        })
        .await
    }

    async fn finish(self) -> Result<usize> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await??;
        Ok(self.accepted.load(Ordering::SeqCst))
    }
}

/// Starts the killed replica of each pair (the first) again while the stream goes on, and waits
/// until each pair shares its partitions again (2 + 2); lets 60 more deposits through, ends the
/// stream and settles: every accepted deposit applied once by every consumer (the checker) and
/// each of the `accounts` accounts' event stores in order. Returns the deposits accepted and the
/// checker's report.
async fn rejoin_and_settle(
    world: &TestWorld,
    stream: Stream,
    pairs: &[(ServiceHandle, ServiceHandle)],
    accounts: usize,
) -> (usize, eventbank_e2e::invariants::Report) {
    for (first, second) in pairs {
        first.restart().await.unwrap();
        owning(&[first, second], &[2, 2], Duration::from_secs(10))
            .await
            .unwrap();
    }
    let mark = stream.accepted.load(Ordering::SeqCst) + 60;
    stream.reached(mark).await.unwrap();
    let total = stream.finish().await.unwrap();
    let report = settle(world, total as i64).await.unwrap();
    assert!(report.ok(), "{report}");
    let in_order = eventbank_e2e::invariants::event_store_in_order(world)
        .await
        .unwrap();
    assert_eq!(in_order, accounts);
    (total, report)
}

async fn ensure_alive(replica: &ServiceHandle, alive: bool) {
    assert_eq!(
        replica.is_running().await,
        alive,
        "{} running",
        replica.label()
    );
}

/// A stream of deposits; one of two account replicas is SIGKILLed mid-stream: the other owns
/// all four partitions within the bound and the stream goes on; the killed one is started
/// again and takes two back; every deposit is applied once, in per-account order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_stream_hands_its_partitions_over() {
    let world = TestWorld::new().await.unwrap();
    let services = world.start_all(&[]).await.unwrap();
    let first = services.account.clone();
    let second = world.start(Svc::Account, &[]).await.unwrap();
    owning(&[&first, &second], &[2, 2], Duration::from_secs(10))
        .await
        .unwrap();
    let accounts = open_accounts(&services, 10).await.unwrap();
    let stream = Stream::start(&services.deposit, &accounts);
    stream.reached(60).await.unwrap();

    first.kill().await.unwrap();
    let killed_at = Instant::now();
    owning(&[&second], &[4], HANDOVER_BOUND).await.unwrap();
    let handover = killed_at.elapsed();
    println!(
        "REPLICAS | the survivor owned all 4 partitions {} ms after the kill",
        handover.as_millis()
    );
    // The stream goes on and reaches account through the survivor alone.
    let mark = stream.accepted.load(Ordering::SeqCst) + 60;
    stream.reached(mark).await.unwrap();
    // Every deposit accepted so far, of every account (all four partitions), is applied while
    // only the survivor runs.
    let deposit_pool = world.pool(Svc::Deposit).await.unwrap();
    let account_pool = world.pool(Svc::Account).await.unwrap();
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM deposits")
        .fetch_one(&deposit_pool)
        .await
        .unwrap();
    eventually(Duration::from_secs(30), || async {
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'Deposited'")
                .fetch_one(&account_pool)
                .await?;
        ensure!(
            applied >= accepted,
            "{applied} of {accepted} deposits applied with one replica"
        );
        Ok(())
    })
    .await
    .unwrap();
    ensure_alive(&first, false).await;

    let (total, report) = rejoin_and_settle(
        &world,
        stream,
        &[(first.clone(), second.clone())],
        accounts.len(),
    )
    .await;
    let consumed_first = consumed(&first).await.unwrap();
    println!(
        "REPLICAS | {total} deposits; {report}; {} accounts in order; the restarted replica consumed {consumed_first}",
        accounts.len()
    );
    assert!(
        consumed_first > 0,
        "the restarted replica consumed its share"
    );
    world.cleanup().await.unwrap();
}

/// Every consumer service (account, email, interest, compliance) runs two replicas; during a
/// stream of deposits one replica of each is SIGKILLed, one after the other: each survivor owns
/// all four partitions of its service within the bound, and with the survivors alone every
/// consumer applies everything accepted so far; then each killed replica is started again,
/// mid-stream, and each pair shares again (2 + 2). At the end every accepted deposit is applied
/// once by every consumer (the invariant checker), account's event store is in per-account
/// order, and every deposit's email is sent, one `.eml` file each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_of_each_consumer_killed_mid_stream() {
    let world = TestWorld::new().await.unwrap();
    // A short email lease: the emails the killed email replica had claimed come back within
    // seconds instead of five minutes.
    let env = [("EMAIL_LEASE_SECS", "4")];
    let services = world.start_all(&env).await.unwrap();
    let mut pairs: Vec<(ServiceHandle, ServiceHandle)> = Vec::new();
    for first in services.consumers() {
        let second = world.start(first.svc(), &env).await.unwrap();
        pairs.push((first.clone(), second));
    }
    for (first, second) in &pairs {
        owning(&[first, second], &[2, 2], Duration::from_secs(10))
            .await
            .unwrap();
    }
    let accounts = open_accounts(&services, 10).await.unwrap();
    let stream = Stream::start(&services.deposit, &accounts);
    stream.reached(60).await.unwrap();

    // One replica of each consumer killed, one after the other, the stream going on between
    // the kills (20 more deposits, about a second).
    let mut takeovers = Vec::new();
    for (first, second) in &pairs {
        first.kill().await.unwrap();
        let killed_at = Instant::now();
        owning(&[second], &[4], HANDOVER_BOUND).await.unwrap();
        let handover = killed_at.elapsed();
        println!(
            "REPLICAS | {} owned all 4 partitions {} ms after {} was killed",
            second.label(),
            handover.as_millis(),
            first.label()
        );
        takeovers.push(format!(
            "{} {} ms",
            first.svc().name(),
            handover.as_millis()
        ));
        let mark = stream.accepted.load(Ordering::SeqCst) + 20;
        stream.reached(mark).await.unwrap();
    }
    // With the survivors alone, every consumer applies every deposit accepted so far (of all
    // four partitions).
    let mark = stream.accepted.load(Ordering::SeqCst) + 40;
    stream.reached(mark).await.unwrap();
    let accepted: i64 = sqlx::query_scalar("SELECT count(*) FROM deposits")
        .fetch_one(&world.pool(Svc::Deposit).await.unwrap())
        .await
        .unwrap();
    for svc in Svc::CONSUMERS {
        let pool = world.pool(svc).await.unwrap();
        eventually(Duration::from_secs(30), || async {
            let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
                .fetch_one(&pool)
                .await?;
            ensure!(
                applied >= accepted,
                "{svc}: {applied} of {accepted} deposits applied with one replica"
            );
            Ok(())
        })
        .await
        .unwrap();
    }
    for (first, _) in &pairs {
        ensure_alive(first, false).await;
    }

    // Each killed replica started again while the stream goes on; each pair shares again.
    let (total, report) = rejoin_and_settle(&world, stream, &pairs, accounts.len()).await;
    // email: one row per deposit (the checker), each sent, one `.eml` file per deposit event
    // (named by the event id, so a resend replaces it and cannot add one).
    let email_pool = world.pool(Svc::Email).await.unwrap();
    let files = eventually(Duration::from_secs(60), || async {
        let unsent: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status <> 'sent'")
            .fetch_one(&email_pool)
            .await?;
        ensure!(unsent == 0, "{unsent} emails not sent yet");
        let events: BTreeSet<String> =
            sqlx::query_scalar::<_, String>("SELECT event_id::text FROM emails")
                .fetch_all(&email_pool)
                .await?
                .into_iter()
                .collect();
        let files: BTreeSet<String> = std::fs::read_dir(world.email_dir())?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".eml"))
                    .map(str::to_owned)
            })
            .collect();
        ensure!(
            events.len() == total && files == events,
            "{} emails, {} .eml files, {total} deposits",
            events.len(),
            files.len()
        );
        Ok(files.len())
    })
    .await
    .unwrap();
    let mut restarted = Vec::new();
    for (first, _) in &pairs {
        let n = consumed(first).await.unwrap();
        assert!(n > 0, "the restarted {} consumed its share", first.label());
        restarted.push(format!("{} {n}", first.svc().name()));
    }
    println!(
        "REPLICAS | {total} deposits; {report}; {} accounts in order; {files} emails sent; \
         takeovers: {}; consumed by the restarted replicas: {}",
        accounts.len(),
        takeovers.join(", "),
        restarted.join(", ")
    );
    world.cleanup().await.unwrap();
}

/// A replica that loses its database (a proxy cuts it; the shared server keeps running) loses
/// its membership and consumes no partition; when the database is back it holds a slot and all
/// the partitions again, and what was deposited meanwhile is applied once.
#[tokio::test]
async fn a_replica_cut_from_its_database_owns_nothing_until_it_is_back() {
    let world = TestWorld::new().await.unwrap();
    let proxy = world.db_proxy().await.unwrap();
    let via_proxy = world.db_url_via(Svc::Account, &proxy);
    world
        .start(Svc::Account, &[("DATABASE_URL", via_proxy.as_str())])
        .await
        .unwrap();
    for svc in [Svc::Email, Svc::Interest, Svc::Compliance, Svc::Deposit] {
        world.start(svc, &[]).await.unwrap();
    }
    let services = world.started().unwrap();
    owning(&[&services.account], &[4], Duration::from_secs(10))
        .await
        .unwrap();
    let accounts = open_accounts(&services, 4).await.unwrap();
    for account in &accounts {
        deposit(&services, account, "1.00", "USD").await.unwrap();
    }

    proxy.cut().await;
    owning(&[&services.account], &[0], Duration::from_secs(10))
        .await
        .unwrap();
    for account in &accounts {
        deposit(&services, account, "2.00", "USD").await.unwrap();
    }
    proxy.restore().await;
    owning(&[&services.account], &[4], Duration::from_secs(30))
        .await
        .unwrap();
    let report = settle(&world, (accounts.len() * 2) as i64).await.unwrap();
    assert!(report.ok(), "{report}");
    assert_eq!(
        eventbank_e2e::invariants::event_store_in_order(&world)
            .await
            .unwrap(),
        accounts.len()
    );
    world.cleanup().await.unwrap();
}
