-- interest: its own copy of each account's daily closing balances, built only from the
-- DepositCompleted events it receives (it never asks another service), and the interest
-- accrued on them day by day. Money is integer minor units; rates are exact decimals.

-- The consumer runtime's dedup table: the runtime inserts each event id here in the same
-- transaction that applies the event, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- One row per account seen in an event. The first deposit fixes the currency: an account has
-- one currency, and amounts in different currencies must never be added together. The handler
-- locks these rows, which serialises concurrent work on one account.
CREATE TABLE accounts (
    account_id text PRIMARY KEY,
    currency   text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Every deposit received, with the UTC calendar day it counts on. The unique event_id and
-- deposit_id make the handler idempotent by itself, whatever processed_events says.
CREATE TABLE deposits (
    event_id     uuid PRIMARY KEY,
    deposit_id   uuid NOT NULL UNIQUE,
    account_id   text NOT NULL REFERENCES accounts (account_id),
    sequence     bigint NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    business_day date NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    -- The business day is the UTC date of occurred_at, whatever the session time zone.
    CONSTRAINT deposits_business_day_is_utc_date
        CHECK (business_day = (occurred_at AT TIME ZONE 'UTC')::date)
);
CREATE INDEX deposits_account_day ON deposits (account_id, business_day);

-- Closing balance per account and day. Sparse: a row exists for each business day on which the
-- account received a deposit; a day without a row closes at the balance of the latest earlier
-- row. A deposit dated D creates the row for D (if missing) from the previous closing balance,
-- then is added to every row with day >= D, so a back-dated deposit corrects the later days.
CREATE TABLE daily_balances (
    account_id            text NOT NULL REFERENCES accounts (account_id),
    day                   date NOT NULL,
    currency              text NOT NULL,
    closing_balance_minor bigint NOT NULL CHECK (closing_balance_minor >= 0),
    PRIMARY KEY (account_id, day)
);

-- The current balance of each account is the latest closing balance.
CREATE VIEW accounts_balance AS
SELECT DISTINCT ON (account_id)
       account_id,
       currency,
       closing_balance_minor AS balance_minor,
       day                   AS as_of_day
  FROM daily_balances
 ORDER BY account_id, day DESC;

-- Annual interest rate per currency, in percent, as an exact decimal (numeric, never float),
-- with a history: the rate of a day is the row with the latest effective_from <= that day.
-- A currency without a row earns 0. Four decimals of a percent = whole parts per million,
-- which is what the accrual engine computes with.
CREATE TABLE rates (
    currency            text NOT NULL,
    effective_from      date NOT NULL,
    annual_rate_percent numeric(7, 4) NOT NULL CHECK (annual_rate_percent >= 0),
    PRIMARY KEY (currency, effective_from)
);
INSERT INTO rates (currency, effective_from, annual_rate_percent) VALUES
    ('USD', DATE '1970-01-01', 2.5000),
    ('EUR', DATE '1970-01-01', 1.7500),
    ('GBP', DATE '1970-01-01', 3.0000);

-- Interest accrued per account and day (Actual/365), dense from the account's first business
-- day to the latest day known. A deposit dated D recomputes every row from D forward (upsert,
-- so recomputing is idempotent per (account, day)). The row keeps the rate it was computed
-- with. accrued_micro is the day's exact accrual in millionths of a minor unit, rounded half-even
-- for display; totals are computed from the exact values (balance_minor x rate), and rounding to
-- minor units happens only when interest is posted.
CREATE TABLE daily_accruals (
    account_id          text NOT NULL REFERENCES accounts (account_id),
    day                 date NOT NULL,
    currency            text NOT NULL,
    annual_rate_percent numeric(7, 4) NOT NULL,
    balance_minor       bigint NOT NULL,
    accrued_micro       bigint NOT NULL,
    computed_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, day)
);
