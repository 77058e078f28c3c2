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
    let content_type = content_type_of(&headers);
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

/// `POST url` over a plain TCP connection, reading the answer while the body is still being
/// written. A server that refuses an oversized body may answer after reading only the head; an
/// HTTP client that treats a broken pipe on its body write as the outcome (as hyper's does)
/// would lose that answer now and then. This helper keeps reading, so the test asserts what the
/// server said rather than how fast the kernel noticed a close.
/// `headers` are sent as given (plus `Host`, `Content-Length` and `Connection: close`).
pub async fn post_raw(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Result<JsonResponse> {
    raw_exchange(url, headers, body, false).await
}

/// `POST url` over a plain TCP connection as the simplest clients do it (Python's `urllib`, for
/// one): the whole body is written first, and only then is the answer read. Fails if the server
/// closes the connection under the write, which such a client sees as a broken pipe instead of
/// the server's answer.
pub async fn post_write_all_then_read(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<JsonResponse> {
    raw_exchange(url, headers, body, true).await
}

async fn raw_exchange(
    url: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    write_all_first: bool,
) -> Result<JsonResponse> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing {url}"))?;
    let host = parsed.host_str().context("url without host")?.to_owned();
    let port = parsed.port_or_known_default().context("url without port")?;
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let mut head = format!(
        "POST {} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-length: {}\r\nconnection: close\r\n",
        parsed.path(),
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    writer
        .write_all(head.as_bytes())
        .await
        .context("writing the request head")?;
    // No half-close after the body: hyper's server drops a connection whose reader sees EOF
    // before the answer is written.
    let write = if write_all_first {
        tokio::time::timeout(REQUEST_TIMEOUT, writer.write_all(&body))
            .await
            .with_context(|| {
                format!("the body of POST {url} not taken within {REQUEST_TIMEOUT:?}")
            })?
            .with_context(|| format!("writing the {}-byte body of POST {url}", body.len()))?;
        None
    } else {
        // The body write may fail once the server has answered and closed: expected here.
        Some(tokio::spawn(async move {
            let _ = writer.write_all(&body).await;
            writer
        }))
    };
    let mut raw = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 8192];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                // A reset after the answer arrived still leaves the answer in `raw`.
                Err(_) if !raw.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    if let Some(write) = write {
        write.abort();
    }
    read.with_context(|| format!("no answer to POST {url} within {REQUEST_TIMEOUT:?}"))?
        .with_context(|| format!("reading the answer to POST {url}"))?;
    parse_raw_response(&raw).with_context(|| format!("the answer to POST {url}"))
}

/// Parses an HTTP/1.1 answer read whole from a `Connection: close` exchange.
fn parse_raw_response(raw: &[u8]) -> Result<JsonResponse> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no complete response head in {} bytes: {text:?}", raw.len()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
                reqwest::header::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let content_type = content_type_of(&headers);
    let text = body.to_owned();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.clone()));
    Ok(JsonResponse {
        status,
        body,
        content_type,
        headers,
        text,
    })
}

/// The `Content-Type` header, empty if absent.
fn content_type_of(headers: &HeaderMap) -> String {
    headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
