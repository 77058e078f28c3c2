//! The live console (issue 14, items 3 and 4): the services' side of it (`GET /applied` on every
//! consumer, CORS by `CORS_ALLOW_ORIGINS`), and the page itself driven in headless Chromium
//! through chromedriver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod feed;

use anyhow::{Context as _, Result, bail};
use std::time::Duration;

/// Reads an SSE response until an `event: <name>` whose data contains `needle`; answers that
/// data parsed as JSON. Gives up at `timeout`, showing what it read.
pub async fn next_event(
    response: &mut reqwest::Response,
    buffer: &mut String,
    name: &str,
    needle: &str,
    timeout: Duration,
) -> Result<serde_json::Value> {
    let found = tokio::time::timeout(timeout, async {
        loop {
            // Complete events only (an event ends with a blank line).
            while let Some(end) = buffer.find("\n\n") {
                let event: String = buffer.drain(..end + 2).collect();
                let kind = event.lines().find_map(|l| l.strip_prefix("event: "));
                let data = event.lines().find_map(|l| l.strip_prefix("data: "));
                if kind == Some(name)
                    && let Some(data) = data
                    && data.contains(needle)
                {
                    return serde_json::from_str(data).context("the event's data is not JSON");
                }
            }
            match response.chunk().await? {
                Some(chunk) => buffer.push_str(std::str::from_utf8(&chunk)?),
                None => bail!("the stream ended"),
            }
        }
    })
    .await;
    match found {
        Ok(result) => result,
        Err(_) => bail!("no `{name}` event with {needle:?} within {timeout:?}; unread: {buffer:?}"),
    }
}
