//! HTTP pieces every service shares: health and metrics routes, RFC 9457 problem responses, a
//! JSON extractor whose rejections are problems too, the OpenAPI document and Swagger UI
//! (`/openapi.json`, `/docs`), and serving with graceful shutdown.
//!
//! Every route is registered through [`OpenApiRouter`] with `utoipa_axum::routes!`, so a route
//! cannot exist without its `#[utoipa::path]` in the spec; [`service_router`] assembles a
//! service's routes, the ops routes and the docs into the one router it serves.

use crate::Shutdown;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::PgPool;
use std::borrow::Cow;
use std::sync::Arc;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, OpenApi, RefOr};
use utoipa::{OpenApi as _, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// An RFC 9457 problem. `kind` becomes `type` (a URN naming the problem), and `extensions` are
/// members added beside the standard ones (field errors, current sequence, ...).
#[derive(Debug, Clone)]
pub struct Problem {
    pub status: StatusCode,
    pub kind: &'static str,
    pub title: &'static str,
    pub detail: String,
    pub extensions: Map<String, Value>,
    pub retry_after_secs: Option<u64>,
}

impl Problem {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Serialize) -> Self {
        self.extensions.insert(
            key.to_owned(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
        self
    }

    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "bad-request",
            "Bad request",
            detail,
        )
    }

    /// An opaque 500: the cause is logged once here, never sent to the client.
    pub fn internal(error: &anyhow::Error) -> Self {
        tracing::error!(error = format!("{error:#}"), "request failed");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal server error",
            "the request could not be completed; it has been logged",
        )
    }

    fn body(&self) -> Value {
        let mut body = Map::new();
        body.insert(
            "type".into(),
            Value::String(format!("urn:eventbank:problem:{}", self.kind)),
        );
        body.insert("title".into(), Value::String(self.title.into()));
        body.insert("status".into(), Value::from(self.status.as_u16()));
        body.insert("detail".into(), Value::String(self.detail.clone()));
        for (k, v) in &self.extensions {
            body.insert(k.clone(), v.clone());
        }
        Value::Object(body)
    }
}

/// The `Problem` schema of every spec: the four standard members, and whatever extensions the
/// problem carries (`errors`, `account_id`, `current_sequence`, ...).
impl PartialSchema for Problem {
    fn schema() -> RefOr<Schema> {
        let string = |description: &str, example: &str| {
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(description))
                .examples([example])
        };
        ObjectBuilder::new()
            .description(Some(
                "An RFC 9457 problem (media type application/problem+json). Members beside the \
                 four standard ones are extensions that say more about this kind of problem.",
            ))
            .property(
                "type",
                string(
                    "A URN naming the kind of problem",
                    "urn:eventbank:problem:not-found",
                )
                .format(Some(SchemaFormat::Custom("uri".into()))),
            )
            .required("type")
            .property("title", string("Short summary of the kind", "Not found"))
            .required("title")
            .property(
                "status",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
                    .description(Some("The HTTP status code"))
                    .examples([404]),
            )
            .required("status")
            .property(
                "detail",
                string("What happened in this occurrence", "no account ACC-9999"),
            )
            .required("detail")
            .additional_properties(Some(AdditionalProperties::<Schema>::FreeForm(true)))
            .into()
    }
}

impl ToSchema for Problem {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Problem")
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// `Json<T>` whose rejections are problem responses (400 malformed, 415 content type, 422 shape,
/// 413 too large) instead of axum's plain-text ones.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection_problem(rejection)),
        }
    }
}

/// `Query<T>` whose rejections are 400 problems naming the parameter, instead of axum's text.
pub struct ApiQuery<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for ApiQuery<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| Problem::bad_request(rejection.body_text()))
    }
}

/// An integer query parameter in `min..=max`, `default` when absent; otherwise a 400 problem
/// naming the parameter and the range.
pub fn int_param(
    params: &std::collections::HashMap<String, String>,
    name: &'static str,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, InvalidParameter> {
    match params.get(name) {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| InvalidParameter {
                parameter: name,
                detail: format!("{name} must be an integer from {min} to {max}"),
            }),
    }
}

/// A query parameter that does not parse ([`int_param`]): a 400 problem naming it in
/// `parameter`. Each service's error type takes it with `From`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidParameter {
    pub parameter: &'static str,
    pub detail: String,
}

impl From<InvalidParameter> for Problem {
    fn from(e: InvalidParameter) -> Problem {
        Problem::bad_request(e.detail).with("parameter", e.parameter)
    }
}

fn json_rejection_problem(rejection: JsonRejection) -> Problem {
    let text = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            "Unsupported media type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonDataError(_) => Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-body",
            "Invalid request body",
            text,
        ),
        JsonRejection::JsonSyntaxError(_) => Problem::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            "Malformed JSON",
            text,
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "Request body too large",
            text,
        ),
        other => Problem::new(other.status(), "bad-request", "Bad request", text),
    }
}

/// What `/readyz` and `/metrics` look at.
#[derive(Clone)]
pub struct OpsState {
    pub pool: PgPool,
    /// 1 while the broker connection works; the relay or consumer supervisor keeps it current.
    pub broker_connected: Gauge,
    /// False for the producer: it accepts deposits while the broker is away (the outbox holds
    /// them), so a broker outage must not take it out of rotation.
    pub broker_required: bool,
    pub registry: Arc<Registry>,
}

/// `/healthz` (the process answers), `/readyz` (database and broker reachable), `/metrics`.
pub fn ops_router(state: OpsState) -> Router {
    ops_api(state).split_for_parts().0
}

/// The ops routes with their OpenAPI paths; [`service_router`] merges them into every spec.
pub fn ops_api(state: OpsState) -> OpenApiRouter {
    OpenApiRouter::with_openapi(OpsDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .with_state(state)
}

/// The tag of the ops routes in every spec.
pub const OPS_TAG: &str = "ops";

#[derive(utoipa::OpenApi)]
#[openapi(tags((
    name = OPS_TAG,
    description = "Liveness, readiness and Prometheus metrics: the same on every service"
)))]
struct OpsDoc;

#[derive(Serialize, ToSchema)]
struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = OPS_TAG,
    responses((status = 200, description = "The process is up", body = Health)),
)]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// What `/readyz` found. Members in alphabetical order: the JSON is the same as it always was.
#[derive(Serialize, ToSchema)]
struct Readiness {
    /// The broker connection works.
    broker: bool,
    /// A database query answered.
    database: bool,
}

/// Readiness: the database answers and, where the service needs it, the broker is connected.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = OPS_TAG,
    responses(
        (status = 200, description = "Ready to take traffic", body = Readiness),
        (status = 503, description = "Not ready: the database, or a required broker, is unreachable", body = Readiness),
    ),
)]
async fn readyz(State(state): State<OpsState>) -> Response {
    let database = crate::db::ping(&state.pool).await;
    let broker = state.broker_connected.get() == 1;
    let body = Readiness { database, broker };
    if database && (broker || !state.broker_required) {
        (StatusCode::OK, Json(body)).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    }
}

/// Prometheus metrics in the OpenMetrics text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = OPS_TAG,
    responses(
        (status = 200, description = "Every metric of the service", body = String,
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
        (status = 500, description = "The metrics could not be encoded", body = Problem,
            content_type = PROBLEM_CONTENT_TYPE),
    ),
)]
async fn metrics(State(state): State<OpsState>) -> Response {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        return Problem::internal(&anyhow::anyhow!("encoding metrics: {e}")).into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Where the spec and Swagger UI are served.
pub const OPENAPI_PATH: &str = "/openapi.json";
pub const DOCS_PATH: &str = "/docs";

/// `/openapi.json` (the spec) and Swagger UI at `/docs`. Swagger UI's files are compiled into
/// the binary (utoipa-swagger-ui's `vendored` feature): nothing is fetched at build or run time,
/// and the page's validator badge (which would ask validator.swagger.io) is off.
pub fn docs_router(openapi: OpenApi) -> Router {
    let config = utoipa_swagger_ui::Config::default()
        .validator_url("none")
        .persist_authorization(true);
    utoipa_swagger_ui::SwaggerUi::new(DOCS_PATH)
        .url(OPENAPI_PATH, openapi)
        .config(config)
        .into()
}

/// A service's whole HTTP surface: its own routes, the ops routes and the docs, with the
/// fallback problem for unknown routes and the 405 of a known route as a problem, every request
/// in a span of its own with a request id (`request_spans`). Also returns the spec (what
/// `/openapi.json` serves), so tests can compare it with the routes.
pub fn service_router(api: OpenApiRouter, ops: OpsState) -> (Router, OpenApi) {
    let (router, openapi) = api.merge(ops_api(ops)).split_for_parts();
    let router = router
        .merge(docs_router(openapi.clone()))
        .fallback(not_found_fallback)
        .layer(axum::middleware::map_response(method_not_allowed_problem));
    (request_spans(router), openapi)
}

/// The header that names a request in the logs of the service and of its caller.
pub const REQUEST_ID: &str = "x-request-id";

/// Every request of `router` gets an `x-request-id` (the caller's, else a new UUID), echoed in
/// the response, and a span with its method, matched route, request id, status and latency.
/// One log line per response, at debug: the services log what a request did at info already,
/// and health checks and scrapes would drown those lines. Bodies are never logged.
fn request_spans(router: Router) -> Router {
    use axum::extract::MatchedPath;
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    use tower_http::trace::TraceLayer;
    use tracing::field::Empty;
    let name = axum::http::HeaderName::from_static(REQUEST_ID);
    let trace = TraceLayer::new_for_http()
        .make_span_with(|request: &Request| {
            tracing::info_span!(
                "request",
                method = %request.method(),
                route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str),
                request_id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()),
                status = Empty,
                latency_ms = Empty,
            )
        })
        .on_request(())
        .on_response(
            |response: &Response, latency: std::time::Duration, span: &tracing::Span| {
                span.record("status", response.status().as_u16());
                span.record(
                    "latency_ms",
                    u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                );
                tracing::debug!("response");
            },
        )
        .on_body_chunk(())
        .on_eos(())
        // A 5xx is logged where it is made (Problem::internal, the 503s), with its cause.
        .on_failure(());
    // Outermost first: the id is set before the span is made, and copied onto the response.
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::new(name.clone(), MakeRequestUuid))
            .layer(trace)
            .layer(PropagateRequestIdLayer::new(name)),
    )
}

/// `router` answering browsers of `origins` (CORS): simple and preflight requests from those
/// origins get the headers that let the page read the answer; no origin at all (the default)
/// adds nothing, so the router is returned as it was. Only what the console and the API need:
/// GET and POST, the request headers a client sets, and the response headers it reads.
pub fn with_cors(router: Router, origins: &[String]) -> Router {
    use axum::http::{HeaderName, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allowed: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if allowed.is_empty() {
        return router;
    }
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(allowed))
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([
            header::LOCATION,
            HeaderName::from_static("idempotent-replayed"),
            header::RETRY_AFTER,
        ])
        .max_age(std::time::Duration::from_secs(600));
    router.layer(cors)
}

/// The router's own 405 (a route that exists, asked with a method it does not have) has an
/// empty body: answered as a problem instead, its `Allow` header kept. Every other response
/// passes unchanged.
async fn method_not_allowed_problem(response: Response) -> Response {
    if response.status() != StatusCode::METHOD_NOT_ALLOWED
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let methods = allow
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut problem = Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        "Method not allowed",
        format!("this route does not answer this method; it answers {methods}"),
    )
    .into_response();
    if let Some(allow) = allow {
        problem.headers_mut().insert(header::ALLOW, allow);
    }
    problem
}

/// The `detail` of the fallback's 404 (a route that exists answers its own 404s otherwise).
pub const NO_SUCH_ROUTE: &str = "no such route";

/// Fallback for unknown routes: a problem, not an empty 404.
pub async fn not_found_fallback() -> Problem {
    Problem::not_found(NO_SUCH_ROUTE)
}

/// A service's whole life after start-up: its routes with the ops routes and the docs
/// ([`service_router`]), answering the browsers `common` allows ([`with_cors`]), served until
/// shutdown and then drained ([`serve_then_drain`], which closes the ops pool).
pub async fn serve_service(
    listener: tokio::net::TcpListener,
    api: OpenApiRouter,
    ops: OpsState,
    common: &crate::CommonConfig,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let pool = ops.pool.clone();
    let (router, _) = service_router(api, ops);
    let router = with_cors(router, &common.cors_allow_origins);
    serve_then_drain(listener, router, shutdown, common.drain_timeout, pool).await
}

/// Serves `router` until shutdown, then stops every other loop, drains them (up to
/// `drain_timeout`) and closes the pool: the whole life of a service after start-up. `router` is
/// what [`service_router`] built, its fallback included: a fallback set here would replace that
/// one without its layers (the request id, the span).
pub async fn serve_then_drain(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
    drain_timeout: std::time::Duration,
    pool: PgPool,
) -> anyhow::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    let served = serve(listener, router, shutdown.clone()).await;
    // However the server ended, every other loop stops too.
    shutdown.trigger();
    shutdown.drain(drain_timeout).await;
    pool.close().await;
    tracing::info!("stopped");
    crate::telemetry::flush();
    served
}

/// Serves `router` on `listener` until shutdown; in-flight requests finish first.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let token = shutdown.token();
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt as _;

    /// The router every service serves, on a pool that never connects (`/healthz` needs none).
    fn router() -> Router {
        let ops = OpsState {
            pool: sqlx::postgres::PgPoolOptions::new()
                .connect_lazy("postgres://nobody@127.0.0.1:1/none")
                .unwrap(),
            broker_connected: Gauge::default(),
            broker_required: false,
            registry: Arc::new(Registry::default()),
        };
        service_router(OpenApiRouter::new(), ops).0
    }

    async fn request_id(path: &str, given: Option<&str>) -> (StatusCode, String) {
        ask(router(), path, given).await
    }

    /// `router`'s status and request id for a GET of `path` (with the request id `given`).
    async fn ask(router: Router, path: &str, given: Option<&str>) -> (StatusCode, String) {
        let mut request = Request::builder().uri(path);
        if let Some(id) = given {
            request = request.header(REQUEST_ID, id);
        }
        let response = router
            .oneshot(request.body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        let id = response.headers()[REQUEST_ID].to_str().unwrap().to_owned();
        (response.status(), id)
    }

    #[tokio::test]
    async fn a_response_echoes_the_callers_request_id() {
        let (status, id) = request_id("/healthz", Some("caller-7")).await;
        assert_eq!((status, id.as_str()), (StatusCode::OK, "caller-7"));
    }

    /// What the log lines of the current thread say, for the rest of the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn one_debug_line_per_response_in_a_span_naming_the_request() {
        // Made before the capture starts: the pool logs its own lines when it is made.
        let router = router();
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        ask(router, "/healthz", Some("caller-7")).await;
        let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = logged.lines().collect();
        assert_eq!(lines.len(), 1, "{logged}");
        for field in [
            "DEBUG",
            "method=GET",
            "route=\"/healthz\"",
            "request_id=\"caller-7\"",
            "status=200",
            "latency_ms=",
            "http: response",
        ] {
            assert!(lines[0].contains(field), "{field} in {logged}");
        }
    }

    #[tokio::test]
    async fn a_request_without_an_id_gets_a_new_uuid_also_on_unknown_routes() {
        for path in ["/healthz", "/no/such/route"] {
            let (_, id) = request_id(path, None).await;
            assert!(uuid::Uuid::parse_str(&id).is_ok(), "{path}: {id}");
        }
        assert_ne!(
            request_id("/healthz", None).await.1,
            request_id("/healthz", None).await.1
        );
    }
}
