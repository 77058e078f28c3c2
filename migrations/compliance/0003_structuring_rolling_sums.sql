-- Rolling state for the structuring rule, so that a deposit arriving in time order costs a few
-- index probes whatever the account's history.
--
-- cum_minor: per (account, currency), the running total of the sub-threshold amounts in time
-- order, through this deposit (NULL for a deposit at or over the threshold, which never
-- counts). Deposits at one instant follow each other in any fixed order, so the largest
-- cum_minor at an instant includes all of them. The total of the window [s, e] is then the
-- cum_minor of the last deposit at or before e minus that of the last one before s. numeric:
-- a running total of bigint amounts outgrows bigint long before numeric.
ALTER TABLE deposits ADD COLUMN cum_minor numeric;

-- structuring_scopes: per (account, currency) that has any deposit, the threshold cum_minor
-- was computed for, the latest sub-threshold instant and the running total there. A deposit
-- at or after last_at is in time order; one before it is late and rewrites the running totals
-- after it. A threshold that differs from the configured one makes the handler recompute the
-- scope's running totals.
CREATE TABLE structuring_scopes (
    account_id      text NOT NULL,
    currency        text NOT NULL,
    threshold_minor bigint NOT NULL CHECK (threshold_minor > 0),
    last_at         timestamptz,
    cum_minor       numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, currency)
);

-- Backfill for the default threshold (1,000,000 minor units): a service configured otherwise
-- recomputes each scope the first time it sees it.
UPDATE deposits d
   SET cum_minor = r.cum
  FROM (SELECT event_id,
               sum(amount_minor) OVER (PARTITION BY account_id, currency
                                       ORDER BY occurred_at, event_id) AS cum
          FROM deposits
         WHERE amount_minor < 1000000) r
 WHERE d.event_id = r.event_id;

INSERT INTO structuring_scopes (account_id, currency, threshold_minor, last_at, cum_minor)
SELECT account_id, currency, 1000000,
       max(occurred_at) FILTER (WHERE cum_minor IS NOT NULL),
       COALESCE(max(cum_minor), 0)
  FROM deposits
 GROUP BY account_id, currency;

-- The probe "running total before instant s" is one backward step in this index.
CREATE INDEX deposits_scope_running_total
    ON deposits (account_id, currency, occurred_at, cum_minor) WHERE cum_minor IS NOT NULL;
