//! End-to-end tests: the five real binaries, real Postgres, real RabbitMQ, one namespace each.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod broker_outage;
mod consumer_crash;
mod contract;
mod database_outage;
mod duplicates;
mod happy_path;
mod poison;
mod relay_marks;

pub use eventbank_e2e::flows::{SETTLE, deposit, open_account, settle};
