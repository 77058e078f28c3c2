//! What the hostile-input tests need beyond the harness: an HTTP/1.1 exchange written byte for
//! byte (any method, a request target sent exactly as given, header values that are not text,
//! any body), the RFC 9457 checks of an answer, and a database's row counts.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// How long one exchange may take.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A request as bytes on the wire.
#[derive(Debug, Clone)]
pub struct RawRequest {
    pub method: String,
    /// Path and query exactly as sent (percent escapes are not touched).
    pub target: String,
    /// Sent in order, after `host`, before `content-length` and `connection: close`.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl RawRequest {
    pub fn new(method: &str, target: impl Into<String>) -> Self {
        RawRequest {
            method: method.to_owned(),
            target: target.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Drops every header of that name.
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// One line for the log: method, target (cut), header names, body size.
    pub fn describe(&self) -> String {
        let target: String = self.target.chars().take(90).collect();
        let cut = if target.len() < self.target.len() {
            "…"
        } else {
            ""
        };
        format!("{} {target}{cut} ({} B body)", self.method, self.body.len())
    }
}

/// An answer read whole.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Names in lower case, values as (lossy) text, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        self.header("content-type").unwrap_or_default()
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    pub fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        text.chars().take(300).collect()
    }

    /// Why this answer is not an RFC 9457 problem of its own status, if it is not one:
    /// `application/problem+json`, a JSON object with a `type` URI, a `title` and the `status`.
    pub fn problem_defect(&self) -> Option<String> {
        if !self.content_type().starts_with("application/problem+json") {
            return Some(format!(
                "content-type {:?}, not application/problem+json",
                self.content_type()
            ));
        }
        let Some(body) = self.json() else {
            return Some(format!("the body is not JSON: {:?}", self.text()));
        };
        let kind = body["type"].as_str().unwrap_or_default();
        if !kind.starts_with("urn:") && !kind.starts_with("http") {
            return Some(format!("no type URI: {body}"));
        }
        if body["title"].as_str().is_none_or(str::is_empty) {
            return Some(format!("no title: {body}"));
        }
        if body["status"].as_u64() != Some(u64::from(self.status)) {
            return Some(format!("status member is not {}: {body}", self.status));
        }
        None
    }

    /// The problem's `type` without the `urn:eventbank:problem:` prefix.
    pub fn problem_kind(&self) -> String {
        self.json()
            .and_then(|b| b["type"].as_str().map(str::to_owned))
            .unwrap_or_default()
            .trim_start_matches("urn:eventbank:problem:")
            .to_owned()
    }
}

/// Sends `request` to `base` (`http://127.0.0.1:port`) on a new connection and reads the whole
/// answer. The body is written while the answer is read, so an early answer (a 413 after the
/// head) is not lost to a broken write.
pub async fn exchange(base: &str, request: &RawRequest) -> Result<RawResponse> {
    let authority = base
        .strip_prefix("http://")
        .with_context(|| format!("not an http:// base URL: {base}"))?
        .trim_end_matches('/')
        .to_owned();
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .with_context(|| format!("connecting to {authority}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let mut head = Vec::new();
    head.extend_from_slice(
        format!(
            "{} {} HTTP/1.1\r\nhost: {authority}\r\n",
            request.method, request.target
        )
        .as_bytes(),
    );
    for (name, value) in &request.headers {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    if !request.body.is_empty() || request.method == "POST" {
        head.extend_from_slice(format!("content-length: {}\r\n", request.body.len()).as_bytes());
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    writer
        .write_all(&head)
        .await
        .context("writing the request head")?;
    let body = request.body.clone();
    let write = tokio::spawn(async move {
        // Fails only when the server answered and closed first: the answer is what counts.
        let _ = writer.write_all(&body).await;
        writer
    });
    let mut raw = Vec::new();
    let read = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(_) if !raw.is_empty() => break,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await;
    write.abort();
    read.with_context(|| format!("no answer within {EXCHANGE_TIMEOUT:?}"))?
        .context("reading the answer")?;
    parse(&raw)
}

fn parse(raw: &[u8]) -> Result<RawResponse> {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        bail!(
            "no complete response head in {} bytes: {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        );
    };
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(rest)?
    } else {
        match headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
        {
            Some(len) if len <= rest.len() => rest[..len].to_vec(),
            Some(len) => bail!("body cut short: {} of {len} bytes", rest.len()),
            None => rest.to_vec(),
        }
    };
    Ok(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("chunk size line without CRLF")?;
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..size).context("chunk cut short")?;
        out.extend_from_slice(chunk);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

/// The row count of every table of a service's database (`public` schema, migrations' own
/// table left out), by table name.
pub async fn row_counts(pool: &PgPool) -> Result<BTreeMap<String, i64>> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables \
         WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .context("listing tables")?;
    let mut counts = BTreeMap::new();
    for table in tables {
        let sql = format!("SELECT count(*) FROM \"{}\"", table.replace('"', "\"\""));
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(pool)
            .await
            .with_context(|| format!("counting {table}"))?;
        counts.insert(table, n);
    }
    Ok(counts)
}

/// What changed between two [`row_counts`]: table and difference, for tables that changed.
pub fn count_changes(
    before: &BTreeMap<String, i64>,
    after: &BTreeMap<String, i64>,
) -> BTreeMap<String, i64> {
    let mut changes = BTreeMap::new();
    for (table, n) in after {
        let was = before.get(table).copied().unwrap_or(0);
        if *n != was {
            changes.insert(table.clone(), n - was);
        }
    }
    for table in before.keys() {
        if !after.contains_key(table) {
            changes.insert(table.clone(), -before[table]);
        }
    }
    changes
}

/// A minimal gzip member holding `data` in one stored (uncompressed) deflate block, with a
/// correct CRC-32: real gzip, so a server that decoded it would see the JSON.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
    out.push(1); // final block, stored
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&(!len).to_le_bytes());
    out.extend_from_slice(&data[..usize::from(len)]);
    out.extend_from_slice(&crc32(&data[..usize::from(len)]).to_le_bytes());
    out.extend_from_slice(&u32::from(len).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

#[test]
fn crc32_of_the_check_string() {
    assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
}
