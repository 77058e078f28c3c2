//! The SQL of the interest service, in small functions taking a connection (or a transaction).
//!
//! Writes are set-based: one statement per step for the whole batch (arrays bound and expanded
//! with `UNNEST`), so a batch costs a few round trips whatever its size.

use crate::accrual::{AnnualRate, ClosingBalance, DayAccrual, RateSchedule};
use chrono::{DateTime, NaiveDate, Utc};
use eventbank_events::AccountId;
use eventbank_runtime::account_ids;
use sqlx::PgConnection;
use std::collections::HashMap;
use uuid::Uuid;

/// Creates the accounts not seen before, with the currency of their first deposit, locks all
/// of them for the rest of the transaction (in id order, so two transactions never wait on
/// each other in a cycle), and returns each account's currency, in one statement.
///
/// `DO UPDATE` with the row's own currency changes nothing but locks the row as `FOR UPDATE`
/// would, and returns the stored currency, not the one asked for: an account keeps the
/// currency of its first deposit. The later statements, each with a snapshot of its own, see
/// everything committed before the lock was granted.
pub async fn create_and_lock_accounts(
    conn: &mut PgConnection,
    accounts: &[AccountId],
    currencies: &[String],
) -> sqlx::Result<HashMap<AccountId, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "INSERT INTO accounts AS a (account_id, currency) \
         SELECT * FROM UNNEST($1::text[], $2::text[]) AS k(account_id, currency) \
          ORDER BY k.account_id \
         ON CONFLICT (account_id) DO UPDATE SET currency = a.currency \
         RETURNING a.account_id, a.currency",
    )
    .bind(account_ids::texts(accounts))
    .bind(currencies)
    .fetch_all(conn)
    .await?;
    by_account(rows)
}

/// Locks existing accounts' rows for the rest of the transaction (in id order, see
/// [`create_and_lock_accounts`]) and returns each one's currency.
pub async fn lock_accounts(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<HashMap<AccountId, String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT account_id, currency FROM accounts WHERE account_id = ANY($1) \
         ORDER BY account_id FOR UPDATE",
    )
    .bind(account_ids::texts(accounts))
    .fetch_all(conn)
    .await?;
    by_account(rows)
}

/// `(account_id, value)` rows as a map by account.
fn by_account<V>(rows: Vec<(String, V)>) -> sqlx::Result<HashMap<AccountId, V>> {
    rows.into_iter()
        .map(|(account_id, value)| Ok((account_ids::decode(account_id)?, value)))
        .collect()
}

/// A deposit as stored, with its business day.
#[derive(Debug, Clone)]
pub struct NewDeposit {
    pub event_id: Uuid,
    pub deposit_id: Uuid,
    pub account_id: AccountId,
    pub sequence: i64,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
    pub business_day: NaiveDate,
}

/// Inserts the deposits and returns the event ids that were new. An event (or deposit) already
/// stored is skipped, which keeps the handler idempotent on its own.
pub async fn insert_deposits(
    conn: &mut PgConnection,
    deposits: &[NewDeposit],
) -> sqlx::Result<Vec<Uuid>> {
    let event_ids: Vec<Uuid> = deposits.iter().map(|d| d.event_id).collect();
    let deposit_ids: Vec<Uuid> = deposits.iter().map(|d| d.deposit_id).collect();
    let accounts = account_ids::texts(deposits.iter().map(|d| &d.account_id));
    let sequences: Vec<i64> = deposits.iter().map(|d| d.sequence).collect();
    let amounts: Vec<i64> = deposits.iter().map(|d| d.amount_minor).collect();
    let currencies: Vec<String> = deposits.iter().map(|d| d.currency.clone()).collect();
    let occurred: Vec<DateTime<Utc>> = deposits.iter().map(|d| d.occurred_at).collect();
    let days: Vec<NaiveDate> = deposits.iter().map(|d| d.business_day).collect();
    // No conflict target: a repeated event id or a repeated deposit id are both "already here".
    sqlx::query_scalar(
        "INSERT INTO deposits (event_id, deposit_id, account_id, sequence, amount_minor, \
                               currency, occurred_at, business_day) \
         SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[], \
                              $6::text[], $7::timestamptz[], $8::date[]) \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(event_ids)
    .bind(deposit_ids)
    .bind(accounts)
    .bind(sequences)
    .bind(amounts)
    .bind(currencies)
    .bind(occurred)
    .bind(days)
    .fetch_all(conn)
    .await
}

/// The amount added to one account on one business day by the current batch.
#[derive(Debug, Clone)]
pub struct DayDelta {
    pub account_id: AccountId,
    pub day: NaiveDate,
    pub currency: String,
    pub amount_minor: i64,
}

/// Applies the batch's deposits to the daily closing balances in one set-based upsert. Per
/// account, the rows it writes are the deposits' days plus the existing rows after the earliest
/// of them (a back-dated deposit corrects every later day), and nothing else: a deposit on the
/// account's latest day writes one row whatever the account's history. Each written row closes
/// at the balance stored for its day (or, for a new day, the latest earlier one, or 0) plus the
/// batch's deltas dated on or before it. The sub-selects see the table as it was before this
/// statement, so several new days of one account in a batch all open from the old state.
///
/// Every read is an index probe or range scan per account: the range scan is behind `OFFSET 0`
/// so the planner cannot flatten it into a join it might answer with a scan of the whole table.
///
/// `deltas` must hold at most one entry per (account, day).
pub async fn apply_deltas(conn: &mut PgConnection, deltas: &[DayDelta]) -> sqlx::Result<()> {
    let accounts = account_ids::texts(deltas.iter().map(|d| &d.account_id));
    let days: Vec<NaiveDate> = deltas.iter().map(|d| d.day).collect();
    let currencies: Vec<String> = deltas.iter().map(|d| d.currency.clone()).collect();
    let amounts: Vec<i64> = deltas.iter().map(|d| d.amount_minor).collect();
    sqlx::query(
        "WITH d AS (SELECT * FROM UNNEST($1::text[], $2::date[], $3::text[], $4::bigint[]) \
                      AS d(account_id, day, currency, amount)), \
              later AS (SELECT f.account_id, r.day, r.currency, 0::bigint AS amount \
                          FROM (SELECT account_id, min(day) AS from_day FROM d \
                                 GROUP BY account_id) f \
                         CROSS JOIN LATERAL (SELECT day, currency FROM daily_balances \
                                              WHERE account_id = f.account_id \
                                                AND day > f.from_day OFFSET 0) r), \
              touched AS (SELECT account_id, day, min(currency) AS currency, \
                                 sum(amount) AS amount \
                            FROM (SELECT * FROM d UNION ALL SELECT * FROM later) x \
                           GROUP BY account_id, day) \
         INSERT INTO daily_balances (account_id, day, currency, closing_balance_minor) \
         SELECT t.account_id, t.day, t.currency, \
                COALESCE(o.closing_balance_minor, 0) \
                  + sum(t.amount) OVER (PARTITION BY t.account_id ORDER BY t.day) \
           FROM touched t \
           LEFT JOIN LATERAL (SELECT b.closing_balance_minor FROM daily_balances b \
                               WHERE b.account_id = t.account_id AND b.day <= t.day \
                               ORDER BY b.day DESC LIMIT 1) o ON true \
         ON CONFLICT (account_id, day) \
            DO UPDATE SET closing_balance_minor = EXCLUDED.closing_balance_minor",
    )
    .bind(accounts)
    .bind(days)
    .bind(currencies)
    .bind(amounts)
    .execute(conn)
    .await?;
    Ok(())
}

/// What (re)computing one account's accruals needs, read under the account's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccrualInputs {
    /// The last day with a stored accrual (absent for an account with none yet).
    pub horizon: Option<NaiveDate>,
    /// The first day to compute: the earliest changed day, or the day after the horizon if
    /// that is earlier (accruals stay dense), or the first business day when neither is known.
    /// Absent only for an account without any closing balance.
    pub from: Option<NaiveDate>,
    /// The closing-balance rows from `from` on, preceded by the latest row before it, in day
    /// order.
    pub balances: Vec<ClosingBalance>,
    /// The account currency's rates, from the one in force on `from` on: earlier entries
    /// cannot apply to any day computed.
    pub schedule: RateSchedule,
}

/// One account whose accruals are to be (re)computed.
#[derive(Debug, Clone)]
pub struct AccrualRequest {
    pub account_id: AccountId,
    pub currency: String,
    /// The earliest day whose closing balance changed, if any.
    pub changed_from: Option<NaiveDate>,
}

/// The horizon, first day, balances and rates of every requested account, in one statement
/// whose reads are index probes per account: O(1) rows when nothing after the changed day is
/// stored, whatever the account's history.
pub async fn accrual_inputs(
    conn: &mut PgConnection,
    requests: &[AccrualRequest],
) -> anyhow::Result<HashMap<AccountId, AccrualInputs>> {
    let accounts = account_ids::texts(requests.iter().map(|r| &r.account_id));
    let changed: Vec<Option<NaiveDate>> = requests.iter().map(|r| r.changed_from).collect();
    let currencies: Vec<String> = requests.iter().map(|r| r.currency.clone()).collect();
    type Row = (
        String,
        Option<NaiveDate>,
        Option<NaiveDate>,
        Vec<NaiveDate>,
        Vec<i64>,
        Vec<NaiveDate>,
        Vec<i64>,
    );
    // numeric(7,4) percent x 10,000 is an integer exactly: the rate in parts per million.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT f.account_id, h.day, s.from_day, \
                COALESCE(bal.days, '{}'), COALESCE(bal.balances, '{}'), \
                COALESCE(rt.days, '{}'), COALESCE(rt.ppms, '{}') \
           FROM UNNEST($1::text[], $2::date[], $3::text[]) AS f(account_id, changed_from, currency) \
           LEFT JOIN LATERAL (SELECT day FROM daily_accruals WHERE account_id = f.account_id \
                               ORDER BY day DESC LIMIT 1) h ON true \
          CROSS JOIN LATERAL (SELECT COALESCE(LEAST(f.changed_from, h.day + 1), \
                                              (SELECT min(day) FROM daily_balances \
                                                WHERE account_id = f.account_id)) \
                                     AS from_day) s \
          CROSS JOIN LATERAL ( \
                SELECT array_agg(b.day ORDER BY b.day) AS days, \
                       array_agg(b.closing_balance_minor ORDER BY b.day) AS balances \
                  FROM ((SELECT day, closing_balance_minor FROM daily_balances \
                          WHERE account_id = f.account_id AND day < s.from_day \
                          ORDER BY day DESC LIMIT 1) \
                        UNION ALL \
                        (SELECT day, closing_balance_minor FROM daily_balances \
                          WHERE account_id = f.account_id AND day >= s.from_day)) b) bal \
          CROSS JOIN LATERAL ( \
                SELECT array_agg(r.effective_from ORDER BY r.effective_from) AS days, \
                       array_agg((r.annual_rate_percent * 10000)::bigint \
                                 ORDER BY r.effective_from) AS ppms \
                  FROM rates r \
                 WHERE r.currency = f.currency \
                   AND r.effective_from >= COALESCE( \
                         (SELECT max(p.effective_from) FROM rates p \
                           WHERE p.currency = f.currency AND p.effective_from <= s.from_day), \
                         '-infinity')) rt",
    )
    .bind(accounts)
    .bind(changed)
    .bind(currencies)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for (account_id, horizon, from, balance_days, balances, rate_days, ppms) in rows {
        let account_id = account_ids::decode(account_id)?;
        let balances = balance_days
            .into_iter()
            .zip(balances)
            .map(|(day, balance_minor)| ClosingBalance { day, balance_minor })
            .collect();
        let rates = rate_days
            .into_iter()
            .zip(ppms)
            .map(|(day, ppm)| {
                AnnualRate::from_ppm(ppm)
                    .map(|rate| (day, rate))
                    .map_err(|e| anyhow::anyhow!("rate of {account_id} from {day}: {e}"))
            })
            .collect::<anyhow::Result<_>>()?;
        out.insert(
            account_id,
            AccrualInputs {
                horizon,
                from,
                balances,
                schedule: RateSchedule::new(rates),
            },
        );
    }
    Ok(out)
}

/// Every closing-balance row of one account, in day order.
pub async fn all_balances(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> sqlx::Result<Vec<ClosingBalance>> {
    let rows: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT day, closing_balance_minor FROM daily_balances WHERE account_id = $1 ORDER BY day",
    )
    .bind(account_id.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(day, balance_minor)| ClosingBalance { day, balance_minor })
        .collect())
}

/// The rate schedules of the given currencies (a currency without rates gets an empty one).
pub async fn rate_schedules(
    conn: &mut PgConnection,
    currencies: &[String],
) -> anyhow::Result<HashMap<String, RateSchedule>> {
    // numeric(7,4) percent x 10,000 is an integer exactly: the rate in parts per million.
    let rows: Vec<(String, NaiveDate, i64)> = sqlx::query_as(
        "SELECT currency, effective_from, (annual_rate_percent * 10000)::bigint \
           FROM rates WHERE currency = ANY($1) ORDER BY currency, effective_from",
    )
    .bind(currencies)
    .fetch_all(conn)
    .await?;
    let mut entries: HashMap<String, Vec<(NaiveDate, AnnualRate)>> = HashMap::new();
    for (currency, from, ppm) in rows {
        let rate = AnnualRate::from_ppm(ppm)
            .map_err(|e| anyhow::anyhow!("rate of {currency} from {from}: {e}"))?;
        entries.entry(currency).or_default().push((from, rate));
    }
    Ok(currencies
        .iter()
        .map(|c| {
            let schedule = RateSchedule::new(entries.remove(c).unwrap_or_default());
            (c.clone(), schedule)
        })
        .collect())
}

/// One stored day of accrual.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccrualRow {
    pub account_id: AccountId,
    pub day: NaiveDate,
    pub currency: String,
    pub rate: AnnualRate,
    pub balance_minor: i64,
    pub accrued_micro: i64,
}

/// A day's interest that does not fit the stored bigint of micro-minor units.
#[derive(Debug, thiserror::Error)]
#[error("a day's interest exceeds a 64-bit micro-minor amount")]
pub struct InterestTooLarge;

impl AccrualRow {
    /// The rows of one account's accrued days, each day's interest in whole micro-minor units.
    pub fn from_days(
        account_id: &AccountId,
        currency: &str,
        days: Vec<DayAccrual>,
    ) -> Result<Vec<Self>, InterestTooLarge> {
        days.into_iter()
            .map(|day| {
                Ok(AccrualRow {
                    account_id: account_id.clone(),
                    day: day.day,
                    currency: currency.to_owned(),
                    rate: day.rate,
                    balance_minor: day.balance_minor,
                    accrued_micro: i64::try_from(day.interest.micro())
                        .map_err(|_| InterestTooLarge)?,
                })
            })
            .collect()
    }
}

/// Writes (or rewrites) accrual days: recomputing a day replaces it, so recomputation is
/// idempotent per (account, day).
pub async fn upsert_accruals(conn: &mut PgConnection, rows: &[AccrualRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let accounts = account_ids::texts(rows.iter().map(|r| &r.account_id));
    let days: Vec<NaiveDate> = rows.iter().map(|r| r.day).collect();
    let currencies: Vec<String> = rows.iter().map(|r| r.currency.clone()).collect();
    let ppms: Vec<i64> = rows.iter().map(|r| r.rate.ppm()).collect();
    let balances: Vec<i64> = rows.iter().map(|r| r.balance_minor).collect();
    let accrued: Vec<i64> = rows.iter().map(|r| r.accrued_micro).collect();
    sqlx::query(
        "INSERT INTO daily_accruals (account_id, day, currency, annual_rate_percent, \
                                     balance_minor, accrued_micro) \
         SELECT a, d, c, p::numeric / 10000, b, m \
           FROM UNNEST($1::text[], $2::date[], $3::text[], $4::bigint[], $5::bigint[], \
                       $6::bigint[]) AS t(a, d, c, p, b, m) \
         ON CONFLICT (account_id, day) DO UPDATE \
            SET currency = EXCLUDED.currency, \
                annual_rate_percent = EXCLUDED.annual_rate_percent, \
                balance_minor = EXCLUDED.balance_minor, \
                accrued_micro = EXCLUDED.accrued_micro, \
                computed_at = now()",
    )
    .bind(accounts)
    .bind(days)
    .bind(currencies)
    .bind(ppms)
    .bind(balances)
    .bind(accrued)
    .execute(conn)
    .await?;
    Ok(())
}

/// Stored accrual days of one account within `[from, to]`, in day order.
pub async fn accruals_between(
    conn: &mut PgConnection,
    account_id: &AccountId,
    from: NaiveDate,
    to: NaiveDate,
) -> anyhow::Result<Vec<AccrualRow>> {
    let rows: Vec<(String, NaiveDate, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT account_id, day, currency, (annual_rate_percent * 10000)::bigint, \
                balance_minor, accrued_micro \
           FROM daily_accruals WHERE account_id = $1 AND day BETWEEN $2 AND $3 ORDER BY day",
    )
    .bind(account_id.as_str())
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await?;
    rows.into_iter()
        .map(
            |(account_id, day, currency, ppm, balance_minor, accrued_micro)| {
                Ok(AccrualRow {
                    rate: AnnualRate::from_ppm(ppm).map_err(|e| {
                        anyhow::anyhow!("stored rate of {account_id} on {day}: {e}")
                    })?,
                    account_id: account_ids::decode(account_id)?,
                    day,
                    currency,
                    balance_minor,
                    accrued_micro,
                })
            },
        )
        .collect()
}

/// What the service knows about one account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountSummary {
    #[sqlx(try_from = "String")]
    pub account_id: AccountId,
    pub currency: String,
    /// Latest closing balance (the current balance).
    pub balance_minor: i64,
    /// The day of the latest closing balance.
    pub as_of_day: NaiveDate,
    /// The first business day with a deposit.
    pub first_day: NaiveDate,
    /// The last day with a stored accrual.
    pub accrued_through: Option<NaiveDate>,
}

pub async fn account_summary(
    conn: &mut PgConnection,
    account_id: &AccountId,
) -> sqlx::Result<Option<AccountSummary>> {
    sqlx::query_as(
        "SELECT v.account_id, v.currency, v.balance_minor, v.as_of_day, \
                (SELECT min(day) FROM daily_balances b WHERE b.account_id = v.account_id) \
                    AS first_day, \
                (SELECT max(day) FROM daily_accruals a WHERE a.account_id = v.account_id) \
                    AS accrued_through \
           FROM accounts_balance v WHERE v.account_id = $1",
    )
    .bind(account_id.as_str())
    .fetch_optional(conn)
    .await
}

/// Up to `limit` accounts after `after` (by id; from the first when `None`) whose stored
/// accruals end before `through` (or that have none), in id order: the end-of-day job's work
/// list, one page at a time.
pub async fn accounts_behind(
    conn: &mut PgConnection,
    after: Option<&AccountId>,
    through: NaiveDate,
    limit: i64,
) -> sqlx::Result<Vec<AccountId>> {
    let rows: Vec<String> = sqlx::query_scalar(
        // max(day) per account is one backward probe of the (account_id, day) primary key.
        "SELECT a.account_id FROM accounts a \
          WHERE a.account_id > $1 \
            AND COALESCE((SELECT max(d.day) FROM daily_accruals d \
                           WHERE d.account_id = a.account_id) < $2, true) \
          ORDER BY a.account_id LIMIT $3",
    )
    // Every id sorts after the empty text.
    .bind(after.map_or("", AccountId::as_str))
    .bind(through)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(account_ids::decode).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::accrual::ExactInterest;

    fn day(balance_minor: i64, ppm: i64) -> DayAccrual {
        let rate = AnnualRate::from_ppm(ppm).unwrap();
        DayAccrual {
            day: NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            balance_minor,
            rate,
            interest: ExactInterest::for_day(balance_minor, rate),
        }
    }

    #[test]
    fn accrued_days_become_rows_in_micro_minor_units_or_an_error_when_too_large() {
        // 36,500.00 at 1 % for one day: 1.00, 100 minor units.
        let account = AccountId::parse("ACC-0001").unwrap();
        let rows = AccrualRow::from_days(&account, "USD", vec![day(3_650_000, 10_000)]).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(
            (rows[0].account_id.as_str(), rows[0].currency.as_str()),
            ("ACC-0001", "USD")
        );
        assert_eq!(rows[0].accrued_micro, 100_000_000);
        assert!(AccrualRow::from_days(&account, "USD", vec![day(i64::MAX, 1_000_000)]).is_err());
    }
}
