//! The reporting rules, as pure functions over an account's deposits.
//!
//! **Threshold.** `ctr_threshold_minor` is in minor units of the deposit's own currency:
//! 1,000,000 is 10,000.00 USD or EUR, but 1,000,000 JPY (no minor digits) and 1,000.000 BHD
//! (three). There is no currency conversion; amounts in different currencies are never added.
//!
//! **Rule 1, CTR.** A single deposit of at least the threshold raises one `ctr` alert.
//!
//! **Rule 2, structuring.** Only deposits *under* the threshold count. A window is the closed
//! interval `[end - 24 h, end]` ending at one of the account's deposits (24 h is the configured
//! `structuring_window`). When the sub-threshold deposits in one currency inside a window add up
//! to at least the threshold, one `structuring` alert is raised for that window, unless an
//! existing structuring alert of the account has a window that overlaps it. Consequences:
//! - a run of small deposits raises one alert, at the deposit that reaches the threshold, not
//!   one per further deposit: the later windows overlap the first;
//! - two structuring alerts of an account are more than 24 h apart (their window ends), so no
//!   deposit is ever counted in two structuring alerts;
//! - the windows examined for a new deposit at `t` are those ending at `t` and, for a deposit
//!   that arrives late, those ending at the account's later deposits up to `t + 24 h`: the same
//!   alerts as if the deposits had arrived in time order (bar the deduplication choice).

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

/// The rules' parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Reporting threshold in minor units of the deposit's currency (> 0).
    pub ctr_threshold_minor: i64,
    /// Length of the structuring window (24 h).
    pub structuring_window: TimeDelta,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            ctr_threshold_minor: 1_000_000,
            structuring_window: TimeDelta::hours(24),
        }
    }
}

/// What the rules know of a deposit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    pub event_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub occurred_at: DateTime<Utc>,
}

/// A closed interval of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// Closed intervals: windows that share only an endpoint overlap (a deposit at that instant
    /// would be in both).
    pub fn overlaps(&self, other: &Window) -> bool {
        self.start <= other.end && other.start <= self.end
    }

    pub fn contains(&self, t: DateTime<Utc>) -> bool {
        self.start <= t && t <= self.end
    }
}

/// A structuring finding: the window, its total and the deposits in it (in time order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Structuring {
    pub window: Window,
    pub total_minor: i64,
    pub event_ids: Vec<Uuid>,
}

impl Rules {
    /// Rule 1: at or over the threshold.
    pub fn is_ctr(&self, deposit: &Deposit) -> bool {
        deposit.amount_minor >= self.ctr_threshold_minor
    }

    /// Rule 2 for a newly recorded `deposit`.
    ///
    /// `history` is the account's deposits around it (at least `deposit.occurred_at ± 24 h`),
    /// in any order, including `deposit` itself; `existing` are the windows of the account's
    /// structuring alerts. Returns the first (earliest-ending) window that contains the deposit,
    /// reaches the threshold and overlaps no existing alert.
    pub fn structuring(
        &self,
        history: &[Deposit],
        deposit: &Deposit,
        existing: &[Window],
    ) -> Option<Structuring> {
        if self.is_ctr(deposit) {
            return None;
        }
        let mut counted: Vec<&Deposit> = history
            .iter()
            .filter(|d| d.currency == deposit.currency && !self.is_ctr(d))
            .collect();
        counted.sort_by_key(|d| (d.occurred_at, d.event_id));
        let t = deposit.occurred_at;
        let last_end = t + self.structuring_window;
        // Every window containing t ends at a deposit in [t, t + 24 h]: t's own is the first.
        let ends = counted
            .iter()
            .map(|d| d.occurred_at)
            .filter(|end| t <= *end && *end <= last_end);
        let mut previous_end = None;
        for end in ends {
            if previous_end == Some(end) {
                continue; // Deposits at the same instant share one window.
            }
            previous_end = Some(end);
            let window = Window {
                start: end - self.structuring_window,
                end,
            };
            let inside: Vec<&Deposit> = counted
                .iter()
                .copied()
                .filter(|d| window.contains(d.occurred_at))
                .collect();
            // Summed in i128: many amounts just under the threshold cannot overflow.
            let total: i128 = inside.iter().map(|d| i128::from(d.amount_minor)).sum();
            if total >= i128::from(self.ctr_threshold_minor)
                && !existing.iter().any(|w| w.overlaps(&window))
            {
                return Some(Structuring {
                    window,
                    total_minor: i64::try_from(total).unwrap_or(i64::MAX),
                    event_ids: inside.iter().map(|d| d.event_id).collect(),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn dep(amount_minor: i64, occurred_at: &str) -> Deposit {
        Deposit {
            event_id: Uuid::now_v7(),
            amount_minor,
            currency: "USD".into(),
            occurred_at: at(occurred_at),
        }
    }

    /// Feeds deposits one at a time in the given order, as the handler does, and returns the
    /// windows of the alerts raised, with the index of the deposit that raised each.
    fn run(rules: &Rules, deposits: &[Deposit]) -> Vec<(usize, Structuring)> {
        let mut history = Vec::new();
        let mut windows = Vec::new();
        let mut alerts = Vec::new();
        for (i, d) in deposits.iter().enumerate() {
            history.push(d.clone());
            if let Some(s) = rules.structuring(&history, d, &windows) {
                windows.push(s.window);
                alerts.push((i, s));
            }
        }
        alerts
    }

    #[test]
    fn ctr_is_at_or_over_the_threshold() {
        let rules = Rules::default();
        assert!(rules.is_ctr(&dep(1_000_000, "2024-01-01T00:00:00Z")));
        assert!(rules.is_ctr(&dep(5_000_000, "2024-01-01T00:00:00Z")));
        assert!(!rules.is_ctr(&dep(999_999, "2024-01-01T00:00:00Z")));
    }

    #[test]
    fn small_deposits_reaching_the_threshold_within_24_hours_raise_one_alert() {
        let rules = Rules::default();
        let deposits = [
            dep(400_000, "2024-01-01T00:00:00Z"),
            dep(400_000, "2024-01-01T10:00:00Z"),
            dep(200_000, "2024-01-01T23:00:00Z"), // total 1,000,000: reached
            dep(300_000, "2024-01-02T05:00:00Z"), // still structuring, but overlapping
            dep(300_000, "2024-01-02T06:00:00Z"),
        ];
        let alerts = run(&rules, &deposits);
        assert_eq!(alerts.len(), 1);
        let (index, s) = &alerts[0];
        assert_eq!(*index, 2);
        assert_eq!(s.total_minor, 1_000_000);
        assert_eq!(s.window.end, at("2024-01-01T23:00:00Z"));
        assert_eq!(s.window.start, at("2023-12-31T23:00:00Z"));
        assert_eq!(s.event_ids.len(), 3);
    }

    #[test]
    fn the_same_sum_spread_over_more_than_24_hours_raises_nothing() {
        let rules = Rules::default();
        let deposits = [
            dep(500_000, "2024-01-01T00:00:00Z"),
            dep(500_000, "2024-01-02T00:00:01Z"), // 24 h and 1 s later
        ];
        assert!(run(&rules, &deposits).is_empty());
        // Exactly 24 h apart is within the (closed) window.
        let deposits = [
            dep(500_000, "2024-01-01T00:00:00Z"),
            dep(500_000, "2024-01-02T00:00:00Z"),
        ];
        assert_eq!(run(&rules, &deposits).len(), 1);
    }

    #[test]
    fn ctr_deposits_and_other_currencies_do_not_count_towards_structuring() {
        let rules = Rules::default();
        let mut eur = dep(600_000, "2024-01-01T01:00:00Z");
        eur.currency = "EUR".into();
        let deposits = [
            dep(1_000_000, "2024-01-01T00:00:00Z"), // a CTR, not structuring
            eur,
            dep(600_000, "2024-01-01T02:00:00Z"),
        ];
        assert!(run(&rules, &deposits).is_empty());
    }

    #[test]
    fn a_later_run_more_than_a_day_after_the_first_alert_raises_a_second() {
        let rules = Rules::default();
        let deposits = [
            dep(600_000, "2024-01-01T00:00:00Z"),
            dep(600_000, "2024-01-01T01:00:00Z"), // alert 1, window ends Jan 1 01:00
            dep(600_000, "2024-01-02T02:00:00Z"), // window [Jan 1 02:00, Jan 2 02:00]: 600,000
            dep(600_000, "2024-01-02T03:00:00Z"), // alert 2: no overlap with alert 1's window
        ];
        let alerts = run(&rules, &deposits);
        assert_eq!(
            alerts.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![1, 3]
        );
        assert_eq!(alerts[1].1.total_minor, 1_200_000);
    }

    #[test]
    fn a_late_deposit_completes_a_window_ending_at_a_later_deposit() {
        let rules = Rules::default();
        // In delivery order: 10:00, then 12:00, then a late one dated 08:00.
        let deposits = [
            dep(400_000, "2024-01-01T10:00:00Z"),
            dep(400_000, "2024-01-01T12:00:00Z"),
            dep(300_000, "2024-01-01T08:00:00Z"),
        ];
        let alerts = run(&rules, &deposits);
        assert_eq!(alerts.len(), 1);
        let (index, s) = &alerts[0];
        assert_eq!(*index, 2);
        assert_eq!(s.window.end, at("2024-01-01T12:00:00Z"));
        assert_eq!(s.total_minor, 1_100_000);
    }

    #[test]
    fn the_threshold_is_configurable_and_windows_overlap_when_they_touch() {
        let rules = Rules {
            ctr_threshold_minor: 100,
            structuring_window: TimeDelta::hours(1),
        };
        let alerts = run(
            &rules,
            &[
                dep(60, "2024-01-01T00:00:00Z"),
                dep(60, "2024-01-01T00:30:00Z"),
            ],
        );
        assert_eq!(alerts.len(), 1);
        let a = Window {
            start: at("2024-01-01T00:00:00Z"),
            end: at("2024-01-01T01:00:00Z"),
        };
        let b = Window {
            start: at("2024-01-01T01:00:00Z"),
            end: at("2024-01-01T02:00:00Z"),
        };
        let c = Window {
            start: at("2024-01-01T01:00:01Z"),
            end: at("2024-01-01T02:00:00Z"),
        };
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&c));
    }
}
