-- email: the dedup table of the shared consumer loop and the outbox of confirmation emails.

-- One row per event this service has applied. The runtime inserts every delivery's event id
-- here, in the same transaction as the handler's writes; a conflict means "already applied".
-- The name and column are fixed by the runtime's dedup statement.
CREATE TABLE processed_events (
    event_id     uuid PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- One confirmation per DepositCompleted, rendered from the event alone when it is consumed and
-- delivered later by the sender. A row is the durable intent to send: the consumer commits it
-- with the dedup row, so an SMTP outage delays mail but never blocks or loses an event.
--
-- status: queued (waiting for, or between, delivery attempts) -> sent | failed (given up).
-- next_attempt_at: when a queued row is next due. The sender also uses it as a lease: claiming a
-- row pushes it into the future, so another replica does not pick it up while it is being sent,
-- and a sender that crashed mid-send hands it back when the lease runs out.
CREATE TABLE emails (
    event_id        uuid PRIMARY KEY,
    deposit_id      uuid NOT NULL,
    account_id      text NOT NULL,
    sequence        bigint NOT NULL,
    to_name         text NOT NULL,
    to_address      text NOT NULL,
    subject         text NOT NULL,
    body_text       text NOT NULL,
    body_html       text NOT NULL,
    -- Derived from event_id (<event_id@eventbank.example>), so a resent message can be
    -- recognised as the same one downstream.
    message_id      text NOT NULL UNIQUE,
    status          text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'sent', 'failed')),
    attempts        integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT emails_sent_has_sent_at CHECK ((status = 'sent') = (sent_at IS NOT NULL))
);

-- The sender's query: due queued rows.
CREATE INDEX emails_status_next_attempt ON emails (status, next_attempt_at);
-- GET /emails?account_id=..., newest first.
CREATE INDEX emails_account_created ON emails (account_id, created_at DESC);
