use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::poll::poll_until;
use crate::proxy::TcpProxy;
use crate::service::{CliOutput, ServiceHandle, ServiceSpec, run_to_completion};
use crate::svc::Svc;
use crate::util::{
    binary_in, default_bin_dir, free_port, host_port_of, redact, with_database, with_host_port,
};

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/eventbank";
const DEFAULT_PARTITIONS: usize = 4;
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a drop waits for the background cleanup.
const DROP_CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Options for [`TestWorld::with_options`].
#[derive(Debug, Clone, Default)]
pub struct WorldOptions {
    /// Where the service binaries are; default `EVENTBANK_BIN_DIR`, else next to the test binary.
    pub bin_dir: Option<PathBuf>,
    /// How long [`TestWorld::start`] and [`ServiceHandle::restart`] wait for `/readyz`;
    /// default `TEST_READY_TIMEOUT_SECS`, else 60 s.
    pub ready_timeout: Option<Duration>,
}

/// The five started services of [`TestWorld::start_all`].
#[derive(Clone, Debug)]
pub struct Services {
    pub deposit: ServiceHandle,
    pub account: ServiceHandle,
    pub email: ServiceHandle,
    pub interest: ServiceHandle,
    pub compliance: ServiceHandle,
}

impl Services {
    /// The handle of one service.
    pub fn get(&self, svc: Svc) -> &ServiceHandle {
        match svc {
            Svc::Deposit => &self.deposit,
            Svc::Account => &self.account,
            Svc::Email => &self.email,
            Svc::Interest => &self.interest,
            Svc::Compliance => &self.compliance,
        }
    }

    /// The four consumers' handles.
    pub fn consumers(&self) -> [&ServiceHandle; 4] {
        [&self.account, &self.email, &self.interest, &self.compliance]
    }
}

/// One test's isolated world: five fresh databases `eb_<id>_<svc>`, the broker namespace `<id>`,
/// a scratch directory, and the service processes started in it.
///
/// Call [`cleanup`](TestWorld::cleanup) at the end of the test. If the world is dropped without
/// it (a failed assertion, a panic, an early `?`), `Drop` kills the processes, prints their last
/// output lines (shown by libtest for failed tests), and removes databases, broker objects and the directory on a
/// helper thread (with its own runtime) before returning.
pub struct TestWorld {
    id: String,
    admin_url: String,
    amqp_url: String,
    dir: PathBuf,
    bin_dir: Option<PathBuf>,
    ready_timeout: Duration,
    echo_logs: bool,
    rust_log: String,
    pools: Mutex<BTreeMap<Svc, PgPool>>,
    services: Mutex<Vec<ServiceHandle>>,
    amqp: tokio::sync::Mutex<Option<lapin::Connection>>,
    max_partitions: AtomicUsize,
    cleaned: bool,
}

impl TestWorld {
    /// A new world with default options.
    pub async fn new() -> Result<TestWorld> {
        TestWorld::with_options(WorldOptions::default()).await
    }

    /// A new world: checks the broker is reachable, creates the five databases and the scratch
    /// directory (with `email/` in it).
    pub async fn with_options(options: WorldOptions) -> Result<TestWorld> {
        TestWorld::with_broker(options, env_or("TEST_AMQP_URL", DEFAULT_AMQP_URL)).await
    }

    /// A new world on the broker `amqp_url` instead of `TEST_AMQP_URL`: also a comma-separated
    /// list (a cluster's nodes), which the services get as their `AMQP_URL` and the world's own
    /// connection tries in order.
    pub async fn with_broker(options: WorldOptions, amqp_url: String) -> Result<TestWorld> {
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let admin_url = env_or("TEST_DATABASE_URL", DEFAULT_ADMIN_URL);
        let test_log = std::env::var("TEST_LOG")
            .ok()
            .filter(|v| !v.trim().is_empty());
        let rust_log = match test_log.as_deref() {
            None => "warn".to_string(),
            Some("1" | "true" | "yes" | "on") => "info".to_string(),
            Some(filter) => filter.to_string(),
        };
        let ready_timeout = options.ready_timeout.unwrap_or_else(|| {
            std::env::var("TEST_READY_TIMEOUT_SECS")
                .ok()
                .and_then(|s| s.parse().ok())
                .map_or(DEFAULT_READY_TIMEOUT, Duration::from_secs)
        });
        let dir = std::env::temp_dir().join(format!("eventbank-e2e-{id}"));
        let world = TestWorld {
            id,
            admin_url,
            amqp_url,
            dir,
            bin_dir: options.bin_dir,
            ready_timeout,
            echo_logs: test_log.is_some(),
            rust_log,
            pools: Mutex::new(BTreeMap::new()),
            services: Mutex::new(Vec::new()),
            amqp: tokio::sync::Mutex::new(None),
            max_partitions: AtomicUsize::new(DEFAULT_PARTITIONS),
            cleaned: false,
        };
        // From here on, a failure drops `world`, which removes whatever was created.
        std::fs::create_dir_all(world.email_dir())
            .with_context(|| format!("creating {}", world.dir.display()))?;
        let conn = crate::amqp::connect(&world.amqp_url).await?;
        *world.amqp.lock().await = Some(conn);
        world.create_databases().await?;
        Ok(world)
    }

    async fn create_databases(&self) -> Result<()> {
        let admin = admin_pool(&self.admin_url).await?;
        let result = async {
            for svc in Svc::ALL {
                let sql = format!("CREATE DATABASE \"{}\"", self.db_name(svc));
                let admin = &admin;
                let sql = sql.as_str();
                // Concurrent CREATE DATABASE from one template can fail with 55006 (object in
                // use) while another copy runs: retry those, fail at once on anything else.
                poll_until(Duration::from_secs(30), move || async move {
                    match sqlx::query(sqlx::AssertSqlSafe(sql)).execute(admin).await {
                        Ok(_) => ControlFlow::Break(Ok(())),
                        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55006") => {
                            ControlFlow::Continue(anyhow!("{sql}: {e}"))
                        }
                        Err(e) => ControlFlow::Break(Err(anyhow!(e).context(sql.to_string()))),
                    }
                })
                .await?;
            }
            Ok(())
        }
        .await;
        admin.close().await;
        result
    }

    /// The unique id, also the broker namespace: `t` + 12 hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The broker namespace given to the services as `AMQP_NAMESPACE` (same as `id`).
    pub fn ns(&self) -> &str {
        &self.id
    }

    /// The scratch directory of this world (removed at cleanup).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `EMAIL_DIR` of the email service: `<dir>/email`.
    pub fn email_dir(&self) -> PathBuf {
        self.dir.join("email")
    }

    /// The admin (superuser) URL the world was created with.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The database name of a service: `eb_<id>_<svc>`.
    pub fn db_name(&self, svc: Svc) -> String {
        format!("eb_{}_{}", self.id, svc.name())
    }

    /// The URL of a service's database, as the admin user.
    pub fn db_url(&self, svc: Svc) -> String {
        with_database(&self.admin_url, &self.db_name(svc))
            .unwrap_or_else(|_| format!("postgres://postgres@127.0.0.1:5432/{}", self.db_name(svc)))
    }

    /// The URL of a service's database with host and port replaced by the proxy's address.
    pub fn db_url_via(&self, svc: Svc, proxy: &TcpProxy) -> String {
        with_host_port(&self.db_url(svc), &proxy.addr().to_string())
            .unwrap_or_else(|_| self.db_url(svc))
    }

    /// Starts a [`TcpProxy`] in front of PostgreSQL; pass
    /// `("DATABASE_URL", &world.db_url_via(svc, &proxy))` as extra env to route a service through it.
    pub async fn db_proxy(&self) -> Result<TcpProxy> {
        TcpProxy::start(&host_port_of(&self.admin_url, 5432)?).await
    }

    /// A pool (up to 4 connections, admin user) on a service's database, made once and cached.
    pub async fn pool(&self, svc: Svc) -> Result<PgPool> {
        if let Some(pool) = self.lock_pools().get(&svc) {
            return Ok(pool.clone());
        }
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.db_url(svc))
            .await
            .with_context(|| format!("connecting to {}", self.db_name(svc)))?;
        Ok(self.lock_pools().entry(svc).or_insert(pool).clone())
    }

    fn lock_pools(&self) -> std::sync::MutexGuard<'_, BTreeMap<Svc, PgPool>> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_services(&self) -> std::sync::MutexGuard<'_, Vec<ServiceHandle>> {
        self.services.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The broker URL (`TEST_AMQP_URL`) given to services by default.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// The broker URL with host and port replaced by the proxy's address.
    pub fn amqp_url_via(&self, proxy: &TcpProxy) -> String {
        with_host_port(&self.amqp_url, &proxy.addr().to_string())
            .unwrap_or_else(|_| self.amqp_url.clone())
    }

    /// Starts a [`TcpProxy`] in front of the broker; pass
    /// `("AMQP_URL", &world.amqp_url_via(&proxy))` as extra env to route a service through it.
    pub async fn broker_proxy(&self) -> Result<TcpProxy> {
        TcpProxy::start(&host_port_of(&self.amqp_url, 5672)?).await
    }

    /// `<ns>.bank.events`
    pub fn bank_events_exchange(&self) -> String {
        format!("{}.bank.events", self.id)
    }

    /// `<ns>.<svc>.deposits` (the consistent-hash exchange of a consumer).
    pub fn service_exchange(&self, svc: Svc) -> String {
        format!("{}.{}.deposits", self.id, svc.name())
    }

    /// `<ns>.<svc>.deposits.<partition>`
    pub fn partition_queue(&self, svc: Svc, partition: usize) -> String {
        format!("{}.{}.deposits.{partition}", self.id, svc.name())
    }

    /// `<ns>.<svc>.deposits.dlx`
    pub fn dlx(&self, svc: Svc) -> String {
        format!("{}.{}.deposits.dlx", self.id, svc.name())
    }

    /// `<ns>.<svc>.deposits.dlq`
    pub fn dlq(&self, svc: Svc) -> String {
        format!("{}.{}.deposits.dlq", self.id, svc.name())
    }

    /// A fresh channel on the world's cached broker connection (reconnects if it was lost).
    pub(crate) async fn amqp_channel(&self) -> Result<lapin::Channel> {
        let mut slot = self.amqp.lock().await;
        if let Some(conn) = slot.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.create_channel().await?);
        }
        let conn = crate::amqp::connect(&self.amqp_url).await?;
        let channel = conn.create_channel().await?;
        *slot = Some(conn);
        Ok(channel)
    }

    /// The environment a service gets: `HTTP_ADDR`, `DATABASE_URL`, `AMQP_URL`,
    /// `AMQP_NAMESPACE`, `LOG_FORMAT=pretty`, `RUST_LOG`, `RUST_BACKTRACE=1`, `NO_COLOR=1` (when
    /// output is captured), for email `EMAIL_TRANSPORT=file` and `EMAIL_DIR`; then `extra_env`,
    /// which overrides any of these.
    pub fn service_env(
        &self,
        svc: Svc,
        port: u16,
        extra_env: &[(&str, &str)],
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = vec![
            ("HTTP_ADDR".into(), format!("127.0.0.1:{port}")),
            ("DATABASE_URL".into(), self.db_url(svc)),
            ("AMQP_URL".into(), self.amqp_url.clone()),
            ("AMQP_NAMESPACE".into(), self.id.clone()),
            ("LOG_FORMAT".into(), "pretty".into()),
            ("RUST_LOG".into(), self.rust_log.clone()),
            ("RUST_BACKTRACE".into(), "1".into()),
        ];
        if !self.echo_logs {
            env.push(("NO_COLOR".into(), "1".into()));
        }
        if svc == Svc::Deposit {
            env.push(("API_KEY".into(), crate::http::API_KEY.into()));
        }
        if svc == Svc::Email {
            env.push(("EMAIL_TRANSPORT".into(), "file".into()));
            env.push((
                "EMAIL_DIR".into(),
                self.email_dir().to_string_lossy().into_owned(),
            ));
        }
        for (key, value) in extra_env {
            env.retain(|(k, _)| k != key);
            env.push(((*key).to_string(), (*value).to_string()));
        }
        env
    }

    fn binary(&self, svc: Svc) -> Result<PathBuf> {
        let dir = match &self.bin_dir {
            Some(dir) => dir.clone(),
            None => default_bin_dir()?,
        };
        binary_in(&dir, svc.name())
    }

    /// Starts a service process (new instance, new free port) without waiting for readiness.
    pub async fn spawn(&self, svc: Svc, extra_env: &[(&str, &str)]) -> Result<ServiceHandle> {
        let program = self.binary(svc)?;
        if let Some((_, p)) = extra_env.iter().rev().find(|(k, _)| *k == "PARTITIONS")
            && let Ok(p) = p.trim().parse::<usize>()
        {
            self.max_partitions.fetch_max(p, Ordering::SeqCst);
        }
        let port = free_port()?;
        let handle = {
            let mut services = self.lock_services();
            let instance = services.iter().filter(|h| h.svc() == svc).count() + 1;
            let label = if instance == 1 {
                svc.name().to_string()
            } else {
                format!("{}#{instance}", svc.name())
            };
            let handle = ServiceHandle::new(ServiceSpec {
                svc,
                label,
                program,
                port,
                env: self.service_env(svc, port, extra_env),
                echo: self.echo_logs,
                ready_timeout: self.ready_timeout,
            });
            services.push(handle.clone());
            handle
        };
        handle.spawn_process().await?;
        Ok(handle)
    }

    /// Starts a service process (new instance, new free port; several instances of a service
    /// may run side by side) and waits until `/readyz` answers 200 (the world's ready timeout,
    /// 60 s by default). `extra_env` overrides the defaults of
    /// [`service_env`](TestWorld::service_env).
    pub async fn start(&self, svc: Svc, extra_env: &[(&str, &str)]) -> Result<ServiceHandle> {
        let handle = self.spawn(svc, extra_env).await?;
        handle.wait_ready(self.ready_timeout).await?;
        Ok(handle)
    }

    /// Starts all five services with the same `extra_env` and waits until all are ready.
    pub async fn start_all(&self, extra_env: &[(&str, &str)]) -> Result<Services> {
        let mut handles = Vec::with_capacity(5);
        for svc in Svc::ALL {
            handles.push(self.spawn(svc, extra_env).await?);
        }
        futures_util::future::try_join_all(
            handles.iter().map(|h| h.wait_ready(self.ready_timeout)),
        )
        .await?;
        let mut it = handles.into_iter();
        let mut next = || it.next().ok_or_else(|| anyhow!("missing handle"));
        Ok(Services {
            deposit: next()?,
            account: next()?,
            email: next()?,
            interest: next()?,
            compliance: next()?,
        })
    }

    /// The most recently started instance of each of the five services (started one by one,
    /// e.g. with their own environment); an error names the first one not started.
    pub fn started(&self) -> Result<Services> {
        let get = |svc: Svc| {
            self.service(svc)
                .ok_or_else(|| anyhow!("{} was not started in this world", svc.name()))
        };
        Ok(Services {
            deposit: get(Svc::Deposit)?,
            account: get(Svc::Account)?,
            email: get(Svc::Email)?,
            interest: get(Svc::Interest)?,
            compliance: get(Svc::Compliance)?,
        })
    }

    /// The most recently started instance of a service.
    pub fn service(&self, svc: Svc) -> Option<ServiceHandle> {
        self.lock_services()
            .iter()
            .rev()
            .find(|h| h.svc() == svc)
            .cloned()
    }

    /// Every service instance started in this world.
    pub fn services(&self) -> Vec<ServiceHandle> {
        self.lock_services().clone()
    }

    /// Restarts the most recently started instance of a service: SIGKILL if it runs, start
    /// again with the same port and environment, wait until ready.
    pub async fn restart(&self, svc: Svc) -> Result<ServiceHandle> {
        let handle = self
            .service(svc)
            .ok_or_else(|| anyhow!("{svc} was never started in this world"))?;
        handle.restart().await?;
        Ok(handle)
    }

    /// Runs a service binary as a command (e.g. `run_cli(Svc::Account, &["rebuild"], ...)`)
    /// with the service environment (a fresh free `HTTP_ADDR`) plus `extra_env`, to completion
    /// within `timeout`, and returns its exit status and output.
    pub async fn run_cli(
        &self,
        svc: Svc,
        args: &[&str],
        extra_env: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<CliOutput> {
        let program = self.binary(svc)?;
        let env = self.service_env(svc, free_port()?, extra_env);
        run_to_completion(svc.name(), &program, args, &env, timeout).await
    }

    fn teardown(&self) -> Teardown {
        let partitions = self.max_partitions.load(Ordering::SeqCst);
        let mut groups = vec![(Vec::new(), vec![self.bank_events_exchange()])];
        for svc in Svc::CONSUMERS {
            let mut queues: Vec<String> = (0..partitions)
                .map(|i| self.partition_queue(svc, i))
                .collect();
            queues.push(self.dlq(svc));
            groups.push((queues, vec![self.service_exchange(svc), self.dlx(svc)]));
        }
        Teardown {
            admin_url: self.admin_url.clone(),
            amqp_url: self.amqp_url.clone(),
            databases: Svc::ALL.iter().map(|s| self.db_name(*s)).collect(),
            broker_groups: groups,
            dir: self.dir.clone(),
        }
    }

    /// Kills every process, closes the pools, deletes the world's broker objects, drops its
    /// databases (`WITH (FORCE)`) and removes its directory. Every step runs even if an earlier
    /// one fails; the first failure is returned.
    pub async fn cleanup(mut self) -> Result<()> {
        let mut errors = Vec::new();
        let services = std::mem::take(&mut *self.lock_services());
        for handle in &services {
            if let Err(e) = handle.kill().await {
                errors.push(e);
            }
        }
        let pools = std::mem::take(&mut *self.lock_pools());
        for pool in pools.values() {
            pool.close().await;
        }
        if let Some(conn) = self.amqp.lock().await.take() {
            let _ = conn.close(200, "test world cleanup".into()).await;
        }
        if let Err(e) = self.teardown().run().await {
            errors.push(e);
        }
        match errors.into_iter().next() {
            None => {
                self.cleaned = true;
                Ok(())
            }
            // Leave `cleaned` false: drop tries the (idempotent) teardown once more.
            Some(e) => Err(e.context(format!("cleaning up test world {}", self.id))),
        }
    }
}

impl std::fmt::Debug for TestWorld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestWorld")
            .field("id", &self.id)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Drop for TestWorld {
    fn drop(&mut self) {
        if self.cleaned {
            return;
        }
        let services = std::mem::take(&mut *self.lock_services());
        for handle in &services {
            handle.kill_now();
        }
        // Not cleaned up means the test failed (a panic, or an error returned before
        // `cleanup`): show what the services said. libtest only shows it for failed tests.
        if !services.is_empty() {
            eprintln!(
                "test world {} dropped without cleanup(); last output of its services:",
                self.id
            );
            for handle in &services {
                eprintln!("{}", handle.report());
            }
        }
        let teardown = self.teardown();
        let id = self.id.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name(format!("cleanup-{id}"))
            .spawn(move || {
                let result = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(anyhow::Error::from)
                    .and_then(|rt| rt.block_on(teardown.run()));
                let _ = tx.send(result);
            });
        let outcome = match spawned {
            Ok(_) => rx
                .recv_timeout(DROP_CLEANUP_TIMEOUT)
                .map_err(|_| anyhow!("timed out after {DROP_CLEANUP_TIMEOUT:?}"))
                .and_then(|r| r),
            Err(e) => Err(anyhow!(e)),
        };
        if let Err(e) = outcome {
            eprintln!("warning: cleanup of test world {id} failed: {e:#}");
        }
    }
}

/// What is left to remove once the processes are gone.
struct Teardown {
    admin_url: String,
    amqp_url: String,
    databases: Vec<String>,
    broker_groups: Vec<(Vec<String>, Vec<String>)>,
    dir: PathBuf,
}

impl Teardown {
    async fn run(self) -> Result<()> {
        let mut errors = Vec::new();
        if let Err(e) = crate::amqp::delete_objects(&self.amqp_url, self.broker_groups).await {
            errors.push(e);
        }
        if let Err(e) = drop_databases(&self.admin_url, &self.databases).await {
            errors.push(e);
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            errors.push(anyhow!(e).context(format!("removing {}", self.dir.display())));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            let text: Vec<String> = errors.iter().map(|e| format!("{e:#}")).collect();
            bail!("{}", text.join("; "))
        }
    }
}

async fn drop_databases(admin_url: &str, databases: &[String]) -> Result<()> {
    let admin = admin_pool(admin_url).await?;
    let mut errors = Vec::new();
    for name in databases {
        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&admin).await {
            errors.push(format!("dropping {name}: {e}"));
        }
    }
    admin.close().await;
    if errors.is_empty() {
        Ok(())
    } else {
        bail!("{}", errors.join("; "))
    }
}

async fn admin_pool(url: &str) -> Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "connecting to Postgres as admin at {} (set TEST_DATABASE_URL)",
                redact(url)
            )
        })
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_string())
}
