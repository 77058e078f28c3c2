//! Integration tests of the email service against the real Postgres (one fresh database per
//! test). The broker path is tested end to end elsewhere; here the handler, the sender and the
//! API are driven directly.

// clippy.toml allows expect in #[test] functions only; the helpers here are test code too, and a
// failed arrangement should stop the test with its message.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod api;
mod claims;
mod handler;
mod handoff;
mod helpers;
mod openapi;
mod render;
mod sender_file;
mod sender_smtp;
