//! End-to-end tests of the three downstream consumers with the real binaries: email over real
//! SMTP (a sink the test starts and stops), interest and compliance through their APIs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod apis;
mod smtp;

pub use eventbank_e2e::flows::{SETTLE, deposit, open_account, settle};
use serde_json::Value;

/// The Message-ID the email service gives the confirmation of `event_id`.
pub fn message_id(event_id: &str) -> String {
    format!("<{event_id}@eventbank.example>")
}

/// The `event_id` of a deposit response.
pub fn event_id(deposit: &Value) -> String {
    deposit["event_id"].as_str().unwrap_or_default().to_owned()
}
