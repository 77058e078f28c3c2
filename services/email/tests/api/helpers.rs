//! Shared arrangements: sample events, running the handler in a transaction, a sender with
//! short delays, polling with a deadline, and the SMTP sink
//! of the runtime's test support.

use chrono::{TimeZone, Utc};
use email::store::{self, EmailDetail, EmailStatus};
use email::{EmailHandler, EmailMetrics, Handoff, Mailer, Sender, SenderSettings, Transport};
use eventbank_events::{AccountId, AccountSnapshot, Currency, DepositCompleted};
use eventbank_runtime::Shutdown;
use eventbank_runtime::consumer::Handler;
use eventbank_runtime::testing::TestDatabase;
use sqlx::PgPool;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// Logs only when `TEST_LOG` is set, so test output stays quiet by default.
pub fn init_logs() {
    if std::env::var("TEST_LOG").is_ok_and(|v| !v.trim().is_empty()) {
        eventbank_runtime::telemetry::init("email", eventbank_runtime::config::LogFormat::Pretty);
    }
}

pub async fn database() -> TestDatabase {
    init_logs();
    TestDatabase::create("email", &email::MIGRATOR)
        .await
        .expect("test database")
}

pub fn event(
    account: &str,
    amount_minor: i64,
    currency: &str,
    holder: &str,
    address: &str,
) -> DepositCompleted {
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence: 1,
        time: Utc::now(),
        traceparent: None,
        schema_version: 1,
        deposit_id: Uuid::now_v7(),
        account_id: AccountId::parse(account).expect("account id"),
        amount_minor,
        currency: Currency::parse(currency).expect("currency"),
        account: AccountSnapshot {
            holder_name: holder.into(),
            email: address.into(),
        },
        occurred_at: Utc
            .with_ymd_and_hms(2025, 3, 14, 9, 26, 53)
            .single()
            .expect("date"),
        channel: None,
        reference: None,
    }
}

pub fn alice(amount_minor: i64) -> DepositCompleted {
    event(
        "ACC-0042",
        amount_minor,
        "USD",
        "Alice Example",
        "alice@example.com",
    )
}

/// A handler without an in-memory hand-off: every email it writes is queued for a claim, as
/// written by a process whose sender has no room (or by another process).
pub fn queueing_handler() -> EmailHandler {
    EmailHandler::new(
        EmailMetrics::default(),
        Handoff::new(0, SenderSettings::default().lease),
    )
}

/// Runs the handler the way the consumer loop does: in one transaction, then commit. The
/// emails are queued for a claim (no hand-off).
pub async fn handle(pool: &PgPool, events: &[DepositCompleted]) {
    let handler = queueing_handler();
    let mut tx = pool.begin().await.expect("begin");
    handler.handle(&mut tx, events).await.expect("handle");
    tx.commit().await.expect("commit");
    handler.committed(events);
}

pub async fn row(pool: &PgPool, event_id: Uuid) -> Option<EmailDetail> {
    let mut conn = pool.acquire().await.expect("connection");
    store::get(&mut conn, event_id).await.expect("select email")
}

pub async fn count_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM emails")
        .fetch_one(pool)
        .await
        .expect("count")
}

/// Production behaviour with delays short enough for tests.
pub fn fast_settings() -> SenderSettings {
    SenderSettings {
        poll_interval: Duration::from_millis(50),
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_millis(500),
        smtp_timeout: Duration::from_secs(5),
        ..SenderSettings::default()
    }
}

/// A sender running in the background until [`RunningSender::stop`].
pub struct RunningSender {
    shutdown: Shutdown,
    task: JoinHandle<()>,
    pub metrics: EmailMetrics,
}

pub fn start_sender(pool: &PgPool, mailer: Mailer, settings: SenderSettings) -> RunningSender {
    let handoff = Handoff::new(settings.handoff_capacity, settings.lease);
    start_sender_with(pool, mailer, settings, handoff)
}

/// A sender that takes the emails handed off through `handoff` (shared with a handler).
pub fn start_sender_with(
    pool: &PgPool,
    mailer: Mailer,
    settings: SenderSettings,
    handoff: Handoff,
) -> RunningSender {
    let shutdown = Shutdown::new();
    let metrics = EmailMetrics::default();
    let sender = Sender {
        pool: pool.clone(),
        mailer,
        from: email::DEFAULT_FROM.parse().expect("from"),
        settings,
        metrics: metrics.clone(),
        handoff,
    };
    let task = tokio::spawn(sender.run(shutdown.clone()));
    RunningSender {
        shutdown,
        task,
        metrics,
    }
}

impl RunningSender {
    /// Triggers shutdown and waits until the sender has finished its current send.
    pub async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("sender stops on shutdown")
            .expect("sender task");
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the email of each of `events` is marked sent, or panics after `timeout`.
pub async fn wait_all_sent(pool: &PgPool, events: &[DepositCompleted], timeout: Duration) {
    for e in events {
        wait_for(
            &format!("the email of event {} to be marked sent", e.event_id),
            timeout,
            || async {
                row(pool, e.event_id)
                    .await
                    .filter(|r| r.summary.status == EmailStatus::Sent)
            },
        )
        .await;
    }
}

/// A directory of its own under the system temp dir; removed by [`TempDir::remove`].
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("eventbank-email-test-{}", Uuid::new_v4()));
        Self(dir)
    }

    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub use eventbank_runtime::testing::smtp::{ReceivedMail, SmtpSink, header};

/// A port nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("address").port()
}

/// Delivers `events` through the consumer runtime's own dedup transaction, then runs the
/// handler's post-commit step as the loop would. Returns how many were new. The emails are
/// queued for a claim (no hand-off).
pub async fn deliver(pool: &PgPool, events: &[DepositCompleted]) -> usize {
    deliver_with(pool, &queueing_handler(), events).await
}

/// [`deliver`] through `handler`.
pub async fn deliver_with(
    pool: &PgPool,
    handler: &EmailHandler,
    events: &[DepositCompleted],
) -> usize {
    let fresh = eventbank_runtime::consumer::deliver(pool, handler, events)
        .await
        .expect("deliver");
    handler.committed(&fresh);
    fresh.len()
}

pub use eventbank_runtime::testing::shuffled;

/// One queued email without the columns that only say when it was written or tried.
pub type EmailState = (
    Uuid,
    Uuid,
    String,
    i64,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
);

/// Every email, in event id order.
pub async fn email_state(pool: &PgPool) -> Vec<EmailState> {
    sqlx::query_as(
        "SELECT event_id, deposit_id, account_id, sequence, to_name, to_address, subject, \
                body_text, body_html, message_id, status \
           FROM emails ORDER BY event_id",
    )
    .fetch_all(pool)
    .await
    .expect("emails")
}

/// A mailer delivering over SMTP to `127.0.0.1:port` (the test sink's).
pub fn smtp_mailer(port: u16) -> Mailer {
    Mailer::new(
        &Transport::Smtp {
            host: "127.0.0.1".into(),
            port,
        },
        Duration::from_secs(5),
    )
}

/// The Message-IDs the sink received, sorted.
pub fn sorted_message_ids(sink: &SmtpSink) -> Vec<String> {
    let mut ids: Vec<String> = sink
        .messages()
        .iter()
        .filter_map(ReceivedMail::message_id)
        .collect();
    ids.sort();
    ids
}

/// The Message-ID the email of `e` carries.
pub fn message_id(e: &DepositCompleted) -> String {
    format!("<{}@eventbank.example>", e.event_id)
}
