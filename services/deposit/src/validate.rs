//! What a request body must be before anything is stored: the account to open and the deposit.
//! Every field is checked and every failure listed (the 422's `errors`), in field order.

use crate::Config;
use crate::error::{ApiError, FieldError};
use eventbank_events::{AccountId, Channel, Currency, MAX_REFERENCE_CHARS, Money};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Display;
use utoipa::ToSchema;

#[derive(Debug, Deserialize, ToSchema)]
pub struct OpenAccount {
    /// 1 to 200 characters, no control characters.
    #[schema(example = "Alice Example")]
    pub holder_name: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
    /// ISO 4217 code.
    #[schema(example = "USD")]
    pub currency: String,
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateDeposit {
    #[schema(example = "ACC-0001")]
    pub account_id: String,
    /// A decimal string ("100.00"), never a JSON number: numbers invite floating point.
    #[schema(example = "250.00")]
    pub amount: String,
    /// ISO 4217 code; must be the account's.
    #[schema(example = "USD")]
    pub currency: String,
    /// Optional (event version 2): `branch`, `atm` or `online`.
    #[serde(default)]
    #[schema(example = "online")]
    pub channel: Option<String>,
    /// Optional (event version 2): the customer's payment reference, at most 140 characters.
    #[serde(default)]
    pub reference: Option<String>,
}

/// The field errors of one request, in the order its fields were checked.
#[derive(Default)]
struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: &'static str, message: impl Into<String>) {
        self.0.push(FieldError {
            field,
            message: message.into(),
        });
    }

    /// `result`'s value, or `None` with its error listed against `field`.
    fn check<T>(&mut self, field: &'static str, result: Result<T, impl Display>) -> Option<T> {
        result.map_err(|e| self.add(field, e.to_string())).ok()
    }

    /// `valid` when no field failed, else every failure.
    fn finish<T>(self, valid: Option<T>) -> Result<T, ApiError> {
        match valid {
            Some(valid) if self.0.is_empty() => Ok(valid),
            _ => Err(ApiError::Validation(self.0)),
        }
    }
}

/// An account to open that passed every check; the fields as they will be stored.
pub struct ValidAccount<'a> {
    pub holder_name: &'a str,
    pub email: &'a str,
    pub currency: Currency,
}

pub fn account(body: &OpenAccount) -> Result<ValidAccount<'_>, ApiError> {
    let mut errors = Errors::default();
    let holder_name = body.holder_name.trim();
    if !valid_holder_name(holder_name) {
        errors.add("holder_name", "1 to 200 characters, no control characters");
    }
    if !valid_email(&body.email) {
        errors.add(
            "email",
            "must be an email address such as alice@example.com",
        );
    }
    let currency = errors.check("currency", Currency::parse(&body.currency));
    errors.finish(currency.map(|currency| ValidAccount {
        holder_name,
        email: &body.email,
        currency,
    }))
}

fn valid_holder_name(name: &str) -> bool {
    !name.is_empty() && name.chars().count() <= 200 && !name.chars().any(char::is_control)
}

/// Deliberately simple: one `@`, something on each side, a dot in the domain, no spaces or
/// control characters. Deliverability is the mail server's business.
fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    (3..=254).contains(&email.len())
        && !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A deposit request that passed every check that needs no database.
pub struct ValidDeposit {
    pub account_id: AccountId,
    pub money: Money,
    pub channel: Option<Channel>,
    pub reference: Option<String>,
}

pub fn deposit(body: &CreateDeposit, config: &Config) -> Result<ValidDeposit, ApiError> {
    let mut errors = Errors::default();
    let account_id = errors.check("account_id", AccountId::parse(&body.account_id));
    let currency = errors.check("currency", Currency::parse(&body.currency));
    let money = match currency {
        Some(currency) => amount(&body.amount, currency, config, &mut errors)?,
        None => None,
    };
    let channel = body
        .channel
        .as_deref()
        .and_then(|raw| errors.check("channel", channel(raw)));
    let reference = body.reference.clone();
    if reference.as_deref().is_some_and(|r| !valid_reference(r)) {
        errors.add(
            "reference",
            format!("at most {MAX_REFERENCE_CHARS} characters, no control characters"),
        );
    }
    errors.finish(
        account_id
            .zip(money)
            .map(|(account_id, money)| ValidDeposit {
                account_id,
                money,
                channel,
                reference,
            }),
    )
}

/// The amount in `currency`, positive and at most the configured maximum. An error only when
/// that maximum is misconfigured; a bad amount is listed in `errors`.
fn amount(
    raw: &str,
    currency: Currency,
    config: &Config,
    errors: &mut Errors,
) -> Result<Option<Money>, ApiError> {
    let Some(money) = errors.check("amount", Money::parse_positive(raw, currency)) else {
        return Ok(None);
    };
    let max = config.max_deposit_minor(currency)?;
    if money.minor > max {
        let max = Money {
            minor: max,
            currency,
        };
        errors.add(
            "amount",
            format!("exceeds the maximum single deposit of {}", max.display()),
        );
        return Ok(None);
    }
    Ok(Some(money))
}

/// The channel as the event names it (its serde form), so the two cannot disagree.
fn channel(raw: &str) -> Result<Channel, &'static str> {
    serde_json::from_value(Value::String(raw.to_owned())).map_err(|_| "one of branch, atm, online")
}

fn valid_reference(reference: &str) -> bool {
    reference.chars().count() <= MAX_REFERENCE_CHARS && !reference.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_simply() {
        assert!(valid_email("alice@example.com"));
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@example",
            "a b@example.com",
            "a@b@c.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn every_bad_field_of_an_account_is_listed_in_order() {
        let body = OpenAccount {
            holder_name: "  ".into(),
            email: "nope".into(),
            currency: "XXX".into(),
        };
        let Err(ApiError::Validation(errors)) = account(&body) else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field).collect();
        assert_eq!(fields, ["holder_name", "email", "currency"]);
    }

    #[test]
    fn channels_are_the_events_names() {
        assert!(channel("atm").is_ok());
        assert_eq!(channel("ATM").err(), Some("one of branch, atm, online"));
    }
}
