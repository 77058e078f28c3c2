-- The sender's queue as a partial index: only queued rows, in the order they fall due.
--
-- The first index, on (status, next_attempt_at), could not serve the claim's order, so every
-- claim read every due queued row and sorted them, and the queue-depth count read the table:
-- the benchmark measured 50 rows read per deposit, growing with the queue. A claim now walks
-- this index from the oldest due row and stops after its batch; rows leased to a sender or
-- waiting for a retry are further along the index and are not read at all. Sent and failed
-- rows leave the index, so it stays as small as the queue.
CREATE INDEX emails_queued_due ON emails (next_attempt_at, event_id) WHERE status = 'queued';
DROP INDEX emails_status_next_attempt;
