-- account: the balance of record. processed_events is the consumer runtime's dedup table.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Read model: one row per account. last_sequence is the highest per-account sequence applied;
-- events apply strictly in sequence order (see pending_events).
CREATE TABLE balances (
    account_id    text PRIMARY KEY,
    currency      text NOT NULL,
    balance_minor bigint NOT NULL,
    last_sequence bigint NOT NULL,
    deposit_count bigint NOT NULL,
    updated_at    timestamptz NOT NULL
);

CREATE TABLE transactions (
    event_id     uuid PRIMARY KEY,
    account_id   text NOT NULL,
    sequence     bigint NOT NULL,
    deposit_id   uuid NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    applied_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT transactions_account_sequence_unique UNIQUE (account_id, sequence)
);

-- Events that arrived before their predecessor (sequence > last + 1): parked here and applied
-- as soon as the gap fills.
CREATE TABLE pending_events (
    account_id   text NOT NULL,
    sequence     bigint NOT NULL,
    event_id     uuid NOT NULL,
    deposit_id   uuid NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, sequence)
);
