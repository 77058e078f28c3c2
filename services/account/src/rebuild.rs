//! `account rebuild`: replays the whole event store into fresh projections, reports every
//! difference from the live projections, and (unless `--check`) makes the live ones equal to
//! the rebuilt ones.
//!
//! 1. Bulk phase, no locks. A reader task follows the store in its gap-safe global order
//!    ([`store::read_all_page`], pages of `page_size`) on its own connection, while this task
//!    folds each event into its account's state in memory (per account in version order: an
//!    event read before its predecessor waits in a small per-account buffer) and streams one
//!    `transactions` row per `Deposited` into a session temp table with COPY.
//! 2. Final phase, writers paused. `LOCK TABLE events IN SHARE MODE` waits for the appending
//!    transactions in flight and holds new ones back (reads and the API go on); the tail is
//!    read, folded and copied, the balances copied, and the rebuilt and live projections are
//!    compared row by row (one full join each). Differing rows are replaced, and the commit lets
//!    the writers go on. The handler writes events and projections in one transaction, so at
//!    that moment the live projections correspond exactly to the events read: any difference
//!    is a real one.
//!
//! One rebuild at a time per database (a session advisory lock).

use crate::domain::{self, AccountEvent, AccountState};
use crate::projection::{self, BalanceRow, TxnRow};
use crate::store::{self, Cursor, RecordedEvent, StoreError};
use anyhow::{Context, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use eventbank_events::AccountId;
use indicatif::{ProgressBar, ProgressStyle};
use sqlx::{Connection, PgConnection, PgPool};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct Options {
    /// Compare only; leave the live projections as they are.
    pub check_only: bool,
    /// Events per read.
    pub page_size: i64,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            check_only: false,
            page_size: 20_000,
            progress: false,
        }
    }
}

/// What a rebuild did and found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub events: u64,
    pub accounts: u64,
    pub transactions: u64,
    pub elapsed: Duration,
    /// Accounts whose balance row differs (or exists on one side only).
    pub balance_differences: u64,
    /// (account, sequence) keys whose transaction row differs (or exists on one side only).
    pub transaction_differences: u64,
    /// A few differences, described for a human.
    pub examples: Vec<String>,
    /// Whether the live projections were changed.
    pub replaced: bool,
    /// Time of each phase: reading and folding (writers running), then the final phase
    /// (writers paused: tail, balances, comparison, replacement).
    pub phases: Vec<(&'static str, Duration)>,
}

impl Report {
    pub fn identical(&self) -> bool {
        self.balance_differences == 0 && self.transaction_differences == 0
    }

    pub fn events_per_second(&self) -> u64 {
        let millis = u64::try_from(self.elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.events.saturating_mul(1000) / millis
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let millis = self.elapsed.as_millis();
        writeln!(
            f,
            "rebuilt {} events of {} accounts in {}.{:03} s ({} events/s): {} balances, {} transactions",
            self.events,
            self.accounts,
            millis / 1000,
            millis % 1000,
            self.events_per_second(),
            self.accounts,
            self.transactions
        )?;
        if self.identical() {
            return write!(f, "differences from the live projection: none");
        }
        writeln!(
            f,
            "differences from the live projection: {} balances, {} transactions",
            self.balance_differences, self.transaction_differences
        )?;
        for example in &self.examples {
            writeln!(f, "  {example}")?;
        }
        if self.replaced {
            write!(f, "the live projection now equals the rebuilt one")
        } else {
            write!(f, "--check: the live projection was left as it is")
        }
    }
}

/// Bytes of COPY data gathered before they are sent.
const COPY_CHUNK: usize = 1 << 20;
const TXN_COLUMNS: &str =
    "event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at, applied_at";
const BALANCE_COLUMNS: &str =
    "account_id, currency, balance_minor, last_sequence, deposit_count, updated_at";
/// How many differences are described one by one.
const EXAMPLES: i64 = 10;

#[derive(Default)]
struct AccountFold {
    state: AccountState,
    updated_at: Option<DateTime<Utc>>,
    /// Events read before their predecessor (possible in the global order), by version.
    early: BTreeMap<i64, RecordedEvent>,
}

/// The in-memory fold of the whole store.
#[derive(Default)]
struct Fold {
    accounts: HashMap<AccountId, AccountFold>,
    events: u64,
    transactions: u64,
    /// COPY text rows of `transactions` not sent yet.
    copy: Vec<u8>,
}

impl Fold {
    fn push(&mut self, event: RecordedEvent) -> anyhow::Result<()> {
        self.events += 1;
        let account = match self.accounts.get_mut(&event.account_id) {
            Some(a) => a,
            None => self.accounts.entry(event.account_id.clone()).or_default(),
        };
        if event.version <= account.state.version || account.early.contains_key(&event.version) {
            bail!(
                "stream {} holds version {} twice",
                event.account_id,
                event.version
            );
        }
        if event.version > account.state.version + 1 {
            account.early.insert(event.version, event);
            return Ok(());
        }
        self.transactions += apply(account, &mut self.copy, &event);
        while let Some(next) = account.early.remove(&(account.state.version + 1)) {
            self.transactions += apply(account, &mut self.copy, &next);
        }
        Ok(())
    }

    /// Folds a page of the global order; returns the position of its last event (`after` when
    /// the page is empty).
    fn push_page(
        &mut self,
        page: Vec<(Cursor, RecordedEvent)>,
        after: Cursor,
    ) -> anyhow::Result<Cursor> {
        let mut cursor = after;
        for (at, event) in page {
            cursor = at;
            self.push(event)?;
        }
        Ok(cursor)
    }

    /// The `balances` rows of the opened accounts, as COPY text, and how many there are.
    fn balance_rows(&self) -> (Vec<u8>, u64) {
        let mut rows = Vec::with_capacity(self.accounts.len() * 64);
        let mut accounts = 0;
        for (account_id, a) in &self.accounts {
            if let Some(updated_at) = a.updated_at
                && let Some(row) = projection::balance_row(account_id, &a.state, updated_at)
            {
                copy_balance(&mut rows, &row);
                accounts += 1;
            }
        }
        (rows, accounts)
    }

    /// A stream with an event still waiting for its predecessor has a hole: the store is
    /// damaged, and no projection is written from it.
    fn ensure_complete(&self) -> anyhow::Result<()> {
        for (account_id, a) in &self.accounts {
            if let Some(version) = a.early.keys().next() {
                bail!(
                    "stream {account_id} has version {version} but no version {}: the event store is damaged",
                    a.state.version + 1
                );
            }
        }
        Ok(())
    }
}

/// Folds one event; returns 1 if it made a transaction row.
fn apply(account: &mut AccountFold, copy: &mut Vec<u8>, event: &RecordedEvent) -> u64 {
    account.state = domain::apply(std::mem::take(&mut account.state), &event.event);
    account.updated_at = Some(event.recorded_at);
    match &event.event {
        AccountEvent::Deposited(d) => {
            copy_txn(
                copy,
                &projection::txn_row(&event.account_id, d, event.recorded_at),
            );
            1
        }
        AccountEvent::Opened(_) => 0,
    }
}

/// One field of a COPY text row.
enum Field<'a> {
    Text(&'a str),
    Int(i64),
    Uuid(uuid::Uuid),
    Time(DateTime<Utc>),
}

/// Appends one row in COPY text format: tab-separated, newline-terminated, backslash escapes
/// in text.
fn copy_row(buf: &mut Vec<u8>, fields: &[Field<'_>]) {
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            buf.push(b'\t');
        }
        match field {
            Field::Text(s) => copy_text(buf, s),
            Field::Int(n) => buf.extend_from_slice(n.to_string().as_bytes()),
            Field::Uuid(id) => {
                let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
                buf.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
            }
            Field::Time(t) => {
                buf.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes())
            }
        }
    }
    buf.push(b'\n');
}

fn copy_text(buf: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => buf.extend_from_slice(b"\\\\"),
            b'\t' => buf.extend_from_slice(b"\\t"),
            b'\n' => buf.extend_from_slice(b"\\n"),
            b'\r' => buf.extend_from_slice(b"\\r"),
            _ => buf.push(b),
        }
    }
}

/// In the order of [`TXN_COLUMNS`].
fn copy_txn(buf: &mut Vec<u8>, t: &TxnRow) {
    copy_row(
        buf,
        &[
            Field::Uuid(t.event_id),
            Field::Text(t.account_id.as_str()),
            Field::Int(t.sequence),
            Field::Uuid(t.deposit_id),
            Field::Int(t.amount_minor),
            Field::Text(t.currency.code()),
            Field::Time(t.occurred_at),
            Field::Time(t.applied_at),
        ],
    );
}

/// In the order of [`BALANCE_COLUMNS`].
fn copy_balance(buf: &mut Vec<u8>, b: &BalanceRow) {
    copy_row(
        buf,
        &[
            Field::Text(b.account_id.as_str()),
            Field::Text(b.currency.code()),
            Field::Int(b.balance_minor),
            Field::Int(b.last_sequence),
            Field::Int(b.deposit_count),
            Field::Time(b.updated_at),
        ],
    );
}

fn progress_bar(options: &Options, total: u64) -> ProgressBar {
    if !options.progress {
        return ProgressBar::hidden();
    }
    // ProgressBar::new draws on stderr, and only when stderr is a terminal.
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} events ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Rebuilds the projections of the database behind `pool` (see the module docs).
pub async fn rebuild(pool: &PgPool, options: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    // The writer's session owns the temp tables and the rebuild lock; detached from the pool
    // so both end with it, whatever happens.
    let mut writer = pool
        .acquire()
        .await
        .context("connecting to the database")?
        .detach();
    let result = run(pool, &mut writer, options, started).await;
    // Released explicitly: the server ends a closed session asynchronously, and the next
    // rebuild must not find the lock still held.
    let _ = sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut writer)
        .await;
    let _ = writer.close().await;
    result
}

async fn run(
    pool: &PgPool,
    writer: &mut PgConnection,
    options: &Options,
    started: Instant,
) -> anyhow::Result<Report> {
    prepare(writer).await?;
    // An estimate for the progress bar (the tail may add a few).
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut *writer)
        .await?;
    let bar = progress_bar(options, u64::try_from(total).unwrap_or(0));
    let page_size = options.page_size.max(1);
    let mut fold = Fold::default();
    let cursor = bulk_phase(pool, writer, page_size, &mut fold, &bar).await?;
    let bulk = started.elapsed();

    let mut tx = Connection::begin(&mut *writer).await?;
    let accounts = final_phase(&mut tx, cursor, page_size, &mut fold, &bar).await?;
    let mut report = compare(&mut tx).await?;
    if !report.identical() && !options.check_only {
        replace(&mut tx).await?;
        report.replaced = true;
    }
    tx.commit().await?;
    bar.finish_and_clear();
    sqlx::raw_sql("DROP TABLE IF EXISTS rebuild_transactions, rebuild_balances")
        .execute(&mut *writer)
        .await?;
    report.events = fold.events;
    report.accounts = accounts;
    report.transactions = fold.transactions;
    report.elapsed = started.elapsed();
    report.phases = vec![
        ("read and fold", bulk),
        (
            "final (writers paused)",
            report.elapsed.saturating_sub(bulk),
        ),
    ];
    Ok(report)
}

/// Takes the rebuild lock (or fails: another rebuild is running) and creates the session's
/// empty rebuild tables.
async fn prepare(writer: &mut PgConnection) -> anyhow::Result<()> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, 0)")
        .bind(store::REBUILD_LOCK_CLASS)
        .fetch_one(&mut *writer)
        .await?;
    if !locked {
        bail!("another rebuild is running against this database");
    }
    sqlx::raw_sql(
        "SET client_min_messages = warning;
         DROP TABLE IF EXISTS rebuild_transactions, rebuild_balances;
         CREATE TEMP TABLE rebuild_transactions (LIKE transactions);
         CREATE TEMP TABLE rebuild_balances (LIKE balances);",
    )
    .execute(writer)
    .await
    .context("creating the rebuild tables")?;
    Ok(())
}

type Page = Result<Vec<(Cursor, RecordedEvent)>, StoreError>;

/// Reads the whole store in its gap-safe global order on a connection of its own, a few pages
/// ahead of the receiver; ends after the first short page or error.
fn spawn_reader(pool: PgPool, page_size: i64) -> (JoinHandle<()>, mpsc::Receiver<Page>) {
    let (pages_tx, pages_rx) = mpsc::channel::<Page>(4);
    let reader = tokio::spawn(async move {
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => {
                let _ = pages_tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut cursor = Cursor::default();
        loop {
            let page = store::read_all_page(&mut conn, cursor, page_size, true).await;
            let done = match &page {
                Ok(p) => {
                    if let Some((last, _)) = p.last() {
                        cursor = *last;
                    }
                    (p.len() as i64) < page_size
                }
                Err(_) => true,
            };
            if pages_tx.send(page).await.is_err() || done {
                return;
            }
        }
    });
    (reader, pages_rx)
}

/// Phase 1, writers running: folds the store as the reader delivers it and streams the
/// transaction rows into `rebuild_transactions`. Returns where the reader stopped.
async fn bulk_phase(
    pool: &PgPool,
    writer: &mut PgConnection,
    page_size: i64,
    fold: &mut Fold,
    bar: &ProgressBar,
) -> anyhow::Result<Cursor> {
    let (reader, mut pages) = spawn_reader(pool.clone(), page_size);
    let mut cursor = Cursor::default();
    let mut copy = writer
        .copy_in_raw(&copy_statement("rebuild_transactions", TXN_COLUMNS))
        .await?;
    while let Some(page) = pages.recv().await {
        cursor = fold.push_page(page.context("reading the event store")?, cursor)?;
        bar.set_position(fold.events);
        if fold.copy.len() >= COPY_CHUNK {
            copy.send(std::mem::take(&mut fold.copy)).await?;
        }
    }
    if !fold.copy.is_empty() {
        copy.send(std::mem::take(&mut fold.copy)).await?;
    }
    copy.finish().await?;
    reader.await.context("the store reader failed")?;
    Ok(cursor)
}

/// Phase 2, writers paused (until `tx` ends): folds the tail after `cursor`, checks every
/// stream is complete and writes the rest of `rebuild_transactions` and all of
/// `rebuild_balances`. Returns the number of balance rows.
async fn final_phase(
    tx: &mut PgConnection,
    mut cursor: Cursor,
    page_size: i64,
    fold: &mut Fold,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    sqlx::raw_sql(
        "SET LOCAL work_mem = '256MB';
         LOCK TABLE events IN SHARE MODE;",
    )
    .execute(&mut *tx)
    .await
    .context("pausing the writers of the event store")?;
    loop {
        let page = store::read_all_page(tx, cursor, page_size, false).await?;
        let done = (page.len() as i64) < page_size;
        cursor = fold.push_page(page, cursor)?;
        if done {
            break;
        }
    }
    bar.set_length(fold.events.max(bar.length().unwrap_or(0)));
    bar.set_position(fold.events);
    fold.ensure_complete()?;
    if !fold.copy.is_empty() {
        let rows = std::mem::take(&mut fold.copy);
        copy_in(tx, "rebuild_transactions", TXN_COLUMNS, rows).await?;
    }
    let (balances, accounts) = fold.balance_rows();
    copy_in(tx, "rebuild_balances", BALANCE_COLUMNS, balances).await?;
    sqlx::query("ANALYZE rebuild_transactions, rebuild_balances")
        .execute(&mut *tx)
        .await?;
    Ok(accounts)
}

fn copy_statement(table: &str, columns: &str) -> String {
    format!("COPY {table} ({columns}) FROM STDIN")
}

/// Sends COPY text `rows` into `table` in one go.
async fn copy_in(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    rows: Vec<u8>,
) -> anyhow::Result<()> {
    let mut copy = conn.copy_in_raw(&copy_statement(table, columns)).await?;
    copy.send(rows).await?;
    copy.finish().await?;
    Ok(())
}

/// Compares the rebuilt and live projections row by row in one pass each (a full join on the
/// row's identity, keeping the rows that differ in any column), into temp tables that
/// [`replace`] uses; returns counts and examples.
async fn compare(conn: &mut PgConnection) -> anyhow::Result<Report> {
    sqlx::raw_sql(
        "CREATE TEMP TABLE rebuild_txn_diff ON COMMIT DROP AS
             SELECT r.event_id AS rebuilt_id, l.event_id AS live_id,
                    coalesce(r.account_id, l.account_id) AS account_id,
                    coalesce(r.sequence, l.sequence) AS sequence,
                    CASE WHEN r.event_id IS NULL THEN NULL ELSE to_jsonb(r)::text END AS rebuilt,
                    CASE WHEN l.event_id IS NULL THEN NULL ELSE to_jsonb(l)::text END AS live
             FROM rebuild_transactions r FULL JOIN transactions l ON l.event_id = r.event_id
             WHERE (r.event_id, r.account_id, r.sequence, r.deposit_id, r.amount_minor, r.currency, r.occurred_at, r.applied_at)
                   IS DISTINCT FROM
                   (l.event_id, l.account_id, l.sequence, l.deposit_id, l.amount_minor, l.currency, l.occurred_at, l.applied_at);
         CREATE TEMP TABLE rebuild_bal_diff ON COMMIT DROP AS
             SELECT r.account_id AS rebuilt_id, l.account_id AS live_id,
                    coalesce(r.account_id, l.account_id) AS account_id,
                    CASE WHEN r.account_id IS NULL THEN NULL ELSE to_jsonb(r)::text END AS rebuilt,
                    CASE WHEN l.account_id IS NULL THEN NULL ELSE to_jsonb(l)::text END AS live
             FROM rebuild_balances r FULL JOIN balances l ON l.account_id = r.account_id
             WHERE (r.account_id, r.currency, r.balance_minor, r.last_sequence, r.deposit_count, r.updated_at)
                   IS DISTINCT FROM
                   (l.account_id, l.currency, l.balance_minor, l.last_sequence, l.deposit_count, l.updated_at);",
    )
    .execute(&mut *conn)
    .await
    .context("comparing the projections")?;
    let (balance_differences, transaction_differences): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(DISTINCT account_id) FROM rebuild_bal_diff),
                (SELECT count(*) FROM (SELECT DISTINCT account_id, sequence FROM rebuild_txn_diff) k)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let mut examples = Vec::new();
    let balances: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT account_id, max(live), max(rebuilt) FROM rebuild_bal_diff
         GROUP BY account_id ORDER BY account_id LIMIT $1",
    )
    .bind(EXAMPLES)
    .fetch_all(&mut *conn)
    .await?;
    for (account_id, live, rebuilt) in balances {
        examples.push(format!(
            "balances {account_id}: live {}, rebuilt {}",
            live.as_deref().unwrap_or("(no row)"),
            rebuilt.as_deref().unwrap_or("(no row)")
        ));
    }
    let txns: Vec<(String, i64, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT account_id, sequence, max(live), max(rebuilt) FROM rebuild_txn_diff
         GROUP BY account_id, sequence ORDER BY account_id, sequence LIMIT $1",
    )
    .bind(EXAMPLES)
    .fetch_all(&mut *conn)
    .await?;
    for (account_id, sequence, live, rebuilt) in txns {
        examples.push(format!(
            "transactions {account_id} #{sequence}: live {}, rebuilt {}",
            live.as_deref().unwrap_or("(no row)"),
            rebuilt.as_deref().unwrap_or("(no row)")
        ));
    }
    Ok(Report {
        balance_differences: u64::try_from(balance_differences).unwrap_or(0),
        transaction_differences: u64::try_from(transaction_differences).unwrap_or(0),
        examples,
        ..Report::default()
    })
}

/// Makes the live projections equal to the rebuilt ones, touching only the differing rows.
async fn replace(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DELETE FROM transactions t USING rebuild_txn_diff d WHERE t.event_id = d.live_id;
         INSERT INTO transactions ({TXN_COLUMNS})
             SELECT {TXN_COLUMNS} FROM rebuild_transactions r
             WHERE r.event_id IN (SELECT rebuilt_id FROM rebuild_txn_diff WHERE rebuilt_id IS NOT NULL);
         DELETE FROM balances b USING rebuild_bal_diff d WHERE b.account_id = d.live_id;
         INSERT INTO balances ({BALANCE_COLUMNS})
             SELECT {BALANCE_COLUMNS} FROM rebuild_balances r
             WHERE r.account_id IN (SELECT rebuilt_id FROM rebuild_bal_diff WHERE rebuilt_id IS NOT NULL);"
    )))
    .execute(conn)
    .await
    .context("replacing the differing projection rows")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use eventbank_events::Currency;

    #[test]
    fn copy_rows_are_tab_separated_escaped_text_in_column_order() {
        let at = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.000006Z")
            .unwrap()
            .with_timezone(&Utc);
        let row = TxnRow {
            event_id: uuid::Uuid::from_u128(1),
            account_id: AccountId::parse("ACC-0001").unwrap(),
            sequence: 7,
            deposit_id: uuid::Uuid::from_u128(2),
            amount_minor: -5,
            currency: Currency::parse("USD").unwrap(),
            occurred_at: at,
            applied_at: at,
        };
        let mut buf = Vec::new();
        copy_txn(&mut buf, &row);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "00000000-0000-0000-0000-000000000001\tACC-0001\t7\t00000000-0000-0000-0000-000000000002\t-5\tUSD\t2026-01-02T03:04:05.000006Z\t2026-01-02T03:04:05.000006Z\n"
        );
        let mut buf = Vec::new();
        copy_row(&mut buf, &[Field::Text("a\\b\tc\nd\re"), Field::Int(0)]);
        assert_eq!(buf, b"a\\\\b\\tc\\nd\\re\t0\n");
    }
}
