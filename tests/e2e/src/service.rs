use std::collections::VecDeque;
use std::io::Write as _;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::poll::poll_until;
use crate::svc::Svc;

/// How many output lines a service keeps for failure messages.
const LOG_LINES: usize = 200;
/// Default deadline of [`ServiceHandle::terminate`].
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(15);

/// Configuration variables the services read that are removed from the inherited environment,
/// so a developer's shell cannot leak into a test. The harness sets its own values afterwards.
const SCRUBBED_ENV: &[&str] = &[
    "HTTP_ADDR",
    "DATABASE_URL",
    "AMQP_URL",
    "AMQP_NAMESPACE",
    "PARTITIONS",
    "PREFETCH",
    "BATCH_SIZE",
    "DELIVERY_LIMIT",
    "LOG_FORMAT",
    "RUST_LOG",
    "NO_COLOR",
    "EMAIL_TRANSPORT",
    "EMAIL_DIR",
    "SEED_DEMO_ACCOUNTS",
    "MAX_DEPOSIT_AMOUNT",
    "RELAY_BATCH",
    "RELAY_MARK_DELAY_MS",
    "WRITERS",
    "WRITE_BATCH",
    "API_KEY",
    "SMTP_HOST",
    "SMTP_PORT",
    "EMAIL_FROM",
    "EMAIL_MAX_ATTEMPTS",
    "EMAIL_MARK_DELAY_MS",
    "DB_MAX_CONNECTIONS",
    "DRAIN_TIMEOUT_SECS",
    "MAX_WAIT_MS",
    "CTR_THRESHOLD_MINOR",
    "STRUCTURING_WINDOW_SECS",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_BSP_SCHEDULE_DELAY",
    "CORS_ALLOW_ORIGINS",
];

/// Everything needed to (re)start one service process.
pub(crate) struct ServiceSpec {
    pub svc: Svc,
    pub label: String,
    pub program: PathBuf,
    pub port: u16,
    pub env: Vec<(String, String)>,
    pub echo: bool,
    pub ready_timeout: Duration,
}

/// The last lines a process printed (stdout and stderr interleaved).
#[derive(Default)]
pub(crate) struct LogBuffer(Mutex<VecDeque<String>>);

impl LogBuffer {
    fn push(&self, line: String) {
        let mut lines = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if lines.len() == LOG_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }
}

/// util-linux's `setpriv`, where present: it asks the kernel to SIGKILL the service when the
/// test process dies (PR_SET_PDEATHSIG, kept across its exec), so a test binary killed by a
/// signal, whose `Drop`s never run, leaves no service running. (The workspace forbids `unsafe`,
/// which calling prctl from `pre_exec` would need.)
const SETPRIV: &str = "/usr/bin/setpriv";

/// A command that runs `program`, bound to the life of this process where `setpriv` exists.
pub(crate) fn parent_bound_command(program: &std::path::Path) -> Command {
    if std::path::Path::new(SETPRIV).is_file() {
        let mut cmd = Command::new(SETPRIV);
        cmd.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// A running (or stopped) service process started by a [`TestWorld`](crate::TestWorld).
///
/// Cheap to clone; all clones control the same process. The world keeps a clone and kills the
/// process at cleanup. [`restart`](ServiceHandle::restart) starts the same binary again with the
/// same port and environment, so URLs taken from the handle stay valid.
#[derive(Clone)]
pub struct ServiceHandle {
    inner: Arc<Inner>,
}

struct Inner {
    spec: ServiceSpec,
    child: tokio::sync::Mutex<Option<Child>>,
    /// pid of the current process, 0 if none; for the synchronous kill on drop.
    pid: AtomicU32,
    runs: AtomicU32,
    logs: Arc<LogBuffer>,
    /// The tasks copying the current process's stdout and stderr into `logs`.
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl ServiceHandle {
    pub(crate) fn new(spec: ServiceSpec) -> ServiceHandle {
        ServiceHandle {
            inner: Arc::new(Inner {
                spec,
                child: tokio::sync::Mutex::new(None),
                pid: AtomicU32::new(0),
                runs: AtomicU32::new(0),
                logs: Arc::new(LogBuffer::default()),
                pumps: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Which service this is.
    pub fn svc(&self) -> Svc {
        self.inner.spec.svc
    }

    /// `account`, or `account#2` for a second instance in the same world.
    pub fn label(&self) -> &str {
        &self.inner.spec.label
    }

    /// The HTTP port (stays the same across restarts).
    pub fn port(&self) -> u16 {
        self.inner.spec.port
    }

    /// `http://127.0.0.1:<port>`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.inner.spec.port)
    }

    /// `base_url()` + `path` (`path` starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url(), path)
    }

    /// One counter or gauge of this service's `/metrics`, `eventbank_<svc>_<name>` (counters
    /// by their full name, e.g. `messages_consumed_total`). prometheus-client writes both as
    /// integers.
    pub async fn metric(&self, name: &str) -> Result<i64> {
        let (status, text) = crate::http::get_text(&self.url("/metrics")).await?;
        ensure!(
            status == 200,
            "/metrics of {} answered {status}",
            self.label()
        );
        let prefix = format!("eventbank_{}_{name} ", self.svc());
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .with_context(|| format!("{} has no metric {}", self.label(), prefix.trim_end()))?
            .trim()
            .parse()
            .with_context(|| format!("{} of {}", prefix.trim_end(), self.label()))
    }

    /// The environment the process gets (on top of the inherited one).
    pub fn env(&self) -> &[(String, String)] {
        &self.inner.spec.env
    }

    /// The value of one variable of [`env`](ServiceHandle::env).
    pub fn env_var(&self, key: &str) -> Option<&str> {
        self.inner
            .spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The pid of the current process, if one was started.
    pub fn pid(&self) -> Option<u32> {
        match self.inner.pid.load(Ordering::SeqCst) {
            0 => None,
            pid => Some(pid),
        }
    }

    /// The last lines (up to 200) the process printed, across restarts, one per line.
    /// Empty when `TEST_LOG` is unset and nothing at `warn` or above was logged.
    pub fn logs(&self) -> String {
        self.inner.logs.lines().join("\n")
    }

    /// The kept output lines.
    pub fn log_lines(&self) -> Vec<String> {
        self.inner.logs.lines()
    }

    /// Whether any kept output line contains `needle`.
    pub fn logs_contain(&self, needle: &str) -> bool {
        self.inner.logs.lines().iter().any(|l| l.contains(needle))
    }

    fn tail_for_error(&self) -> String {
        let lines = self.inner.logs.lines();
        if lines.is_empty() {
            format!("--- {}: no output captured ---", self.label())
        } else {
            format!(
                "--- last {} output lines of {} ---\n{}\n--- end of {} output ---",
                lines.len(),
                self.label(),
                lines.join("\n"),
                self.label()
            )
        }
    }

    /// Starts the process (the previous one, if any, must have exited).
    pub(crate) async fn spawn_process(&self) -> Result<()> {
        let spec = &self.inner.spec;
        let mut slot = self.inner.child.lock().await;
        if let Some(child) = slot.as_mut() {
            ensure!(
                child.try_wait()?.is_some(),
                "{} is still running; kill or terminate it first",
                spec.label
            );
        }
        let mut cmd = parent_bound_command(&spec.program);
        for key in SCRUBBED_ENV {
            cmd.env_remove(key);
        }
        cmd.envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", spec.label, spec.program.display()))?;
        let pid = child.id().unwrap_or(0);
        self.inner.pid.store(pid, Ordering::SeqCst);
        let run = self.inner.runs.fetch_add(1, Ordering::SeqCst) + 1;
        self.inner.logs.push(format!(
            "=== harness: {} run {run} started, pid {pid}, {} ===",
            spec.label,
            self.base_url()
        ));
        let mut pumps = Vec::new();
        if let Some(out) = child.stdout.take() {
            pumps.push(tokio::spawn(pump(
                out,
                Arc::clone(&self.inner.logs),
                spec.label.clone(),
                spec.echo,
            )));
        }
        if let Some(err) = child.stderr.take() {
            pumps.push(tokio::spawn(pump(
                err,
                Arc::clone(&self.inner.logs),
                spec.label.clone(),
                spec.echo,
            )));
        }
        *self.inner.pumps.lock().unwrap_or_else(|e| e.into_inner()) = pumps;
        *slot = Some(child);
        Ok(())
    }

    /// Once the process has exited: waits (briefly) until its last output lines are in the log.
    async fn drain_output(&self) {
        let pumps =
            std::mem::take(&mut *self.inner.pumps.lock().unwrap_or_else(|e| e.into_inner()));
        for mut pump in pumps {
            // A grandchild holding the pipe open must not block us for long.
            if tokio::time::timeout(Duration::from_secs(2), &mut pump)
                .await
                .is_err()
            {
                pump.abort();
            }
        }
    }

    /// `Some(status)` if the current process has exited, `None` if it runs.
    /// Errors if no process was ever started.
    async fn exit_status(&self) -> Result<Option<ExitStatus>> {
        let mut slot = self.inner.child.lock().await;
        let child = slot
            .as_mut()
            .ok_or_else(|| anyhow!("{} was never started", self.label()))?;
        Ok(child.try_wait()?)
    }

    /// Whether the process is running (started and not exited).
    pub async fn is_running(&self) -> bool {
        matches!(self.exit_status().await, Ok(None))
    }

    /// One probe of `GET /readyz`: true on a 2xx answer.
    pub async fn is_ready(&self) -> bool {
        crate::http::http_client()
            .get(self.url("/readyz"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }

    /// Polls `GET /readyz` until it answers 2xx. Fails at once if the process exits, and at the
    /// deadline otherwise; either error carries the last output lines of the process.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let url = self.url("/readyz");
        let url = url.as_str();
        let this = self;
        let result = poll_until(timeout, move || async move {
            match this.exit_status().await {
                Ok(None) => {}
                Ok(Some(status)) => {
                    this.drain_output().await;
                    return ControlFlow::Break(Err(anyhow!(
                        "{} exited ({status}) before becoming ready",
                        this.label()
                    )));
                }
                Err(e) => return ControlFlow::Break(Err(e)),
            }
            let response = crate::http::http_client()
                .get(url)
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            match response {
                Ok(r) if r.status().is_success() => ControlFlow::Break(Ok(())),
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    ControlFlow::Continue(anyhow!("GET {url} answered {status}: {body}"))
                }
                Err(e) => ControlFlow::Continue(anyhow!("GET {url}: {e}")),
            }
        })
        .await;
        result.map_err(|e| {
            e.context(format!(
                "{} did not become ready within {timeout:?}\n{}",
                self.label(),
                self.tail_for_error()
            ))
        })
    }

    /// SIGKILL and wait for the process to be gone. Does nothing if it is not running.
    pub async fn kill(&self) -> Result<()> {
        let mut slot = self.inner.child.lock().await;
        if let Some(child) = slot.as_mut()
            && child.try_wait()?.is_none()
        {
            child
                .kill()
                .await
                .with_context(|| format!("killing {}", self.label()))?;
            self.drain_output().await;
            self.inner.logs.push(format!(
                "=== harness: {} killed (SIGKILL) ===",
                self.label()
            ));
        }
        Ok(())
    }

    /// SIGTERM, then wait up to 15 s for the process to exit; see
    /// [`terminate_within`](ServiceHandle::terminate_within).
    pub async fn terminate(&self) -> Result<ExitStatus> {
        self.terminate_within(TERMINATE_TIMEOUT).await
    }

    /// SIGTERM (via `kill -TERM <pid>`), then wait up to `timeout` for the process to exit and
    /// return its exit status. If it does not exit in time it is killed and an error (with its
    /// last output lines) is returned. If it had already exited, returns that status.
    pub async fn terminate_within(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut slot = self.inner.child.lock().await;
        let child = slot
            .as_mut()
            .ok_or_else(|| anyhow!("{} was never started", self.label()))?;
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} has no pid", self.label()))?;
        self.inner.logs.push(format!(
            "=== harness: sending SIGTERM to {} ===",
            self.label()
        ));
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .context("running `kill -TERM`")?;
        ensure!(sent.success(), "`kill -TERM {pid}` failed: {sent}");
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.drain_output().await;
                self.inner.logs.push(format!(
                    "=== harness: {} exited after SIGTERM: {status} ===",
                    self.label()
                ));
                Ok(status)
            }
            Err(_) => {
                let _ = child.kill().await;
                self.drain_output().await;
                bail!(
                    "{} did not exit within {timeout:?} after SIGTERM (killed it)\n{}",
                    self.label(),
                    self.tail_for_error()
                )
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself and returns its exit status.
    pub async fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let mut slot = self.inner.child.lock().await;
        let child = slot
            .as_mut()
            .ok_or_else(|| anyhow!("{} was never started", self.label()))?;
        match tokio::time::timeout(timeout, child.wait()).await {
            Ok(status) => {
                let status = status?;
                self.drain_output().await;
                Ok(status)
            }
            Err(_) => bail!(
                "{} still running after {timeout:?}\n{}",
                self.label(),
                self.tail_for_error()
            ),
        }
    }

    /// Kills the process if it runs, starts it again (same binary, port and environment) and
    /// waits until it is ready (the world's ready timeout).
    pub async fn restart(&self) -> Result<()> {
        self.respawn().await?;
        self.wait_ready(self.inner.spec.ready_timeout).await
    }

    /// Kills the process if it runs and starts it again, without waiting for readiness.
    pub async fn respawn(&self) -> Result<()> {
        self.kill().await?;
        self.spawn_process().await
    }

    /// Synchronous best-effort SIGKILL, for `Drop`.
    pub(crate) fn kill_now(&self) {
        if let Ok(mut slot) = self.inner.child.try_lock() {
            if let Some(child) = slot.as_mut()
                && matches!(child.try_wait(), Ok(None))
            {
                let _ = child.start_kill();
            }
        } else if let Some(pid) = self.pid() {
            // Someone holds the lock (e.g. a wait interrupted by a panic): the child has not
            // been reaped, so the pid is still ours.
            let _ = std::process::Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
    }

    /// For failure reports.
    pub(crate) fn report(&self) -> String {
        self.tail_for_error()
    }
}

impl std::fmt::Debug for ServiceHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceHandle")
            .field("label", &self.label())
            .field("port", &self.port())
            .field("pid", &self.pid())
            .finish()
    }
}

async fn pump<R: AsyncRead + Unpin>(stream: R, logs: Arc<LogBuffer>, label: String, echo: bool) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if echo {
                    // Straight to the process's stderr, past the test harness's capture.
                    let _ = writeln!(std::io::stderr().lock(), "[{label}] {line}");
                }
                logs.push(line);
            }
        }
    }
}

/// The result of [`TestWorld::run_cli`](crate::TestWorld::run_cli).
#[derive(Debug)]
pub struct CliOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Whether the command exited with status 0.
    pub fn success(&self) -> bool {
        self.status.success()
    }
}

/// Runs a program to completion with the service environment.
pub(crate) async fn run_to_completion(
    label: &str,
    program: &PathBuf,
    args: &[&str],
    env: &[(String, String)],
    timeout: Duration,
) -> Result<CliOutput> {
    let mut cmd = Command::new(program);
    for key in SCRUBBED_ENV {
        cmd.env_remove(key);
    }
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {label} {args:?}"))?;
    let output = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| anyhow!("{label} {args:?} did not finish within {timeout:?} (killed)"))??;
    Ok(CliOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
