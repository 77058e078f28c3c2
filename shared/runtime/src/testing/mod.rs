//! Test support, one job per module: fresh databases ([`TestDatabase`]), a router under test
//! ([`serve_router`], [`send`]), the OpenAPI conformance checks ([`check_spec_against_router`],
//! [`check_answers`]), seeded shuffles ([`shuffled`]) and the SMTP sink ([`smtp`]). Only tests
//! and the test harness enable the `testing` feature, so none of it is in a service binary.

mod db;
mod openapi;
mod serve;
mod shuffle;
pub mod smtp;

pub use db::{TestDatabase, admin_url, url_for_database};
pub use openapi::{
    Case, RouteAnswer, check_answers, check_response, check_spec_against_router,
    documented_operations,
};
pub use serve::{ops_state, send, serve_router};
pub use shuffle::shuffled;
