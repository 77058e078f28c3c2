//! Synthetic stores for the rebuild test and benchmark: many events written set-based with
//! `generate_series` (seconds for a million), and live projections derived from them by SQL,
//! an implementation independent of the Rust fold that the rebuild must agree with.
//!
//! Account ids are `SYN-0000001`...; deposits of all accounts interleave (round by round), as
//! live traffic does, so a replay cannot rely on a stream's events lying together.

use sqlx::PgPool;

/// Writes `accounts` streams of `1 + deposits_per_account` events each (AccountOpened, then
/// Deposited 1..n), and the matching `balances` and `transactions` rows. Returns the number of
/// events written.
pub async fn generate(
    pool: &PgPool,
    accounts: i64,
    deposits_per_account: i64,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    // Business times one minute apart per round, recorded one second later; three currencies.
    sqlx::query(
        "INSERT INTO events (account_id, version, event_type, schema_version, payload, occurred_at, recorded_at)
         SELECT 'SYN-' || lpad(a::text, 7, '0'), 1, 'AccountOpened', 2,
                jsonb_build_object(
                    'currency', (ARRAY['USD','EUR','JPY'])[1 + a % 3],
                    'holder_name', 'Holder ' || a,
                    'email', 'holder' || a || '@example.com',
                    'opened_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
                    'source_event_id', md5('e' || a || ':1')::uuid),
                t, t + interval '1 second'
         FROM generate_series(1, $1::bigint) AS a,
              LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + a * interval '1 millisecond' AS t) AS x",
    )
    .bind(accounts)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO events (account_id, version, event_type, schema_version, payload, occurred_at, recorded_at)
         SELECT 'SYN-' || lpad(a::text, 7, '0'), s + 1, 'Deposited', 2,
                jsonb_build_object(
                    'event_id', md5('e' || a || ':' || s)::uuid,
                    'sequence', s,
                    'deposit_id', md5('d' || a || ':' || s)::uuid,
                    'amount_minor', 1 + (a * 7919 + s * 104729) % 100000,
                    'currency', (ARRAY['USD','EUR','JPY'])[1 + a % 3],
                    'occurred_at', to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')),
                t, t + interval '1 second'
         FROM generate_series(1, $2::bigint) AS s,
              generate_series(1, $1::bigint) AS a,
              LATERAL (SELECT timestamptz '2026-01-01 00:00:00+00' + s * interval '1 minute'
                              + a * interval '1 millisecond' AS t) AS x
         ORDER BY s, a",
    )
    .bind(accounts)
    .bind(deposits_per_account)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO transactions (event_id, account_id, sequence, deposit_id, amount_minor, currency, occurred_at, applied_at)
         SELECT (payload->>'event_id')::uuid, account_id, (payload->>'sequence')::bigint,
                (payload->>'deposit_id')::uuid, (payload->>'amount_minor')::bigint,
                payload->>'currency', occurred_at, recorded_at
         FROM events WHERE event_type = 'Deposited' AND account_id LIKE 'SYN-%'",
    )
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO balances (account_id, currency, balance_minor, last_sequence, deposit_count, updated_at)
         SELECT e.account_id, e.payload->>'currency', coalesce(t.total, 0), coalesce(t.last, 0),
                coalesce(t.n, 0), coalesce(t.updated_at, e.recorded_at)
         FROM events e
         LEFT JOIN (SELECT account_id, sum(amount_minor)::bigint AS total, max(sequence) AS last,
                           count(*) AS n, max(applied_at) AS updated_at
                    FROM transactions WHERE account_id LIKE 'SYN-%' GROUP BY account_id) t
           ON t.account_id = e.account_id
         WHERE e.event_type = 'AccountOpened' AND e.account_id LIKE 'SYN-%'",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    sqlx::query("ANALYZE events, transactions, balances")
        .execute(pool)
        .await?;
    Ok(u64::try_from(accounts * (1 + deposits_per_account)).unwrap_or(0))
}
