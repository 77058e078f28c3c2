-- account: the event store (write side), snapshots, and a backfill of the streams from the
-- read model that 0001 kept, so an existing database keeps its history.

-- One stream per account: `AccountOpened` at version 1 (written with the first deposit), then one
-- `Deposited` per applied deposit (version = deposit sequence + 1).
--
-- - (account_id, version) is the primary key: two writers appending the same version of the
--   same stream cannot both commit; the second gets a unique violation (a conflict), never a
--   lost update.
-- - position is a global, ever-increasing number in insertion order. Insertion order is not
--   commit order (a transaction may insert position 10 and commit after another one committed
--   position 11), so a reader following the whole store never orders by position alone: it
--   orders by (txid, position) and reads only rows whose transaction id is below the oldest
--   transaction still running (pg_snapshot_xmin). Every transaction that could still commit
--   rows has txid >= that bound, so nothing can ever appear behind the reader's cursor.
-- - event_type + schema_version say how to read payload; older versions are upcast in one
--   place (services/account/src/codec.rs).
-- - occurred_at (business time, from the event) serves point-in-time queries; recorded_at is
--   when the store took it (the appending transaction's start), copied into the projections.
CREATE TABLE events (
    account_id     text        NOT NULL,
    version        bigint      NOT NULL CHECK (version >= 1),
    position       bigint      GENERATED ALWAYS AS IDENTITY,
    txid           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    event_type     text        NOT NULL,
    schema_version integer     NOT NULL CHECK (schema_version >= 1),
    payload        jsonb       NOT NULL,
    occurred_at    timestamptz NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (account_id, version)
);

-- The global order of gap-safe readers (rebuild).
CREATE INDEX events_txid_position ON events (txid, position);

-- The aggregate's state after `version` events, taken every SNAPSHOT_EVERY events. A cache:
-- loading = latest snapshot + the events after it; a snapshot whose schema_version or state
-- this code cannot read is ignored and the stream replayed instead.
-- effective_at = the latest occurred_at among the events it includes, so a point-in-time query
-- can pick the latest snapshot that lies wholly at or before its instant.
CREATE TABLE snapshots (
    account_id     text        NOT NULL,
    version        bigint      NOT NULL CHECK (version >= 1),
    schema_version integer     NOT NULL,
    state          jsonb       NOT NULL,
    effective_at   timestamptz NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, version)
);

-- Backfill: the streams that the 0001 read model implies. AccountOpened is written in its
-- version-1 shape (0001 never stored the holder), which the upcaster reads.
INSERT INTO events (account_id, version, event_type, schema_version, payload, occurred_at, recorded_at)
SELECT b.account_id, 1, 'AccountOpened', 1,
       jsonb_build_object(
           'currency', b.currency,
           'opened_at', to_char(f.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           'source_event_id', f.event_id),
       f.occurred_at, f.applied_at
FROM balances b
JOIN LATERAL (
    SELECT t.occurred_at, t.applied_at, t.event_id FROM transactions t
    WHERE t.account_id = b.account_id ORDER BY t.sequence LIMIT 1
) f ON true
ORDER BY f.applied_at, b.account_id;

INSERT INTO events (account_id, version, event_type, schema_version, payload, occurred_at, recorded_at)
SELECT t.account_id, t.sequence + 1, 'Deposited', 2,
       jsonb_build_object(
           'event_id', t.event_id,
           'sequence', t.sequence,
           'deposit_id', t.deposit_id,
           'amount_minor', t.amount_minor,
           'currency', t.currency,
           'occurred_at', to_char(t.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
       t.occurred_at, t.applied_at
FROM transactions t
ORDER BY t.applied_at, t.account_id, t.sequence;

-- The gap monitor looks for the oldest parked event per account.
CREATE INDEX pending_events_received_at ON pending_events (received_at);
