//! The wire contract between eventbank's services.
//!
//! This crate owns everything that crosses RabbitMQ: the CloudEvents envelope, every version of
//! `DepositCompleted`, the single place where older versions are upcast, and the money and id
//! types that are parsed at the edges. It performs no I/O (no lapin, no sqlx), so every service and
//! every tool can depend on it without pulling in a runtime.

pub mod deposit;
pub mod ids;
pub mod money;

pub use deposit::{
    AccountSnapshot, CONTENT_TYPE, Channel, DecodeError, DepositCompleted, DepositCompletedV1,
    DepositCompletedV2, EVENT_SOURCE, EVENT_TYPE, Envelope, MAX_REFERENCE_CHARS, ROUTING_KEY,
    SUPPORTED_VERSIONS, decode,
};
pub use ids::{AccountId, IdError};
pub use money::{Currency, Money, MoneyError};
