//! The SMTP sink the end-to-end tests, loadgen and bankctl give the email service: the one the
//! email service's own tests use too, from the runtime's test support.

pub use eventbank_runtime::testing::smtp::{ReceivedMail, SmtpSink};
