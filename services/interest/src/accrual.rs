//! The interest accrual engine: pure integer arithmetic, no I/O, no floating point.
//!
//! Convention: **Actual/365**. Every calendar day accrues `closing balance x annual rate / 365`,
//! whatever the year's length, so a leap year accrues 366/365 of the annual rate.
//!
//! Exactness: a rate is held as whole parts per million of the principal (`2.50 %` = 25 000 ppm,
//! the `numeric(7,4)` percent stored in the database, exactly). One day's interest, in millionths
//! of a minor unit ("micro-minor"), is then `balance_minor x ppm / 365`: an exact rational with
//! denominator 365, which [`ExactInterest`] keeps as its numerator in `i128`. Sums of days are
//! exact too. Rounding happens only when a value leaves the engine:
//! - [`ExactInterest::micro`]: to whole micro-minor units, for display of one day;
//! - [`ExactInterest::minor`]: to whole minor units, when interest is posted.
//!
//! Both round **half-even** (banker's rounding): a tie goes to the even neighbour, so rounding
//! many postings has no systematic upward bias, unlike half-up.

use chrono::NaiveDate;
use std::fmt;
use std::ops::Add;

/// The Actual/365 day-count denominator.
pub const DAYS_PER_YEAR: i128 = 365;
/// Micro-minor units per minor unit.
pub const MICRO_PER_MINOR: i128 = 1_000_000;
/// Parts per million in one percent.
const PPM_PER_PERCENT: i64 = 10_000;

/// An annual interest rate as whole parts per million of the principal (0.0001 % steps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct AnnualRate {
    ppm: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RateError {
    #[error(
        "rate must be a non-negative decimal percentage with at most 4 decimals, such as \"2.50\""
    )]
    Invalid,
}

impl AnnualRate {
    pub const ZERO: AnnualRate = AnnualRate { ppm: 0 };

    /// A rate from parts per million; negative rates are not supported (deposits only earn).
    pub fn from_ppm(ppm: i64) -> Result<Self, RateError> {
        if ppm < 0 {
            return Err(RateError::Invalid);
        }
        Ok(Self { ppm })
    }

    pub fn ppm(&self) -> i64 {
        self.ppm
    }

    /// Parses a percentage such as `"2.5"`, `"2.50"` or `"3"` exactly (at most 4 decimals).
    pub fn parse_percent(raw: &str) -> Result<Self, RateError> {
        let (int_part, frac_part) = raw.split_once('.').unwrap_or((raw, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int_part.is_empty() || !digits(int_part) || !digits(frac_part) {
            return Err(RateError::Invalid);
        }
        let frac = frac_part.trim_end_matches('0');
        if frac.len() > 4 || int_part.len() > 12 {
            return Err(RateError::Invalid);
        }
        let int: i64 = int_part.parse().map_err(|_| RateError::Invalid)?;
        let mut frac_ppm: i64 = 0;
        for i in 0..4 {
            let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
            frac_ppm = frac_ppm * 10 + digit;
        }
        int.checked_mul(PPM_PER_PERCENT)
            .and_then(|p| p.checked_add(frac_ppm))
            .ok_or(RateError::Invalid)
            .and_then(Self::from_ppm)
    }
}

/// Percent with at least two decimals and no trailing zeros beyond them: `2.50`, `1.2345`.
impl fmt::Display for AnnualRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.ppm / PPM_PER_PERCENT;
        let frac = format!("{:04}", self.ppm % PPM_PER_PERCENT);
        let frac = frac.trim_end_matches('0');
        write!(f, "{int}.{frac:0<2}")
    }
}

/// An exact amount of interest: `numerator / 365` micro-minor units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ExactInterest {
    numerator: i128,
}

impl ExactInterest {
    pub const ZERO: ExactInterest = ExactInterest { numerator: 0 };

    /// One day's interest on a closing balance (Actual/365).
    pub fn for_day(balance_minor: i64, rate: AnnualRate) -> Self {
        // i64 x i64 always fits in i128, so no overflow is possible here.
        Self {
            numerator: i128::from(balance_minor) * i128::from(rate.ppm),
        }
    }

    /// The numerator over 365 (micro-minor units), for callers that keep exact values.
    pub fn numerator(&self) -> i128 {
        self.numerator
    }

    /// Rounded half-even to whole micro-minor units.
    pub fn micro(&self) -> i128 {
        div_round_half_even(self.numerator, DAYS_PER_YEAR)
    }

    /// Rounded half-even to whole minor units: the amount that would be posted.
    pub fn minor(&self) -> i128 {
        div_round_half_even(self.numerator, DAYS_PER_YEAR * MICRO_PER_MINOR)
    }

    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.numerator
            .checked_add(other.numerator)
            .map(|numerator| Self { numerator })
    }
}

impl Add for ExactInterest {
    type Output = ExactInterest;
    /// Saturating: an i128 sum of per-day interest on i64 balances cannot realistically reach
    /// the bound (it would take ~10^13 days at the largest balance and rate).
    fn add(self, other: Self) -> Self {
        Self {
            numerator: self.numerator.saturating_add(other.numerator),
        }
    }
}

impl std::iter::Sum for ExactInterest {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::ZERO, Add::add)
    }
}

/// `n / d` rounded to the nearest integer, ties to even. `d` must be positive.
pub fn div_round_half_even(n: i128, d: i128) -> i128 {
    debug_assert!(d > 0, "divisor must be positive");
    let q = n.div_euclid(d);
    let r = n.rem_euclid(d); // 0 <= r < d, so q is the floor
    // Compare 2r with d instead of r with d/2 so odd divisors need no special case.
    match (2 * r).cmp(&d) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => {
            if q % 2 == 0 {
                q
            } else {
                q + 1
            }
        }
    }
}

/// A currency's rates over time: `(effective_from, rate)` sorted by day. Before the first entry,
/// or for a currency with no entry, the rate is zero.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateSchedule {
    entries: Vec<(NaiveDate, AnnualRate)>,
}

impl RateSchedule {
    pub fn new(mut entries: Vec<(NaiveDate, AnnualRate)>) -> Self {
        entries.sort_by_key(|(day, _)| *day);
        Self { entries }
    }

    /// A single rate for every day.
    pub fn flat(rate: AnnualRate) -> Self {
        Self::new(vec![(NaiveDate::MIN, rate)])
    }

    pub fn rate_on(&self, day: NaiveDate) -> AnnualRate {
        let idx = self.entries.partition_point(|(from, _)| *from <= day);
        idx.checked_sub(1)
            .and_then(|i| self.entries.get(i))
            .map_or(AnnualRate::ZERO, |(_, rate)| *rate)
    }
}

/// A closing balance recorded for a day (the sparse `daily_balances` rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosingBalance {
    pub day: NaiveDate,
    pub balance_minor: i64,
}

/// One day of accrual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DayAccrual {
    pub day: NaiveDate,
    pub balance_minor: i64,
    pub rate: AnnualRate,
    pub interest: ExactInterest,
}

/// Accrues every calendar day of `[from, to]` (empty when `from > to`).
///
/// `balances` are sparse closing balances sorted by day: a day closes at the latest row on or
/// before it, or 0 before the first row. Pass the latest row before `from` too, so that the
/// first days get the right opening balance.
pub fn accrue_days(
    balances: &[ClosingBalance],
    schedule: &RateSchedule,
    from: NaiveDate,
    to: NaiveDate,
) -> Vec<DayAccrual> {
    let mut out = Vec::new();
    if from > to {
        return out;
    }
    // Index of the first row after the current day: rows before it apply.
    let mut next = balances.partition_point(|b| b.day <= from);
    let mut balance = next
        .checked_sub(1)
        .and_then(|i| balances.get(i))
        .map_or(0, |b| b.balance_minor);
    for day in from.iter_days().take_while(|d| *d <= to) {
        while let Some(row) = balances.get(next).filter(|row| row.day <= day) {
            balance = row.balance_minor;
            next += 1;
        }
        let rate = schedule.rate_on(day);
        out.push(DayAccrual {
            day,
            balance_minor: balance,
            rate,
            interest: ExactInterest::for_day(balance, rate),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    fn usd() -> AnnualRate {
        AnnualRate::parse_percent("2.50").unwrap()
    }

    #[test]
    fn rates_parse_exactly_and_print_back() {
        assert_eq!(usd().ppm(), 25_000);
        assert_eq!(AnnualRate::parse_percent("1.75").unwrap().ppm(), 17_500);
        assert_eq!(AnnualRate::parse_percent("3").unwrap().ppm(), 30_000);
        assert_eq!(AnnualRate::parse_percent("0.0001").unwrap().ppm(), 1);
        assert_eq!(AnnualRate::parse_percent("2.500000").unwrap().ppm(), 25_000);
        for bad in ["", ".5", "-1", "1.00001", "1,5", "1e2", " 1", "abc"] {
            assert!(AnnualRate::parse_percent(bad).is_err(), "{bad:?}");
        }
        assert_eq!(usd().to_string(), "2.50");
        assert_eq!(
            AnnualRate::parse_percent("1.2345").unwrap().to_string(),
            "1.2345"
        );
        assert_eq!(AnnualRate::ZERO.to_string(), "0.00");
        assert_eq!(
            AnnualRate::parse_percent("12.3").unwrap().to_string(),
            "12.30"
        );
    }

    #[test]
    fn half_even_rounds_ties_to_the_even_neighbour() {
        assert_eq!(div_round_half_even(5, 2), 2); // 2.5 -> 2
        assert_eq!(div_round_half_even(7, 2), 4); // 3.5 -> 4
        assert_eq!(div_round_half_even(1, 2), 0); // 0.5 -> 0
        assert_eq!(div_round_half_even(3, 2), 2); // 1.5 -> 2
        assert_eq!(div_round_half_even(-5, 2), -2); // -2.5 -> -2
        assert_eq!(div_round_half_even(-7, 2), -4); // -3.5 -> -4
        assert_eq!(div_round_half_even(10, 4), 2); // 2.5 -> 2
        assert_eq!(div_round_half_even(11, 4), 3); // 2.75 -> 3
        assert_eq!(div_round_half_even(9, 4), 2); // 2.25 -> 2
        assert_eq!(div_round_half_even(183, 365), 1); // 0.5013... -> 1
        assert_eq!(div_round_half_even(182, 365), 0); // 0.4986... -> 0
        assert_eq!(div_round_half_even(0, 365), 0);
    }

    #[test]
    fn one_day_on_ten_thousand_dollars_at_two_and_a_half_percent() {
        // 10,000.00 USD = 1,000,000 minor; 2.50 % = 25,000 ppm.
        // Exact day: 1,000,000 x 25,000 / 365 = 25,000,000,000 / 365
        //          = 68,493,150.684931... micro-minor = 0.68493150... USD.
        let day = ExactInterest::for_day(1_000_000, usd());
        assert_eq!(day.numerator(), 25_000_000_000);
        assert_eq!(day.micro(), 68_493_151); // .6849 rounds up
        assert_eq!(day.minor(), 68); // 68.49 minor rounds down
    }

    #[test]
    fn totals_round_once_from_the_exact_sum() {
        // Three days at 1,000,000 minor and 2.50 %: 75,000,000,000 / 365
        // = 205,479,452.054794... micro-minor -> 205,479,452 (whereas three rounded days would
        // sum to 3 x 68,493,151 = 205,479,453), and 205.479452 minor posts as 205 = 2.05 USD.
        let day = ExactInterest::for_day(1_000_000, usd());
        let total: ExactInterest = [day, day, day].into_iter().sum();
        assert_eq!(total.micro(), 205_479_452);
        assert_eq!(total.minor(), 205);
        // A whole year of 365 days is exactly the annual rate: 1,000,000 x 2.5 % = 25,000 minor.
        let year: ExactInterest = std::iter::repeat_n(day, 365).sum();
        assert_eq!(year.micro(), 25_000_000_000);
        assert_eq!(year.minor(), 25_000);
    }

    #[test]
    fn posting_ties_round_half_even() {
        // 1 minor at 182.5 % for one day: 1 x 1,825,000 / 365 = 5,000 micro exactly.
        let rate = AnnualRate::parse_percent("182.5").unwrap();
        let day = ExactInterest::for_day(1, rate);
        assert_eq!(day.micro(), 5_000);
        // 100 of those days = 500,000 micro = 0.5 minor: a tie, posted as 0 (even).
        let hundred: ExactInterest = std::iter::repeat_n(day, 100).sum();
        assert_eq!(hundred.micro(), 500_000);
        assert_eq!(hundred.minor(), 0);
        // 300 days = 1.5 minor: a tie, posted as 2 (even).
        let three_hundred: ExactInterest = std::iter::repeat_n(day, 300).sum();
        assert_eq!(three_hundred.minor(), 2);
    }

    #[test]
    fn sparse_balances_fill_every_calendar_day_including_the_leap_day() {
        // 2024 is a leap year: Feb 28, Feb 29, Mar 1 are three days.
        let balances = [
            ClosingBalance {
                day: d("2024-02-28"),
                balance_minor: 36_500,
            },
            ClosingBalance {
                day: d("2024-03-01"),
                balance_minor: 73_000,
            },
        ];
        // 10 % = 100,000 ppm. 36,500 x 100,000 / 365 = 10,000,000 micro = 10 minor per day.
        let rate = AnnualRate::parse_percent("10").unwrap();
        let days = accrue_days(
            &balances,
            &RateSchedule::flat(rate),
            d("2024-02-27"),
            d("2024-03-02"),
        );
        let got: Vec<(String, i64, i128)> = days
            .iter()
            .map(|a| (a.day.to_string(), a.balance_minor, a.interest.micro()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("2024-02-27".into(), 0, 0),
                ("2024-02-28".into(), 36_500, 10_000_000),
                ("2024-02-29".into(), 36_500, 10_000_000),
                ("2024-03-01".into(), 73_000, 20_000_000),
                ("2024-03-02".into(), 73_000, 20_000_000),
            ]
        );
        let total: ExactInterest = days.iter().map(|a| a.interest).sum();
        assert_eq!(total.minor(), 60);
    }

    #[test]
    fn the_row_before_the_range_opens_it() {
        let balances = [ClosingBalance {
            day: d("2024-01-01"),
            balance_minor: 1_000,
        }];
        let days = accrue_days(
            &balances,
            &RateSchedule::flat(usd()),
            d("2024-01-10"),
            d("2024-01-10"),
        );
        assert_eq!(days.len(), 1);
        assert_eq!(days[0].balance_minor, 1_000);
        assert!(
            accrue_days(
                &balances,
                &RateSchedule::flat(usd()),
                d("2024-01-11"),
                d("2024-01-10")
            )
            .is_empty()
        );
    }

    #[test]
    fn the_rate_of_a_day_is_the_latest_effective_on_or_before_it() {
        let schedule = RateSchedule::new(vec![
            (d("2024-03-01"), AnnualRate::parse_percent("3").unwrap()),
            (d("2024-01-01"), usd()),
        ]);
        assert_eq!(schedule.rate_on(d("2023-12-31")), AnnualRate::ZERO);
        assert_eq!(schedule.rate_on(d("2024-01-01")), usd());
        assert_eq!(schedule.rate_on(d("2024-02-29")), usd());
        assert_eq!(schedule.rate_on(d("2024-03-01")).ppm(), 30_000);
        assert_eq!(
            RateSchedule::default().rate_on(d("2024-03-01")),
            AnnualRate::ZERO
        );
    }

    #[test]
    fn largest_balance_and_rate_do_not_overflow() {
        let rate = AnnualRate::parse_percent("999.9999").unwrap();
        let day = ExactInterest::for_day(i64::MAX, rate);
        assert!(day.micro() > 0);
        assert!(day.checked_add(day).is_some());
    }
}
