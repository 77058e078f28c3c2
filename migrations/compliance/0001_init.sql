-- compliance: an append-only, tamper-evident audit log of every deposit, and the alerts the
-- reporting rules raise.

-- The consumer runtime's dedup table: the runtime inserts each event id here in the same
-- transaction that applies the event, so a redelivered event changes nothing.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- One entry per event, in a single global chain: hash = SHA-256(prev_hash || entry), where
-- entry is the canonical text the hash was computed over, stored byte for byte (text, not
-- jsonb: jsonb would re-order and re-space it and the hash could no longer be checked).
-- position 1, 2, 3, ... without gaps; the first entry's prev_hash is 32 zero bytes.
CREATE TABLE audit_log (
    position    bigint PRIMARY KEY CHECK (position >= 1),
    event_id    uuid NOT NULL UNIQUE,
    account_id  text NOT NULL,
    entry       text NOT NULL,
    prev_hash   bytea NOT NULL CHECK (length(prev_hash) = 32),
    hash        bytea NOT NULL CHECK (length(hash) = 32),
    recorded_at timestamptz NOT NULL
);
CREATE INDEX audit_log_account ON audit_log (account_id, position);

-- The end of the chain: the position and hash the next entry links to. One row, locked by the
-- handler (SELECT ... FOR UPDATE) so that appends are serialised across partitions.
CREATE TABLE chain_head (
    id       int PRIMARY KEY CHECK (id = 1),
    position bigint NOT NULL,
    hash     bytea NOT NULL CHECK (length(hash) = 32)
);
INSERT INTO chain_head (id, position, hash) VALUES (1, 0, decode(repeat('00', 32), 'hex'));

-- Least privilege, first layer: no role may rewrite the log. Nobody gets it through PUBLIC,
-- and the role running this migration (which owns the table: in compose and scripts/up, the
-- service's own role) gives up its own UPDATE, DELETE and TRUNCATE, so the running service can
-- INSERT and SELECT only. Getting them back takes a deliberate GRANT. (A superuser bypasses
-- privileges, hence the second layer below.) chain_head is updated, never deleted.
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM CURRENT_USER;
REVOKE DELETE, TRUNCATE ON chain_head FROM PUBLIC;
REVOKE DELETE, TRUNCATE ON chain_head FROM CURRENT_USER;

-- Second layer: even a role that holds the privileges (a superuser, the owner after a GRANT)
-- cannot rewrite history through ordinary SQL: UPDATE, DELETE and TRUNCATE raise an error. (A superuser or the owner can still ALTER TABLE ... DISABLE TRIGGER; that is
-- what /compliance/verify exists to detect.)
CREATE FUNCTION audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_or_delete
    BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- The deposits the rules look at (amounts and times per account), indexed for the 24 h window.
CREATE TABLE deposits (
    event_id     uuid PRIMARY KEY,
    deposit_id   uuid NOT NULL,
    account_id   text NOT NULL,
    amount_minor bigint NOT NULL CHECK (amount_minor > 0),
    currency     text NOT NULL,
    occurred_at  timestamptz NOT NULL
);
CREATE INDEX deposits_account_time ON deposits (account_id, occurred_at);

-- Alerts raised by the rules. amount_minor is in minor units of `currency`: the deposit for a
-- CTR, the window's total for structuring. A CTR's window is the deposit's instant. One alert
-- of a kind per triggering event (the unique key makes re-applying an event a no-op).
CREATE TABLE alerts (
    id           bigserial PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('ctr', 'structuring')),
    account_id   text NOT NULL,
    event_id     uuid NOT NULL,
    amount_minor bigint NOT NULL,
    currency     text NOT NULL,
    window_start timestamptz NOT NULL,
    window_end   timestamptz NOT NULL CHECK (window_end >= window_start),
    details      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alerts_one_per_kind_and_event UNIQUE (kind, event_id)
);
CREATE INDEX alerts_account ON alerts (account_id, kind, window_end);
