//! Quiescence and the judge: what must hold once every fault healed.

use super::faults::FaultRecord;
use super::stack::{EMAIL_SEND_CONCURRENCY, Stack};
use super::workload::{Answer, HistoryEntry};
use crate::amqp::get_message;
use crate::invariants;
use crate::poll::eventually;
use crate::svc::Svc;
use anyhow::{Result, ensure};
use sqlx::PgPool;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;
use uuid::Uuid;

/// One thing the judge checked.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Every check of a run; `ok()` if all passed.
#[derive(Debug, Clone, Default)]
pub struct Verdict {
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn check(&mut self, name: &'static str, ok: bool, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            ok,
            detail: detail.into(),
        });
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "  {} {:<34} {}",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.detail
            )?;
        }
        write!(
            f,
            "verdict: {}",
            if self.ok() {
                "OK (0 lost, 0 doubled)"
            } else {
                "VIOLATED"
            }
        )
    }
}

fn accepted(history: &[HistoryEntry]) -> BTreeMap<Uuid, &HistoryEntry> {
    history
        .iter()
        .filter_map(|h| match h.answer {
            Answer::Accepted { deposit_id, .. } => Some((deposit_id, h)),
            Answer::Refused { .. } => None,
        })
        .collect()
}

fn accepted_events(history: &[HistoryEntry]) -> BTreeSet<Uuid> {
    history
        .iter()
        .filter_map(|h| match h.answer {
            Answer::Accepted { event_id, .. } => Some(event_id),
            Answer::Refused { .. } => None,
        })
        .collect()
}

/// The event id in a Message-ID `<event-id@domain>`.
fn event_of(message_id: &str) -> Option<Uuid> {
    message_id
        .trim()
        .trim_start_matches('<')
        .split('@')
        .next()?
        .parse()
        .ok()
}

/// Waits until the healed system is at rest, whether or not it is correct (the judge says
/// that): the outbox published, every consumer's queues empty and its `processed_events`
/// unchanged for a second, and no email still queued.
pub async fn quiesce(stack: &Stack, timeout: Duration) -> Result<()> {
    let deposit = stack.pool(Svc::Deposit).await?;
    let email = stack.pool(Svc::Email).await?;
    let previous = std::sync::Mutex::new((Vec::<i64>::new(), std::time::Instant::now()));
    eventually(timeout, || async {
        let unpublished: i64 =
            sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                .fetch_one(&deposit)
                .await?;
        ensure!(unpublished == 0, "{unpublished} outbox rows unpublished");
        let mut processed = Vec::new();
        for svc in Svc::CONSUMERS {
            let backlog = stack.backlog(svc).await?;
            ensure!(backlog == 0, "{svc}: {backlog} messages queued");
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_events")
                .fetch_one(&stack.pool(svc).await?)
                .await?;
            processed.push(n);
        }
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM emails WHERE status = 'queued'")
            .fetch_one(&email)
            .await?;
        ensure!(queued == 0, "{queued} emails queued");
        let mut previous = previous.lock().unwrap_or_else(|e| e.into_inner());
        if previous.0 != processed {
            *previous = (processed, std::time::Instant::now());
        }
        ensure!(
            previous.1.elapsed() >= Duration::from_secs(1),
            "consumers applied events in the last second"
        );
        Ok(())
    })
    .await
}

async fn checker(stack: &Stack) -> Result<invariants::Report> {
    let options = invariants::Options {
        allow_queued_emails: false,
        ..invariants::options(&stack.world)
    };
    bankctl::invariants::check_with(&invariants::pools(&stack.world).await?, &options).await
}

/// Judges the run at rest (after [`quiesce`]).
pub async fn judge(
    stack: &Stack,
    history: &[HistoryEntry],
    faults: &[FaultRecord],
) -> Result<Verdict> {
    let mut v = Verdict::default();
    let accepted = accepted(history);
    let deposit = stack.pool(Svc::Deposit).await?;
    check_stored(&mut v, &deposit, &accepted).await?;
    check_refused(&mut v, &deposit, history).await?;
    check_sequences(&mut v, &deposit).await?;
    // Every consumer: once per deposit, amounts, balances, processed ids, alerts, chain, all
    // emails sent (the checker of bankctl).
    let report = checker(stack).await?;
    v.check(
        "invariant checker (every service)",
        report.ok() && usize::try_from(report.deposits)? == accepted.len(),
        report.to_string(),
    );

    check_emails(&mut v, stack, history, faults);
    check_dead_letters(&mut v, stack, faults).await?;
    let injected: u64 = faults.iter().map(|f| f.duplicates).sum();
    v.check(
        "duplicates skipped",
        injected > 0 && faults.iter().any(|f| f.kind == "duplicates-at-rest"),
        format!("{injected} duplicate deliveries injected, none applied (checker); at rest every consumer counted each skipped"),
    );

    check_answers(&mut v, history);
    Ok(v)
}

async fn check_stored(
    v: &mut Verdict,
    deposit: &PgPool,
    accepted: &BTreeMap<Uuid, &HistoryEntry>,
) -> Result<()> {
    // Every 201 is stored with what the client sent, and nothing else is.
    let rows: Vec<(Uuid, String, i64, String)> =
        sqlx::query_as("SELECT deposit_id, account_id, amount_minor, currency FROM deposits")
            .fetch_all(deposit)
            .await?;
    let stored: BTreeMap<Uuid, (String, i64, String)> = rows
        .into_iter()
        .map(|(id, a, m, c)| (id, (a, m, c)))
        .collect();
    let lost: Vec<&Uuid> = accepted
        .keys()
        .filter(|id| !stored.contains_key(id))
        .collect();
    let unanswered: Vec<&Uuid> = stored
        .keys()
        .filter(|id| !accepted.contains_key(id))
        .collect();
    let altered: Vec<&Uuid> = accepted
        .iter()
        .filter(|(id, h)| {
            stored.get(id).is_some_and(|(a, m, c)| {
                *a != h.account_id || *m != h.deposit.amount_minor || c != h.deposit.currency
            })
        })
        .map(|(id, _)| id)
        .collect();
    v.check(
        "every 201 stored as sent",
        lost.is_empty() && altered.is_empty(),
        format!(
            "{} accepted, {} lost, {} altered",
            accepted.len(),
            lost.len(),
            altered.len()
        ),
    );
    v.check(
        "nothing stored that was not a 201",
        unanswered.is_empty(),
        format!("{} stored deposits no client was told of", unanswered.len()),
    );
    Ok(())
}

async fn check_refused(v: &mut Verdict, deposit: &PgPool, history: &[HistoryEntry]) -> Result<()> {
    let refused: Vec<&HistoryEntry> = history
        .iter()
        .filter(|h| matches!(h.answer, Answer::Refused { .. }))
        .collect();
    let refused_keys: Vec<&str> = refused.iter().map(|h| h.key.as_str()).collect();
    let refused_kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM idempotency_keys WHERE key = ANY($1)")
            .bind(&refused_keys)
            .fetch_one(deposit)
            .await?;
    v.check(
        "refused deposits left nothing",
        refused_kept == 0 && !refused.is_empty(),
        format!(
            "{} refused ({}), {refused_kept} of their keys kept",
            refused.len(),
            refused
                .iter()
                .map(|h| match &h.answer {
                    Answer::Refused { status, .. } => *status,
                    Answer::Accepted { .. } => 0,
                })
                .collect::<BTreeSet<_>>()
                .iter()
                .map(u16::to_string)
                .collect::<Vec<_>>()
                .join("/")
        ),
    );

    Ok(())
}

async fn check_sequences(v: &mut Verdict, deposit: &PgPool) -> Result<()> {
    // Per account, the sequences handed out are 1..n: none skipped, none twice.
    let gaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT account_id FROM deposits GROUP BY account_id \
         HAVING min(sequence) <> 1 OR max(sequence) <> count(*) \
         OR count(DISTINCT sequence) <> count(*)) g",
    )
    .fetch_one(deposit)
    .await?;
    v.check(
        "per-account sequences 1..n",
        gaps == 0,
        format!("{gaps} accounts with a gap or a repeat"),
    );

    Ok(())
}

fn check_emails(v: &mut Verdict, stack: &Stack, history: &[HistoryEntry], faults: &[FaultRecord]) {
    // One email per accepted deposit at the SMTP sink; resends only after a fault that can
    // leave sends unrecorded, at most the sends under way then.
    let events = accepted_events(history);
    let mail_ids = stack.sink.message_ids();
    let mailed: BTreeSet<Uuid> = mail_ids.iter().filter_map(|m| event_of(m)).collect();
    let missing = events.difference(&mailed).count();
    let unknown = mailed.difference(&events).count();
    let resends = mail_ids.len() - mailed.len();
    let disruptions = faults.iter().filter(|f| f.email_disrupted).count();
    // The sender starts no send while twice its concurrency are unrecorded.
    let bound = disruptions * 2 * EMAIL_SEND_CONCURRENCY;
    v.check(
        "one email per deposit (Message-ID)",
        missing == 0 && unknown == 0 && resends <= bound,
        format!(
            "{} distinct Message-IDs for {} deposits, {missing} missing, {unknown} unknown; \
             {resends} resent (bound {bound}: {disruptions} faults x 2 x {EMAIL_SEND_CONCURRENCY} unrecorded sends)",
            mailed.len(),
            events.len()
        ),
    );
}

async fn check_dead_letters(v: &mut Verdict, stack: &Stack, faults: &[FaultRecord]) -> Result<()> {
    // Each dead-letter queue holds the poison messages and nothing else, each with a reason.
    let poison: BTreeSet<&str> = faults
        .iter()
        .flat_map(|f| f.poison_ids.iter().map(String::as_str))
        .collect();
    let mut dlq_detail = Vec::new();
    let mut dlq_ok = !poison.is_empty();
    for svc in Svc::CONSUMERS {
        let mut ids = Vec::new();
        let mut without_reason = 0;
        while let Some(message) = get_message(&stack.world, &stack.world.dlq(svc)).await? {
            if message
                .header(eventbank_runtime::amqp::REASON_HEADER)
                .is_none_or(|r| r.trim().is_empty())
            {
                without_reason += 1;
            }
            ids.push(
                message
                    .properties
                    .message_id()
                    .as_ref()
                    .map_or_else(String::new, |m| m.to_string()),
            );
        }
        let distinct: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let ok = distinct == poison && without_reason == 0;
        dlq_ok &= ok;
        dlq_detail.push(format!(
            "{svc} {}{}",
            ids.len(),
            if ok { "" } else { " (WRONG)" }
        ));
    }
    v.check(
        "DLQs hold exactly the poison",
        dlq_ok,
        format!(
            "{} poison messages; dead-lettered: {}",
            poison.len(),
            dlq_detail.join(", ")
        ),
    );

    Ok(())
}

fn check_answers(v: &mut Verdict, history: &[HistoryEntry]) {
    // Clients were told the truth: a dependency down is a 503 to retry, never a 500.
    let attempts: Vec<_> = history.iter().flat_map(|h| h.attempts.iter()).collect();
    let count = |s: u16| attempts.iter().filter(|a| a.status == Some(s)).count();
    let no_answer = attempts.iter().filter(|a| a.status.is_none()).count();
    v.check(
        "no 500 answers",
        count(500) == 0,
        format!(
            "{} attempts: {} x 500, {} x 503, {no_answer} without an answer (process down)",
            attempts.len(),
            count(500),
            count(503)
        ),
    );
}
