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

/// Creates the accounts not seen before, with the currency of their first deposit.
pub async fn ensure_accounts(
    conn: &mut PgConnection,
    accounts: &[AccountId],
    currencies: &[String],
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO accounts (account_id, currency) \
         SELECT * FROM UNNEST($1::text[], $2::text[]) \
         ON CONFLICT (account_id) DO NOTHING",
    )
    .bind(account_ids::texts(accounts))
    .bind(currencies)
    .execute(conn)
    .await?;
    Ok(())
}

/// Locks the accounts' rows for the rest of the transaction (in id order, so two transactions
/// never wait on each other in a cycle) and returns each account's currency.
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

/// Runs a query answering `(account_id, day)` rows for the accounts bound as `$1`.
async fn day_per_account(
    conn: &mut PgConnection,
    sql: &'static str,
    accounts: &[AccountId],
) -> sqlx::Result<HashMap<AccountId, NaiveDate>> {
    let rows: Vec<(String, NaiveDate)> = sqlx::query_as(sql)
        .bind(account_ids::texts(accounts))
        .fetch_all(conn)
        .await?;
    by_account(rows)
}

/// The last day with a stored accrual, per account (absent for an account with none yet).
pub async fn accrual_horizons(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<HashMap<AccountId, NaiveDate>> {
    day_per_account(
        conn,
        // One index probe per account (newest day first) rather than aggregating every day.
        "SELECT a.account_id, h.day FROM UNNEST($1::text[]) AS a(account_id) \
           CROSS JOIN LATERAL (SELECT day FROM daily_accruals \
                                WHERE account_id = a.account_id \
                                ORDER BY day DESC LIMIT 1) h",
        accounts,
    )
    .await
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

/// Applies the batch's deposits to the daily closing balances, in two set-based statements:
/// 1. the row of each deposit's day is created where missing, opening at the previous closing
///    balance (latest day before it, or 0); the sub-select sees the table as it was before
///    this statement, so a batch with several new days per account gets each from the old state;
/// 2. every row on or after a deposit's day gets the deposit added: a back-dated deposit
///    corrects all the later days. Row `R` gains the sum of the batch's deltas dated `<= R.day`.
///
/// `deltas` must hold at most one entry per (account, day).
pub async fn apply_deltas(conn: &mut PgConnection, deltas: &[DayDelta]) -> sqlx::Result<()> {
    let accounts = account_ids::texts(deltas.iter().map(|d| &d.account_id));
    let days: Vec<NaiveDate> = deltas.iter().map(|d| d.day).collect();
    let currencies: Vec<String> = deltas.iter().map(|d| d.currency.clone()).collect();
    let amounts: Vec<i64> = deltas.iter().map(|d| d.amount_minor).collect();
    sqlx::query(
        "INSERT INTO daily_balances (account_id, day, currency, closing_balance_minor) \
         SELECT d.account_id, d.day, d.currency, \
                COALESCE((SELECT b.closing_balance_minor FROM daily_balances b \
                           WHERE b.account_id = d.account_id AND b.day < d.day \
                           ORDER BY b.day DESC LIMIT 1), 0) \
           FROM UNNEST($1::text[], $2::date[], $3::text[]) AS d(account_id, day, currency) \
         ON CONFLICT (account_id, day) DO NOTHING",
    )
    .bind(&accounts)
    .bind(&days)
    .bind(&currencies)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE daily_balances b \
            SET closing_balance_minor = b.closing_balance_minor + s.added \
           FROM (SELECT r.account_id, r.day, sum(d.amount)::bigint AS added \
                   FROM daily_balances r \
                   JOIN UNNEST($1::text[], $2::date[], $3::bigint[]) AS d(account_id, day, amount) \
                     ON d.account_id = r.account_id AND d.day <= r.day \
                  GROUP BY r.account_id, r.day) s \
          WHERE b.account_id = s.account_id AND b.day = s.day",
    )
    .bind(&accounts)
    .bind(&days)
    .bind(&amounts)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// For each `(account, from_day)`: the closing-balance rows from `from_day` on, preceded by the
/// latest row before it (which opens the range), in day order.
pub async fn balances_from(
    conn: &mut PgConnection,
    from_days: &[(AccountId, NaiveDate)],
) -> sqlx::Result<HashMap<AccountId, Vec<ClosingBalance>>> {
    let accounts = account_ids::texts(from_days.iter().map(|(a, _)| a));
    let days: Vec<NaiveDate> = from_days.iter().map(|(_, d)| *d).collect();
    let rows: Vec<(String, NaiveDate, i64)> = sqlx::query_as(
        "SELECT f.account_id, b.day, b.closing_balance_minor \
           FROM UNNEST($1::text[], $2::date[]) AS f(account_id, from_day) \
           CROSS JOIN LATERAL ( \
                 (SELECT day, closing_balance_minor FROM daily_balances \
                   WHERE account_id = f.account_id AND day < f.from_day \
                   ORDER BY day DESC LIMIT 1) \
                 UNION ALL \
                 (SELECT day, closing_balance_minor FROM daily_balances \
                   WHERE account_id = f.account_id AND day >= f.from_day) \
           ) b \
          ORDER BY f.account_id, b.day",
    )
    .bind(accounts)
    .bind(days)
    .fetch_all(conn)
    .await?;
    let mut out: HashMap<AccountId, Vec<ClosingBalance>> = HashMap::new();
    for (account_id, day, balance_minor) in rows {
        out.entry(account_ids::decode(account_id)?)
            .or_default()
            .push(ClosingBalance { day, balance_minor });
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

/// The first business day (first closing-balance row) per account.
pub async fn first_days(
    conn: &mut PgConnection,
    accounts: &[AccountId],
) -> sqlx::Result<HashMap<AccountId, NaiveDate>> {
    day_per_account(
        conn,
        "SELECT a.account_id, f.day FROM UNNEST($1::text[]) AS a(account_id) \
           CROSS JOIN LATERAL (SELECT day FROM daily_balances \
                                WHERE account_id = a.account_id \
                                ORDER BY day LIMIT 1) f",
        accounts,
    )
    .await
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
