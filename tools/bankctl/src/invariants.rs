//! The system's invariants, checked from each service's own database and the broker.
//!
//! The deposit service's `deposits` table is the truth every other store is compared with:
//! - **outbox**: every outbox row is published;
//! - **once per deposit, in every consumer**: each deposit has exactly one row in account's
//!   `transactions`, email's `emails`, interest's `deposits`, compliance's `deposits` and
//!   compliance's `audit_log` (matched by `deposit_id`, so a second application under a new event
//!   id shows; the event id alone is unique in every one of those tables and could not), with
//!   the accepted amount where the row carries one; and no row names a deposit the deposit
//!   service never accepted;
//! - **processed**: each consumer's `processed_events` holds exactly the accepted events' ids;
//! - **balances**: account's balance of record and interest's latest daily closing balance equal
//!   the sum of the account's accepted deposits;
//! - **emails**: every email is `sent` (a `failed` one never will be; a `queued` one is not
//!   delivered yet, see [`Options::allow_queued_emails`]);
//! - **CTR alerts**: every deposit at or over the threshold has an active `ctr` alert, and no
//!   other deposit has one;
//! - **audit chain**: it verifies;
//! - **dead letters** ([`check_dead_letters`]): every consumer's dead-letter queue is empty.
//!
//! A check reads; it never waits. Poll it until `ok()` when the system is still settling.

use crate::Pools;
use crate::dlq::CONSUMERS;
use anyhow::{Context, Result};
use eventbank_runtime::amqp::Names;
use futures_util::TryStreamExt;
use lapin::options::QueueDeclareOptions;
use lapin::types::{FieldTable, ShortString};
use serde::Serialize;
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};

/// At most this many violations of one kind in one service are listed one by one; the rest
/// are counted in one more violation (a consumer that is down would otherwise list every
/// deposit).
pub const MAX_LISTED: usize = 20;

/// What the checker needs to know about the system's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// compliance's `CTR_THRESHOLD_MINOR`: a deposit at or over it must have a `ctr` alert.
    pub ctr_threshold_minor: i64,
    /// If true, an email still `queued` is not a violation (a `failed` one always is). For a
    /// caller that may hold the mail server away; an operator wants `false`: a queued email is
    /// not delivered.
    pub allow_queued_emails: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ctr_threshold_minor: 1_000_000,
            allow_queued_emails: false,
        }
    }
}

/// Which invariant a violation breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An outbox row was never published.
    UnpublishedOutbox,
    /// A consumer has no row for an accepted deposit.
    DepositMissing,
    /// A consumer has more than one row for one deposit.
    DepositAppliedTwice,
    /// A consumer's row for a deposit carries another amount than the accepted one.
    AmountMismatch,
    /// A consumer has a row for a deposit the deposit service never accepted.
    UnknownDeposit,
    /// An accepted event is not in a consumer's `processed_events`.
    EventNotProcessed,
    /// A consumer's `processed_events` holds an event id no accepted deposit has.
    UnknownEventProcessed,
    /// A balance differs from the sum of the account's accepted deposits.
    BalanceMismatch,
    /// An email is not `sent`.
    EmailNotSent,
    /// A deposit at or over the CTR threshold has no active `ctr` alert.
    CtrAlertMissing,
    /// An active `ctr` alert names no accepted deposit at or over the threshold.
    UnexpectedCtrAlert,
    /// The compliance audit chain does not verify.
    AuditChainBroken,
    /// A dead-letter queue holds messages.
    DeadLetters,
}

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub kind: Kind,
    /// The service whose state breaks it.
    pub service: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(kind: Kind, service: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            service,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.service, self.message)
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub deposits: i64,
    pub accounts: usize,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} deposits over {} accounts",
            self.deposits, self.accounts
        )?;
        if self.violations.is_empty() {
            return write!(f, ": all invariants hold");
        }
        write!(f, ": {} violations:", self.violations.len())?;
        for v in &self.violations {
            write!(f, "\n  - {v}")?;
        }
        Ok(())
    }
}

/// Collects violations, listing at most [`MAX_LISTED`] per (service, kind).
#[derive(Default)]
struct Findings {
    listed: Vec<Violation>,
    seen: BTreeMap<(&'static str, Kind), usize>,
}

impl Findings {
    fn push(&mut self, kind: Kind, service: &'static str, message: String) {
        let seen = self.seen.entry((service, kind)).or_insert(0);
        *seen += 1;
        if *seen <= MAX_LISTED {
            self.listed.push(Violation::new(kind, service, message));
        }
    }

    fn finish(mut self) -> Vec<Violation> {
        for ((service, kind), seen) in self.seen {
            if seen > MAX_LISTED {
                self.listed.push(Violation::new(
                    kind,
                    service,
                    format!(
                        "{} more violations of this kind not listed",
                        seen - MAX_LISTED
                    ),
                ));
            }
        }
        self.listed
    }
}

/// One deposit as the deposit service accepted it.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Accepted {
    deposit_id: String,
    event_id: String,
    account_id: String,
    sequence: i64,
    amount_minor: i64,
    currency: String,
}

impl Accepted {
    fn label(&self) -> String {
        format!(
            "deposit {} ({}, sequence {})",
            self.deposit_id, self.account_id, self.sequence
        )
    }
}

/// A consumer's rows for one deposit: how many, and their amounts' sum where rows carry one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rows {
    count: i64,
    amount_sum: Option<i64>,
}

async fn rows_per_deposit(pool: &PgPool, sql: &'static str) -> Result<BTreeMap<String, Rows>> {
    let rows: Vec<(String, i64, Option<i64>)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(deposit_id, count, amount_sum)| (deposit_id, Rows { count, amount_sum }))
        .collect())
}

/// compliance's audit entries per deposit, read from each entry's hashed text (the table has
/// no deposit column). An unreadable entry is left to the chain verification, which reports it.
async fn audit_entries_per_deposit(pool: &PgPool) -> Result<BTreeMap<String, Rows>> {
    let mut out: BTreeMap<String, Rows> = BTreeMap::new();
    let mut entries = sqlx::query_scalar::<_, String>("SELECT entry FROM audit_log").fetch(pool);
    while let Some(text) = entries.try_next().await? {
        let Ok(entry) = serde_json::from_str::<compliance::chain::CanonicalEntry>(&text) else {
            continue;
        };
        let rows = out.entry(entry.deposit_id.to_string()).or_insert(Rows {
            count: 0,
            amount_sum: Some(0),
        });
        rows.count += 1;
        rows.amount_sum = rows
            .amount_sum
            .and_then(|sum| sum.checked_add(entry.amount_minor));
    }
    Ok(out)
}

async fn per_account(pool: &PgPool, sql: &'static str) -> Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(sql).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

async fn strings(pool: &PgPool, sql: &'static str) -> Result<BTreeSet<String>> {
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(pool).await?;
    Ok(rows.into_iter().collect())
}

/// Each accepted deposit must have exactly one row in `table` of `service`, with its amount
/// (when the rows carry one); no row may name a deposit that was not accepted.
fn once_per_deposit(
    findings: &mut Findings,
    service: &'static str,
    table: &str,
    accepted: &[Accepted],
    rows: &BTreeMap<String, Rows>,
) {
    for deposit in accepted {
        match rows.get(&deposit.deposit_id) {
            None => findings.push(
                Kind::DepositMissing,
                service,
                format!("{} has no row in {table}", deposit.label()),
            ),
            Some(r) if r.count != 1 => findings.push(
                Kind::DepositAppliedTwice,
                service,
                format!(
                    "{} has {} rows in {table}, expected 1",
                    deposit.label(),
                    r.count
                ),
            ),
            Some(Rows {
                amount_sum: Some(amount),
                ..
            }) if *amount != deposit.amount_minor => findings.push(
                Kind::AmountMismatch,
                service,
                format!(
                    "{} has amount_minor {amount} in {table}, accepted {}",
                    deposit.label(),
                    deposit.amount_minor
                ),
            ),
            Some(_) => {}
        }
    }
    let known: BTreeSet<&str> = accepted.iter().map(|d| d.deposit_id.as_str()).collect();
    for (deposit_id, r) in rows {
        if !known.contains(deposit_id.as_str()) {
            findings.push(
                Kind::UnknownDeposit,
                service,
                format!(
                    "{table} has {} row(s) for deposit {deposit_id}, which the deposit service never accepted",
                    r.count
                ),
            );
        }
    }
}

/// An account's balance in `service` must be the sum of its accepted deposits.
fn balances(
    findings: &mut Findings,
    service: &'static str,
    what: &str,
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) {
    for (account, want) in expected {
        match actual.get(account) {
            Some(got) if got == want => {}
            Some(got) => findings.push(
                Kind::BalanceMismatch,
                service,
                format!(
                    "{account}: {what} is {got}, expected {want} (the sum of its accepted deposits)"
                ),
            ),
            None => findings.push(
                Kind::BalanceMismatch,
                service,
                format!("{account}: no {what}, expected {want} (the sum of its accepted deposits)"),
            ),
        }
    }
    for (account, got) in actual {
        if !expected.contains_key(account) && *got != 0 {
            findings.push(
                Kind::BalanceMismatch,
                service,
                format!("{account}: {what} is {got} for an account with no accepted deposit"),
            );
        }
    }
}

/// Checks every database invariant once with the default [`Options`] (no broker).
pub async fn check(pools: &Pools) -> Result<Report> {
    check_with(pools, &Options::default()).await
}

/// Checks every database invariant once (no broker: see [`check_dead_letters`] and
/// [`check_system`]).
pub async fn check_with(pools: &Pools, options: &Options) -> Result<Report> {
    let accepted = accepted_deposits(&pools.deposit).await?;
    let sums = sums_per_account(&accepted);
    let mut findings = Findings::default();
    check_outbox(&mut findings, &pools.deposit).await?;
    for (service, table, rows) in &consumer_records(pools).await? {
        once_per_deposit(&mut findings, service, table, &accepted, rows);
    }
    let accepted_events: BTreeMap<&str, &Accepted> =
        accepted.iter().map(|d| (d.event_id.as_str(), d)).collect();
    check_processed(&mut findings, pools, &accepted, &accepted_events).await?;
    check_balances(&mut findings, pools, &sums).await?;
    check_emails(&mut findings, &pools.email, options).await?;
    check_ctr_alerts(
        &mut findings,
        &pools.compliance,
        &accepted,
        &accepted_events,
        options.ctr_threshold_minor,
    )
    .await?;
    check_audit_chain(&mut findings, &pools.compliance).await?;
    Ok(Report {
        deposits: i64::try_from(accepted.len()).unwrap_or(i64::MAX),
        accounts: sums.len(),
        violations: findings.finish(),
    })
}

/// The deposit service's accepted deposits, by account and sequence.
async fn accepted_deposits(pool: &PgPool) -> Result<Vec<Accepted>> {
    let mut accepted: Vec<Accepted> = sqlx::query_as(
        "SELECT deposit_id::text AS deposit_id, event_id::text AS event_id, account_id, sequence, \
                amount_minor, currency \
           FROM deposits",
    )
    .fetch_all(pool)
    .await
    .context("reading the deposit service's deposits")?;
    accepted.sort_by(|a, b| (&a.account_id, a.sequence).cmp(&(&b.account_id, b.sequence)));
    Ok(accepted)
}

/// The sum of each account's accepted deposits: the balance every store must show.
fn sums_per_account(accepted: &[Accepted]) -> BTreeMap<String, i64> {
    let mut sums: BTreeMap<String, i64> = BTreeMap::new();
    for d in accepted {
        let sum = sums.entry(d.account_id.clone()).or_insert(0);
        *sum = sum.saturating_add(d.amount_minor);
    }
    sums
}

async fn check_outbox(findings: &mut Findings, deposit: &PgPool) -> Result<()> {
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(deposit)
            .await?;
    if unpublished != 0 {
        findings.push(
            Kind::UnpublishedOutbox,
            "deposit",
            format!("{unpublished} outbox row(s) not published"),
        );
    }

    Ok(())
}

/// interest's and compliance's `deposits` tables have the same shape: rows and amount per deposit.
const DEPOSITS_PER_DEPOSIT: &str = "SELECT deposit_id::text, count(*), sum(amount_minor)::bigint \
                   FROM deposits GROUP BY deposit_id";

/// Each consumer's rows per deposit: (service, table, rows).
async fn consumer_records(
    pools: &Pools,
) -> Result<[(&'static str, &'static str, BTreeMap<String, Rows>); 5]> {
    Ok([
        (
            "account",
            "transactions",
            rows_per_deposit(
                &pools.account,
                "SELECT deposit_id::text, count(*), sum(amount_minor)::bigint \
                   FROM transactions GROUP BY deposit_id",
            )
            .await?,
        ),
        (
            "email",
            "emails",
            rows_per_deposit(
                &pools.email,
                "SELECT deposit_id::text, count(*), NULL::bigint FROM emails GROUP BY deposit_id",
            )
            .await?,
        ),
        (
            "interest",
            "deposits",
            rows_per_deposit(&pools.interest, DEPOSITS_PER_DEPOSIT).await?,
        ),
        (
            "compliance",
            "deposits",
            rows_per_deposit(&pools.compliance, DEPOSITS_PER_DEPOSIT).await?,
        ),
        (
            "compliance",
            "audit_log",
            audit_entries_per_deposit(&pools.compliance).await?,
        ),
    ])
}

/// Every consumer's `processed_events` holds exactly the accepted events.
async fn check_processed(
    findings: &mut Findings,
    pools: &Pools,
    accepted: &[Accepted],
    accepted_events: &BTreeMap<&str, &Accepted>,
) -> Result<()> {
    for (service, pool) in [
        ("account", &pools.account),
        ("email", &pools.email),
        ("interest", &pools.interest),
        ("compliance", &pools.compliance),
    ] {
        let processed = strings(pool, "SELECT event_id::text FROM processed_events").await?;
        for deposit in accepted {
            if !processed.contains(&deposit.event_id) {
                findings.push(
                    Kind::EventNotProcessed,
                    service,
                    format!(
                        "event {} of {} is not in processed_events",
                        deposit.event_id,
                        deposit.label()
                    ),
                );
            }
        }
        for event_id in &processed {
            if !accepted_events.contains_key(event_id.as_str()) {
                findings.push(
                    Kind::UnknownEventProcessed,
                    service,
                    format!("processed_events has event {event_id}, which no accepted deposit has"),
                );
            }
        }
    }

    Ok(())
}

/// account's balances and interest's latest closing balances equal the accepted sums.
async fn check_balances(
    findings: &mut Findings,
    pools: &Pools,
    sums: &BTreeMap<String, i64>,
) -> Result<()> {
    let account_balances = per_account(
        &pools.account,
        "SELECT account_id, balance_minor FROM balances",
    )
    .await?;
    balances(
        findings,
        "account",
        "balance_minor",
        sums,
        &account_balances,
    );
    let interest_balances = per_account(
        &pools.interest,
        "SELECT DISTINCT ON (account_id) account_id, closing_balance_minor \
           FROM daily_balances ORDER BY account_id, day DESC",
    )
    .await?;
    balances(
        findings,
        "interest",
        "latest closing_balance_minor",
        sums,
        &interest_balances,
    );

    Ok(())
}

async fn check_emails(findings: &mut Findings, email: &PgPool, options: &Options) -> Result<()> {
    let unsent: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT deposit_id::text, event_id::text, status, last_error FROM emails \
          WHERE status <> 'sent' ORDER BY account_id, sequence, event_id",
    )
    .fetch_all(email)
    .await?;
    for (deposit_id, event_id, status, last_error) in unsent {
        if status == "queued" && options.allow_queued_emails {
            continue;
        }
        let error = last_error.map_or(String::new(), |e| format!(" (last error: {e})"));
        findings.push(
            Kind::EmailNotSent,
            "email",
            format!(
                "the email of deposit {deposit_id} (event {event_id}) is {status}{error}, expected sent"
            ),
        );
    }

    Ok(())
}

/// Deposits at or over `threshold` have an active `ctr` alert, and no other deposit has one.
async fn check_ctr_alerts(
    findings: &mut Findings,
    compliance: &PgPool,
    accepted: &[Accepted],
    accepted_events: &BTreeMap<&str, &Accepted>,
    threshold: i64,
) -> Result<()> {
    let ctr_alerts = strings(
        compliance,
        "SELECT event_id::text FROM alerts WHERE kind = 'ctr' AND superseded_at IS NULL",
    )
    .await?;
    for deposit in accepted.iter().filter(|d| d.amount_minor >= threshold) {
        if !ctr_alerts.contains(&deposit.event_id) {
            findings.push(
                Kind::CtrAlertMissing,
                "compliance",
                format!(
                    "{} of {} {} minor units (threshold {threshold}) has no active ctr alert",
                    deposit.label(),
                    deposit.amount_minor,
                    deposit.currency
                ),
            );
        }
    }
    for event_id in &ctr_alerts {
        let large = accepted_events
            .get(event_id.as_str())
            .is_some_and(|d| d.amount_minor >= threshold);
        if !large {
            findings.push(
                Kind::UnexpectedCtrAlert,
                "compliance",
                format!(
                    "active ctr alert for event {event_id}, which is no accepted deposit at or over the threshold {threshold}"
                ),
            );
        }
    }

    Ok(())
}

async fn check_audit_chain(findings: &mut Findings, compliance: &PgPool) -> Result<()> {
    match compliance::store::verify_snapshot(compliance).await? {
        compliance::store::Verification::Intact { .. } => {}
        compliance::store::Verification::Broken {
            entries_checked,
            broken,
        } => findings.push(
            Kind::AuditChainBroken,
            "compliance",
            format!(
                "audit chain broken at position {} ({:?}) after {entries_checked} intact entries",
                broken.position, broken.reason
            ),
        ),
    }

    Ok(())
}

/// Every consumer's dead-letter queue must be empty. A queue that does not exist is an error
/// (the services never started in this namespace, or the namespace is wrong), not a pass.
pub async fn check_dead_letters(
    connection: &lapin::Connection,
    names: &Names,
) -> Result<Vec<Violation>> {
    let mut violations = Vec::new();
    for service in CONSUMERS {
        let queue = names.dead_letter_queue(service);
        // A failed passive declare closes its channel: one channel per queue.
        let channel = connection.create_channel().await?;
        let declared = channel
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| {
                format!(
                    "queue {queue} does not exist (has {service} ever started in this namespace?)"
                )
            })?;
        let _ = channel.close(200, "checked".into()).await;
        let count = declared.message_count();
        if count != 0 {
            violations.push(Violation::new(
                Kind::DeadLetters,
                service,
                format!("{count} message(s) in the dead-letter queue {queue}"),
            ));
        }
    }
    Ok(violations)
}

/// What `bankctl check` runs: every database invariant and every dead-letter queue.
pub async fn check_system(
    pools: &Pools,
    connection: &lapin::Connection,
    names: &Names,
    options: &Options,
) -> Result<Report> {
    let mut report = check_with(pools, options).await?;
    report
        .violations
        .extend(check_dead_letters(connection, names).await?);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_list_at_most_max_listed_per_service_and_kind_and_count_the_rest() {
        let mut findings = Findings::default();
        for i in 0..MAX_LISTED + 3 {
            findings.push(Kind::DepositMissing, "email", format!("missing {i}"));
        }
        findings.push(Kind::DepositMissing, "account", "missing a".into());
        let listed = findings.finish();
        assert_eq!(listed.len(), MAX_LISTED + 2);
        assert_eq!(
            listed[MAX_LISTED - 1].message,
            format!("missing {}", MAX_LISTED - 1)
        );
        assert_eq!(listed[MAX_LISTED].message, "missing a");
        assert_eq!(
            listed[MAX_LISTED + 1],
            Violation::new(
                Kind::DepositMissing,
                "email",
                "3 more violations of this kind not listed"
            )
        );
    }

    #[test]
    fn a_report_lists_each_violation_under_its_service() {
        let report = Report {
            deposits: 3,
            accounts: 2,
            violations: vec![Violation::new(
                Kind::UnpublishedOutbox,
                "deposit",
                "1 outbox row(s) not published",
            )],
        };
        assert_eq!(
            report.to_string(),
            "3 deposits over 2 accounts: 1 violations:\n  - deposit: 1 outbox row(s) not published"
        );
    }
}
