//! The one retry schedule: capped exponential backoff, `base · 2^n` up to `cap`, with the
//! jitter the caller needs, and a server's `Retry-After` honoured when it names one. Used by the agent's sync loop (full jitter), its audit shipper
//! (equal jitter) and the vault's PostgreSQL reconnects (no jitter: the breaker computes the
//! delay from its failure count).
//!
//! (`backon`, the well-kept crate for this, was considered: its jitter only *adds* up to the
//! minimum delay on top of the exponential one, so it has neither full nor equal jitter, and
//! its iterator cannot answer "the delay after n failures" that the breaker asks.)

use std::time::Duration;

/// How a delay is spread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Jitter {
    /// Exactly the ceiling.
    None,
    /// Uniform in `[0, ceiling]`, never below [`MIN_FULL_JITTER`] (so a failure loop cannot
    /// spin): many clients retrying at once spread out the most.
    Full,
    /// Uniform in `[ceiling/2, ceiling]`: spread, but never much sooner than planned.
    Equal,
}

/// The floor of a fully jittered delay.
pub const MIN_FULL_JITTER: Duration = Duration::from_millis(10);

/// `base · 2^attempt`, at most `cap`.
pub fn ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    base.saturating_mul(1u32 << attempt.min(20)).min(cap)
}

/// A retry schedule: each [`next_delay`](Backoff::next_delay) doubles the ceiling up to the
/// cap; [`reset`](Backoff::reset) after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    jitter: Jitter,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration, jitter: Jitter) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            jitter,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = ceiling(self.base, self.cap, self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        jittered(ceiling, self.jitter)
    }

    /// The delay before the next attempt, honouring the server's `Retry-After` when it named
    /// one: never sooner than it asked, spread over up to half as long again (so clients
    /// refused together do not come back together, even when the server gave them all the same
    /// figure), and never sooner than this schedule's own delay (which keeps growing).
    pub fn next_delay_after(&mut self, asked: Option<Duration>) -> Duration {
        let own = self.next_delay();
        let Some(asked) = asked else {
            return own;
        };
        let spread = u64::try_from((asked / 2).as_millis()).unwrap_or(u64::MAX);
        let hinted = asked + Duration::from_millis(rand::random_range(0..=spread));
        own.max(hinted)
    }

    /// The ceiling the next delay is drawn under (for logs).
    pub fn current(&self) -> Duration {
        ceiling(self.base, self.cap, self.attempt)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn jittered(ceiling: Duration, jitter: Jitter) -> Duration {
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    match jitter {
        Jitter::None => ceiling,
        Jitter::Full => {
            let j = if ms == 0 {
                0
            } else {
                rand::random_range(0..=ms)
            };
            Duration::from_millis(j).max(MIN_FULL_JITTER)
        }
        Jitter::Equal => {
            let half = ceiling / 2;
            let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
            half + Duration::from_millis(rand::random_range(0..=spread))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_ceiling_doubles_up_to_the_cap() {
        let (min, max) = (100 * MS, Duration::from_secs(1));
        assert_eq!(ceiling(min, max, 0), min);
        assert_eq!(ceiling(min, max, 1), 200 * MS);
        assert_eq!(ceiling(min, max, 5), max);
        assert_eq!(ceiling(min, max, 1000), max);
        let mut b = Backoff::new(min, max, Jitter::None);
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000].map(|n| n * MS));
        b.reset();
        assert_eq!(b.next_delay(), min);
    }

    #[test]
    fn full_jitter_grows_to_the_cap_and_never_spins() {
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Jitter::Full);
        let mut max_seen = Duration::ZERO;
        for i in 0..40 {
            let d = b.next_delay();
            assert!(d >= MIN_FULL_JITTER);
            let c = ceiling(100 * MS, Duration::from_secs(30), i);
            assert!(d <= c.max(MIN_FULL_JITTER), "{i}: {d:?}");
            max_seen = max_seen.max(d);
        }
        assert!(max_seen > Duration::from_secs(1), "grows: {max_seen:?}");
        b.reset();
        assert!(b.next_delay() <= 100 * MS);
    }

    #[test]
    fn a_server_hint_is_honoured_with_jitter_and_the_schedule_still_grows() {
        let asked = Duration::from_secs(5);
        let mut b = Backoff::new(100 * MS, Duration::from_secs(30), Jitter::Full);
        let delays: Vec<_> = (0..200).map(|_| b.next_delay_after(Some(asked))).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= asked && *d <= Duration::from_secs(30))
        );
        let first: Vec<_> = delays[..5].to_vec(); // own ceilings 0.1–1.6 s: the hint rules
        assert!(first.iter().all(|d| *d <= asked + asked / 2), "{first:?}");
        assert!(
            first.iter().any(|d| *d != first[0]),
            "spread, not one figure: {first:?}"
        );
        // Past the hint, the schedule's own (growing) delay wins.
        assert!(delays[100..].iter().any(|d| *d > asked + asked / 2));
        let mut plain = Backoff::new(100 * MS, Duration::from_secs(1), Jitter::None);
        assert_eq!(plain.next_delay_after(None), 100 * MS);
    }

    #[test]
    fn equal_jitter_stays_within_half_and_full() {
        for ms in [0u64, 1, 2, 10, 1000, 60_000] {
            let d = Duration::from_millis(ms);
            for _ in 0..100 {
                let j = jittered(d, Jitter::Equal);
                assert!(j >= d / 2 && j <= d, "{j:?} for {d:?}");
            }
        }
    }
}
