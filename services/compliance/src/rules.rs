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
//! `structuring_window`); it *reaches* the threshold when the sub-threshold deposits of one
//! currency inside it add up to at least the threshold.
//!
//! The structuring alerts of an account and currency are a function of its deposits alone,
//! whatever order they arrived in: walk the windows in the order of their end; a window that
//! reaches the threshold and does not overlap the last alert's window is an alert. So:
//! - a run of small deposits raises one alert, at the deposit that reaches the threshold, not
//!   one per further deposit: the later windows overlap the first;
//! - two structuring alerts of an account are more than 24 h apart (their window ends), so no
//!   deposit is ever counted in two structuring alerts;
//! - an alert is attributed to the deposit at the end of its window (the one that, in time
//!   order, made the window reach the threshold).
//!
//! A deposit that arrives late (reordered or redelivered) can only change the windows that
//! contain it, those ending in `[t, t + 24 h]`, and through them the choices after them: the
//! handler recomputes the alerts from `t` on and supersedes those that are no longer what the
//! walk gives ([`Rules::structuring_from`]). Clean and reordered delivery end with the same
//! active alerts.
//!
//! **In time order.** A deposit at or after the latest one of its account and currency only
//! adds windows at its end. Their totals come from running totals (the sum of the
//! sub-threshold amounts through each deposit, in time order): the total of `[s, e]` is the
//! running total through `e` minus the one before `s`. [`Rules::in_order_ends`] and
//! [`Rules::structuring_in_order`] walk those windows from the totals alone, and give the
//! alerts [`Rules::structuring_from`] gives.

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
    /// The deposit at the end of the window (the last one in time order): the alert's event.
    pub event_id: Uuid,
    /// The deposits counted, in (time, event id) order.
    pub event_ids: Vec<Uuid>,
}

impl Rules {
    /// Rule 1: at or over the threshold.
    pub fn is_ctr(&self, deposit: &Deposit) -> bool {
        deposit.amount_minor >= self.ctr_threshold_minor
    }

    /// Rule 2: the structuring alerts whose windows end at or after `from`, for the deposits of
    /// one account in one currency.
    ///
    /// `deposits` must hold every deposit of the account and currency that occurred at or after
    /// `from - window` (in any order; CTR-sized ones are ignored). `previous` is the window of
    /// the account's last structuring alert ending before `from`, if any: the walk continues
    /// from it. The result is in window order.
    pub fn structuring_from(
        &self,
        deposits: &[Deposit],
        from: DateTime<Utc>,
        previous: Option<Window>,
    ) -> Vec<Structuring> {
        let mut counted: Vec<&Deposit> = deposits.iter().filter(|d| !self.is_ctr(d)).collect();
        counted.sort_by_key(|d| (d.occurred_at, d.event_id));
        // prefix[i] = sum of the first i amounts, in i128 so that many amounts just under the
        // threshold cannot overflow.
        let mut prefix: Vec<i128> = Vec::with_capacity(counted.len() + 1);
        prefix.push(0);
        for d in &counted {
            let last = prefix.last().copied().unwrap_or(0);
            prefix.push(last + i128::from(d.amount_minor));
        }
        let threshold = i128::from(self.ctr_threshold_minor);
        let mut last = previous;
        let mut found = Vec::new();
        let mut first_inside = 0;
        for (i, d) in counted.iter().enumerate() {
            let end = d.occurred_at;
            // Deposits at the same instant share one window: evaluate it at the last of them.
            if counted
                .get(i + 1)
                .is_some_and(|next| next.occurred_at == end)
                || end < from
            {
                continue;
            }
            let Some(start) = end.checked_sub_signed(self.structuring_window) else {
                continue;
            };
            let window = Window { start, end };
            while counted
                .get(first_inside)
                .is_some_and(|d| d.occurred_at < start)
            {
                first_inside += 1;
            }
            if last.is_some_and(|w| w.overlaps(&window)) {
                continue;
            }
            let total = prefix[i + 1] - prefix[first_inside];
            if total >= threshold {
                found.push(Structuring {
                    window,
                    total_minor: i64::try_from(total).unwrap_or(i64::MAX),
                    event_id: d.event_id,
                    event_ids: counted[first_inside..=i]
                        .iter()
                        .map(|d| d.event_id)
                        .collect(),
                });
                last = Some(window);
            }
        }
        found
    }
}

/// The running total of one account and currency: where the next in-order deposit continues.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rolling {
    /// The latest instant of a sub-threshold deposit, if any.
    pub last_at: Option<DateTime<Utc>>,
    /// The sum of every sub-threshold amount so far.
    pub total: i128,
}

/// The running total before an instant, where a window starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    /// Known from the rolling state or the batch itself.
    Known(i128),
    /// Only the recorded deposits can tell: the running total of the last one before this
    /// instant (0 if none), one index probe.
    Probe(DateTime<Utc>),
}

/// A window the in-order walk evaluates: it ends at `end`, holds every deposit through the
/// running total `through`, and none before `before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingEnd {
    pub window: Window,
    pub through: i128,
    pub before: Before,
}

impl Rules {
    /// The windows that end at a batch's new deposits of one account and currency, when none
    /// of them is earlier than `rolling.last_at`. `new` holds the batch's sub-threshold
    /// deposits with their running totals, in the order the totals were given (time order).
    /// A window whose start only recorded deposits can settle asks for a probe.
    pub fn in_order_ends(
        &self,
        rolling: Rolling,
        new: &[(DateTime<Utc>, i128)],
    ) -> Vec<PendingEnd> {
        let mut ends = Vec::new();
        // new[..first_inside] are before the current window's start (starts only grow).
        let mut first_inside = 0;
        for (i, (end, through)) in new.iter().enumerate() {
            // Deposits at the same instant share one window: evaluate it at the last of them.
            if new.get(i + 1).is_some_and(|(next, _)| next == end) {
                continue;
            }
            let Some(start) = end.checked_sub_signed(self.structuring_window) else {
                continue;
            };
            while new.get(first_inside).is_some_and(|(t, _)| *t < start) {
                first_inside += 1;
            }
            let before = match first_inside.checked_sub(1).and_then(|j| new.get(j)) {
                // Every recorded deposit is at or before the batch's first one.
                Some((_, total)) => Before::Known(*total),
                None if rolling.last_at.is_none_or(|last| last < start) => {
                    Before::Known(rolling.total)
                }
                None => Before::Probe(start),
            };
            ends.push(PendingEnd {
                window: Window { start, end: *end },
                through: *through,
                before,
            });
        }
        ends
    }

    /// Rule 2 from window totals: `windows` (in end order, each with its total) are walked as
    /// [`Rules::structuring_from`] walks its windows, continuing from `previous`. Returns the
    /// windows that alert, with their totals.
    pub fn structuring_in_order(
        &self,
        windows: &[(Window, i128)],
        previous: Option<Window>,
    ) -> Vec<(Window, i128)> {
        let threshold = i128::from(self.ctr_threshold_minor);
        let mut last = previous;
        let mut found = Vec::new();
        for (window, total) in windows {
            if last.is_some_and(|w| w.overlaps(window)) || *total < threshold {
                continue;
            }
            found.push((*window, *total));
            last = Some(*window);
        }
        found
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

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

    /// Feeds deposits one at a time in the given (delivery) order, as the handler does: each
    /// recomputes the alerts from its own time on, continuing from the last alert before it,
    /// and replaces the alerts ending from then on. Returns the active alerts in window order.
    fn run(rules: &Rules, deposits: &[Deposit]) -> Vec<Structuring> {
        let mut history: Vec<Deposit> = Vec::new();
        let mut active: Vec<Structuring> = Vec::new();
        for d in deposits {
            history.push(d.clone());
            if rules.is_ctr(d) {
                continue;
            }
            let t = d.occurred_at;
            active.sort_by_key(|s| s.window.end);
            let previous = active
                .iter()
                .filter(|s| s.window.end < t)
                .map(|s| s.window)
                .next_back();
            active.retain(|s| s.window.end < t);
            active.extend(rules.structuring_from(&history, t, previous));
        }
        active.sort_by_key(|s| s.window.end);
        active
    }

    /// The alerts computed from scratch over every deposit.
    fn from_scratch(rules: &Rules, deposits: &[Deposit]) -> Vec<Structuring> {
        rules.structuring_from(deposits, DateTime::<Utc>::MIN_UTC, None)
    }

    /// Feeds deposits in time order, in batches of the given sizes, through the in-order
    /// path alone: running totals, probes answered from the recorded deposits, and the walk
    /// over window totals. Returns the active alerts in window order.
    fn run_in_order(rules: &Rules, deposits: &[Deposit], sizes: &[usize]) -> Vec<Structuring> {
        let mut in_time: Vec<Deposit> = deposits.to_vec();
        in_time.sort_by_key(|d| d.occurred_at);
        // (deposit, running total), as the deposits table records them.
        let mut recorded: Vec<(Deposit, i128)> = Vec::new();
        let mut rolling = Rolling::default();
        let mut active: Vec<Structuring> = Vec::new();
        let mut rest = in_time.as_slice();
        let mut size = sizes.iter().copied().cycle();
        while !rest.is_empty() {
            let n = size.next().unwrap_or(1).clamp(1, rest.len());
            let (batch, tail) = rest.split_at(n);
            rest = tail;
            let mut new: Vec<(DateTime<Utc>, i128)> = Vec::new();
            let mut total = rolling.total;
            for d in batch.iter().filter(|d| !rules.is_ctr(d)) {
                assert!(rolling.last_at.is_none_or(|last| last <= d.occurred_at));
                total += i128::from(d.amount_minor);
                new.push((d.occurred_at, total));
                recorded.push((d.clone(), total));
            }
            let Some(&(from, _)) = new.first() else {
                continue;
            };
            let before = |at: DateTime<Utc>| {
                recorded
                    .iter()
                    .filter(|(d, _)| d.occurred_at < at)
                    .map(|(_, total)| *total)
                    .max()
                    .unwrap_or(0)
            };
            let windows: Vec<(Window, i128)> = rules
                .in_order_ends(rolling, &new)
                .into_iter()
                .map(|end| {
                    let before = match end.before {
                        Before::Known(total) => total,
                        Before::Probe(at) => before(at),
                    };
                    (end.window, end.through - before)
                })
                .collect();
            active.sort_by_key(|s| s.window.end);
            let previous = active
                .iter()
                .filter(|s| s.window.end < from)
                .map(|s| s.window)
                .next_back();
            active.retain(|s| s.window.end < from);
            for (window, total) in rules.structuring_in_order(&windows, previous) {
                let mut inside: Vec<&Deposit> = recorded
                    .iter()
                    .map(|(d, _)| d)
                    .filter(|d| window.contains(d.occurred_at))
                    .collect();
                inside.sort_by_key(|d| (d.occurred_at, d.event_id));
                active.push(Structuring {
                    window,
                    total_minor: i64::try_from(total).unwrap_or(i64::MAX),
                    event_id: inside.last().unwrap().event_id,
                    event_ids: inside.iter().map(|d| d.event_id).collect(),
                });
            }
            rolling = Rolling {
                last_at: new.last().map(|(t, _)| *t),
                total,
            };
        }
        active.sort_by_key(|s| s.window.end);
        active
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
        let s = &alerts[0];
        assert_eq!(s.event_id, deposits[2].event_id);
        assert_eq!(s.total_minor, 1_000_000);
        assert_eq!(s.window.end, at("2024-01-01T23:00:00Z"));
        assert_eq!(s.window.start, at("2023-12-31T23:00:00Z"));
        assert_eq!(
            s.event_ids,
            deposits[..3].iter().map(|d| d.event_id).collect::<Vec<_>>()
        );
        assert_eq!(alerts, from_scratch(&rules, &deposits));
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
    fn ctr_deposits_do_not_count_towards_structuring() {
        let rules = Rules::default();
        let deposits = [
            dep(1_000_000, "2024-01-01T00:00:00Z"), // a CTR, not structuring
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
            alerts.iter().map(|s| s.event_id).collect::<Vec<_>>(),
            vec![deposits[1].event_id, deposits[3].event_id]
        );
        assert_eq!(alerts[1].total_minor, 1_200_000);
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
        // In time order the 12:00 deposit reached the threshold: the alert is its.
        assert_eq!(alerts[0].event_id, deposits[1].event_id);
        assert_eq!(alerts[0].window.end, at("2024-01-01T12:00:00Z"));
        assert_eq!(alerts[0].total_minor, 1_100_000);
    }

    #[test]
    fn a_late_deposit_moves_an_alert_to_the_window_time_order_would_have_chosen() {
        let rules = Rules::default();
        // Delivered X (00:00), Y (10:00), then Z (05:00) late. On its own, X + Y reach the
        // threshold at 10:00; with Z, X + Z reach it at 05:00 already, and the 10:00 window
        // overlaps that one: in time order there is one alert, ending at 05:00.
        let x = dep(600_000, "2024-01-01T00:00:00Z");
        let y = dep(600_000, "2024-01-01T10:00:00Z");
        let z = dep(600_000, "2024-01-01T05:00:00Z");
        let after_two = run(&rules, &[x.clone(), y.clone()]);
        assert_eq!(after_two.len(), 1);
        assert_eq!(after_two[0].event_id, y.event_id);
        let late = run(&rules, &[x.clone(), y.clone(), z.clone()]);
        let in_time_order = run(&rules, &[x.clone(), z.clone(), y.clone()]);
        assert_eq!(late, in_time_order);
        assert_eq!(late.len(), 1);
        assert_eq!(late[0].event_id, z.event_id);
        assert_eq!(late[0].total_minor, 1_200_000);
    }

    #[test]
    fn deposits_at_the_same_instant_share_one_window() {
        let rules = Rules::default();
        let deposits = [
            dep(500_000, "2024-01-01T00:00:00Z"),
            dep(500_000, "2024-01-01T00:00:00Z"),
            dep(500_000, "2024-01-01T00:00:00Z"),
        ];
        let alerts = run(&rules, &deposits);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].total_minor, 1_500_000);
        assert_eq!(alerts[0].event_ids.len(), 3);
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

    proptest! {
        /// Whatever the delivery order, the alerts are those of the deposits in time order,
        /// which are those computed from scratch.
        #[test]
        fn any_delivery_order_ends_with_the_alerts_of_time_order(
            plan in proptest::collection::vec((1_i64..=700_000, 0_i64..(72 * 60)), 1..25),
            seed in any::<u64>(),
        ) {
            let rules = Rules::default();
            let base = at("2024-01-01T00:00:00Z");
            let deposits: Vec<Deposit> = plan
                .iter()
                .map(|(amount, minute)| Deposit {
                    event_id: Uuid::now_v7(),
                    amount_minor: *amount,
                    currency: "USD".into(),
                    occurred_at: base + TimeDelta::minutes(*minute),
                })
                .collect();
            let mut in_time = deposits.clone();
            in_time.sort_by_key(|d| (d.occurred_at, d.event_id));
            // A deterministic shuffle from the seed (the tests' one shuffle).
            let shuffled = eventbank_runtime::testing::shuffled(&deposits, seed);
            let expected = from_scratch(&rules, &deposits);
            prop_assert_eq!(run(&rules, &in_time), expected.clone());
            prop_assert_eq!(run(&rules, &shuffled), expected);
        }

        /// Deposits in time order, in batches of any size, give through the running totals
        /// the alerts of the full walk: same-instant deposits, CTR-sized ones and windows of
        /// exactly 24 h included (minutes on a 4 h grid make many).
        #[test]
        fn the_in_order_path_gives_the_alerts_of_the_full_walk(
            plan in proptest::collection::vec(
                (prop_oneof![1_i64..=700_000, 990_000_i64..=1_500_000], 0_i64..18, 0_i64..3),
                1..40,
            ),
            sizes in proptest::collection::vec(1_usize..6, 1..4),
        ) {
            let rules = Rules::default();
            let base = at("2024-01-01T00:00:00Z");
            let deposits: Vec<Deposit> = plan
                .iter()
                .map(|(amount, slot, jitter)| Deposit {
                    event_id: Uuid::now_v7(),
                    amount_minor: *amount,
                    currency: "USD".into(),
                    // Slots 4 h apart (6 slots = exactly 24 h), sometimes a second later.
                    occurred_at: base + TimeDelta::hours(4 * slot) + TimeDelta::seconds(*jitter % 2),
                })
                .collect();
            prop_assert_eq!(run_in_order(&rules, &deposits, &sizes), from_scratch(&rules, &deposits));
        }
    }
}
