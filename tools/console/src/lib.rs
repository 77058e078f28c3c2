//! The live console: one page (HTML, JS and CSS compiled into the binary, no framework, nothing
//! fetched from anywhere but the five services) and `/config.json`, the services' URLs as the
//! browser reaches them. The page is a client like any other: it POSTs to deposit and listens to
//! each consumer's `GET /applied` (SSE) and queries, across origins (the services' CORS,
//! `CORS_ALLOW_ORIGINS`). This server never calls a service.

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use eventbank_runtime::http::not_found_fallback;
use serde::Serialize;
use std::net::SocketAddr;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

/// The demo key deposit accepts when its own `API_KEY` is unset (see deposit's config).
pub const DEMO_API_KEY: &str = "eventbank-demo-key";

/// Where the page's browser finds each service, and the key it writes with.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ServiceUrls {
    pub deposit: String,
    pub account: String,
    pub email: String,
    pub interest: String,
    pub compliance: String,
    /// Sent as `x-api-key` on the page's POSTs. It reaches the browser by design: the console
    /// is a demo client, and whoever opens it may deposit.
    pub api_key: String,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub http_addr: SocketAddr,
    pub urls: ServiceUrls,
}

impl Config {
    /// From the process environment (see [`Config::from_lookup`]).
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// `CONSOLE_HTTP_ADDR` (default 127.0.0.1:8090), `DEPOSIT_URL`, `ACCOUNT_URL`, `EMAIL_URL`,
    /// `INTEREST_URL`, `COMPLIANCE_URL` (defaults http://127.0.0.1:8081 to 8085), and
    /// `CONSOLE_API_KEY` (default the demo key). Empty means unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let get = |name: &str, default: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let addr = get("CONSOLE_HTTP_ADDR", "127.0.0.1:8090");
        let http_addr = addr.parse().map_err(|_| {
            anyhow::anyhow!(
                "CONSOLE_HTTP_ADDR={addr:?} is invalid: give host:port, such as 127.0.0.1:8090"
            )
        })?;
        let url = |name: &str, port: u16| -> anyhow::Result<String> {
            let raw = get(name, &format!("http://127.0.0.1:{port}"));
            match url::Url::parse(&raw) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    // The page appends paths (`/deposits`): no trailing slash, or `//deposits`.
                    Ok(raw.trim_end_matches('/').to_owned())
                }
                _ => anyhow::bail!(
                    "{name}={raw:?} is invalid: give the service's URL as the browser reaches it, such as http://127.0.0.1:{port}"
                ),
            }
        };
        Ok(Self {
            http_addr,
            urls: ServiceUrls {
                deposit: url("DEPOSIT_URL", 8081)?,
                account: url("ACCOUNT_URL", 8082)?,
                email: url("EMAIL_URL", 8083)?,
                interest: url("INTEREST_URL", 8084)?,
                compliance: url("COMPLIANCE_URL", 8085)?,
                api_key: get("CONSOLE_API_KEY", DEMO_API_KEY),
            },
        })
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            // Always the binary's own copy: a reload after an upgrade never mixes versions.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// `/` (the page), `/app.js`, `/style.css`, `/config.json`, `/healthz`; anything else is a
/// 404 problem.
pub fn router(config: &Config) -> Router {
    let urls = config.urls.clone();
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/config.json",
            get(move || {
                let urls = urls.clone();
                async move { axum::Json(urls) }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .fallback(not_found_fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_reach_the_local_stack() {
        let config = Config::from_lookup(|_| None).unwrap();
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8090");
        assert_eq!(config.urls.deposit, "http://127.0.0.1:8081");
        assert_eq!(config.urls.compliance, "http://127.0.0.1:8085");
        assert_eq!(config.urls.api_key, DEMO_API_KEY);
    }

    #[test]
    fn bad_settings_name_the_variable() {
        let err = Config::from_lookup(|n| (n == "EMAIL_URL").then(|| "localhost:8083".into()))
            .unwrap_err();
        assert!(err.to_string().contains("EMAIL_URL"), "{err}");
        let err =
            Config::from_lookup(|n| (n == "CONSOLE_HTTP_ADDR").then(|| "x".into())).unwrap_err();
        assert!(err.to_string().contains("CONSOLE_HTTP_ADDR"), "{err}");
        let ok =
            Config::from_lookup(|n| (n == "ACCOUNT_URL").then(|| "http://h:1/".into())).unwrap();
        assert_eq!(ok.urls.account, "http://h:1");
    }

    #[test]
    fn the_page_references_only_its_own_assets() {
        assert!(INDEX_HTML.contains("app.js") && INDEX_HTML.contains("style.css"));
        // Offline: nothing from a CDN or any other host.
        for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
            assert!(!text.contains("https://"), "an external URL in an asset");
        }
    }
}
