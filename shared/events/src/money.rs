//! Money as integer minor units plus an ISO 4217 currency. No floating point anywhere.
//!
//! HTTP accepts a decimal string (`"100.00"`); it is converted here, exactly, into minor units
//! using the currency's exponent. Formatting goes the other way for humans (emails, CLI).

use serde::{Deserialize, Serialize};
use std::fmt;

/// An ISO 4217 currency this system supports, with its number of minor digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: &'static str,
    exponent: u32,
}

/// The supported currencies. A short explicit list is better than accepting any three letters:
/// the exponent must be right for the amount to be right.
const CURRENCIES: &[(&str, u32)] = &[
    ("USD", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("CHF", 2),
    ("CAD", 2),
    ("AUD", 2),
    ("SEK", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("BHD", 3),
    ("KWD", 3),
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error(
        "unsupported currency {0:?}; supported: USD, EUR, GBP, CHF, CAD, AUD, SEK, JPY, KRW, BHD, KWD"
    )]
    UnsupportedCurrency(String),
    #[error("amount must be a decimal string such as \"100.00\"")]
    NotADecimal,
    #[error("amount has more than {0} decimal places for its currency")]
    TooPrecise(u32),
    #[error("amount is too large")]
    Overflow,
    #[error("amount must be greater than zero")]
    NotPositive,
}

impl Currency {
    pub fn parse(code: &str) -> Result<Self, MoneyError> {
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(code, exponent)| Currency { code, exponent })
            .ok_or_else(|| MoneyError::UnsupportedCurrency(code.chars().take(16).collect()))
    }

    pub fn code(&self) -> &'static str {
        self.code
    }

    /// Number of minor digits (2 for USD, 0 for JPY, 3 for BHD).
    pub fn exponent(&self) -> u32 {
        self.exponent
    }

    /// 10^exponent, the number of minor units in one major unit.
    pub fn minor_per_major(&self) -> i64 {
        10_i64.pow(self.exponent)
    }
}

impl TryFrom<String> for Currency {
    type Error = MoneyError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.code)
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let code = String::deserialize(deserializer)?;
        Currency::parse(&code).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code)
    }
}

/// An amount of money: integer minor units and the currency they are counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    /// Parses a positive decimal string such as `"100.00"`, `"100.5"` or `"100"` exactly.
    ///
    /// Accepted: ASCII digits, at most one `.`, at most `exponent` digits after it. Rejected: signs,
    /// exponents, spaces, thousands separators, non-ASCII digits, zero, and anything that does not
    /// fit in `i64` minor units.
    pub fn parse_positive(amount: &str, currency: Currency) -> Result<Self, MoneyError> {
        let (int_part, frac_part) = match amount.split_once('.') {
            Some((i, f)) => (i, Some(f)),
            None => (amount, None),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty() || !all_digits(int_part) {
            return Err(MoneyError::NotADecimal);
        }
        let frac = frac_part.unwrap_or("");
        if frac_part.is_some() && (frac.is_empty() || !all_digits(frac)) {
            return Err(MoneyError::NotADecimal);
        }
        let exponent = currency.exponent();
        // Trailing zeros beyond the currency's precision carry no value ("1.500" USD is 1.50).
        let significant = frac.trim_end_matches('0');
        if significant.len() > exponent as usize {
            return Err(MoneyError::TooPrecise(exponent));
        }
        let mut minor: i64 = 0;
        for b in int_part.bytes() {
            minor = minor
                .checked_mul(10)
                .and_then(|m| m.checked_add(i64::from(b - b'0')))
                .ok_or(MoneyError::Overflow)?;
        }
        minor = minor
            .checked_mul(currency.minor_per_major())
            .ok_or(MoneyError::Overflow)?;
        let mut frac_minor: i64 = 0;
        for i in 0..exponent as usize {
            let digit = significant
                .as_bytes()
                .get(i)
                .map_or(0, |b| i64::from(b - b'0'));
            frac_minor = frac_minor * 10 + digit;
        }
        minor = minor.checked_add(frac_minor).ok_or(MoneyError::Overflow)?;
        if minor == 0 {
            return Err(MoneyError::NotPositive);
        }
        Ok(Money { minor, currency })
    }

    /// The plain decimal form with exactly `exponent` decimals: `10000` USD is `"100.00"`.
    pub fn to_decimal_string(&self) -> String {
        let exponent = self.currency.exponent();
        let sign = if self.minor < 0 { "-" } else { "" };
        let abs = self.minor.unsigned_abs();
        if exponent == 0 {
            return format!("{sign}{abs}");
        }
        let per = 10_u64.pow(exponent);
        format!(
            "{sign}{}.{:0width$}",
            abs / per,
            abs % per,
            width = exponent as usize
        )
    }

    /// A human form with thousands separators and the code: `1,234.50 USD`.
    pub fn display(&self) -> String {
        let plain = self.to_decimal_string();
        let (sign, rest) = plain
            .strip_prefix('-')
            .map_or(("", plain.as_str()), |r| ("-", r));
        let (int_part, frac) = rest
            .split_once('.')
            .map_or((rest, None), |(i, f)| (i, Some(f)));
        let mut grouped = String::new();
        for (i, ch) in int_part.chars().enumerate() {
            if i > 0 && (int_part.len() - i) % 3 == 0 {
                grouped.push(',');
            }
            grouped.push(ch);
        }
        match frac {
            Some(f) => format!("{sign}{grouped}.{f} {}", self.currency),
            None => format!("{sign}{grouped} {}", self.currency),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn parses_exact_amounts_for_each_exponent() {
        assert_eq!(
            Money::parse_positive("100.00", usd()).unwrap().minor,
            10_000
        );
        assert_eq!(Money::parse_positive("100.5", usd()).unwrap().minor, 10_050);
        assert_eq!(Money::parse_positive("100", usd()).unwrap().minor, 10_000);
        assert_eq!(Money::parse_positive("0.01", usd()).unwrap().minor, 1);
        assert_eq!(Money::parse_positive("1.500", usd()).unwrap().minor, 150);
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(Money::parse_positive("1500", jpy).unwrap().minor, 1_500);
        let bhd = Currency::parse("BHD").unwrap();
        assert_eq!(Money::parse_positive("1.234", bhd).unwrap().minor, 1_234);
    }

    #[test]
    fn rejects_what_is_not_a_positive_exact_amount() {
        let cases = [
            ("", MoneyError::NotADecimal),
            ("-1.00", MoneyError::NotADecimal),
            ("+1.00", MoneyError::NotADecimal),
            ("1e3", MoneyError::NotADecimal),
            ("1,000.00", MoneyError::NotADecimal),
            (" 1.00", MoneyError::NotADecimal),
            ("1.", MoneyError::NotADecimal),
            (".5", MoneyError::NotADecimal),
            ("١٢٣", MoneyError::NotADecimal),
            ("0.00", MoneyError::NotPositive),
            ("0", MoneyError::NotPositive),
            ("1.001", MoneyError::TooPrecise(2)),
            ("92233720368547758.08", MoneyError::Overflow),
            ("99999999999999999999999", MoneyError::Overflow),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Money::parse_positive(input, usd()),
                Err(expected),
                "{input:?}"
            );
        }
        let jpy = Currency::parse("JPY").unwrap();
        assert_eq!(
            Money::parse_positive("1.5", jpy),
            Err(MoneyError::TooPrecise(0))
        );
    }

    #[test]
    fn unknown_currencies_are_rejected() {
        assert!(Currency::parse("usd").is_err());
        assert!(Currency::parse("XXX").is_err());
    }

    #[test]
    fn display_groups_thousands() {
        let m = Money {
            minor: 123_456_789,
            currency: usd(),
        };
        assert_eq!(m.display(), "1,234,567.89 USD");
        let jpy = Money {
            minor: 1_000,
            currency: Currency::parse("JPY").unwrap(),
        };
        assert_eq!(jpy.display(), "1,000 JPY");
    }

    proptest! {
        #[test]
        fn decimal_string_round_trips(minor in 1_i64..=i64::MAX, idx in 0usize..CURRENCIES.len()) {
            let currency = Currency::parse(CURRENCIES[idx].0).unwrap();
            let money = Money { minor, currency };
            prop_assert_eq!(Money::parse_positive(&money.to_decimal_string(), currency), Ok(money));
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,40}") {
            let _ = Money::parse_positive(&s, usd());
        }
    }
}
