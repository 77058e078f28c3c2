//! Test harness for the eventbank end-to-end tests.
//!
//! A [`TestWorld`] gives one test its own five Postgres databases, its own broker namespace and a
//! scratch directory, starts the real service binaries against them ([`ServiceHandle`]), and
//! removes all of it again ([`TestWorld::cleanup`], or best effort on drop, also when the test
//! panics). [`TcpProxy`] puts a cuttable TCP hop between one service and the broker;
//! [`eventually`] is the only way the tests wait. HTTP and AMQP helpers live in [`http`] and
//! [`amqp`].
//!
//! Environment:
//! - `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`): a superuser.
//! - `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/eventbank`).
//! - `EVENTBANK_BIN_DIR`: where the service binaries are (default: next to the test binary).
//! - `TEST_LOG`: if set, services log at this level (`RUST_LOG` syntax; `1`/`true` = `info`) and
//!   their output is echoed live to stderr, prefixed with the service name. Otherwise services
//!   log at `warn` and their output is kept in a ring buffer shown when something fails.
//! - `TEST_READY_TIMEOUT_SECS` (default 60): how long [`TestWorld::start`] waits for `/readyz`.

pub mod amqp;
mod console;
pub mod flows;
pub mod http;
pub mod invariants;
pub mod nemesis;
mod poll;
mod proxy;
mod service;
pub mod smtp;
mod svc;
mod util;
mod world;

pub use amqp::{
    FetchedMessage, get_message, header_str, headers, publish_event, publish_raw, publish_to_queue,
    publish_with, queue_exists, queue_message_count,
};
pub use console::{Console, origin_of as console_origin};
pub use http::{
    API_KEY, JsonResponse, get_json, get_text, http_client, post_json, post_raw,
    post_write_all_then_read, request_json,
};
pub use poll::{POLL_INTERVAL, eventually};
pub use proxy::TcpProxy;
pub use service::{CliOutput, ServiceHandle};
pub use smtp::{ReceivedMail, SmtpSink};
pub use svc::Svc;
pub use util::{free_port, service_binary};
pub use world::{Services, TestWorld, WorldOptions};

/// Re-exported so tests can build AMQP properties and header tables without their own dependency.
pub use lapin;
