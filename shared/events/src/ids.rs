//! Identifiers parsed at the edge. A value of these types is valid by construction.

use serde::{Deserialize, Serialize};
use std::borrow::Borrow;
use std::fmt;

/// An account number such as `ACC-0042`.
///
/// Only ASCII upper-case letters, digits and `-`, 3 to 32 characters. The restriction is what
/// keeps look-alike Unicode ids, control characters and SQL-looking strings out of every store and
/// every AMQP header (the id is the partition key).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    #[error("account id must be 3 to 32 characters of A-Z, 0-9 and '-'")]
    InvalidAccountId,
}

impl AccountId {
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        let ok = (3..=32).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(IdError::InvalidAccountId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AccountId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<AccountId> for String {
    fn from(value: AccountId) -> Self {
        value.0
    }
}

impl AsRef<str> for AccountId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Maps and sets keyed by `AccountId` can be asked with a `&str` (the derived `Hash`, `Eq` and
/// `Ord` are those of the inner string, as `Borrow` requires).
impl Borrow<str> for AccountId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_accept_the_documented_alphabet_only() {
        assert!(AccountId::parse("ACC-0042").is_ok());
        for bad in [
            "",
            "AC",
            "acc-1",
            "ACC-０１",
            "ACC 1",
            "ACC-1'; DROP",
            "ACC-\u{200b}1",
        ] {
            assert_eq!(
                AccountId::parse(bad),
                Err(IdError::InvalidAccountId),
                "{bad:?}"
            );
        }
        assert!(AccountId::parse(&"A".repeat(33)).is_err());
    }

    #[test]
    fn a_map_keyed_by_account_id_answers_a_str() {
        let id = AccountId::parse("ACC-0042").unwrap();
        let map = std::collections::HashMap::from([(id.clone(), 1)]);
        assert_eq!(map.get("ACC-0042"), Some(&1));
        assert_eq!(id.as_ref(), "ACC-0042");
    }
}
