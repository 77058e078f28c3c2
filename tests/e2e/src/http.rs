//! Small HTTP helpers around one shared `reqwest` client.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde::Serialize;
use serde_json::Value;

/// Per-request timeout of the helpers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The shared client: no proxy from the environment, no idle connection pooling (tests run on
/// many short-lived runtimes, and a pooled connection must not outlive the runtime it was made
/// on), 5 s connect timeout, no overall timeout (so it can read streams; the helpers set one).
pub fn http_client() -> reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_else(|_| reqwest::Client::new())
        })
        .clone()
}

/// A response with its body read: JSON parsed into `body` when it parses (`Value::Null` when
/// empty, `Value::String(text)` when it is not JSON).
#[derive(Debug, Clone)]
pub struct JsonResponse {
    pub status: u16,
    pub body: Value,
    /// The `Content-Type` header, empty if absent.
    pub content_type: String,
    pub headers: HeaderMap,
    /// The raw body text.
    pub text: String,
}

impl JsonResponse {
    /// The body if the status is `status`, else an error showing status and body.
    /// Handy inside [`eventually`](crate::eventually).
    pub fn require(self, status: u16) -> Result<Value> {
        if self.status == status {
            Ok(self.body)
        } else {
            bail!(
                "expected HTTP {status}, got {} ({}): {}",
                self.status,
                self.content_type,
                self.text
            )
        }
    }

    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a request with an optional JSON body and extra headers and reads the answer.
pub async fn request_json(
    method: Method,
    url: &str,
    body: Option<&Value>,
    headers: &[(&str, &str)],
) -> Result<JsonResponse> {
    let mut request = http_client()
        .request(method.clone(), url)
        .timeout(REQUEST_TIMEOUT);
    if let Some(body) = body {
        request = request.json(body);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    read(response)
        .await
        .with_context(|| format!("reading the answer to {method} {url}"))
}

/// The API key every test world gives the deposit service (its write endpoints require one).
pub const API_KEY: &str = "e2e-test-api-key";

/// `POST url` with `body` as JSON and the given extra headers (e.g. `Idempotency-Key`). Sends
/// `x-api-key: API_KEY` unless `headers` names an `x-api-key` of its own (to test refusals).
pub async fn post_json<B: Serialize + ?Sized>(
    url: &str,
    body: &B,
    headers: &[(&str, &str)],
) -> Result<JsonResponse> {
    let body = serde_json::to_value(body).context("serializing the request body")?;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("x-api-key"))
    {
        all.push(("x-api-key", API_KEY));
    }
    request_json(Method::POST, url, Some(&body), &all).await
}

/// `GET url`.
pub async fn get_json(url: &str) -> Result<JsonResponse> {
    request_json(Method::GET, url, None, &[]).await
}

/// `GET url`, answering the status and the body as text (e.g. `/metrics`).
pub async fn get_text(url: &str) -> Result<(u16, String)> {
    let response = http_client()
        .get(url)
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok((status, text))
}

async fn read(response: reqwest::Response) -> Result<JsonResponse> {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let text = response.text().await?;
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()))
    };
    Ok(JsonResponse {
        status,
        body,
        content_type,
        headers,
        text,
    })
}
