-- Structuring alerts become a function of an account's deposits, whatever order the deposits
-- arrived in. A late (reordered, redelivered) deposit can change which window time order would
-- have alerted on; the alert that is no longer right is then kept, marked superseded, and its
-- replacement inserted. Nothing is deleted: what an officer saw stays on record.
ALTER TABLE alerts ADD COLUMN superseded_at timestamptz;

-- One *active* alert of a kind per triggering event. A superseded alert and its replacement
-- may name the same event (the same window end, a new total), so the old unique constraint
-- over all rows gives way to one over the active rows.
ALTER TABLE alerts DROP CONSTRAINT alerts_one_per_kind_and_event;
CREATE UNIQUE INDEX alerts_one_active_per_kind_and_event
    ON alerts (kind, event_id) WHERE superseded_at IS NULL;

-- The handler's look-ups: an account's active structuring alerts by currency and window end.
CREATE INDEX alerts_active_structuring
    ON alerts (account_id, currency, window_end) WHERE kind = 'structuring' AND superseded_at IS NULL;
