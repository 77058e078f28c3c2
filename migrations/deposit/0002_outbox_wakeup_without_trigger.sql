-- The relay is no longer woken by a NOTIFY inside the deposit transaction. Postgres serialises
-- every committing transaction that issued a NOTIFY (one cluster-wide lock held from the
-- NOTIFY's pre-commit step until the commit record is flushed), which capped deposits at one
-- fsync at a time: 1,700 deposit transactions/s with this trigger, 3,900 without, measured on
-- the 2-core benchmark machine. The deposit service now wakes its own relay in-process and,
-- when another replica leads, sends one coalesced NOTIFY outside the deposit transaction
-- (services/deposit/src/wakeup.rs).
DROP TRIGGER outbox_notify ON outbox;
DROP FUNCTION outbox_notify();
