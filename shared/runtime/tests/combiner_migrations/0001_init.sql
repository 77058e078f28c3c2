-- The consumer runtime's dedup table, as every consumer service has it, and what the test
-- handler writes.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE applied (
    event_id uuid PRIMARY KEY
);
