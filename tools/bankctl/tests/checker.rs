//! The invariant checker (`bankctl::invariants`, what `bankctl check` and the end-to-end tests
//! run), tested against real worlds: each test builds a healthy one (fresh databases, its own
//! broker namespace, the five real services, three deposits, one of them CTR-sized), waits for
//! it to settle, stops the services so nothing repairs or changes what follows, asserts the
//! checker finds nothing, applies ONE corruption and asserts the exact violation reported.
//!
//! Needs the service binaries next to the test binary (`cargo build --bins`, or
//! `EVENTBANK_BIN_DIR`), Postgres (`TEST_DATABASE_URL`) and RabbitMQ (`TEST_AMQP_URL`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bankctl::invariants::{self, Kind, Options, Report, Violation};
use eventbank_e2e::flows::{deposit, open_account};
use eventbank_e2e::lapin::{Connection, ConnectionProperties};
use eventbank_e2e::{Svc, TestWorld, eventually, publish_to_queue};
use eventbank_runtime::amqp::Names;
use serde_json::Value;
use sqlx::PgPool;
use std::time::Duration;

/// How long a world may take to settle after its deposits.
const SETTLE: Duration = Duration::from_secs(60);

/// One accepted deposit, as the deposit service answered it.
#[derive(Debug, Clone)]
struct Accepted {
    deposit_id: String,
    event_id: String,
    account_id: String,
    sequence: i64,
    amount_minor: i64,
}

impl Accepted {
    fn from_response(body: &Value) -> Accepted {
        let text = |key: &str| {
            body[key]
                .as_str()
                .unwrap_or_else(|| panic!("{key} in {body}"))
                .to_owned()
        };
        let int = |key: &str| {
            body[key]
                .as_i64()
                .unwrap_or_else(|| panic!("{key} in {body}"))
        };
        Accepted {
            deposit_id: text("deposit_id"),
            event_id: text("event_id"),
            account_id: text("account_id"),
            sequence: int("sequence"),
            amount_minor: int("amount_minor"),
        }
    }

    /// How the checker names a deposit.
    fn label(&self) -> String {
        format!(
            "deposit {} ({}, sequence {})",
            self.deposit_id, self.account_id, self.sequence
        )
    }
}

/// A settled world with its services stopped: alice (USD) deposited 25.00 then 10.50, bob (EUR)
/// 10,000.00, exactly the default CTR threshold.
struct Healthy {
    world: TestWorld,
    pools: bankctl::Pools,
    broker: Connection,
    names: Names,
    alice: String,
    small: Accepted,
    large: Accepted,
}

impl Healthy {
    async fn start() -> Healthy {
        let world = TestWorld::new().await.expect("a test world");
        let services = world.start_all(&[]).await.expect("the five services start");
        let alice = open_account(&services, "Alice Checker", "USD")
            .await
            .expect("alice's account");
        let bob = open_account(&services, "Bob Checker", "EUR")
            .await
            .expect("bob's account");
        let small = deposit(&services, &alice, "25.00", "USD")
            .await
            .expect("alice's first deposit");
        deposit(&services, &alice, "10.50", "USD")
            .await
            .expect("alice's second deposit");
        let large = deposit(&services, &bob, "10000.00", "EUR")
            .await
            .expect("bob's CTR-sized deposit");
        let pools = eventbank_e2e::invariants::pools(&world)
            .await
            .expect("pools on the world's databases");
        let broker = Connection::connect(world.amqp_url(), ConnectionProperties::default())
            .await
            .expect("a broker connection");
        let names = Names::new(world.ns());
        let healthy = Healthy {
            alice,
            small: Accepted::from_response(&small),
            large: Accepted::from_response(&large),
            pools,
            broker,
            names,
            world,
        };
        // Settled: every consumer applied every deposit, every email is sent, the alert is raised.
        eventually(SETTLE, || async {
            let report = healthy.try_check().await?;
            anyhow::ensure!(report.deposits == 3 && report.ok(), "{report}");
            Ok(())
        })
        .await
        .expect("the world settles");
        // Stopped, nothing repairs a corruption (the relay would republish an outbox row, the
        // sender would send a queued email) or changes anything after it.
        for service in healthy.world.services() {
            service.kill().await.expect("stopping a service");
        }
        assert_eq!(
            healthy.check().await,
            Report {
                deposits: 3,
                accounts: 2,
                violations: vec![],
            },
            "the stopped world is healthy"
        );
        healthy
    }

    async fn try_check(&self) -> anyhow::Result<Report> {
        invariants::check_system(&self.pools, &self.broker, &self.names, &Options::default()).await
    }

    async fn check(&self) -> Report {
        self.try_check().await.expect("the checker runs")
    }

    fn pool(&self, svc: Svc) -> &PgPool {
        match svc {
            Svc::Deposit => &self.pools.deposit,
            Svc::Account => &self.pools.account,
            Svc::Email => &self.pools.email,
            Svc::Interest => &self.pools.interest,
            Svc::Compliance => &self.pools.compliance,
        }
    }

    /// Runs one corrupting statement with string binds; it must change exactly one row.
    async fn corrupt(&self, svc: Svc, sql: &'static str, binds: &[&str]) {
        let mut query = sqlx::query(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        let changed = query
            .execute(self.pool(svc))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .rows_affected();
        assert_eq!(changed, 1, "{sql} changed {changed} rows");
    }

    /// Like `corrupt`, returning the one text value the statement returns.
    async fn corrupt_returning(&self, svc: Svc, sql: &'static str, binds: &[&str]) -> String {
        let mut query = sqlx::query_scalar::<_, String>(sql);
        for bind in binds {
            query = query.bind(*bind);
        }
        query
            .fetch_one(self.pool(svc))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Runs statements on the audit log with its append-only trigger disabled (as its owner
    /// could), in one transaction.
    async fn tamper_with_audit_log(&self, statements: &[&'static str]) {
        let mut tx = self
            .pools
            .compliance
            .begin()
            .await
            .expect("a compliance transaction");
        sqlx::query("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_update_or_delete")
            .execute(&mut *tx)
            .await
            .expect("disabling the append-only trigger");
        for sql in statements {
            let changed = sqlx::query(*sql)
                .execute(&mut *tx)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .rows_affected();
            assert_eq!(changed, 1, "{sql} changed {changed} rows");
        }
        sqlx::query("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_update_or_delete")
            .execute(&mut *tx)
            .await
            .expect("enabling the append-only trigger");
        tx.commit().await.expect("committing the tampering");
    }

    /// Asserts the checker reports exactly `expected` (and still counts the same deposits),
    /// then removes the world.
    async fn assert_reports(self, expected: Vec<Violation>) {
        let report = self.check().await;
        assert_eq!(report.violations, expected, "{report}");
        assert_eq!((report.deposits, report.accounts), (3, 2), "{report}");
        self.cleanup().await;
    }

    async fn cleanup(self) {
        let _ = self.broker.close(200, "test done".into()).await;
        self.world.cleanup().await.expect("cleaning up the world");
    }
}

fn violation(kind: Kind, service: &'static str, message: String) -> Violation {
    Violation::new(kind, service, message)
}

#[tokio::test]
async fn checker_reports_nothing_for_a_healthy_world() {
    // Healthy::start asserts the empty report; this also checks the CTR alert is really there,
    // so the healthy world does exercise the alert check.
    let world = Healthy::start().await;
    let alerts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM alerts WHERE kind = 'ctr' AND event_id = $1::uuid",
    )
    .bind(&world.large.event_id)
    .fetch_one(&world.pools.compliance)
    .await
    .expect("counting alerts");
    assert_eq!(alerts, 1);
    world.cleanup().await;
}

#[tokio::test]
async fn checker_reports_a_deposit_missing_from_account() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Account,
            "DELETE FROM transactions WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositMissing,
            "account",
            format!("{} has no row in transactions", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_missing_from_email() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Email,
            "DELETE FROM emails WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositMissing,
            "email",
            format!("{} has no row in emails", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_missing_from_interest() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Interest,
            "DELETE FROM deposits WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositMissing,
            "interest",
            format!("{} has no row in deposits", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_missing_from_compliance() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Compliance,
            "DELETE FROM deposits WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositMissing,
            "compliance",
            format!("{} has no row in deposits", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_missing_from_the_audit_log() {
    let world = Healthy::start().await;
    // The chain's last entry goes, and the head moves back to the one before: the chain still
    // verifies, one deposit has no audit entry.
    let last: String = sqlx::query_scalar(
        "SELECT entry::jsonb->>'deposit_id' FROM audit_log ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(&world.pools.compliance)
    .await
    .expect("the last audit entry");
    let last_sequence: i64 = sqlx::query_scalar(
        "SELECT (entry::jsonb->>'sequence')::bigint FROM audit_log ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(&world.pools.compliance)
    .await
    .expect("the last audit entry");
    let account: String =
        sqlx::query_scalar("SELECT account_id FROM audit_log ORDER BY position DESC LIMIT 1")
            .fetch_one(&world.pools.compliance)
            .await
            .expect("the last audit entry");
    world
        .tamper_with_audit_log(&[
            "DELETE FROM audit_log WHERE position = (SELECT max(position) FROM audit_log)",
            "UPDATE chain_head SET position = position - 1, \
                    hash = (SELECT hash FROM audit_log WHERE position = chain_head.position - 1)",
        ])
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositMissing,
            "compliance",
            format!("deposit {last} ({account}, sequence {last_sequence}) has no row in audit_log"),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_applied_twice_in_account() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    // A second transaction for the same deposit under a new event id (and the next free
    // sequence): what a consumer that deduplicated on the event id alone would let through.
    world
        .corrupt(
            Svc::Account,
            "INSERT INTO transactions \
                    (event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at) \
             SELECT gen_random_uuid(), account_id, sequence + 100, deposit_id, amount_minor, \
                    currency, occurred_at \
               FROM transactions WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositAppliedTwice,
            "account",
            format!("{} has 2 rows in transactions, expected 1", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_applied_twice_in_email() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Email,
            "INSERT INTO emails (event_id, deposit_id, account_id, sequence, to_name, to_address, \
                    subject, body_text, body_html, message_id, status, attempts, sent_at) \
             SELECT n.id, deposit_id, account_id, sequence, to_name, to_address, subject, \
                    body_text, body_html, '<' || n.id || '@eventbank.example>', status, attempts, \
                    sent_at \
               FROM emails, (SELECT gen_random_uuid() AS id) n WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositAppliedTwice,
            "email",
            format!("{} has 2 rows in emails, expected 1", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_applied_twice_in_compliance() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Compliance,
            "INSERT INTO deposits (event_id, deposit_id, account_id, amount_minor, currency, occurred_at) \
             SELECT gen_random_uuid(), deposit_id, account_id, amount_minor, currency, occurred_at \
               FROM deposits WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::DepositAppliedTwice,
            "compliance",
            format!("{} has 2 rows in deposits, expected 1", d.label()),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_an_account_balance_off_by_one_deposit() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Account,
            "UPDATE balances SET balance_minor = balance_minor + $2::bigint WHERE account_id = $1",
            &[&d.account_id, &d.amount_minor.to_string()],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::BalanceMismatch,
            "account",
            format!(
                "{}: balance_minor is 6050, expected 3550 (the sum of its accepted deposits)",
                d.account_id
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_wrong_interest_balance() {
    let world = Healthy::start().await;
    let alice = world.alice.clone();
    world
        .corrupt(
            Svc::Interest,
            "UPDATE daily_balances SET closing_balance_minor = closing_balance_minor + 1 \
              WHERE account_id = $1 \
                AND day = (SELECT max(day) FROM daily_balances WHERE account_id = $1)",
            &[&alice],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::BalanceMismatch,
            "interest",
            format!(
                "{alice}: latest closing_balance_minor is 3551, expected 3550 (the sum of its accepted deposits)"
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_an_email_stuck_queued() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Email,
            "UPDATE emails SET status = 'queued', sent_at = NULL WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::EmailNotSent,
            "email",
            format!(
                "the email of deposit {} (event {}) is queued, expected sent",
                d.deposit_id, d.event_id
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_failed_email() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Email,
            "UPDATE emails SET status = 'failed', sent_at = NULL, \
                    last_error = '550 5.1.1 mailbox unavailable' \
              WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::EmailNotSent,
            "email",
            format!(
                "the email of deposit {} (event {}) is failed (last error: 550 5.1.1 mailbox unavailable), expected sent",
                d.deposit_id, d.event_id
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_ctr_alert_missing_for_a_ctr_sized_deposit() {
    let world = Healthy::start().await;
    let d = world.large.clone();
    world
        .corrupt(
            Svc::Compliance,
            "DELETE FROM alerts WHERE kind = 'ctr' AND event_id = $1::uuid",
            &[&d.event_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::CtrAlertMissing,
            "compliance",
            format!(
                "{} of 1000000 EUR minor units (threshold 1000000) has no active ctr alert",
                d.label()
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_ctr_alert_for_a_deposit_under_the_threshold() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Compliance,
            "INSERT INTO alerts (kind, account_id, event_id, amount_minor, currency, window_start, window_end) \
             SELECT 'ctr', account_id, event_id, amount_minor, currency, occurred_at, occurred_at \
               FROM deposits WHERE event_id = $1::uuid",
            &[&d.event_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::UnexpectedCtrAlert,
            "compliance",
            format!(
                "active ctr alert for event {}, which is no accepted deposit at or over the threshold 1000000",
                d.event_id
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_broken_audit_chain() {
    let world = Healthy::start().await;
    world
        .tamper_with_audit_log(&[
            "UPDATE audit_log SET hash = decode(repeat('ab', 32), 'hex') WHERE position = 2",
        ])
        .await;
    world
        .assert_reports(vec![violation(
            Kind::AuditChainBroken,
            "compliance",
            "audit chain broken at position 2 (HashMismatch) after 1 intact entries".into(),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_non_empty_dead_letter_queue() {
    let world = Healthy::start().await;
    let queue = world.world.dlq(Svc::Email);
    publish_to_queue(
        &world.world,
        &queue,
        b"not an event",
        &[("x-eventbank-reason", "undecodable: test")],
    )
    .await
    .expect("publishing to the DLQ");
    let expected = vec![violation(
        Kind::DeadLetters,
        "email",
        format!("1 message(s) in the dead-letter queue {queue}"),
    )];
    // The publish is confirmed; the queue's count is polled only in case the broker reports it
    // a moment later.
    let report = eventually(Duration::from_secs(10), || async {
        let report = world.try_check().await?;
        anyhow::ensure!(report.violations == expected, "{report}");
        Ok(report)
    })
    .await
    .expect("the checker reports the dead letter");
    assert_eq!(report.violations, expected);
    world.assert_reports(expected).await;
}

#[tokio::test]
async fn checker_reports_an_unpublished_outbox_row() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Deposit,
            "UPDATE outbox SET published_at = NULL WHERE event_id = $1::uuid",
            &[&d.event_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::UnpublishedOutbox,
            "deposit",
            "1 outbox row(s) not published".into(),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_an_event_a_consumer_never_processed() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Interest,
            "DELETE FROM processed_events WHERE event_id = $1::uuid",
            &[&d.event_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::EventNotProcessed,
            "interest",
            format!(
                "event {} of {} is not in processed_events",
                d.event_id,
                d.label()
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_processed_event_no_deposit_has() {
    let world = Healthy::start().await;
    let event_id = world
        .corrupt_returning(
            Svc::Account,
            "INSERT INTO processed_events (event_id) VALUES (gen_random_uuid()) \
             RETURNING event_id::text",
            &[],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::UnknownEventProcessed,
            "account",
            format!("processed_events has event {event_id}, which no accepted deposit has"),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_consumer_row_for_a_deposit_never_accepted() {
    let world = Healthy::start().await;
    let alice = world.alice.clone();
    let deposit_id = world
        .corrupt_returning(
            Svc::Compliance,
            "INSERT INTO deposits (event_id, deposit_id, account_id, amount_minor, currency, occurred_at) \
             VALUES (gen_random_uuid(), gen_random_uuid(), $1, 100, 'USD', now()) \
             RETURNING deposit_id::text",
            &[&alice],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::UnknownDeposit,
            "compliance",
            format!(
                "deposits has 1 row(s) for deposit {deposit_id}, which the deposit service never accepted"
            ),
        )])
        .await;
}

#[tokio::test]
async fn checker_reports_a_deposit_recorded_with_another_amount() {
    let world = Healthy::start().await;
    let d = world.small.clone();
    world
        .corrupt(
            Svc::Interest,
            "UPDATE deposits SET amount_minor = amount_minor + 1 WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    world
        .assert_reports(vec![violation(
            Kind::AmountMismatch,
            "interest",
            format!(
                "{} has amount_minor 2501 in deposits, accepted 2500",
                d.label()
            ),
        )])
        .await;
}

/// `bankctl` configured for a world, with nothing inherited that could point it elsewhere.
fn bankctl(world: &TestWorld, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_bankctl"));
    command
        .args(args)
        .env("DEPOSIT_DATABASE_URL", world.db_url(Svc::Deposit))
        .env("ACCOUNT_DATABASE_URL", world.db_url(Svc::Account))
        .env("EMAIL_DATABASE_URL", world.db_url(Svc::Email))
        .env("INTEREST_DATABASE_URL", world.db_url(Svc::Interest))
        .env("COMPLIANCE_DATABASE_URL", world.db_url(Svc::Compliance))
        .env("AMQP_URL", world.amqp_url())
        .env("AMQP_NAMESPACE", world.ns())
        .env_remove("CTR_THRESHOLD_MINOR");
    command
}

/// Runs bankctl to completion off the async runtime; returns (exit code, stdout, stderr).
async fn run(mut command: std::process::Command) -> (Option<i32>, String, String) {
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the bankctl task")
        .expect("running bankctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bankctl_check_exits_1_and_prints_the_violation_of_a_corrupted_world() {
    let world = Healthy::start().await;
    let (code, out, err) = run(bankctl(&world.world, &["check"])).await;
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert_eq!(out, "3 deposits over 2 accounts: all invariants hold\n");

    let d = world.small.clone();
    world
        .corrupt(
            Svc::Email,
            "UPDATE emails SET status = 'queued', sent_at = NULL WHERE deposit_id = $1::uuid",
            &[&d.deposit_id],
        )
        .await;
    let queue = world.world.dlq(Svc::Account);
    publish_to_queue(&world.world, &queue, b"not an event", &[])
        .await
        .expect("publishing to the DLQ");
    let expected = format!(
        "3 deposits over 2 accounts: 2 violations:\n  \
         - email: the email of deposit {} (event {}) is queued, expected sent\n  \
         - account: 1 message(s) in the dead-letter queue {queue}\n",
        d.deposit_id, d.event_id
    );
    let world_ref = &world.world;
    let (code, out) = eventually(Duration::from_secs(10), || async {
        let (code, out, err) = run(bankctl(world_ref, &["check"])).await;
        anyhow::ensure!(
            out == expected,
            "exit {code:?}\nstdout: {out}\nstderr: {err}"
        );
        Ok((code, out))
    })
    .await
    .expect("bankctl check prints both violations");
    assert_eq!(code, Some(1), "{out}");

    let (code, out, err) = run(bankctl(&world.world, &["--json", "check"])).await;
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    let report: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert_eq!(report["deposits"], 3);
    assert_eq!(
        report["violations"],
        serde_json::json!([
            {
                "kind": "email_not_sent",
                "service": "email",
                "message": format!(
                    "the email of deposit {} (event {}) is queued, expected sent",
                    d.deposit_id, d.event_id
                ),
            },
            {
                "kind": "dead_letters",
                "service": "account",
                "message": format!("1 message(s) in the dead-letter queue {queue}"),
            },
        ])
    );

    // Another threshold (as the compliance service might run with) changes what must be alerted.
    let (code, out, _) = run(bankctl(
        &world.world,
        &["--json", "check", "--ctr-threshold-minor", "2000000"],
    ))
    .await;
    assert_eq!(code, Some(1));
    let report: Value = serde_json::from_str(&out).expect("JSON on stdout");
    assert!(
        report["violations"]
            .as_array()
            .expect("violations")
            .iter()
            .any(|v| v["kind"] == "unexpected_ctr_alert"),
        "{out}"
    );
    // compliance refuses a threshold under 1; so does the checker (a usage error, exit 2).
    let (code, _, err) = run(bankctl(
        &world.world,
        &["check", "--ctr-threshold-minor", "0"],
    ))
    .await;
    assert_eq!(code, Some(2), "{err}");
    world.cleanup().await;
}
