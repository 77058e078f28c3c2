-- deposit: the account directory, accepted deposits, the transactional outbox and idempotency keys.

-- The directory lets a deposit be validated synchronously and lets the event carry the
-- customer's data (event-carried state transfer). last_sequence is the per-account sequence
-- counter: incrementing it row-locks the account, which serialises deposits of one account and
-- so makes outbox id order equal to sequence order within an account.
CREATE TABLE accounts (
    account_id    text PRIMARY KEY CHECK (account_id ~ '^[A-Z0-9-]{3,32}$'),
    holder_name   text NOT NULL CHECK (length(holder_name) BETWEEN 1 AND 200),
    email         text NOT NULL CHECK (length(email) BETWEEN 3 AND 254),
    currency      text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status        text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    last_sequence bigint NOT NULL DEFAULT 0 CHECK (last_sequence >= 0),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Numbers for accounts opened through POST /accounts (demo accounts use 0001..0009).
CREATE SEQUENCE account_number_seq START 1000;

CREATE TABLE deposits (
    deposit_id   uuid PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    account_id   text NOT NULL REFERENCES accounts (account_id),
    sequence     bigint NOT NULL CHECK (sequence >= 1),
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     text NOT NULL,
    created_at   timestamptz NOT NULL,
    CONSTRAINT deposits_account_sequence_unique UNIQUE (account_id, sequence)
);

-- The outbox: written in the same transaction as the deposit, published by the relay in id
-- order, marked published only after the broker's confirm. payload is the exact message body.
CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    account_id   text NOT NULL,
    sequence     bigint NOT NULL,
    traceparent  text,
    payload      bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

-- Wakes the relay (LISTEN outbox) when a transaction that wrote outbox rows commits;
-- notifications are delivered only on commit, so the relay never wakes for rolled-back work.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END;
$$;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- Idempotency-Key: the first request's normalised body and its response. A retry with the
-- same key and body gets the same response; another body under the same key is refused.
CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  text NOT NULL,
    status_code  int NOT NULL,
    response     jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
