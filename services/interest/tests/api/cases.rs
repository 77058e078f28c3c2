//! Table-driven accrual cases, each expected value computed by hand (the arithmetic is in the
//! comments) and checked through the handler and `GET /interest/accounts/{id}?from&to`.
//!
//! Actual/365: a day accrues `closing balance x rate / 365`. Rates as stored: USD 2.50 %
//! (25,000 ppm), EUR 1.75 % (17,500), GBP 3.00 % (30,000), anything else 0. A day's
//! `accrued_micro` is `balance_minor x ppm / 365` rounded half-even; the totals are the exact sum
//! rounded once, to micro-minor and (for posting) to minor units, both half-even.

use crate::helpers::{deposit, setup};
use serde_json::Value;

/// Deposits delivered one at a time in this order, then one query and what it must answer.
struct Step {
    /// (account, currency, amount_minor, occurred_at)
    deliver: &'static [(&'static str, &'static str, i64, &'static str)],
    /// (account, from, to)
    query: (&'static str, &'static str, &'static str),
    /// Every reported day as (day, closing_balance_minor, rate, accrued_micro); `None` when
    /// the range is too long to list (then only `day_count` and the totals are checked).
    days: Option<&'static [(&'static str, i64, &'static str, i64)]>,
    day_count: usize,
    total_micro: i64,
    total_minor: i64,
    total: &'static str,
}

struct Case {
    name: &'static str,
    /// Extra rows for the `rates` table: (currency, effective_from, percent).
    rates: &'static [(&'static str, &'static str, &'static str)],
    steps: &'static [Step],
}

const CASES: &[Case] = &[
    Case {
        name: "a non-round balance: days are rounded for display, the total only once",
        rates: &[],
        steps: &[Step {
            // 1,234.56 USD = 123,456 minor. A day: 123,456 x 25,000 / 365
            // = 3,086,400,000 / 365 = 8,455,890.41 -> 8,455,890 micro.
            // Three days: 9,259,200,000 / 365 = 25,367,671.23 -> 25,367,671 micro
            // (three rounded days would make 25,367,670), posted as 25 minor.
            deliver: &[("ACC-C1", "USD", 123_456, "2024-05-01T12:00:00Z")],
            query: ("ACC-C1", "2024-05-01", "2024-05-03"),
            days: Some(&[
                ("2024-05-01", 123_456, "2.50", 8_455_890),
                ("2024-05-02", 123_456, "2.50", 8_455_890),
                ("2024-05-03", 123_456, "2.50", 8_455_890),
            ]),
            day_count: 3,
            total_micro: 25_367_671,
            total_minor: 25,
            total: "0.25",
        }],
    },
    Case {
        name: "a back-dated deposit changes the days before the latest one",
        rates: &[],
        steps: &[
            Step {
                // Jun 10: 100,000 -> 2,500,000,000 / 365 = 6,849,315.07 -> 6,849,315.
                // Jun 12: 150,000 -> 3,750,000,000 / 365 = 10,273,972.60 -> 10,273,973.
                // Exact total (2 x 100,000 + 2 x 150,000) x 25,000 / 365
                // = 12,500,000,000 / 365 = 34,246,575.34 -> 34,246,575 micro, 34 minor.
                deliver: &[
                    ("ACC-C2", "USD", 100_000, "2024-06-10T09:00:00Z"),
                    ("ACC-C2", "USD", 50_000, "2024-06-12T09:00:00Z"),
                ],
                query: ("ACC-C2", "2024-06-09", "2024-06-13"),
                days: Some(&[
                    ("2024-06-10", 100_000, "2.50", 6_849_315),
                    ("2024-06-11", 100_000, "2.50", 6_849_315),
                    ("2024-06-12", 150_000, "2.50", 10_273_973),
                    ("2024-06-13", 150_000, "2.50", 10_273_973),
                ]),
                day_count: 4,
                total_micro: 34_246_575,
                total_minor: 34,
                total: "0.34",
            },
            Step {
                // 250.00 dated Jun 9 23:59:59 arrives last: Jun 9 opens the account and every
                // later day gains 25,000.
                // Jun 9: 25,000 -> 625,000,000 / 365 = 1,712,328.77 -> 1,712,329.
                // Jun 10-11: 125,000 -> 3,125,000,000 / 365 = 8,561,643.84 -> 8,561,644.
                // Jun 12-13: 175,000 -> 4,375,000,000 / 365 = 11,986,301.37 -> 11,986,301.
                // Exact total 625,000 x 25,000 / 365 = 42,808,219.18 -> 42,808,219 micro;
                // 42.808219 minor posts as 43.
                deliver: &[("ACC-C2", "USD", 25_000, "2024-06-09T23:59:59Z")],
                query: ("ACC-C2", "2024-06-09", "2024-06-13"),
                days: Some(&[
                    ("2024-06-09", 25_000, "2.50", 1_712_329),
                    ("2024-06-10", 125_000, "2.50", 8_561_644),
                    ("2024-06-11", 125_000, "2.50", 8_561_644),
                    ("2024-06-12", 175_000, "2.50", 11_986_301),
                    ("2024-06-13", 175_000, "2.50", 11_986_301),
                ]),
                day_count: 5,
                total_micro: 42_808_219,
                total_minor: 43,
                total: "0.43",
            },
        ],
    },
    Case {
        name: "23:59:59 UTC counts on its own day",
        rates: &[],
        steps: &[Step {
            // Mar 9: 36,500 -> 36,500 x 25,000 / 365 = 2,500,000 exactly.
            // Mar 10 23:59:59: +730,000 -> 766,500 = 365 x 2,100 -> 52,500,000 exactly.
            // Total 2,500,000 + 2 x 52,500,000 = 107,500,000 micro = 107.5 minor: a tie,
            // posted half-even as 108.
            deliver: &[
                ("ACC-C3A", "USD", 36_500, "2024-03-09T12:00:00Z"),
                ("ACC-C3A", "USD", 730_000, "2024-03-10T23:59:59Z"),
            ],
            query: ("ACC-C3A", "2024-03-09", "2024-03-11"),
            days: Some(&[
                ("2024-03-09", 36_500, "2.50", 2_500_000),
                ("2024-03-10", 766_500, "2.50", 52_500_000),
                ("2024-03-11", 766_500, "2.50", 52_500_000),
            ]),
            day_count: 3,
            total_micro: 107_500_000,
            total_minor: 108,
            total: "1.08",
        }],
    },
    Case {
        name: "00:00:00 UTC one second later counts on the next day",
        rates: &[],
        steps: &[Step {
            // The same deposits, the second one second later: Mar 10 keeps 36,500.
            // 2 x 2,500,000 + 52,500,000 = 57,500,000 micro = 57.5 minor -> 58 (half-even).
            // One second moved 50,000,000 micro (0.50 USD) of interest.
            deliver: &[
                ("ACC-C3B", "USD", 36_500, "2024-03-09T12:00:00Z"),
                ("ACC-C3B", "USD", 730_000, "2024-03-11T00:00:00Z"),
            ],
            query: ("ACC-C3B", "2024-03-09", "2024-03-11"),
            days: Some(&[
                ("2024-03-09", 36_500, "2.50", 2_500_000),
                ("2024-03-10", 36_500, "2.50", 2_500_000),
                ("2024-03-11", 766_500, "2.50", 52_500_000),
            ]),
            day_count: 3,
            total_micro: 57_500_000,
            total_minor: 58,
            total: "0.58",
        }],
    },
    Case {
        name: "February of a leap year has a 29th that accrues",
        rates: &[],
        steps: &[Step {
            // GBP 3.00 % on 1,000.00 = 100,000 minor: 3,000,000,000 / 365 = 8,219,178.08
            // -> 8,219,178 a day. Feb 28, Feb 29, Mar 1: 9,000,000,000 / 365
            // = 24,657,534.25 -> 24,657,534 micro, 25 minor.
            deliver: &[("ACC-C4A", "GBP", 100_000, "2024-02-28T08:00:00Z")],
            query: ("ACC-C4A", "2024-02-28", "2024-03-01"),
            days: Some(&[
                ("2024-02-28", 100_000, "3.00", 8_219_178),
                ("2024-02-29", 100_000, "3.00", 8_219_178),
                ("2024-03-01", 100_000, "3.00", 8_219_178),
            ]),
            day_count: 3,
            total_micro: 24_657_534,
            total_minor: 25,
            total: "0.25",
        }],
    },
    Case {
        name: "February of a common year does not",
        rates: &[],
        steps: &[Step {
            // Feb 28, Mar 1: 6,000,000,000 / 365 = 16,438,356.16 -> 16,438,356 micro, 16 minor.
            deliver: &[("ACC-C4B", "GBP", 100_000, "2023-02-28T08:00:00Z")],
            query: ("ACC-C4B", "2023-02-28", "2023-03-01"),
            days: Some(&[
                ("2023-02-28", 100_000, "3.00", 8_219_178),
                ("2023-03-01", 100_000, "3.00", 8_219_178),
            ]),
            day_count: 2,
            total_micro: 16_438_356,
            total_minor: 16,
            total: "0.16",
        }],
    },
    Case {
        name: "a deposit on the leap day itself, and a whole leap year pays 366/365 of the rate",
        rates: &[],
        steps: &[
            Step {
                // 3,650.00 GBP on Jan 1 2024: 365,000 x 30,000 / 365 = 30,000,000 a day.
                // 366 days of 2024: 10,980,000,000 micro = 10,980 minor (109.80 GBP), where
                // 3 % of 3,650.00 is 109.50: Actual/365 pays one day more in a leap year.
                deliver: &[("ACC-C5", "GBP", 365_000, "2024-01-01T00:00:00Z")],
                query: ("ACC-C5", "2024-01-01", "2024-12-31"),
                days: None,
                day_count: 366,
                total_micro: 10_980_000_000,
                total_minor: 10_980,
                total: "109.80",
            },
            Step {
                // +365,000 at Feb 29 23:59:59 counts on Feb 29: Feb 28 earns 30,000,000, Feb 29
                // and Mar 1 earn 730,000 x 30,000 / 365 = 60,000,000.
                deliver: &[("ACC-C5", "GBP", 365_000, "2024-02-29T23:59:59Z")],
                query: ("ACC-C5", "2024-02-28", "2024-03-01"),
                days: Some(&[
                    ("2024-02-28", 365_000, "3.00", 30_000_000),
                    ("2024-02-29", 730_000, "3.00", 60_000_000),
                    ("2024-03-01", 730_000, "3.00", 60_000_000),
                ]),
                day_count: 3,
                total_micro: 150_000_000,
                total_minor: 150,
                total: "1.50",
            },
        ],
    },
    Case {
        name: "posting rounds ties half-even",
        rates: &[],
        steps: &[
            Step {
                // EUR 1.75 % on 3,650.00: 365,000 x 17,500 / 365 = 17,500,000 = 17.5 minor a
                // day. One day: 17.5 -> 18 (17 is odd).
                deliver: &[("ACC-C6", "EUR", 365_000, "2024-07-01T12:00:00Z")],
                query: ("ACC-C6", "2024-07-01", "2024-07-01"),
                days: Some(&[("2024-07-01", 365_000, "1.75", 17_500_000)]),
                day_count: 1,
                total_micro: 17_500_000,
                total_minor: 18,
                total: "0.18",
            },
            Step {
                // Three days: 52.5 -> 52 (52 is even).
                deliver: &[],
                query: ("ACC-C6", "2024-07-01", "2024-07-03"),
                days: None,
                day_count: 3,
                total_micro: 52_500_000,
                total_minor: 52,
                total: "0.52",
            },
        ],
    },
    Case {
        name: "each day keeps the rate in force on it; a currency without a rate earns nothing",
        rates: &[("USD", "2024-01-03", "5.0000")],
        steps: &[
            Step {
                // 365,000 at 2.50 % = 25,000,000 a day, from Jan 3 at 5.00 % = 50,000,000.
                deliver: &[("ACC-C7", "USD", 365_000, "2024-01-01T00:00:00Z")],
                query: ("ACC-C7", "2024-01-01", "2024-01-04"),
                days: Some(&[
                    ("2024-01-01", 365_000, "2.50", 25_000_000),
                    ("2024-01-02", 365_000, "2.50", 25_000_000),
                    ("2024-01-03", 365_000, "5.00", 50_000_000),
                    ("2024-01-04", 365_000, "5.00", 50_000_000),
                ]),
                day_count: 4,
                total_micro: 150_000_000,
                total_minor: 150,
                total: "1.50",
            },
            Step {
                deliver: &[("ACC-C7J", "JPY", 1_000_000, "2024-01-01T00:00:00Z")],
                query: ("ACC-C7J", "2024-01-01", "2024-01-02"),
                days: Some(&[
                    ("2024-01-01", 1_000_000, "0.00", 0),
                    ("2024-01-02", 1_000_000, "0.00", 0),
                ]),
                day_count: 2,
                total_micro: 0,
                total_minor: 0,
                total: "0",
            },
        ],
    },
];

#[tokio::test]
async fn hand_computed_accruals() {
    for case in CASES {
        let app = setup().await;
        let base = app.serve().await;
        for (currency, from, percent) in case.rates {
            sqlx::query(
                "INSERT INTO rates (currency, effective_from, annual_rate_percent) \
                 VALUES ($1, $2::date, $3::numeric)",
            )
            .bind(currency)
            .bind(from)
            .bind(percent)
            .execute(&app.db.pool)
            .await
            .unwrap();
        }
        for (n, step) in case.steps.iter().enumerate() {
            let what = format!("{} (step {})", case.name, n + 1);
            for (account, currency, amount, at) in step.deliver {
                app.apply(&[deposit(account, currency, *amount, at)]).await;
            }
            let (account, from, to) = step.query;
            let (status, _, body) = app
                .get(
                    &base,
                    &format!("/interest/accounts/{account}?from={from}&to={to}"),
                )
                .await;
            assert_eq!(status, 200, "{what}: {body}");
            let days = body["days"].as_array().unwrap();
            assert_eq!(days.len(), step.day_count, "{what}: {body}");
            if let Some(expected) = step.days {
                let got: Vec<(String, i64, String, i64)> = days.iter().map(day_tuple).collect();
                let want: Vec<(String, i64, String, i64)> = expected
                    .iter()
                    .map(|(d, b, r, m)| ((*d).to_owned(), *b, (*r).to_owned(), *m))
                    .collect();
                assert_eq!(got, want, "{what}");
            }
            assert_eq!(body["total_accrued_micro"], step.total_micro, "{what}");
            assert_eq!(body["total_accrued_minor"], step.total_minor, "{what}");
            assert_eq!(body["total_accrued"], step.total, "{what}");
        }
        app.finish().await;
    }
}

fn day_tuple(day: &Value) -> (String, i64, String, i64) {
    (
        day["day"].as_str().unwrap().to_owned(),
        day["closing_balance_minor"].as_i64().unwrap(),
        day["rate"].as_str().unwrap().to_owned(),
        day["accrued_micro"].as_i64().unwrap(),
    )
}
