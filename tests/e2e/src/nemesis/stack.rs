//! The stack the nemesis runs against: the five real binaries in a fresh [`TestWorld`], two
//! deposit replicas, every service on the broker through a proxy the nemesis can cut (one for
//! the deposit replicas, one for the consumers), email over SMTP to an in-process sink.

use crate::amqp::queue_message_count;
use crate::http::post_json;
use crate::proxy::TcpProxy;
use crate::service::ServiceHandle;
use crate::smtp::SmtpSink;
use crate::svc::Svc;
use crate::world::TestWorld;
use anyhow::{Context as _, Result, anyhow};
use futures_util::{StreamExt as _, TryStreamExt as _};
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;

/// Partitions per consumer (the services' default).
pub const PARTITIONS: u16 = 4;
/// Deliveries under way at once in the email sender: bounds the resends after a crash.
pub const EMAIL_SEND_CONCURRENCY: usize = 4;
/// A crashed email sender's claims wait this long before another sender takes them.
const EMAIL_LEASE_SECS: &str = "5";

pub struct Stack {
    pub world: TestWorld,
    pub sink: SmtpSink,
    /// The deposit replicas' way to the broker.
    pub deposit_broker: TcpProxy,
    /// The consumers' way to the broker.
    pub consumer_broker: TcpProxy,
    /// Two replicas: clients use both, their relays compete for the leader lock.
    pub deposits: Vec<ServiceHandle>,
    pub consumers: BTreeMap<Svc, ServiceHandle>,
    /// The consumer that is down for the whole workload (started again when healing).
    pub offline: Svc,
    /// The accounts the workload deposits into (all in USD).
    pub accounts: Vec<String>,
}

impl Stack {
    pub async fn start(seed: u64, accounts: usize, offline: Svc) -> Result<Stack> {
        let world = TestWorld::new().await?;
        let sink = SmtpSink::start().await?;
        let deposit_broker = world.broker_proxy().await?;
        let consumer_broker = world.broker_proxy().await?;
        let consumer_amqp = world.amqp_url_via(&consumer_broker);
        let deposit_amqp = world.amqp_url_via(&deposit_broker);
        let smtp_port = sink.port().to_string();
        let concurrency = EMAIL_SEND_CONCURRENCY.to_string();
        let mut consumers = BTreeMap::new();
        for svc in Svc::CONSUMERS {
            let mut env = vec![("AMQP_URL", consumer_amqp.as_str())];
            if svc == Svc::Email {
                env.extend([
                    ("EMAIL_TRANSPORT", "smtp"),
                    ("SMTP_HOST", "127.0.0.1"),
                    ("SMTP_PORT", smtp_port.as_str()),
                    ("EMAIL_SEND_CONCURRENCY", concurrency.as_str()),
                    ("EMAIL_LEASE_SECS", EMAIL_LEASE_SECS),
                    ("EMAIL_RETRY_BASE_MS", "200"),
                    ("EMAIL_RETRY_CAP_SECS", "2"),
                ]);
            }
            consumers.insert(svc, world.spawn(svc, &env).await?);
        }
        for handle in consumers.values() {
            handle
                .wait_ready(std::time::Duration::from_secs(120))
                .await?;
        }
        // The offline consumer has declared its queues (it was deployed before), then goes
        // down: its events wait in the broker for the whole workload.
        consumers
            .get(&offline)
            .ok_or_else(|| anyhow!("no {offline} handle"))?
            .kill()
            .await?;
        let mut deposits = Vec::new();
        for _ in 0..2 {
            deposits.push(
                world
                    .start(Svc::Deposit, &[("AMQP_URL", deposit_amqp.as_str())])
                    .await?,
            );
        }
        let accounts = open_accounts(&deposits[0], seed, accounts).await?;
        Ok(Stack {
            world,
            sink,
            deposit_broker,
            consumer_broker,
            deposits,
            consumers,
            offline,
            accounts,
        })
    }

    pub fn consumer(&self, svc: Svc) -> Result<&ServiceHandle> {
        self.consumers
            .get(&svc)
            .ok_or_else(|| anyhow!("{svc} is not a consumer of the stack"))
    }

    pub async fn pool(&self, svc: Svc) -> Result<PgPool> {
        self.world.pool(svc).await
    }

    /// Every partition queue of one consumer.
    pub fn queues(&self, svc: Svc) -> Vec<String> {
        (0..PARTITIONS)
            .map(|p| self.world.partition_queue(svc, p.into()))
            .collect()
    }

    /// Messages ready in one consumer's partition queues.
    pub async fn backlog(&self, svc: Svc) -> Result<u64> {
        let mut total = 0u64;
        for queue in self.queues(svc) {
            total += u64::from(queue_message_count(&self.world, &queue).await?);
        }
        Ok(total)
    }

    pub async fn offline_backlog(&self) -> Result<u64> {
        self.backlog(self.offline).await
    }

    /// The consumers that run now (the offline one is not among them during the workload).
    pub async fn running_consumers(&self) -> Vec<&ServiceHandle> {
        let mut out = Vec::new();
        for handle in self.consumers.values() {
            if handle.is_running().await {
                out.push(handle);
            }
        }
        out
    }

    /// Every service instance that runs now.
    pub async fn running(&self) -> Vec<&ServiceHandle> {
        let mut out = self.running_consumers().await;
        for handle in &self.deposits {
            if handle.is_running().await {
                out.push(handle);
            }
        }
        out
    }

    /// Waits until every running service answers `/readyz`.
    pub async fn all_ready(&self, timeout: std::time::Duration) -> Result<()> {
        for handle in self.running().await {
            handle.wait_ready(timeout).await?;
        }
        Ok(())
    }

    /// Prints the last lines of every service's output (a failed run's evidence).
    pub fn print_logs(&self) {
        for handle in self.deposits.iter().chain(self.consumers.values()) {
            eprintln!(
                "----- {} (last lines) -----\n{}",
                handle.label(),
                handle.logs()
            );
        }
    }

    pub async fn stop(self) -> Result<()> {
        drop(self.deposit_broker);
        drop(self.consumer_broker);
        self.world.cleanup().await
    }
}

async fn open_accounts(deposit: &ServiceHandle, seed: u64, n: usize) -> Result<Vec<String>> {
    let url = deposit.url("/accounts");
    futures_util::stream::iter(0..n)
        .map(|i| {
            let url = url.clone();
            async move {
                let body = json!({
                    "holder_name": format!("Nemesis {seed} #{i}"),
                    "email": format!("nemesis{i}@example.com"),
                    "currency": "USD",
                });
                let account = post_json(&url, &body, &[]).await?.require(201)?;
                account["account_id"]
                    .as_str()
                    .map(str::to_owned)
                    .context("account_id in the answer")
            }
        })
        .buffered(16)
        .try_collect()
        .await
}
