//! Exponential backoff between retries: a first delay, doubling after every failure up to a
//! ceiling, back to the first delay after a success.

use std::hash::{Hash, Hasher};
use std::time::Duration;

pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            max,
            next: first,
        }
    }

    /// The delay to wait now; the next one doubles, up to the ceiling.
    pub fn delay(&mut self) -> Duration {
        let now = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        now
    }

    /// After a success: the next failure waits the first delay again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// `delay` plus up to a quarter more, spread by `key`, so that many nodes retrying against
/// one recovering server do not knock in step.
pub fn spread(delay: Duration, key: impl Hash) -> Duration {
    let mut hasher = std::hash::DefaultHasher::new();
    (key, delay).hash(&mut hasher);
    let quarter_permille = u32::try_from(hasher.finish() % 250).unwrap_or(0);
    delay + delay * quarter_permille / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_ceiling_and_start_over_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(5));
        let delays: Vec<u64> = (0..5).map(|_| backoff.delay().as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 5, 5]);
        backoff.reset();
        assert_eq!(backoff.delay(), Duration::from_secs(1));
    }
}
