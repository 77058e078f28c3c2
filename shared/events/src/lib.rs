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
    decode, AccountSnapshot, DecodeError, DepositCompleted, DepositCompletedV1, Envelope,
    CONTENT_TYPE, EVENT_SOURCE, EVENT_TYPE, ROUTING_KEY, SUPPORTED_VERSIONS,
};
pub use ids::{AccountId, IdError};
pub use money::{Currency, Money, MoneyError};
