//! The applied feed: every event a consumer service committed, pushed to whoever listens.
//!
//! The consumer loop sends one [`Applied`] per newly applied event right after its batch
//! committed (before the ack, like [`crate::consumer::Handler::committed`]); `GET /applied`
//! streams them as Server-Sent Events. It exists for watchers (the live console), not for
//! correctness: nothing is stored or replayed, a send without listeners is dropped, and a
//! listener that falls behind loses the oldest records and is told so (`event: lagged`).

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::{DateTime, Utc};
use eventbank_events::DepositCompleted;
use futures_util::{Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

/// Records a listener may fall behind by before it loses the oldest: a few seconds of a busy
/// stream, and at most a few hundred KiB per service.
const CAPACITY: usize = 1024;

/// The `retry` the stream asks browsers to wait before reconnecting.
const RECONNECT_AFTER: Duration = Duration::from_millis(500);

/// One event applied by one consumer service.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Applied {
    /// The service that applied it.
    #[schema(example = "account")]
    pub service: &'static str,
    pub event_id: Uuid,
    pub deposit_id: Uuid,
    #[schema(value_type = String, example = "ACC-0001")]
    pub account_id: String,
    /// The deposit's per-account sequence number.
    pub sequence: i64,
    #[schema(example = 25000)]
    pub amount_minor: i64,
    #[schema(example = "USD")]
    pub currency: &'static str,
    /// When the event was created at the producer.
    pub created_at: DateTime<Utc>,
    /// When the deposit occurred (as the client said; may be back-dated).
    pub occurred_at: DateTime<Utc>,
    /// When this service's transaction applying it committed.
    pub applied_at: DateTime<Utc>,
}

impl Applied {
    pub fn of(service: &'static str, event: &DepositCompleted, applied_at: DateTime<Utc>) -> Self {
        Self {
            service,
            event_id: event.event_id,
            deposit_id: event.deposit_id,
            account_id: event.account_id.as_str().to_owned(),
            sequence: event.sequence,
            amount_minor: event.amount_minor,
            currency: event.currency.code(),
            created_at: event.time,
            occurred_at: event.occurred_at,
            applied_at,
        }
    }
}

/// The sending side, cheap to clone: the consumer loop holds one, `/applied` subscribes.
#[derive(Clone)]
pub struct AppliedFeed {
    service: &'static str,
    tx: broadcast::Sender<Applied>,
}

impl AppliedFeed {
    pub fn new(service: &'static str) -> Self {
        let (tx, _) = broadcast::channel(CAPACITY);
        Self { service, tx }
    }

    /// Announces `events` as applied now. Never blocks and never fails: with nobody listening
    /// the records are simply dropped.
    pub fn send(&self, events: &[DepositCompleted]) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        let now = Utc::now();
        for event in events {
            let _ = self.tx.send(Applied::of(self.service, event, now));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Applied> {
        self.tx.subscribe()
    }
}

#[derive(Clone)]
struct FeedState {
    feed: AppliedFeed,
    /// Cancelled at shutdown: ends the streams so the server can drain.
    stop: CancellationToken,
}

/// The tag of `/applied` in every consumer's spec.
pub const APPLIED_TAG: &str = "applied";

#[derive(OpenApi)]
#[openapi(tags((
    name = APPLIED_TAG,
    description = "Events as this service applies them, pushed (Server-Sent Events): the same on every consumer"
)))]
struct AppliedDoc;

/// `GET /applied`, with its OpenAPI path; the consumer service merges it into its routes.
pub fn applied_api(feed: AppliedFeed, stop: CancellationToken) -> OpenApiRouter {
    OpenApiRouter::with_openapi(AppliedDoc::openapi())
        .routes(routes!(applied))
        .with_state(FeedState { feed, stop })
}

/// Every event this service applies from now on, as Server-Sent Events: `event: applied` with
/// one JSON [`Applied`] as `data`, in commit order. Nothing applied before the connection is
/// sent (no replay: the service's own queries answer for the past). A client too slow to keep up
/// gets `event: lagged` with the number of records it missed. Keep-alive comments every 15 s.
#[utoipa::path(
    get,
    path = "/applied",
    tag = APPLIED_TAG,
    responses(
        (status = 200, content_type = "text/event-stream", body = Applied,
            description = "The stream: events `applied` (data: one JSON object as in the schema) and \
                           `lagged` (data: {\"missed\": n}), and keep-alive comments"),
    ),
)]
async fn applied(
    State(state): State<FeedState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = state.feed.subscribe();
    // First, at once: a comment (so the client sees the stream open now, not at the first
    // event) with a short reconnection delay, because a browser whose service restarts should
    // be back well before the default 3 s or so.
    let hello = Event::default().retry(RECONNECT_AFTER).comment(format!(
        "events applied by {} from now on",
        state.feed.service
    ));
    let rest = futures_util::stream::unfold((rx, state.stop), |(mut rx, stop)| async move {
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => return None,
                received = rx.recv() => received,
            };
            let event = match received {
                Ok(applied) => match Event::default().event("applied").json_data(&applied) {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(error = %e, "an applied record could not be encoded; skipped");
                        continue;
                    }
                },
                Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                    .event("lagged")
                    .data(format!("{{\"missed\":{missed}}}")),
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            return Some((Ok(event), (rx, stop)));
        }
    });
    let stream = futures_util::stream::once(std::future::ready(Ok(hello))).chain(rest);
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use chrono::Utc;
    use eventbank_events::{AccountId, AccountSnapshot, Currency};
    use tower::ServiceExt;

    fn event() -> DepositCompleted {
        DepositCompleted {
            event_id: Uuid::now_v7(),
            sequence: 3,
            time: Utc::now(),
            traceparent: None,
            schema_version: 2,
            deposit_id: Uuid::now_v7(),
            account_id: AccountId::parse("ACC-0042").unwrap(),
            amount_minor: 1_234,
            currency: Currency::parse("EUR").unwrap(),
            account: AccountSnapshot {
                holder_name: "Alice Example".into(),
                email: "alice@example.com".into(),
            },
            occurred_at: Utc::now(),
            channel: None,
            reference: None,
        }
    }

    #[test]
    fn sending_without_listeners_is_fine() {
        let feed = AppliedFeed::new("account");
        feed.send(&[event()]);
        let mut rx = feed.subscribe();
        assert!(
            rx.try_recv().is_err(),
            "nothing sent before subscribing is replayed"
        );
    }

    #[tokio::test]
    async fn the_route_streams_what_is_applied_after_it_connected_and_ends_at_shutdown() {
        let feed = AppliedFeed::new("email");
        let stop = CancellationToken::new();
        let (router, spec) = applied_api(feed.clone(), stop.clone()).split_for_parts();
        assert!(spec.paths.paths.contains_key("/applied"));
        feed.send(&[event()]); // before the client: not sent to it
        let response = router
            .oneshot(Request::get("/applied").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let mut body = response.into_body().into_data_stream();
        let hello = body.next().await.unwrap().unwrap();
        let hello = std::str::from_utf8(&hello).unwrap();
        assert!(hello.contains("retry: 500"), "{hello:?}");

        let applied = event();
        feed.send(std::slice::from_ref(&applied));
        let mut text = String::new();
        while !text.ends_with("\n\n") {
            let chunk = body.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        assert!(text.starts_with("event: applied\n"), "{text:?}");
        let data = text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(data["service"], "email");
        assert_eq!(data["deposit_id"], applied.deposit_id.to_string());
        assert_eq!(data["account_id"], "ACC-0042");
        assert_eq!(data["sequence"], 3);
        assert_eq!(data["amount_minor"], 1234);
        assert_eq!(data["currency"], "EUR");

        // Shutdown ends the stream, so the server can drain.
        stop.cancel();
        let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while body.next().await.is_some() {}
        })
        .await;
        assert!(end.is_ok(), "the stream outlived the shutdown");
    }
}
