//! Group commit: deposits that arrive together share one transaction and one commit.
//!
//! A commit waits for its WAL flush, and one commit per deposit made the deposit database the
//! pipeline's largest Postgres cost. So the API hands each valid deposit to a writer and waits
//! for its answer; each of `WRITERS` writer tasks takes every deposit waiting (up to
//! `WRITE_BATCH`) and stores them with a fixed number of set-based statements:
//!
//! 1. claim the batch's Idempotency-Keys (one INSERT), read the ones that already existed;
//! 2. lock the batch's accounts in id order (one SELECT ... FOR UPDATE);
//! 3. decide each deposit in Rust (unknown or closed account, currency, next sequence);
//! 4. store the deposits, their outbox rows and the new sequences (one statement), the claimed
//!    keys' responses (one), give back the keys of refused requests (one);
//! 5. commit, hand the outbox rows to the relay ([`crate::wakeup`]), and only then answer
//!    every request of the batch.
//!
//! A refused deposit (an answer the client must get, like an unknown account) never touches the
//! transaction, so it cannot fail the others. If a statement fails anyway, the batch rolls back
//! and each of its deposits is tried again alone, so one bad deposit costs the others only a
//! retry. Two requests with the same Idempotency-Key never share a batch: the later one waits
//! for the next, where it finds the first one's stored answer.

use crate::error::ApiError;
use crate::idempotency;
use crate::store::{self, AccountRow, AccountStatus, DepositRow, NewDeposit, OutboxRow};
use crate::validate::ValidDeposit;
use crate::wakeup::OutboxSignal;
use axum::http::StatusCode;
use chrono::{DateTime, SubsecRound, Utc};
use eventbank_events::{AccountSnapshot, Currency, DepositCompleted, Money};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

/// A deposit to store, as the API validated it.
pub struct Request {
    pub key: Option<String>,
    pub deposit: ValidDeposit,
    pub traceparent: Option<String>,
}

/// What a stored request answers.
pub enum Accepted {
    /// Stored now (committed): the row and the 201's body.
    Created { row: DepositRow, body: Value },
    /// Its Idempotency-Key answered before: that answer again.
    Replayed { status: StatusCode, body: Value },
}

pub type Outcome = Result<Accepted, ApiError>;

struct Job {
    request: Request,
    reply: oneshot::Sender<Outcome>,
}

/// The API's handle on the writers. Cloning it is cheap; the writers stop when every handle is
/// gone and they answered what they hold.
#[derive(Clone)]
pub struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts `writers` writer tasks storing up to `batch` deposits per transaction and handing
    /// the committed outbox rows to `outbox`.
    pub fn start(pool: PgPool, outbox: Arc<OutboxSignal>, writers: usize, batch: usize) -> Self {
        let batch = batch.max(1);
        // Bounded: when the database is slower than the arrivals, requests wait here (and the
        // clients with them) instead of piling up in memory.
        let (jobs, receiver) = mpsc::channel(batch * writers.max(1) * 2);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(
                pool.clone(),
                Arc::clone(&outbox),
                Arc::clone(&receiver),
                batch,
            ));
        }
        Self { jobs }
    }

    /// Stores `request` with whatever else is waiting and answers once it is committed.
    pub async fn submit(&self, request: Request) -> Outcome {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { request, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the deposit writers have stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("a deposit writer stopped before answering"))?
    }
}

/// One writer: take a batch, store it, answer it; until the channel closes and nothing is held.
async fn run(
    pool: PgPool,
    outbox: Arc<OutboxSignal>,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    max: usize,
) {
    let mut held: VecDeque<Job> = VecDeque::new();
    loop {
        let mut batch: Vec<Job> = Vec::with_capacity(max);
        while batch.len() < max
            && let Some(job) = held.pop_front()
        {
            batch.push(job);
        }
        if batch.is_empty() {
            // Waiting for work holds the receiver, so the writers take turns to fill a batch.
            let mut receiver = receiver.lock().await;
            match receiver.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            take_waiting(&mut receiver, &mut batch, max);
        } else if let Ok(mut receiver) = receiver.try_lock() {
            // Already holding work: never wait behind a writer that waits for new work.
            take_waiting(&mut receiver, &mut batch, max);
        }
        let (batch, later) = one_per_key(batch);
        held.extend(later);
        apply(&pool, &outbox, batch).await;
    }
}

/// Adds what is waiting to `batch`, up to `max`.
fn take_waiting(receiver: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>, max: usize) {
    while batch.len() < max
        && let Ok(job) = receiver.try_recv()
    {
        batch.push(job);
    }
}

/// Splits off the requests whose Idempotency-Key an earlier request of the batch carries.
fn one_per_key(batch: Vec<Job>) -> (Vec<Job>, Vec<Job>) {
    let mut keys = HashSet::new();
    batch.into_iter().partition(|job| match &job.request.key {
        Some(key) => keys.insert(key.clone()),
        None => true,
    })
}

/// Stores `batch` and answers each job once its deposit is committed (or refused).
async fn apply(pool: &PgPool, outbox: &OutboxSignal, batch: Vec<Job>) {
    let requests: Vec<&Request> = batch.iter().map(|j| &j.request).collect();
    let outcomes = store_batch(pool, outbox, &requests).await;
    for (job, outcome) in batch.into_iter().zip(outcomes) {
        // A client that went away no longer waits for its answer; its deposit stands.
        let _ = job.reply.send(outcome);
    }
}

/// Stores `requests` in one transaction, or, if a statement fails, each in its own: an outcome
/// per request, in order. What is committed is handed to `outbox`.
pub async fn store_batch(
    pool: &PgPool,
    outbox: &OutboxSignal,
    requests: &[&Request],
) -> Vec<Outcome> {
    let error = match write(pool, outbox, requests).await {
        Ok(outcomes) => return outcomes,
        Err(e) if requests.len() == 1 => return vec![Err(e)],
        Err(e) => e,
    };
    tracing::warn!(error = %error, deposits = requests.len(), "a batch of deposits failed; storing them one by one");
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests {
        let outcome = match write(pool, outbox, &[request]).await {
            Ok(mut alone) => alone
                .pop()
                .unwrap_or_else(|| Err(anyhow::anyhow!("no outcome").into())),
            Err(e) => Err(e),
        };
        outcomes.push(outcome);
    }
    outcomes
}

/// One transaction for `requests`: an outcome per request, in order, or the error that rolled
/// the whole batch back. Once committed, its outbox rows are handed to `outbox`.
async fn write(
    pool: &PgPool,
    outbox: &OutboxSignal,
    requests: &[&Request],
) -> Result<Vec<Outcome>, ApiError> {
    let mut tx = pool.begin().await?;
    let mut outcomes: Vec<Option<Outcome>> = requests.iter().map(|_| None).collect();
    let fingerprints: Vec<Option<String>> = requests
        .iter()
        .map(|r| r.key.as_ref().map(|_| idempotency::fingerprint(&r.deposit)))
        .collect();
    replay_used_keys(&mut tx, requests, &fingerprints, &mut outcomes).await?;
    let mut accounts = lock_accounts(&mut tx, requests, &outcomes).await?;
    let mut stored = Vec::new();
    let mut released = Vec::new();
    let mut answers: Vec<(&str, Value)> = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        if outcomes[i].is_some() {
            continue;
        }
        match decide(&mut accounts, request) {
            Ok((new, body)) => {
                if let Some(key) = &request.key {
                    answers.push((key, body.clone()));
                }
                let row = new.row.clone();
                stored.push(new);
                outcomes[i] = Some(Ok(Accepted::Created { row, body }));
            }
            Err(e) => {
                if let Some(key) = &request.key {
                    released.push(key.as_str());
                }
                outcomes[i] = Some(Err(e));
            }
        }
    }
    let ids = if stored.is_empty() {
        Vec::new()
    } else {
        store::insert_deposits(&mut tx, &stored).await?
    };
    if !answers.is_empty() {
        let (keys, bodies): (Vec<&str>, Vec<Value>) = answers.into_iter().unzip();
        store::save_idempotent_responses(&mut tx, &keys, &bodies).await?;
    }
    if !released.is_empty() {
        store::release_idempotency_keys(&mut tx, &released).await?;
    }
    tx.commit().await?;
    if !stored.is_empty() {
        match outbox_rows(stored, &ids) {
            Some(rows) => outbox.committed(rows),
            // Not expected (the insert returns every row's id); the relay reads them instead.
            None => outbox.committed_unseen(),
        }
    }
    Ok(outcomes
        .into_iter()
        .map(|o| o.unwrap_or_else(|| Err(anyhow::anyhow!("deposit left undecided").into())))
        .collect())
}

/// The committed outbox rows of `stored`, given each one's id by event id; `None` if an id is
/// missing.
fn outbox_rows(stored: Vec<NewDeposit>, ids: &[(Uuid, i64)]) -> Option<Vec<OutboxRow>> {
    let ids: HashMap<Uuid, i64> = ids.iter().copied().collect();
    stored
        .into_iter()
        .map(|d| {
            Some(OutboxRow {
                id: *ids.get(&d.row.event_id)?,
                event_id: d.row.event_id,
                account_id: d.row.account_id.as_str().to_owned(),
                sequence: d.row.sequence,
                traceparent: d.traceparent,
                payload: d.payload,
            })
        })
        .collect()
}

/// Claims the keyed requests' Idempotency-Keys; a request whose key was used before is decided
/// here: the stored answer again, or a 422 for another body.
async fn replay_used_keys(
    tx: &mut PgConnection,
    requests: &[&Request],
    fingerprints: &[Option<String>],
    outcomes: &mut [Option<Outcome>],
) -> Result<(), ApiError> {
    let keyed: Vec<(usize, &str, &str)> = requests
        .iter()
        .zip(fingerprints)
        .enumerate()
        .filter_map(|(i, (r, f))| Some((i, r.key.as_deref()?, f.as_deref()?)))
        .collect();
    if keyed.is_empty() {
        return Ok(());
    }
    let keys: Vec<&str> = keyed.iter().map(|k| k.1).collect();
    let fingerprints: Vec<&str> = keyed.iter().map(|k| k.2).collect();
    let claimed: HashSet<String> = store::claim_idempotency_keys(tx, &keys, &fingerprints)
        .await?
        .into_iter()
        .collect();
    let used: Vec<&str> = keys
        .iter()
        .copied()
        .filter(|k| !claimed.contains(*k))
        .collect();
    if used.is_empty() {
        return Ok(());
    }
    let mut stored: HashMap<String, store::IdempotencyRow> = store::get_idempotency_keys(tx, &used)
        .await?
        .into_iter()
        .map(|row| (row.key.clone(), row))
        .collect();
    for (i, key, fingerprint) in keyed {
        if !claimed.contains(key) {
            outcomes[i] = Some(
                idempotency::replay(key, stored.remove(key), fingerprint)
                    .map(|(status, body)| Accepted::Replayed { status, body }),
            );
        }
    }
    Ok(())
}

/// Locks the accounts of the requests not yet decided; by id.
async fn lock_accounts(
    tx: &mut PgConnection,
    requests: &[&Request],
    outcomes: &[Option<Outcome>],
) -> Result<HashMap<String, AccountRow>, ApiError> {
    let mut ids: Vec<&str> = requests
        .iter()
        .zip(outcomes)
        .filter(|(_, o)| o.is_none())
        .map(|(r, _)| r.deposit.account_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(store::lock_accounts(tx, &ids)
        .await?
        .into_iter()
        .map(|a| (a.account_id.as_str().to_owned(), a))
        .collect())
}

/// Takes the account's next sequence for `request` and builds its rows and 201 body, or says
/// why the deposit is refused.
fn decide(
    accounts: &mut HashMap<String, AccountRow>,
    request: &Request,
) -> Result<(NewDeposit, Value), ApiError> {
    let deposit = &request.deposit;
    let account = accounts
        .get_mut(deposit.account_id.as_str())
        .ok_or_else(|| ApiError::UnknownAccount(deposit.account_id.clone()))?;
    check_account(account, deposit.money.currency)?;
    let event = new_event(
        account,
        account.last_sequence + 1,
        deposit,
        request.traceparent.clone(),
    );
    let payload = event.to_json().map_err(|e| ApiError::Internal(e.into()))?;
    account.last_sequence = event.sequence;
    let row = stored_row(&event, account);
    let body = deposit_response(&row, deposit.money);
    Ok((
        NewDeposit {
            row,
            traceparent: event.traceparent,
            payload,
        },
        body,
    ))
}

/// A deposit goes only to an open account, in the account's currency.
fn check_account(account: &AccountRow, currency: Currency) -> Result<(), ApiError> {
    if account.status != AccountStatus::Open {
        return Err(ApiError::AccountClosed(account.account_id.clone()));
    }
    if account.currency != currency {
        return Err(ApiError::CurrencyMismatch {
            account_currency: account.currency,
            given: currency,
        });
    }
    Ok(())
}

/// The `DepositCompleted` of `deposit` to `account`, with the account's next `sequence`.
fn new_event(
    account: &AccountRow,
    sequence: i64,
    deposit: &ValidDeposit,
    traceparent: Option<String>,
) -> DepositCompleted {
    // Postgres keeps microseconds; truncating here makes the event and the row agree exactly.
    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    DepositCompleted {
        event_id: Uuid::now_v7(),
        sequence,
        time: now,
        traceparent,
        schema_version: eventbank_events::deposit::CURRENT_VERSION,
        deposit_id: Uuid::now_v7(),
        account_id: deposit.account_id.clone(),
        amount_minor: deposit.money.minor,
        currency: deposit.money.currency,
        account: AccountSnapshot {
            holder_name: account.holder_name.clone(),
            email: account.email.clone(),
        },
        occurred_at: now,
        channel: deposit.channel,
        reference: deposit.reference.clone(),
    }
}

/// The `deposits` row of `event`.
fn stored_row(event: &DepositCompleted, account: &AccountRow) -> DepositRow {
    DepositRow {
        deposit_id: event.deposit_id,
        event_id: event.event_id,
        account_id: account.account_id.clone(),
        sequence: event.sequence,
        amount_minor: event.amount_minor,
        currency: account.currency,
        created_at: event.occurred_at,
    }
}

/// The 201's body (the `DepositAccepted` schema), also what an Idempotency-Key replays.
fn deposit_response(row: &DepositRow, money: Money) -> Value {
    json!({
        "deposit_id": row.deposit_id,
        "account_id": row.account_id,
        "sequence": row.sequence,
        "event_id": row.event_id,
        "amount": money.to_decimal_string(),
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "created_at": row.created_at,
    })
}
