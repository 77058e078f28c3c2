-- email: the Message-ID's uniqueness comes from the event id, not from an index of its own.
--
-- A Message-ID is derived from its event id (`<event_id@eventbank.example>`, see the email
-- service's render module), and event_id is the primary key, so it is unique already. Its
-- UNIQUE index was never read, yet every insert and every status change added an entry to it
-- (a status change cannot be a HOT update: the queue index's predicate reads status): about
-- 11% of the emails table's write cost when measured alone (BENCHMARKS.md, Optimisations).
-- The CHECK keeps the derivation, and with it the uniqueness, enforced.
ALTER TABLE emails ADD CONSTRAINT emails_message_id_derived
    CHECK (message_id = '<' || event_id::text || '@eventbank.example>');
ALTER TABLE emails DROP CONSTRAINT emails_message_id_key;
