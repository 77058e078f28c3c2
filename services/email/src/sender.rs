//! The sender: delivers queued emails, retrying failures with backoff, until shutdown.
//!
//! Each round takes a batch of emails leased to this process: either those the consumer handed
//! off in memory as it committed them ([`crate::handoff`], no claim needed), or due emails it
//! claims (a short transaction with `FOR UPDATE SKIP LOCKED`, see [`store::claim_due`]): on
//! start, when the consumer queued emails the hand-off had no room for, and on a poll timer
//! (retries that fall due, emails of a crashed process whose lease ran out). When both kinds of
//! work wait, rounds alternate. A round delivers its emails a few at a time, and records each
//! outcome as soon as it is known (deliveries that finished together, in one statement):
//! `sent`, rescheduled with exponential backoff and jitter, or `failed` (a permanent error, or
//! `max_attempts` reached). On shutdown it finishes the sends in progress and hands the rest of
//! its batch, and the emails handed off but not started, back.
//!
//! Delivery is at least once: a crash between the transport accepting a message and the row
//! being marked `sent` sends it again when the email's lease runs out. The retried message has
//! the same Message-ID (derived from the event id), so a downstream can recognise it.

use crate::handoff::{Handed, Handoff};
use crate::metrics::EmailMetrics;
use crate::store::{self, EmailStatus, Outgoing};
use crate::transport::{DeliveryError, Mailer, build_message};
use eventbank_runtime::Shutdown;
use eventbank_runtime::backoff::{self, Backoff};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lettre::message::Mailbox;
use sqlx::PgPool;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument as _;

/// Tuning of the sender. `Default` holds the production values; tests shorten the delays.
#[derive(Debug, Clone)]
pub struct SenderSettings {
    /// Emails claimed per round.
    pub batch_size: i64,
    /// Deliveries under way at once (`EMAIL_SEND_CONCURRENCY`). Each is recorded as soon as it
    /// is known (those finished together, in one statement), and no send starts while twice this
    /// many are unrecorded, so a crash or a database outage resends at most twice the
    /// concurrency (same Message-IDs).
    /// One at a time, a file or SMTP delivery (a flush to disk, or a few round trips) is slower
    /// than deposits arrive, and the queue grows without bound (BENCHMARKS.md, Optimisations).
    /// The default, 48, stays under the connection limit per client common on relays (Postfix:
    /// 50).
    pub concurrency: usize,
    /// Attempts before an email is marked failed (`EMAIL_MAX_ATTEMPTS`).
    pub max_attempts: u32,
    /// How often the sender looks for due retries when nothing wakes it.
    pub poll_interval: Duration,
    /// Delay after the first failed attempt; doubles per attempt up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// How long a claim or a hand-off keeps other senders away, and how long emails leased to
    /// a sender that crashed wait before another takes them. A round stops at half of it (a
    /// handed-off email: half of it after the consumer reserved it), so it must
    /// comfortably exceed one send (a few SMTP commands, each bounded by `smtp_timeout`).
    pub lease: Duration,
    /// Bound on each SMTP command.
    pub smtp_timeout: Duration,
    /// Emails the consumer may hand to this sender in memory (reserved or waiting); beyond it
    /// they are queued for the claim. 0 turns the hand-off off.
    pub handoff_capacity: usize,
    /// How long, at most, a few deliveries wait for the consumer's next transaction to record
    /// them (`EMAIL_MARK_DELAY_MS`) before the sender records them in a statement of its own.
    /// At light load that transaction comes within milliseconds, and an email costs one commit,
    /// not two. 0 turns it off.
    pub mark_delay: Duration,
}

impl Default for SenderSettings {
    fn default() -> Self {
        Self {
            batch_size: 144,
            concurrency: 48,
            max_attempts: 20,
            poll_interval: Duration::from_secs(1),
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
            lease: Duration::from_secs(300),
            smtp_timeout: Duration::from_secs(10),
            // Two batches: one waiting while the previous one is sent.
            handoff_capacity: 288,
            mark_delay: Duration::from_millis(100),
        }
    }
}

impl SenderSettings {
    /// The delay before the next attempt after `attempt` (1-based) failed: `retry_base`
    /// doubling per attempt, capped at `retry_cap`, minus up to a quarter of jitter so that
    /// emails failed together (an SMTP outage) do not all come due in the same instant.
    pub fn retry_delay(&self, attempt: u32) -> Duration {
        backoff::delay(self.retry_base, self.retry_cap, attempt)
    }
}

/// Where the emails of one round are: not started yet, delivered but not recorded,
/// or handed back. The round owns them; a send under way holds its email until it finishes.
struct Round {
    /// Not started yet, each with the instant by which its send must start (half its lease
    /// gone: see [`SenderSettings::lease`]).
    queue: VecDeque<(Outgoing, Instant)>,
    /// Emails not to be attempted this round (too late to start, or the round stopped):
    /// handed back at its end.
    unstarted: Vec<Outgoing>,
    /// Shutdown or a database error: no send starts any more.
    stopped: bool,
    /// The round's first database error.
    failure: Option<anyhow::Error>,
    /// Delivered, waiting for the next recording statement.
    delivered: Vec<Outgoing>,
    /// Deliveries in the recording statement under way. While the database stalls (a
    /// restart), that statement waits and finished sends pile up unrecorded; each is sent again
    /// if it fails. So no send starts while the unrecorded ones (under way, finished, being
    /// recorded) reach twice the concurrency: a crash or a database outage resends at most
    /// that many, not the rest of the batch.
    recording_len: usize,
}

impl Round {
    fn new(emails: impl IntoIterator<Item = (Outgoing, Instant)>) -> Self {
        Self {
            queue: emails.into_iter().collect(),
            unstarted: Vec::new(),
            stopped: false,
            failure: None,
            delivered: Vec::new(),
            recording_len: 0,
        }
    }

    /// Sends that may start now, `in_flight` being under way.
    fn room(&self, in_flight: usize, concurrency: usize) -> usize {
        if self.stopped {
            return 0;
        }
        let unrecorded = in_flight + self.delivered.len() + self.recording_len;
        concurrency
            .saturating_sub(in_flight)
            .min((2 * concurrency).saturating_sub(unrecorded))
    }

    /// The next email to send, while there is room; none once the round stops. An email whose
    /// time to start has passed at `now` is handed back instead; on `shutdown`, all are.
    fn next_to_start(
        &mut self,
        in_flight: usize,
        concurrency: usize,
        shutdown: bool,
        now: Instant,
    ) -> Option<Outgoing> {
        if shutdown {
            self.stop();
        }
        while self.room(in_flight, concurrency) > 0 {
            let (email, start_by) = self.queue.pop_front()?;
            if now < start_by {
                return Some(email);
            }
            self.unstarted.push(email);
        }
        None
    }

    /// No more sends start: the rest is handed back.
    fn stop(&mut self) {
        self.stopped = true;
        self.unstarted
            .extend(self.queue.drain(..).map(|(email, _)| email));
    }

    /// A database error: the round stops and answers the first error.
    fn fail(&mut self, error: anyhow::Error) {
        self.stop();
        if self.failure.is_none() {
            self.failure = Some(error);
        }
    }
}

/// The most deliveries one recording offers to ride the consumer's next transaction.
const RIDE_MAX: usize = 8;

/// How often the sender refreshes the queue-depth gauge at most.
const DEPTH_REFRESH: Duration = Duration::from_secs(1);

pub struct Sender {
    pub pool: PgPool,
    pub mailer: Mailer,
    /// The From of every email (`EMAIL_FROM`).
    pub from: Mailbox,
    pub settings: SenderSettings,
    pub metrics: EmailMetrics,
    /// Shared with the handler: emails it committed leased to this sender, and its wake-ups.
    pub handoff: Handoff,
}

impl Sender {
    /// Runs rounds until `shutdown`. A database failure is logged and retried with backoff; it
    /// never ends the loop.
    pub async fn run(self, shutdown: Shutdown) {
        tracing::info!(transport = ?self.mailer, "email sender started");
        let mut backoff = Backoff::new();
        let mut last_depth = None;
        // Claim at once on start: emails a previous run or a crashed replica left.
        let mut next_claim = Instant::now();
        let mut claimed_last = false;
        let batch = usize::try_from(self.settings.batch_size.max(1)).unwrap_or(1);
        while !shutdown.is_triggered() {
            let claim_due = Instant::now() >= next_claim;
            // Both kinds of work waiting: alternate, so neither starves the other.
            let handed = if claim_due && !claimed_last {
                Vec::new()
            } else {
                self.handoff.take(batch)
            };
            let round = if !handed.is_empty() {
                claimed_last = false;
                self.send_handed(handed, &shutdown).await
            } else if claim_due {
                claimed_last = true;
                let claimed = self.send_due(&shutdown).await;
                if let Ok(n) = claimed {
                    // A full batch means more may be due already: claim again without waiting.
                    next_claim = if n as i64 >= self.settings.batch_size {
                        Instant::now()
                    } else {
                        Instant::now() + self.settings.poll_interval
                    };
                }
                claimed.map(|_| ())
            } else {
                tokio::select! {
                    _ = shutdown.triggered() => {}
                    _ = self.handoff.ready() => {}
                    _ = self.handoff.queued() => next_claim = Instant::now(),
                    _ = tokio::time::sleep_until(next_claim) => {}
                }
                continue;
            };
            if let Err(e) = round {
                let delay = backoff.next_delay();
                tracing::warn!(error = format!("{e:#}"), retry_in = ?delay, "email sender round failed");
                tokio::select! {
                    _ = shutdown.triggered() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
            backoff.reset();
            // The gauge costs a count over the queue: at most once a second, not every round,
            // so a long queue (an SMTP outage) does not make every round pay for it.
            if last_depth.is_none_or(|at: Instant| at.elapsed() >= DEPTH_REFRESH) {
                self.refresh_queue_depth().await;
                last_depth = Some(Instant::now());
            }
        }
        // Handed off but not started: due at once for whichever sender claims next, rather
        // than when their lease runs out.
        let left: Vec<Outgoing> = self.handoff.close().into_iter().map(|h| h.email).collect();
        if let Err(e) = self.release(&left).await {
            tracing::warn!(
                error = format!("{e:#}"),
                count = left.len(),
                "cannot hand back emails handed off; their lease brings them back"
            );
        }
        tracing::info!("email sender stopped");
    }

    /// One round of claimed emails: claims due emails and sends them ([`Self::send_batch`]).
    /// Returns how many were claimed.
    pub async fn send_due(&self, shutdown: &Shutdown) -> anyhow::Result<usize> {
        let claimed = {
            let mut conn = self.pool.acquire().await?;
            store::claim_due(&mut conn, self.settings.batch_size, self.settings.lease).await?
        };
        let count = claimed.len();
        let start_by = Instant::now() + self.settings.lease / 2;
        let round = Round::new(claimed.into_iter().map(|email| (email, start_by)));
        self.send_batch(round, false, shutdown).await?;
        Ok(count)
    }

    /// One round of emails handed off by the consumer, already leased to this process, which
    /// takes more from the hand-off as sends finish ([`Self::send_batch`]). Those whose time to
    /// start has passed (the sender was busy for half a lease) are handed back for the claim.
    async fn send_handed(&self, handed: Vec<Handed>, shutdown: &Shutdown) -> anyhow::Result<()> {
        let round = Round::new(handed.into_iter().map(|h| (h.email, h.start_by)));
        self.send_batch(round, true, shutdown).await
    }

    /// Delivers emails leased to this process (up to `concurrency` at a time), and records each
    /// outcome as soon as it is known. Hands the unstarted rest back early on shutdown, and
    /// each email whose time to start has passed (half its lease gone: slow or hanging sends):
    /// a lease must never expire while this sender still works through it, or another replica
    /// would send the same email.
    ///
    /// With `refill` (a handed-off round), a send that finishes makes room for the next email
    /// handed off, for up to a poll interval: the sends never wait for the slowest of a batch
    /// to finish, and the run loop still gets its turn (a claim may be due) that often.
    async fn send_batch(
        &self,
        mut round: Round,
        refill: bool,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        let concurrency = self.settings.concurrency.max(1);
        let refill_until = Instant::now() + self.settings.poll_interval;
        let mut in_flight = FuturesUnordered::new();
        // Deliveries are recorded while the other sends go on: one statement at a time, for
        // every delivery finished since the previous one began (a group commit). A delivery is
        // thus recorded as soon as a statement is free, and the sends never wait for the
        // database.
        let mut recording: Option<Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + '_>>> =
            None;
        loop {
            let now = Instant::now();
            let refilling = refill && !round.stopped && now < refill_until;
            if refilling && round.queue.is_empty() {
                let room = round.room(in_flight.len(), concurrency);
                if room > 0 {
                    let more = self.handoff.take(room);
                    round
                        .queue
                        .extend(more.into_iter().map(|h| (h.email, h.start_by)));
                }
            }
            let shutting_down = shutdown.is_triggered();
            while let Some(email) =
                round.next_to_start(in_flight.len(), concurrency, shutting_down, now)
            {
                let span = tracing::info_span!("send_email", event_id = %email.event_id);
                in_flight.push(self.send_one(email).instrument(span));
            }
            if recording.is_none() && !round.delivered.is_empty() {
                round.recording_len = round.delivered.len();
                // Only a quiet sender lets its records wait for a ride: the last sends of a
                // handed-off round, with nothing else to send. One with work waiting (a claimed
                // backlog, more handed off, sends under way) records at once, or the wait would
                // hold back its sends (no send starts while twice the concurrency are unrecorded).
                let quiet = refill
                    && in_flight.is_empty()
                    && round.queue.is_empty()
                    && self.handoff.waiting_for_sender() == 0;
                recording = Some(Box::pin(self.record_sent(
                    std::mem::take(&mut round.delivered),
                    quiet,
                    shutdown,
                )));
            }
            if in_flight.is_empty() && recording.is_none() {
                break;
            }
            let wait_for_more = refilling && round.room(in_flight.len(), concurrency) > 0;
            tokio::select! {
                Some(result) = in_flight.next(), if !in_flight.is_empty() => match result {
                    Ok(Some(email)) => round.delivered.push(email),
                    Ok(None) => {}
                    // Most likely the database is away: stop starting sends, let the ones
                    // under way finish, and hand the rest back (if that fails too, the lease
                    // does it).
                    Err(e) => round.fail(e),
                },
                recorded = async {
                    match recording.as_mut() {
                        Some(statement) => statement.await,
                        None => std::future::pending().await,
                    }
                }, if recording.is_some() => {
                    recording = None;
                    round.recording_len = 0;
                    if let Err(e) = recorded {
                        round.fail(e);
                    }
                }
                _ = self.handoff.ready(), if wait_for_more => {}
            }
        }
        let released = self.release(&round.unstarted).await;
        match round.failure {
            Some(e) => Err(e),
            None => released,
        }
    }

    /// Makes claimed, unattempted emails due again at once instead of when the lease ends.
    async fn release(&self, emails: &[Outgoing]) -> anyhow::Result<()> {
        if emails.is_empty() {
            return Ok(());
        }
        let ids: Vec<_> = emails.iter().map(|e| e.event_id).collect();
        let mut conn = self.pool.acquire().await?;
        store::release(&mut conn, &ids).await?;
        Ok(())
    }

    /// Records deliveries: a few of a quiet sender (`may_ride`) ride the consumer's next
    /// transaction if one comes within `mark_delay` (or before shutdown); the rest go in one
    /// statement. On failure the messages are out but not
    /// recorded: the lease brings them back and they are sent again (same Message-IDs).
    async fn record_sent(
        &self,
        delivered: Vec<Outgoing>,
        may_ride: bool,
        shutdown: &Shutdown,
    ) -> anyhow::Result<()> {
        if delivered.is_empty() {
            return Ok(());
        }
        let mut ids: Vec<_> = delivered.iter().map(|e| e.event_id).collect();
        // Only a few: a larger group records in bulk cheaply anyway.
        if may_ride && !self.settings.mark_delay.is_zero() && ids.len() <= RIDE_MAX {
            let until = async {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.mark_delay) => {}
                    _ = shutdown.triggered() => {}
                }
            };
            ids = self.handoff.sent().ride(ids, until).await;
        }
        let recorded = if ids.is_empty() {
            Ok(())
        } else {
            match self.pool.acquire().await {
                Ok(mut conn) => store::mark_sent(&mut conn, &ids).await,
                Err(e) => Err(e),
            }
        };
        if let Err(e) = recorded {
            tracing::error!(error = %e, count = ids.len(), "emails delivered but not marked sent; they will be resent");
            return Err(e.into());
        }
        for email in delivered {
            let _span = tracing::info_span!("send_email", event_id = %email.event_id).entered();
            let attempt = email.attempts.saturating_add(1);
            self.metrics.sent.inc();
            tracing::info!(attempt, message_id = %email.rendered.message_id, "confirmation email sent");
        }
        Ok(())
    }

    /// Delivers one claimed email. Answers the email when it was delivered (the caller records
    /// it with others, [`Self::record_sent`]); records a failure itself. An error here is a
    /// database error: the outcome could not be recorded, and the lease brings the email back.
    async fn send_one(&self, email: Outgoing) -> anyhow::Result<Option<Outgoing>> {
        let attempt = u32::try_from(email.attempts).unwrap_or(0).saturating_add(1);
        let outcome = match build_message(&self.from, &email) {
            Ok(message) => self.mailer.deliver(email.event_id, &message).await,
            Err(e) => Err(e),
        };
        let error = match outcome {
            Ok(()) => return Ok(Some(email)),
            Err(error) => error,
        };
        let mut conn = self.pool.acquire().await?;
        match error {
            DeliveryError::Permanent(reason) => {
                store::mark_failed(&mut conn, email.event_id, &reason).await?;
                self.metrics.failed.inc();
                tracing::error!(attempt, reason, "email cannot be delivered: marked failed");
            }
            DeliveryError::Transient(reason) => {
                let retry_in = self.settings.retry_delay(attempt);
                let recorded = store::mark_retry(
                    &mut conn,
                    email.event_id,
                    &reason,
                    retry_in,
                    self.settings.max_attempts,
                )
                .await?;
                match recorded {
                    Some((EmailStatus::Failed, attempts)) => {
                        self.metrics.failed.inc();
                        tracing::error!(
                            attempts,
                            reason,
                            "email delivery failed too often: marked failed"
                        );
                    }
                    _ => {
                        self.metrics.retried.inc();
                        tracing::warn!(attempt, reason, retry_in = ?retry_in, "email delivery failed; will retry");
                    }
                }
            }
        }
        Ok(None)
    }

    async fn refresh_queue_depth(&self) {
        let depth = match self.pool.acquire().await {
            Ok(mut conn) => store::queued_count(&mut conn).await,
            Err(e) => Err(e),
        };
        match depth {
            Ok(depth) => {
                self.metrics.queue_depth.set(depth);
            }
            Err(e) => tracing::debug!(error = %e, "cannot refresh email queue depth"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn claimed(n: usize, start_by: Instant) -> Vec<(Outgoing, Instant)> {
        (0..n)
            .map(|_| (Outgoing::sample(Uuid::now_v7()), start_by))
            .collect()
    }

    fn ids<'a>(emails: impl IntoIterator<Item = &'a Outgoing>) -> Vec<Uuid> {
        emails.into_iter().map(|e| e.event_id).collect()
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_round_starts_sends_while_there_is_room_and_hands_the_rest_back_on_failure() {
        let emails = claimed(4, later());
        let all = ids(emails.iter().map(|(e, _)| e));
        let mut round = Round::new(emails);
        let now = Instant::now();
        let first = round.next_to_start(0, 1, false, now);
        assert_eq!(first.as_ref().map(|e| e.event_id), Some(all[0]));
        assert!(round.next_to_start(1, 1, false, now).is_none(), "no room");
        round.delivered.extend(first);
        round.recording_len = 2;
        // One under way, one delivered and two being recorded reach twice the concurrency.
        assert!(round.next_to_start(1, 2, false, now).is_none());
        round.fail(anyhow::anyhow!("database away"));
        round.fail(anyhow::anyhow!("a second error"));
        assert_eq!(ids(&round.unstarted), all[1..]);
        assert!(round.next_to_start(0, 2, false, now).is_none());
        assert_eq!(
            round.failure.map(|e| e.to_string()),
            Some("database away".to_owned())
        );
    }

    #[test]
    fn a_round_hands_back_every_email_not_started_on_shutdown() {
        let emails = claimed(3, later());
        let all = ids(emails.iter().map(|(e, _)| e));
        let mut round = Round::new(emails);
        let now = Instant::now();
        assert!(round.next_to_start(0, 8, false, now).is_some());
        assert!(round.next_to_start(1, 8, true, now).is_none());
        assert_eq!(ids(&round.unstarted), all[1..]);
        assert!(round.failure.is_none());
    }

    #[test]
    fn an_email_whose_time_to_start_has_passed_is_handed_back_and_the_next_one_starts() {
        let now = Instant::now();
        let mut emails = claimed(1, now);
        emails.extend(claimed(2, later()));
        let all = ids(emails.iter().map(|(e, _)| e));
        let mut round = Round::new(emails);
        let started = round.next_to_start(0, 8, false, now);
        assert_eq!(started.map(|e| e.event_id), Some(all[1]));
        assert_eq!(ids(&round.unstarted), all[..1]);
        // More arrive in a refilled round and start like the first.
        round.queue.extend(claimed(1, later()));
        assert!(round.next_to_start(1, 8, false, now).is_some());
        assert!(round.next_to_start(2, 8, false, now).is_some());
        assert!(round.next_to_start(3, 8, false, now).is_none());
    }
}
