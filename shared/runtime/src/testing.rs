//! Helpers for tests that talk to the real Postgres: each test gets a database of its own,
//! created from `TEST_DATABASE_URL` (a superuser URL, default the local `postgres` user) and
//! dropped when the test calls [`TestDatabase::drop_db`].

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

pub fn admin_url() -> String {
    crate::config::env_or(
        "TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    )
}

/// The same URL with its path replaced by `/<database>` (user info, host, port and query
/// kept), parsed with the `url` crate.
pub fn url_for_database(admin: &str, database: &str) -> anyhow::Result<String> {
    let mut url =
        url::Url::parse(admin).map_err(|e| anyhow::anyhow!("not a database URL ({e}): {admin}"))?;
    url.set_path(&format!("/{database}"));
    Ok(url.into())
}

pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
    dropped: bool,
}

impl TestDatabase {
    /// Creates `eb_<prefix>_<random>` and runs `migrator` on it.
    pub async fn create(prefix: &str, migrator: &Migrator) -> anyhow::Result<Self> {
        let name = format!(
            "eb_{prefix}_{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = admin_url();
        let mut conn = PgConnection::connect(&admin).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await?;
        conn.close().await?;
        let url = url_for_database(&admin, &name)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        migrator.run(&pool).await?;
        Ok(Self {
            name,
            url,
            pool,
            dropped: false,
        })
    }

    pub async fn drop_db(mut self) -> anyhow::Result<()> {
        self.dropped = true;
        self.pool.close().await;
        drop_database(&self.name).await
    }
}

async fn drop_database(name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(&admin_url()).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// A test that panicked before `drop_db` still removes its database: on a thread of its own,
/// because the test's runtime may be the one unwinding.
impl Drop for TestDatabase {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                let _ = rt.block_on(drop_database(&name));
            }
        });
        let _ = cleanup.join();
    }
}

/// Serves `router` on a free loopback port for the rest of the test; returns its base URL.
pub async fn serve_router(router: axum::Router) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok(base)
}

/// Ops state for a test's router: the test's pool, no broker required, an empty registry.
pub fn ops_state(pool: PgPool) -> crate::http::OpsState {
    crate::http::OpsState {
        pool,
        broker_connected: prometheus_client::metrics::gauge::Gauge::default(),
        broker_required: false,
        registry: std::sync::Arc::new(crate::metrics::new_registry("test")),
    }
}

/// What a route answered in [`check_spec_against_router`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAnswer {
    pub method: String,
    pub path: String,
    pub status: u16,
}

/// Checks a service's OpenAPI spec against its real router, both ways:
///
/// - the spec's (method, path) set is exactly `expected` (written out in the test, so a route
///   added, removed or renamed without the test changing fails);
/// - every documented operation answers on `router` with something other than 405 or the
///   fallback's "no such route" 404 (path parameters from `path_params`, else `placeholder`;
///   write methods get an empty JSON object);
/// - each answer's status is documented for its operation, and a JSON answer matches the
///   documented schema ([`check_response`]);
/// - every path parameter of a template is documented, and every 4xx/5xx response is documented
///   as `application/problem+json` (except `/readyz`'s 503, which is the readiness body);
/// - `/openapi.json` serves this very spec and `/docs` serves Swagger UI from the binary.
///
/// `router` is what [`crate::http::service_router`] built, the one the service serves. Routes
/// registered with `utoipa_axum::routes!` are in the spec by construction, so together this
/// fails when the spec and the routes disagree in either direction. Returns what each
/// documented route answered.
pub async fn check_spec_against_router(
    router: axum::Router,
    spec: &utoipa::openapi::OpenApi,
    expected: &[(&str, &str)],
    path_params: &[(&str, &str)],
) -> anyhow::Result<Vec<RouteAnswer>> {
    use std::collections::BTreeSet;
    let mut problems = Vec::new();

    let documented = documented_operations(spec);
    let documented_set: BTreeSet<(String, String)> = documented
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    let expected_set: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_ascii_uppercase(), (*p).to_owned()))
        .collect();
    for missing in expected_set.difference(&documented_set) {
        problems.push(format!(
            "expected but not in the spec: {} {}",
            missing.0, missing.1
        ));
    }
    for extra in documented_set.difference(&expected_set) {
        problems.push(format!(
            "in the spec but not expected: {} {}",
            extra.0, extra.1
        ));
    }

    let mut answers = Vec::new();
    for (method, path, operation) in &documented {
        problems.extend(operation_problems(path, operation));
        let uri = fill_path(path, path_params);
        let (status, body) = send(&router, method, &uri, &[], None).await?;
        answers.push(RouteAnswer {
            method: method.clone(),
            path: path.clone(),
            status,
        });
        if status == 405 || (status == 404 && is_no_such_route(&body)) {
            problems.push(format!(
                "documented but not routed: {method} {path} ({uri} answered {status})"
            ));
            continue;
        }
        if !operation
            .responses
            .responses
            .contains_key(&status.to_string())
        {
            problems.push(format!(
                "{method} {path}: {uri} answered {status}, which the spec does not document"
            ));
            continue;
        }
        if let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body)
            && let Err(e) = check_response(spec, method, path, status, &json)
        {
            problems.push(format!("{e:#}"));
        }
    }

    // The detector itself: an undocumented path must reach the fallback.
    let (status, body) = send(&router, "GET", "/no-such-route-in-any-spec", &[], None).await?;
    if !(status == 404 && is_no_such_route(&body)) {
        problems.push(format!(
            "an unknown route answered {status}, not the fallback's 404; the check cannot tell"
        ));
    }

    let (status, body) = send(&router, "GET", crate::http::OPENAPI_PATH, &[], None).await?;
    let served: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if status != 200 || served != serde_json::to_value(spec)? {
        problems.push(format!(
            "{} answered {status} and not this spec",
            crate::http::OPENAPI_PATH
        ));
    }
    let docs = crate::http::DOCS_PATH;
    for (asset, needle) in [
        ("/", "swagger-ui"),
        ("/swagger-ui.css", ".swagger-ui"),
        ("/swagger-ui-bundle.js", "SwaggerUIBundle"),
        ("/swagger-initializer.js", crate::http::OPENAPI_PATH),
        ("/swagger-initializer.js", r#""validatorUrl": "none""#),
    ] {
        let (status, body) = send(&router, "GET", &format!("{docs}{asset}"), &[], None).await?;
        if status != 200 || !String::from_utf8_lossy(&body).contains(needle) {
            problems.push(format!(
                "{docs}{asset} answered {status} without {needle:?}"
            ));
        }
    }

    if problems.is_empty() {
        Ok(answers)
    } else {
        anyhow::bail!(
            "the OpenAPI spec and the router disagree:\n  {}",
            problems.join("\n  ")
        )
    }
}

/// Checks a JSON body the service really answered against the schema the spec documents for
/// `method path` and `status` (content `application/json`, or `application/problem+json` for
/// a problem): every required member is there, every member is documented (unless the schema
/// allows additional ones), and every value has its documented type. So a response struct and
/// the JSON a handler builds cannot drift apart unnoticed.
pub fn check_response(
    spec: &utoipa::openapi::OpenApi,
    method: &str,
    path: &str,
    status: u16,
    body: &serde_json::Value,
) -> anyhow::Result<()> {
    let spec = serde_json::to_value(spec)?;
    let response =
        &spec["paths"][path][method.to_ascii_lowercase()]["responses"][status.to_string()];
    let content = &response["content"];
    let schema = ["application/json", crate::http::PROBLEM_CONTENT_TYPE]
        .iter()
        .map(|c| &content[*c]["schema"])
        .find(|s| !s.is_null())
        .ok_or_else(|| anyhow::anyhow!("{method} {path} documents no JSON {status} response"))?;
    let mut problems = Vec::new();
    check_value(&spec, schema, body, "$", &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{method} {path} {status} does not match its documented schema:\n  {}\nbody: {body}",
            problems.join("\n  ")
        )
    }
}

fn resolve<'a>(
    spec: &'a serde_json::Value,
    schema: &'a serde_json::Value,
) -> &'a serde_json::Value {
    match schema
        .get("$ref")
        .and_then(|r| r.as_str())
        .and_then(|r| r.strip_prefix("#/components/schemas/"))
    {
        Some(name) => resolve(spec, &spec["components"]["schemas"][name]),
        None => schema,
    }
}

/// The members of an object schema, `allOf` parts merged: (properties, required, open).
fn object_members(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    into: &mut (
        serde_json::Map<String, serde_json::Value>,
        Vec<String>,
        bool,
    ),
) {
    let schema = resolve(spec, schema);
    if let Some(parts) = schema.get("allOf").and_then(|a| a.as_array()) {
        for part in parts {
            object_members(spec, part, into);
        }
    }
    if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
        into.0.extend(props.clone());
    }
    if let Some(required) = schema.get("required").and_then(|r| r.as_array()) {
        into.1.extend(
            required
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned)),
        );
    }
    match schema.get("additionalProperties") {
        Some(serde_json::Value::Bool(false)) | None => {}
        Some(_) => into.2 = true,
    }
}

fn check_value(
    spec: &serde_json::Value,
    schema: &serde_json::Value,
    value: &serde_json::Value,
    at: &str,
    problems: &mut Vec<String>,
) {
    use serde_json::Value;
    let schema = resolve(spec, schema);
    for key in ["oneOf", "anyOf"] {
        if let Some(branches) = schema.get(key).and_then(|b| b.as_array()) {
            let fits = branches.iter().any(|branch| {
                let mut inner = Vec::new();
                check_value(spec, branch, value, at, &mut inner);
                inner.is_empty()
            });
            if !fits {
                problems.push(format!("{at}: fits none of the {key} branches"));
            }
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(|e| e.as_array())
        && !allowed.contains(value)
    {
        problems.push(format!("{at}: {value} is not one of {allowed:?}"));
    }
    let types: Vec<&str> = match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(|t| t.as_str()).collect(),
        _ if schema.get("allOf").is_some() || schema.get("properties").is_some() => {
            vec!["object"]
        }
        _ => Vec::new(),
    };
    if types.is_empty() {
        return; // any value
    }
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let kind_fits = types.contains(&kind) || (kind == "integer" && types.contains(&"number"));
    if !kind_fits {
        problems.push(format!("{at}: a {kind}, documented as {types:?}"));
        return;
    }
    match value {
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check_value(spec, item_schema, item, &format!("{at}[{i}]"), problems);
                }
            }
        }
        Value::Object(members) => {
            let mut view = (serde_json::Map::new(), Vec::new(), false);
            object_members(spec, schema, &mut view);
            let (properties, required, open) = view;
            if properties.is_empty() && required.is_empty() {
                return; // a free-form object
            }
            for name in &required {
                if !members.contains_key(name) {
                    problems.push(format!("{at}.{name}: required but absent"));
                }
            }
            for (name, member) in members {
                match properties.get(name) {
                    Some(member_schema) => check_value(
                        spec,
                        member_schema,
                        member,
                        &format!("{at}.{name}"),
                        problems,
                    ),
                    None if open => {}
                    None => problems.push(format!("{at}.{name}: not documented")),
                }
            }
        }
        _ => {}
    }
}

/// One request of [`check_answers`]: method, the spec's path template, the URI sent (a query
/// string allowed), headers, an optional JSON body, and the status expected.
pub struct Case<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub uri: &'a str,
    pub headers: &'a [(&'a str, &'a str)],
    pub body: Option<&'a str>,
    pub status: u16,
}

impl<'a> Case<'a> {
    /// A GET without headers.
    pub fn get(path: &'a str, uri: &'a str, status: u16) -> Self {
        Self {
            method: "GET",
            path,
            uri,
            headers: &[],
            body: None,
            status,
        }
    }
}

/// Sends each case to `router` and checks that it answers the expected status, that the status
/// is documented for that operation, and that a JSON answer matches its documented schema
/// ([`check_response`]). Returns the JSON bodies, in order (`Null` where not JSON).
pub async fn check_answers(
    router: &axum::Router,
    spec: &utoipa::openapi::OpenApi,
    cases: &[Case<'_>],
) -> anyhow::Result<Vec<serde_json::Value>> {
    let mut problems = Vec::new();
    let mut bodies = Vec::new();
    for case in cases {
        let (status, body) = send(router, case.method, case.uri, case.headers, case.body).await?;
        let json = serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
        if status != case.status {
            problems.push(format!(
                "{} {} answered {status}, expected {}: {}",
                case.method,
                case.uri,
                case.status,
                String::from_utf8_lossy(&body)
            ));
        } else if !json.is_null()
            && let Err(e) = check_response(spec, case.method, case.path, status, &json)
        {
            problems.push(format!("{} {}: {e:#}", case.method, case.uri));
        }
        bodies.push(json);
    }
    if problems.is_empty() {
        Ok(bodies)
    } else {
        anyhow::bail!("{}", problems.join("\n"))
    }
}

/// (METHOD, path, operation) of every operation in the spec, sorted.
pub fn documented_operations(
    spec: &utoipa::openapi::OpenApi,
) -> Vec<(String, String, utoipa::openapi::path::Operation)> {
    let mut out = Vec::new();
    for (path, item) in &spec.paths.paths {
        for (method, operation) in [
            ("GET", &item.get),
            ("PUT", &item.put),
            ("POST", &item.post),
            ("DELETE", &item.delete),
            ("OPTIONS", &item.options),
            ("HEAD", &item.head),
            ("PATCH", &item.patch),
            ("TRACE", &item.trace),
        ] {
            if let Some(operation) = operation {
                out.push((method.to_owned(), path.clone(), operation.clone()));
            }
        }
    }
    out.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    out
}

fn operation_problems(path: &str, operation: &utoipa::openapi::path::Operation) -> Vec<String> {
    use utoipa::openapi::RefOr;
    use utoipa::openapi::path::ParameterIn;
    let mut problems = Vec::new();
    let documented_path_params: Vec<String> = operation
        .parameters
        .iter()
        .flatten()
        .filter_map(|p| match p {
            RefOr::T(p) if p.parameter_in == ParameterIn::Path => Some(p.name.clone()),
            _ => None,
        })
        .collect();
    for name in template_params(path) {
        if !documented_path_params.contains(&name) {
            problems.push(format!("{path}: path parameter {name} is not documented"));
        }
    }
    if operation.responses.responses.is_empty() {
        problems.push(format!("{path}: no responses documented"));
    }
    for (status, response) in &operation.responses.responses {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if !is_error || (path == "/readyz" && status == "503") {
            continue;
        }
        let problem_only = match response {
            RefOr::T(r) => {
                !r.content.is_empty()
                    && r.content
                        .keys()
                        .all(|c| c == crate::http::PROBLEM_CONTENT_TYPE)
            }
            RefOr::Ref(_) => true,
        };
        if !problem_only {
            problems.push(format!(
                "{path}: the {status} response is not documented as {}",
                crate::http::PROBLEM_CONTENT_TYPE
            ));
        }
    }
    problems
}

fn template_params(path: &str) -> Vec<String> {
    path.split('{')
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(name, _)| name.to_owned()))
        .collect()
}

/// The template with each `{name}` replaced by its value in `path_params`, else `placeholder`.
fn fill_path(path: &str, path_params: &[(&str, &str)]) -> String {
    let mut uri = path.to_owned();
    for name in template_params(path) {
        let value = path_params
            .iter()
            .find(|(n, _)| *n == name)
            .map_or("placeholder", |(_, v)| v);
        uri = uri.replace(&format!("{{{name}}}"), value);
    }
    uri
}

fn is_no_such_route(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("detail").and_then(|d| d.as_str()).map(str::to_owned))
        .is_some_and(|d| d == crate::http::NO_SUCH_ROUTE)
}

/// One request straight into the router (no server, no socket); answers the status and the
/// body. A write method without `body` sends `{}`. A streaming answer (SSE) is not read: only
/// its status.
pub async fn send(
    router: &axum::Router,
    method: &str,
    uri: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    use tower::ServiceExt;
    let method = axum::http::Method::from_bytes(method.as_bytes())?;
    let has_body = matches!(
        method,
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
    );
    let mut request = axum::http::Request::builder().method(method).uri(uri);
    if has_body {
        request = request.header(axum::http::header::CONTENT_TYPE, "application/json");
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let body = body.unwrap_or(if has_body { "{}" } else { "" }).to_owned();
    let request = request.body(axum::body::Body::from(body))?;
    let response = router.clone().oneshot(request).await?;
    let status = response.status().as_u16();
    let streaming = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|c| c.as_bytes().starts_with(b"text/event-stream"));
    let body = if streaming {
        Vec::new()
    } else {
        axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024)
            .await?
            .to_vec()
    };
    Ok((status, body))
}

/// A deterministic shuffle (Fisher-Yates driven by a 64-bit LCG), so that a test that fails
/// for one delivery order can be reproduced from its seed.
pub fn shuffled<T: Clone>(items: &[T], seed: u64) -> Vec<T> {
    let mut out = items.to_vec();
    let mut state = seed;
    for i in (1..out.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let j = usize::try_from(state >> 33).unwrap_or(0) % (i + 1);
        out.swap(i, j);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            url_for_database("postgres://postgres@127.0.0.1:5432/postgres", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_for_database("postgres://u:p@h/db?sslmode=disable", "x").unwrap(),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }

    mod spec_check {
        use crate::http::{Problem, docs_router, not_found_fallback};
        use axum::extract::Path;
        use utoipa_axum::router::OpenApiRouter;
        use utoipa_axum::routes;

        #[utoipa::path(
            get,
            path = "/things/{id}",
            params(("id" = String, Path, description = "A thing")),
            responses(
                (status = 200, description = "The thing", body = String),
                (status = 404, description = "No such thing", body = Problem,
                    content_type = "application/problem+json"),
            ),
        )]
        async fn get_thing(Path(id): Path<String>) -> Result<String, Problem> {
            if id == "known" {
                Ok(id)
            } else {
                Err(Problem::not_found("no such thing"))
            }
        }

        #[utoipa::path(post, path = "/things", responses((status = 201, description = "Made")))]
        async fn make_thing() -> axum::http::StatusCode {
            axum::http::StatusCode::CREATED
        }

        #[derive(serde::Serialize, utoipa::ToSchema)]
        struct Info {
            name: String,
            size: Option<i64>,
            tags: Vec<String>,
        }

        #[utoipa::path(
            get,
            path = "/things/{id}/info",
            params(("id" = String, Path, description = "A thing")),
            responses((status = 200, description = "About the thing", body = Info)),
        )]
        async fn thing_info(Path(id): Path<String>) -> axum::Json<Info> {
            axum::Json(Info {
                name: id,
                size: None,
                tags: Vec::new(),
            })
        }

        fn parts() -> (axum::Router, utoipa::openapi::OpenApi) {
            let (router, spec) = OpenApiRouter::new()
                .routes(routes!(get_thing))
                .routes(routes!(thing_info))
                .routes(routes!(make_thing))
                .split_for_parts();
            (
                router
                    .merge(docs_router(spec.clone()))
                    .fallback(not_found_fallback),
                spec,
            )
        }

        const EXPECTED: &[(&str, &str)] = &[
            ("GET", "/things/{id}"),
            ("GET", "/things/{id}/info"),
            ("POST", "/things"),
        ];

        #[tokio::test]
        async fn agreeing_spec_and_router_pass_and_a_resource_404_is_not_a_missing_route() {
            let (router, spec) = parts();
            let answers = super::super::check_spec_against_router(router, &spec, EXPECTED, &[])
                .await
                .unwrap();
            let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
            // "placeholder" is an unknown thing: the route's own 404, not the fallback's.
            assert_eq!(statuses, vec![201, 404, 200]);
        }

        #[tokio::test]
        async fn a_route_missing_from_the_expected_set_fails() {
            let (router, spec) = parts();
            let err = super::super::check_spec_against_router(
                router,
                &spec,
                &[("GET", "/things/{id}"), ("GET", "/things/{id}/info")],
                &[("id", "known")],
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("in the spec but not expected: POST /things"),
                "{err}"
            );
        }

        #[tokio::test]
        async fn a_documented_path_that_is_not_routed_fails() {
            let (router, mut spec) = parts();
            let item = spec.paths.paths["/things"].clone();
            spec.paths.paths.insert("/gone".into(), item);
            let mut expected = EXPECTED.to_vec();
            expected.push(("POST", "/gone"));
            let err = super::super::check_spec_against_router(router, &spec, &expected, &[])
                .await
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("documented but not routed: POST /gone"),
                "{err}"
            );
        }

        #[tokio::test]
        async fn a_wrong_method_is_caught() {
            let (router, mut spec) = parts();
            let mut item = spec.paths.paths["/things"].clone();
            item.put = item.post.take();
            spec.paths.paths.insert("/things".into(), item);
            let err = super::super::check_spec_against_router(
                router,
                &spec,
                &[
                    ("GET", "/things/{id}"),
                    ("GET", "/things/{id}/info"),
                    ("PUT", "/things"),
                ],
                &[],
            )
            .await
            .unwrap_err()
            .to_string();
            assert!(
                err.contains("documented but not routed: PUT /things"),
                "{err}"
            );
        }

        #[test]
        fn responses_are_checked_against_their_schema() {
            use super::super::check_response;
            use serde_json::json;
            let (_, spec) = parts();
            let info = |body| check_response(&spec, "GET", "/things/{id}/info", 200, &body);
            info(json!({"name": "x", "size": null, "tags": ["a"]})).unwrap();
            info(json!({"name": "x", "size": 3, "tags": []})).unwrap();
            let err = info(json!({"name": "x", "size": 3, "tags": [], "extra": 1}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("$.extra: not documented"), "{err}");
            let err = info(json!({"size": 3, "tags": []}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("$.name: required but absent"), "{err}");
            let err = info(json!({"name": 1, "size": "3", "tags": [2]}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("$.name: a integer"), "{err}");
            assert!(err.contains("$.size: a string"), "{err}");
            assert!(err.contains("$.tags[0]: a integer"), "{err}");
            // A problem may carry extensions.
            let problem = json!({"type": "urn:eventbank:problem:not-found", "title": "Not found",
                "status": 404, "detail": "no such thing", "account_id": "ACC-0001"});
            check_response(&spec, "GET", "/things/{id}", 404, &problem).unwrap();
            let err = check_response(&spec, "GET", "/things/{id}", 404, &json!({"title": "x"}))
                .unwrap_err()
                .to_string();
            assert!(err.contains("$.type: required but absent"), "{err}");
        }

        #[test]
        fn the_problem_schema_names_the_standard_members() {
            let (_, spec) = parts();
            let json = serde_json::to_value(&spec).unwrap();
            let problem = &json["components"]["schemas"]["Problem"];
            assert_eq!(
                problem["required"],
                serde_json::json!(["type", "title", "status", "detail"])
            );
            assert_eq!(problem["additionalProperties"], true);
            let response = &json["paths"]["/things/{id}"]["get"]["responses"]["404"];
            assert_eq!(
                response["content"]["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem"
            );
        }
    }
}
