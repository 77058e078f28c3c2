//! A router under test: served on a loopback port, or asked directly, one request at a time.

use sqlx::PgPool;

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
