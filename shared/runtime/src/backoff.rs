//! Exponential backoff with jitter, the one schedule every retry in eventbank uses.
//!
//! The convention: a nominal delay `base · 2^(attempt−1)`, capped at `cap`, is the *longest*
//! wait; jitter only shortens it, by up to a quarter (uniform in `[3/4 · nominal, nominal]`).
//! The cap is therefore a true ceiling, and retries failed together (a broker or SMTP outage,
//! many replicas) spread over the last quarter of the window instead of coming due in the
//! same instant.

use std::time::Duration;

/// The nominal delay after `attempt` (1-based) failures: `base` doubling per attempt, capped
/// at `cap`, saturating instead of overflowing. Attempt 0 counts as 1.
pub fn nominal(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.saturating_mul(2_u32.saturating_pow(doublings))
        .min(cap)
}

/// `nominal` minus a uniform random jitter of up to a quarter of it, in whole milliseconds.
pub fn jittered(nominal: Duration) -> Duration {
    let ms = u64::try_from(nominal.as_millis()).unwrap_or(u64::MAX);
    let jitter = rand::random_range(0..=ms / 4);
    Duration::from_millis(ms - jitter)
}

/// The jittered delay after `attempt` (1-based) failures: [`jittered`] of [`nominal`].
pub fn delay(base: Duration, cap: Duration, attempt: u32) -> Duration {
    jittered(nominal(base, cap, attempt))
}

/// A running backoff for a retry loop: each [`next_delay`](Self::next_delay) is the next
/// attempt's [`delay`]; [`reset`](Self::reset) after a success starts over (100 ms doubling to
/// 5 s by default).
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Self::with(Duration::from_millis(100), Duration::from_secs(5))
    }
    pub fn with(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        delay(self.base, self.cap, self.attempt)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn nominal_doubles_from_base_up_to_the_cap_without_overflow() {
        let cap = Duration::from_secs(300);
        assert_eq!(nominal(S, cap, 0), S);
        assert_eq!(nominal(S, cap, 1), S);
        assert_eq!(nominal(S, cap, 4), 8 * S);
        assert_eq!(nominal(S, cap, 40), cap);
        assert_eq!(nominal(S, cap, u32::MAX), cap);
        assert_eq!(nominal(Duration::MAX, Duration::MAX, 3), Duration::MAX);
    }

    #[test]
    fn jitter_takes_off_at_most_a_quarter_and_never_adds() {
        for _ in 0..200 {
            let d = jittered(Duration::from_millis(1000));
            assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1000));
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn backoff_walks_the_schedule_and_starts_over_on_reset() {
        for _ in 0..50 {
            let mut b = Backoff::with(Duration::from_millis(100), Duration::from_millis(400));
            let bounds = [100, 200, 400, 400];
            for upper in bounds {
                let d = b.next_delay().as_millis() as u64;
                assert!(
                    d <= upper && d >= upper - upper / 4,
                    "{d} not in the window of {upper}"
                );
            }
            b.reset();
            assert!(b.next_delay() <= Duration::from_millis(100));
        }
    }
}
