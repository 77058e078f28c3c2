//! Integration tests of the interest service against the real Postgres: each test creates its
//! own database, drives the handler inside a transaction as the consumer runtime does, and the
//! router over HTTP on port 0.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod accrual;
mod balances;
mod cases;
mod cost;
mod eod;
mod helpers;
mod http;
mod openapi;
mod reorder;
