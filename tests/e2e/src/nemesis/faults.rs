//! The faults, their seeded schedule, and the injector that strikes each one under load and
//! proves it struck by something observable (a process gone, a server's start time moved,
//! connections closed and re-opened, a lock held by another backend, rows delivered before
//! the relay published them).

use super::stack::Stack;
use super::workload::{HistoryEntry, Workload};
use crate::amqp::{CLOUDEVENTS_JSON, DEPOSIT_COMPLETED, headers, publish_event, publish_with};
use crate::poll::eventually;
use crate::service::ServiceHandle;
use crate::svc::Svc;
use anyhow::{Context as _, Result, anyhow, bail, ensure};
use lapin::BasicProperties;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use sqlx::Connection as _;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long a healed fault may take to show it healed.
const HEAL: Duration = Duration::from_secs(120);
/// Copies re-published once the system is at rest, to count them skipped.
const DUPLICATES_AT_REST: u64 = 20;

/// One fault the nemesis can inject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL one instance (`replica` picks the deposit replica), start it again after
    /// `down_ms`.
    Kill {
        svc: Svc,
        replica: usize,
        down_ms: u64,
    },
    /// SIGKILL two services at once (the first deposit replica if one is deposit).
    KillTwo { a: Svc, b: Svc, down_ms: u64 },
    /// The PostgreSQL server restarted (`pg_ctlcluster ... restart`).
    PostgresRestart,
    /// The RabbitMQ node's application stopped (`rabbitmqctl stop_app`) and started again.
    BrokerRestart { down_ms: u64 },
    /// Every service's broker connections cut (through the proxies) for a period.
    BrokerCut { ms: u64 },
    /// Every database connection of every service terminated, the relay's included.
    DbTerminate,
    /// The backend holding the relay's leader lock terminated while the relay publishes.
    RelayLockLost,
    /// `count` copies of delivered events re-published, shuffled.
    Duplicates { count: usize },
    /// The relay cut off while deposits go on; at least `rows` events it has not published yet
    /// are delivered by the nemesis first, one account's events in reverse order.
    ReorderedFirst { rows: usize },
    /// `count` undecodable messages mixed into the stream.
    Poison { count: usize },
}

impl Fault {
    /// Faults in one round of the schedule: a SIGKILL of each of the four services that run
    /// during the workload, two at once, and the eight others.
    pub const KINDS: usize = 13;

    /// The kind, for the tally of kinds that struck.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Kill { .. } => "sigkill",
            Fault::KillTwo { .. } => "sigkill-two-at-once",
            Fault::PostgresRestart => "postgres-restart",
            Fault::BrokerRestart { .. } => "rabbitmq-restart",
            Fault::BrokerCut { .. } => "broker-connections-cut",
            Fault::DbTerminate => "db-connections-terminated",
            Fault::RelayLockLost => "relay-leader-lock-lost",
            Fault::Duplicates { .. } => "duplicate-deliveries",
            Fault::ReorderedFirst { .. } => "reordered-first-deliveries",
            Fault::Poison { .. } => "poison-messages",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::Kill {
                svc: Svc::Deposit,
                replica,
                down_ms,
            } => write!(f, "SIGKILL deposit replica {replica}, down {down_ms} ms"),
            Fault::Kill { svc, down_ms, .. } => write!(f, "SIGKILL {svc}, down {down_ms} ms"),
            Fault::KillTwo { a, b, down_ms } => {
                write!(f, "SIGKILL {a} and {b} at once, down {down_ms} ms")
            }
            Fault::PostgresRestart => write!(f, "PostgreSQL restarted"),
            Fault::BrokerRestart { down_ms } => {
                write!(f, "RabbitMQ stop_app, start_app after {down_ms} ms")
            }
            Fault::BrokerCut { ms } => write!(f, "every broker connection cut for {ms} ms"),
            Fault::DbTerminate => write!(f, "every service's database connections terminated"),
            Fault::RelayLockLost => write!(f, "relay leader's lock connection terminated"),
            Fault::Duplicates { count } => write!(f, "{count} delivered events re-published"),
            Fault::ReorderedFirst { rows } => write!(
                f,
                "relay cut; >= {rows} unpublished events delivered first, reordered"
            ),
            Fault::Poison { count } => write!(f, "{count} poison messages"),
        }
    }
}

/// A fault and the point of the workload (deposits answered) it strikes at.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub at: usize,
    pub fault: Fault,
}

/// The schedule of a seed: `rounds` rounds, each every fault kind once in a seeded order (the
/// kills spare `offline`, which is down anyway), one fault every `spacing` answered deposits.
pub fn schedule(seed: u64, offline: Svc, spacing: usize, rounds: usize) -> Vec<Scheduled> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_fa17);
    let online: Vec<Svc> = Svc::ALL.into_iter().filter(|s| *s != offline).collect();
    let mut out = Vec::new();
    for _ in 0..rounds {
        let mut round: Vec<Fault> = online
            .iter()
            .map(|&svc| Fault::Kill {
                svc,
                replica: if svc == Svc::Deposit {
                    rng.random_range(0..2)
                } else {
                    0
                },
                down_ms: rng.random_range(200..3_000),
            })
            .collect();
        let mut pair = online.clone();
        pair.shuffle(&mut rng);
        round.extend([
            Fault::KillTwo {
                a: pair[0],
                b: pair[1],
                down_ms: rng.random_range(200..3_000),
            },
            Fault::PostgresRestart,
            Fault::BrokerRestart {
                down_ms: rng.random_range(1_000..4_000),
            },
            Fault::BrokerCut {
                ms: rng.random_range(2_000..8_000),
            },
            Fault::DbTerminate,
            Fault::RelayLockLost,
            Fault::Duplicates {
                count: rng.random_range(30..80),
            },
            Fault::ReorderedFirst {
                rows: rng.random_range(10..30),
            },
            Fault::Poison {
                count: rng.random_range(3..7),
            },
        ]);
        debug_assert_eq!(round.len(), Fault::KINDS);
        round.shuffle(&mut rng);
        for fault in round {
            out.push(Scheduled {
                at: (out.len() + 1) * spacing,
                fault,
            });
        }
    }
    out
}

/// What one fault did and the evidence that it struck.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub n: usize,
    pub kind: &'static str,
    pub fault: String,
    /// Deposits answered when it struck.
    pub at: usize,
    /// Struck while the clients were depositing (every scheduled fault), not while healing.
    pub during_workload: bool,
    pub proof: String,
    /// From the strike until the system showed it healed (service ready again, connections
    /// re-established, the lock held again, ...).
    pub recovery: Duration,
    pub killed: Vec<Svc>,
    /// Whether the email sender may have lost track of sends under way (SIGKILL, its database
    /// connections gone): each such fault may resend up to the sender's concurrency.
    pub email_disrupted: bool,
    pub poison_ids: Vec<String>,
    pub duplicates: u64,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "FAULT #{:<2} at {:>5} | {:<27} | {} | healed in {:.1} s | {}",
            self.n,
            self.at,
            self.kind,
            self.fault,
            self.recovery.as_secs_f64(),
            self.proof
        )
    }
}

/// What a strike returns besides its timing.
#[derive(Default)]
struct Struck {
    proof: String,
    killed: Vec<Svc>,
    email_disrupted: bool,
    poison_ids: Vec<String>,
    duplicates: u64,
}

pub struct Injector {
    stack: std::sync::Arc<Stack>,
    rng: Mutex<StdRng>,
    seed: u64,
    records: Mutex<usize>,
}

impl Injector {
    pub fn new(stack: std::sync::Arc<Stack>, seed: u64) -> Injector {
        Injector {
            stack,
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x10dd_ba11)),
            seed,
            records: Mutex::new(0),
        }
    }

    fn rng(&self) -> std::sync::MutexGuard<'_, StdRng> {
        self.rng.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_n(&self) -> usize {
        let mut n = self.records.lock().unwrap_or_else(|e| e.into_inner());
        *n += 1;
        *n
    }

    /// Strikes the schedule's faults as the workload reaches them, holding the workload back
    /// at the next fault's point until the current one healed. Returns when the schedule is
    /// done or the workload ended.
    pub async fn run(
        &self,
        plan: Vec<Scheduled>,
        workload: &Workload,
        total: Option<usize>,
    ) -> Result<Vec<FaultRecord>> {
        let mut records = Vec::new();
        for (i, scheduled) in plan.iter().enumerate() {
            workload.allow_until(plan.get(i + 1).map_or(usize::MAX, |s| s.at));
            if !workload.reached(scheduled.at, total).await {
                break;
            }
            let record = self
                .strike(&scheduled.fault, workload.answered())
                .await
                .inspect_err(|_| workload.stop())
                .with_context(|| format!("fault {}", scheduled.fault))?;
            println!("nemesis: {record}");
            records.push(record);
        }
        workload.release();
        Ok(records)
    }

    async fn strike(&self, fault: &Fault, at: usize) -> Result<FaultRecord> {
        let started = Instant::now();
        let struck = match fault {
            Fault::Kill {
                svc,
                replica,
                down_ms,
            } => self.kill(&[(*svc, *replica)], *down_ms).await?,
            Fault::KillTwo { a, b, down_ms } => self.kill(&[(*a, 0), (*b, 0)], *down_ms).await?,
            Fault::PostgresRestart => self.postgres_restart().await?,
            Fault::BrokerRestart { down_ms } => self.broker_restart(*down_ms).await?,
            Fault::BrokerCut { ms } => self.broker_cut(*ms).await?,
            Fault::DbTerminate => self.db_terminate().await?,
            Fault::RelayLockLost => self.relay_lock_lost().await?,
            Fault::Duplicates { count } => self.duplicates(*count).await?,
            Fault::ReorderedFirst { rows } => self.reordered_first(*rows).await?,
            Fault::Poison { count } => self.poison(*count).await?,
        };
        Ok(self.record(
            fault.kind(),
            fault.to_string(),
            at,
            true,
            started.elapsed(),
            struck,
        ))
    }

    fn record(
        &self,
        kind: &'static str,
        fault: String,
        at: usize,
        during_workload: bool,
        recovery: Duration,
        struck: Struck,
    ) -> FaultRecord {
        FaultRecord {
            n: self.next_n(),
            kind,
            fault,
            at,
            during_workload,
            proof: struck.proof,
            recovery,
            killed: struck.killed,
            email_disrupted: struck.email_disrupted,
            poison_ids: struck.poison_ids,
            duplicates: struck.duplicates,
        }
    }

    fn handle(&self, svc: Svc, replica: usize) -> Result<&ServiceHandle> {
        if svc == Svc::Deposit {
            self.stack
                .deposits
                .get(replica)
                .ok_or_else(|| anyhow!("no deposit replica {replica}"))
        } else {
            self.stack.consumer(svc)
        }
    }

    async fn kill(&self, targets: &[(Svc, usize)], down_ms: u64) -> Result<Struck> {
        let mut handles = Vec::new();
        for &(svc, replica) in targets {
            let handle = self.handle(svc, replica)?;
            let pid = handle
                .pid()
                .ok_or_else(|| anyhow!("{} is not running", handle.label()))?;
            handles.push((handle, pid));
        }
        futures_util::future::try_join_all(handles.iter().map(|(h, _)| h.kill())).await?;
        for (handle, pid) in &handles {
            ensure!(
                !handle.is_running().await && !pid_alive(*pid),
                "{} (pid {pid}) still runs after SIGKILL",
                handle.label()
            );
        }
        // The fault's own downtime, during which the workload goes on.
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        futures_util::future::try_join_all(handles.iter().map(|(h, _)| h.restart())).await?;
        let mut proof = Vec::new();
        for (handle, pid) in &handles {
            proof.push(format!(
                "{} pid {pid} SIGKILLed and gone, ready again as pid {}",
                handle.label(),
                handle.pid().map_or("?".into(), |p| p.to_string())
            ));
        }
        Ok(Struck {
            proof: proof.join("; "),
            killed: targets.iter().map(|(s, _)| *s).collect(),
            email_disrupted: targets.iter().any(|(s, _)| *s == Svc::Email),
            ..Struck::default()
        })
    }

    async fn admin(&self) -> Result<sqlx::PgConnection> {
        Ok(sqlx::PgConnection::connect(self.stack.world.admin_url()).await?)
    }

    async fn postgres_restart(&self) -> Result<Struck> {
        let before: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT pg_postmaster_start_time()")
                .fetch_one(&mut self.admin().await?)
                .await?;
        let command = postgres_restart_command(self.stack.world.admin_url())?;
        // A restart that fails half-way leaves the server down: start it (a no-op if it runs).
        let restore = Restore::new(&start_command(&command));
        run_shell(&command).await?;
        restore.now().await?;
        let after: chrono::DateTime<chrono::Utc> = eventually(HEAL, || async {
            Ok(sqlx::query_scalar("SELECT pg_postmaster_start_time()")
                .fetch_one(&mut self.admin().await?)
                .await?)
        })
        .await?;
        ensure!(
            after > before,
            "PostgreSQL's start time did not move ({before}): `{command}` did not restart it"
        );
        self.stack.all_ready(HEAL).await?;
        Ok(Struck {
            proof: format!(
                "`{command}`: postmaster start time {} -> {}; every service ready again",
                before.format("%H:%M:%S%.3f"),
                after.format("%H:%M:%S%.3f")
            ),
            email_disrupted: true,
            ..Struck::default()
        })
    }

    /// Waits until both proxies forwarded new connections: every running consumer and the
    /// relay reconnected.
    async fn reconnected(&self, consumers_before: u64, deposit_before: u64) -> Result<String> {
        let consumers = u64::try_from(self.stack.running_consumers().await.len())?;
        eventually(HEAL, || async {
            let c = self.stack.consumer_broker.forwarded_total() - consumers_before;
            let d = self.stack.deposit_broker.forwarded_total() - deposit_before;
            ensure!(
                c >= consumers && d >= 1,
                "{c} consumer connections (of {consumers}) and {d} deposit connections re-established"
            );
            Ok(format!(
                "{c} consumer and {d} deposit connections re-established"
            ))
        })
        .await
    }

    async fn broker_restart(&self, down_ms: u64) -> Result<Struck> {
        let consumers_before = self.stack.consumer_broker.forwarded_total();
        let deposit_before = self.stack.deposit_broker.forwarded_total();
        // Whatever happens next (an error, a panic), the shared broker is started again.
        let restore = Restore::new("rabbitmqctl -q start_app");
        run_shell("rabbitmqctl -q stop_app").await?;
        let refused = lapin::Connection::connect(
            self.stack.world.amqp_url(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .is_err();
        // The fault's own downtime.
        tokio::time::sleep(Duration::from_millis(down_ms)).await;
        restore.now().await?;
        ensure!(
            refused,
            "a new AMQP connection succeeded while the broker was stopped"
        );
        let again = self.reconnected(consumers_before, deposit_before).await?;
        self.stack.all_ready(HEAL).await?;
        Ok(Struck {
            proof: format!(
                "stop_app: a new AMQP connection was refused; start_app after {down_ms} ms; {again}"
            ),
            ..Struck::default()
        })
    }

    async fn broker_cut(&self, ms: u64) -> Result<Struck> {
        let (deposit, consumers) = (&self.stack.deposit_broker, &self.stack.consumer_broker);
        let open = deposit.active_connections() + consumers.active_connections();
        ensure!(open > 0, "no broker connection to cut");
        let consumers_before = consumers.forwarded_total();
        let deposit_before = deposit.forwarded_total();
        tokio::join!(deposit.cut(), consumers.cut());
        // The fault's own duration.
        tokio::time::sleep(Duration::from_millis(ms)).await;
        tokio::join!(deposit.restore(), consumers.restore());
        let again = self.reconnected(consumers_before, deposit_before).await?;
        Ok(Struck {
            proof: format!("{open} connections reset, refused for {ms} ms; {again}"),
            ..Struck::default()
        })
    }

    async fn db_terminate(&self) -> Result<Struck> {
        let mut admin = self.admin().await?;
        let mut counts = Vec::new();
        for svc in Svc::ALL {
            let names: Vec<String> = match svc {
                Svc::Deposit => vec!["deposit".into(), "deposit-relay".into()],
                other => vec![other.name().into()],
            };
            let killed: Vec<(String, bool)> = sqlx::query_as(
                "SELECT application_name, pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name = ANY($2) AND pid <> pg_backend_pid()",
            )
            .bind(self.stack.world.db_name(svc))
            .bind(&names)
            .fetch_all(&mut admin)
            .await?;
            let running = if svc == Svc::Deposit {
                true
            } else {
                self.stack.consumer(svc)?.is_running().await
            };
            for name in &names {
                let n = killed.iter().filter(|(a, ok)| a == name && *ok).count();
                ensure!(
                    n > 0 || !running,
                    "{name} had no database connection to terminate"
                );
                counts.push(format!("{name} {n}"));
            }
        }
        self.stack.all_ready(HEAL).await?;
        let holder = self.wait_lock_holder(None).await?;
        Ok(Struck {
            proof: format!(
                "backends terminated: {}; every service ready again, relay lock re-taken by backend {holder}",
                counts.join(", ")
            ),
            email_disrupted: true,
            ..Struck::default()
        })
    }

    async fn lock_holder(&self) -> Result<Option<i32>> {
        let pool = self.stack.pool(Svc::Deposit).await?;
        Ok(sqlx::query_scalar(
            "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database \
             WHERE l.locktype = 'advisory' AND l.granted AND d.datname = current_database()",
        )
        .fetch_optional(&pool)
        .await?)
    }

    /// Waits until some backend other than `not` holds the relay's lock.
    async fn wait_lock_holder(&self, not: Option<i32>) -> Result<i32> {
        eventually(HEAL, || async {
            match self.lock_holder().await? {
                Some(pid) if Some(pid) != not => Ok(pid),
                other => bail!("relay lock holder: {other:?}"),
            }
        })
        .await
    }

    async fn relay_lock_lost(&self) -> Result<Struck> {
        let pool = self.stack.pool(Svc::Deposit).await?;
        let holder = self.wait_lock_holder(None).await?;
        // "While it publishes": rows were published moments ago, and the stream goes on.
        let recent: i64 = eventually(HEAL, || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE published_at > now() - interval '5 seconds'",
            )
            .fetch_one(&pool)
            .await?;
            ensure!(n > 0, "the relay published nothing in the last 5 s");
            Ok(n)
        })
        .await?;
        let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
            .bind(holder)
            .fetch_one(&mut self.admin().await?)
            .await?;
        ensure!(terminated, "backend {holder} was already gone");
        let started = Instant::now();
        let new = self.wait_lock_holder(Some(holder)).await?;
        Ok(Struck {
            proof: format!(
                "lock held by backend {holder} terminated while the relay published \
                 ({recent} rows in the last 5 s); backend {new} holds it {} ms later",
                started.elapsed().as_millis()
            ),
            ..Struck::default()
        })
    }

    async fn published_rows(&self) -> Result<Vec<(Uuid, String, Vec<u8>)>> {
        let pool = self.stack.pool(Svc::Deposit).await?;
        Ok(sqlx::query_as(
            "SELECT event_id, account_id, payload FROM outbox WHERE published_at IS NOT NULL ORDER BY id",
        )
        .fetch_all(&pool)
        .await?)
    }

    /// Re-publishes `count` copies of delivered events (some events twice or three times),
    /// shuffled. Returns how many copies went out.
    async fn republish(&self, count: usize) -> Result<(u64, usize)> {
        let rows = self.published_rows().await?;
        ensure!(!rows.is_empty(), "no delivered event to duplicate yet");
        let copies: Vec<&(Uuid, String, Vec<u8>)> = {
            let mut rng = self.rng();
            let mut picked: Vec<_> = (0..count)
                .map(|_| &rows[rng.random_range(0..rows.len())])
                .collect();
            picked.shuffle(&mut *rng);
            picked
        };
        let distinct = copies
            .iter()
            .map(|(id, _, _)| id)
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        for (_, account, payload) in &copies {
            publish_event(&self.stack.world, account, payload, &[]).await?;
        }
        Ok((u64::try_from(copies.len())?, distinct))
    }

    async fn duplicates(&self, count: usize) -> Result<Struck> {
        let (copies, distinct) = self.republish(count).await?;
        Ok(Struck {
            proof: format!(
                "{copies} copies of {distinct} delivered events published (confirmed, routed)"
            ),
            duplicates: copies,
            ..Struck::default()
        })
    }

    async fn reordered_first(&self, rows: usize) -> Result<Struck> {
        let pool = self.stack.pool(Svc::Deposit).await?;
        self.stack.deposit_broker.cut().await;
        let result = async {
            // Wait for enough events the relay cannot publish, two of them on one account.
            let pending: Vec<(i64, Uuid, String, i64, Vec<u8>)> = eventually(HEAL, || async {
                let pending: Vec<(i64, Uuid, String, i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT id, event_id, account_id, sequence, payload FROM outbox \
                     WHERE published_at IS NULL ORDER BY id",
                )
                .fetch_all(&pool)
                .await?;
                let mut per_account: BTreeMap<&str, usize> = BTreeMap::new();
                for (_, _, account, _, _) in &pending {
                    *per_account.entry(account.as_str()).or_default() += 1;
                }
                ensure!(
                    pending.len() >= rows && per_account.values().any(|n| *n >= 2),
                    "{} unpublished events, none two on one account yet",
                    pending.len()
                );
                Ok(pending)
            })
            .await?;
            // A seeded shuffle, then each account's events put in descending sequence order in
            // the places that account got: every account with two or more is reversed.
            let mut order: Vec<usize> = (0..pending.len()).collect();
            order.shuffle(&mut *self.rng());
            let mut slots: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
            for (pos, &i) in order.iter().enumerate() {
                slots.entry(pending[i].2.as_str()).or_default().push(pos);
            }
            let mut delivery = order.clone();
            let mut inverted = 0;
            for positions in slots.values() {
                let mut events: Vec<usize> = positions.iter().map(|&p| order[p]).collect();
                events.sort_by_key(|&i| std::cmp::Reverse(pending[i].3));
                inverted += positions.len() * (positions.len() - 1) / 2;
                for (&p, &i) in positions.iter().zip(&events) {
                    delivery[p] = i;
                }
            }
            for &i in &delivery {
                let (_, _, account, _, payload) = &pending[i];
                publish_event(&self.stack.world, account, payload, &[]).await?;
            }
            let ids: Vec<i64> = pending.iter().map(|p| p.0).collect();
            let still: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE id = ANY($1) AND published_at IS NULL",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await?;
            ensure!(
                usize::try_from(still)? == ids.len(),
                "the relay published {} of them during the injection: not first deliveries",
                ids.len() - usize::try_from(still)?
            );
            Ok::<_, anyhow::Error>((ids, inverted))
        }
        .await;
        self.stack.deposit_broker.restore().await;
        let (ids, inverted) = result?;
        let restored = Instant::now();
        eventually(HEAL, || async {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM outbox WHERE id = ANY($1) AND published_at IS NULL",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await?;
            ensure!(left == 0, "{left} of them still unpublished by the relay");
            Ok(())
        })
        .await?;
        Ok(Struck {
            proof: format!(
                "{} events delivered before the relay published them ({inverted} pairs of one \
                 account's events in reverse order); the relay published its copies {} ms \
                 after it was reconnected",
                ids.len(),
                restored.elapsed().as_millis()
            ),
            duplicates: u64::try_from(ids.len())?,
            ..Struck::default()
        })
    }

    async fn poison(&self, count: usize) -> Result<Struck> {
        let real = self
            .published_rows()
            .await?
            .pop()
            .ok_or_else(|| anyhow!("no delivered event to make poison from"))?;
        let mut future_version: serde_json::Value = serde_json::from_slice(&real.2)?;
        future_version["id"] = Uuid::new_v4().to_string().into();
        future_version["dataschemaversion"] = 99.into();
        let kinds: [(&str, Vec<u8>); 5] = [
            ("not JSON", b"deposit of 100 USD, trust me".to_vec()),
            ("empty object", b"{}".to_vec()),
            ("truncated event", real.2[..real.2.len() / 2].to_vec()),
            (
                "unsupported dataschemaversion 99",
                serde_json::to_vec(&future_version)?,
            ),
            ("bytes that are not UTF-8", vec![0xff, 0xfe, 0x00, 0x80]),
        ];
        let start = self.rng().random_range(0..kinds.len());
        let mut ids = Vec::new();
        let mut names = Vec::new();
        for k in 0..count {
            let (name, body) = &kinds[(start + k) % kinds.len()];
            let id = format!("poison-{}-{}", self.seed, Uuid::new_v4().simple());
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(CLOUDEVENTS_JSON.into())
                .with_message_id(id.as_str().into())
                .with_headers(headers(&[("account_id", real.1.as_str())]));
            publish_with(
                &self.stack.world,
                &self.stack.world.bank_events_exchange(),
                DEPOSIT_COMPLETED,
                body,
                properties,
                true,
            )
            .await?;
            ids.push(id);
            names.push(*name);
        }
        Ok(Struck {
            proof: format!("published and routed (confirmed): {}", names.join(", ")),
            poison_ids: ids,
            ..Struck::default()
        })
    }

    /// After the workload: the offline consumer comes back, is SIGKILLed while it catches up,
    /// and comes back again.
    pub async fn heal(&self, history: &[HistoryEntry]) -> Result<Vec<FaultRecord>> {
        let answered = history.len();
        let svc = self.stack.offline;
        let handle = self.stack.consumer(svc)?;
        let pool = self.stack.pool(svc).await?;
        let started = Instant::now();
        let backlog_before = self.stack.backlog(svc).await?;
        handle.respawn().await?;
        let processed: i64 = eventually(HEAL, || async {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
                .fetch_one(&pool)
                .await?;
            ensure!(n > 0, "{svc} has processed nothing yet");
            Ok(n)
        })
        .await?;
        let pid = handle
            .pid()
            .ok_or_else(|| anyhow!("{svc} is not running"))?;
        handle.kill().await?;
        let left = self.stack.backlog(svc).await?;
        ensure!(
            left > 0,
            "{svc} caught up before the SIGKILL could land ({processed} processed)"
        );
        handle.restart().await?;
        let offline = self.record(
            "consumer-offline-whole-run",
            format!("{svc} down for the whole workload"),
            answered,
            false,
            Duration::ZERO,
            Struck {
                proof: format!("{backlog_before} events waited in its queues"),
                ..Struck::default()
            },
        );
        let kill = self.record(
            "sigkill",
            format!("SIGKILL {svc} while it catches up"),
            answered,
            false,
            started.elapsed(),
            Struck {
                proof: format!(
                    "pid {pid} SIGKILLed after {processed} events applied, {left} still queued; ready again as pid {}",
                    handle.pid().map_or("?".into(), |p| p.to_string())
                ),
                killed: vec![svc],
                email_disrupted: svc == Svc::Email,
                ..Struck::default()
            },
        );
        println!("nemesis: {offline}\nnemesis: {kill}");
        Ok(vec![offline, kill])
    }

    /// At rest: re-publishes copies of delivered events and waits until every consumer counted
    /// each one as a duplicate it skipped.
    pub async fn duplicates_at_rest(&self, answered: usize) -> Result<FaultRecord> {
        let started = Instant::now();
        let mut before = BTreeMap::new();
        for svc in Svc::CONSUMERS {
            before.insert(svc, self.skipped(svc).await?);
        }
        let (copies, _) = self.republish(usize::try_from(DUPLICATES_AT_REST)?).await?;
        let deltas = eventually(HEAL, || async {
            let mut deltas = Vec::new();
            for svc in Svc::CONSUMERS {
                let delta = self.skipped(svc).await? - before[&svc];
                ensure!(
                    delta >= copies,
                    "{svc} skipped {delta} of {copies} duplicates so far"
                );
                ensure!(
                    self.stack.backlog(svc).await? == 0,
                    "{svc} still has a backlog"
                );
                deltas.push(format!("{svc} +{delta}"));
            }
            Ok(deltas)
        })
        .await?;
        let record = self.record(
            "duplicates-at-rest",
            format!("{copies} delivered events re-published at rest"),
            answered,
            false,
            started.elapsed(),
            Struck {
                proof: format!("duplicates_skipped rose: {}", deltas.join(", ")),
                duplicates: copies,
                ..Struck::default()
            },
        );
        println!("nemesis: {record}");
        Ok(record)
    }

    /// One consumer's `duplicates_skipped` counter (its current process).
    async fn skipped(&self, svc: Svc) -> Result<u64> {
        let handle = self.stack.consumer(svc)?;
        let (status, text) = crate::http::get_text(&handle.url("/metrics")).await?;
        ensure!(status == 200, "{svc} /metrics answered {status}");
        let name = format!("eventbank_{svc}_duplicates_skipped_total ");
        let value = text
            .lines()
            .find_map(|l| l.strip_prefix(&name))
            .ok_or_else(|| anyhow!("{svc} /metrics has no {name}"))?;
        // prometheus-client writes counters as integers.
        value
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{svc} {name} is {value:?}"))
    }
}

/// Runs a command that brings a shared server back: [`now`](Restore::now) when the fault heals,
/// or on drop if it never got there (an error or a panic in between), so no test leaves
/// PostgreSQL or RabbitMQ stopped for the ones after it.
struct Restore {
    command: Option<String>,
}

impl Restore {
    fn new(command: &str) -> Restore {
        Restore {
            command: Some(command.to_string()),
        }
    }

    /// Runs the command, retried for a while (the server may still be stopping).
    async fn now(mut self) -> Result<()> {
        let Some(command) = self.command.take() else {
            return Ok(());
        };
        eventually(HEAL, || run_shell(&command)).await
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Some(command) = self.command.take() {
            eprintln!("nemesis: restoring after a failure: {command}");
            let _ = std::process::Command::new("sh")
                .arg("-c")
                .arg(&command)
                .status();
        }
    }
}

/// The command that starts what `restart_command` restarts (`... restart` -> `... start`).
fn start_command(restart_command: &str) -> String {
    match restart_command.strip_suffix(" restart") {
        Some(base) => format!("{base} start || true"),
        None => "true".to_string(),
    }
}

/// Whether a process with this pid exists.
fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn run_shell(command: &str) -> Result<()> {
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .await
        .with_context(|| format!("running `{command}`"))?;
    ensure!(
        output.status.success(),
        "`{command}` failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `NEMESIS_PG_RESTART` if set, else `pg_ctlcluster` for the cluster `pg_lsclusters` lists on
/// the admin URL's port.
fn postgres_restart_command(admin_url: &str) -> Result<String> {
    if let Ok(command) = std::env::var("NEMESIS_PG_RESTART")
        && !command.trim().is_empty()
    {
        return Ok(command);
    }
    let port = admin_url
        .rsplit('@')
        .next()
        .and_then(|rest| rest.split('/').next())
        .and_then(|host| host.rsplit_once(':'))
        .map_or("5432", |(_, port)| port);
    let listed = std::process::Command::new("pg_lsclusters")
        .arg("-h")
        .output()
        .context("running pg_lsclusters (set NEMESIS_PG_RESTART to the command that restarts the tests' PostgreSQL)")?;
    let text = String::from_utf8_lossy(&listed.stdout);
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [version, cluster, cluster_port, ..] = fields.as_slice()
            && *cluster_port == port
        {
            return Ok(format!(
                "pg_ctlcluster --skip-systemctl-redirect {version} {cluster} restart"
            ));
        }
    }
    bail!(
        "pg_lsclusters lists no cluster on port {port}; set NEMESIS_PG_RESTART to the command that restarts the tests' PostgreSQL"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_seed_replays_its_schedule_and_each_round_holds_every_kind_once() {
        let a = schedule(42, Svc::Email, 100, 3);
        let b = schedule(42, Svc::Email, 100, 3);
        let faults = |s: &[Scheduled]| s.iter().map(|x| x.fault.clone()).collect::<Vec<_>>();
        assert_eq!(faults(&a), faults(&b));
        assert_ne!(faults(&a), faults(&schedule(43, Svc::Email, 100, 3)));
        assert_eq!(a.len(), 3 * Fault::KINDS);
        for round in a.chunks(Fault::KINDS) {
            let kinds: BTreeSet<&str> = round.iter().map(|s| s.fault.kind()).collect();
            assert_eq!(kinds.len(), 10, "every kind in every round");
            let killed: BTreeSet<Svc> = round
                .iter()
                .filter_map(|s| match s.fault {
                    Fault::Kill { svc, .. } => Some(svc),
                    _ => None,
                })
                .collect();
            assert_eq!(killed.len(), 4);
            assert!(
                !killed.contains(&Svc::Email),
                "the offline consumer is spared"
            );
        }
        assert!(a.iter().enumerate().all(|(i, s)| s.at == (i + 1) * 100));
    }
}
