//! Account ids in and out of text columns: bound as their text, and read back through the same
//! check as at the HTTP edge, so a stored value that is not an id is an error, not a default.

use eventbank_events::AccountId;

/// The ids as text, for binding as a `text[]`.
pub fn texts<'a>(ids: impl IntoIterator<Item = &'a AccountId>) -> Vec<&'a str> {
    ids.into_iter().map(AccountId::as_str).collect()
}

/// A column's text as an id; a stored value that is not one is a decode error.
pub fn decode(raw: String) -> sqlx::Result<AccountId> {
    AccountId::parse(&raw).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_go_out_as_their_text_and_come_back_only_if_valid() {
        let ids: Vec<AccountId> = ["ACC-0001", "ACC-0002"]
            .into_iter()
            .filter_map(|raw| AccountId::parse(raw).ok())
            .collect();
        assert_eq!(texts(&ids), vec!["ACC-0001", "ACC-0002"]);
        assert_eq!(decode("ACC-0001".into()).ok(), ids.first().cloned());
        assert!(matches!(
            decode("not an id".into()),
            Err(sqlx::Error::Decode(_))
        ));
    }
}
