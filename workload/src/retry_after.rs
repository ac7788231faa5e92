//! `Retry-After` for the answers that turn a client away: how long until the queue likely has the
//! place the client needs, from the queue ahead, `CONCURRENCY` and the operations' recent durations.
//!
//! With `concurrency` operations running, each taking about `operation`, a place frees up every
//! `operation / concurrency` on average; a client that needs `places` of them to free up comes back
//! after that many. Rounded up to whole seconds (the header's unit) and bounded, so a client never
//! hears "now" nor a minute-long wait from one slow operation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The shortest `Retry-After`: the header counts whole seconds, and 0 would invite a retry storm.
pub const MIN_RETRY_AFTER_SECONDS: u64 = 1;

/// The longest `Retry-After`: past this a client had better look elsewhere than wait.
pub const MAX_RETRY_AFTER_SECONDS: u64 = 60;

/// Seconds until `places` operations have finished at `concurrency` running at once, each taking
/// `operation`: rounded up, within [`MIN_RETRY_AFTER_SECONDS`]..=[`MAX_RETRY_AFTER_SECONDS`].
pub fn retry_after_seconds(places: usize, concurrency: usize, operation: Duration) -> u64 {
    let concurrency = concurrency.max(1) as u128;
    let micros = operation.as_micros().saturating_mul(places as u128);
    let seconds = micros.div_ceil(concurrency * 1_000_000);
    (seconds.min(u128::from(MAX_RETRY_AFTER_SECONDS)) as u64).max(MIN_RETRY_AFTER_SECONDS)
}

/// How long operations took lately: an exponentially weighted moving average of the measured
/// durations (each new one weighs [`RECENT_WEIGHT`]), lock-free, so the 503 path reads it with one
/// atomic load.
#[derive(Debug)]
pub struct OperationTimes {
    average_micros: AtomicU64,
}

/// The weight of the newest duration in [`OperationTimes`]: 1/8, so about the last 8 operations count.
pub const RECENT_WEIGHT: f64 = 1.0 / 8.0;

impl OperationTimes {
    /// An average that starts at `expected` (the configured operation time) until operations run.
    pub fn new(expected: Duration) -> Self {
        Self {
            average_micros: AtomicU64::new(expected.as_micros() as u64),
        }
    }

    /// Counts an operation that took `took`.
    pub fn record(&self, took: Duration) {
        let took = took.as_micros() as f64;
        // fetch_update retries on a race, so concurrent records are each counted once.
        let _ = self
            .average_micros
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
                let average = average as f64;
                Some((average + RECENT_WEIGHT * (took - average)).round() as u64)
            });
    }

    /// The recent average duration.
    pub fn recent(&self) -> Duration {
        Duration::from_micros(self.average_micros.load(Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_seed_queue_at_its_breaker_asks_for_one_operation() {
        // Concurrency 1, 2 s operations: one place frees up when the running one ends.
        assert_eq!(retry_after_seconds(1, 1, 2 * SECOND), 2);
        // Two places, as readiness needs when 2 over its limit wait.
        assert_eq!(retry_after_seconds(2, 1, 2 * SECOND), 4);
    }

    #[test]
    fn more_slots_free_places_sooner_and_it_rounds_up() {
        assert_eq!(retry_after_seconds(1, 4, 2 * SECOND), 1);
        assert_eq!(retry_after_seconds(3, 4, 2 * SECOND), 2, "1.5 s rounds up");
        assert_eq!(retry_after_seconds(5, 2, 3 * SECOND), 8, "7.5 s rounds up");
    }

    #[test]
    fn it_is_bounded() {
        assert_eq!(retry_after_seconds(1, 1, Duration::from_millis(10)), 1);
        assert_eq!(retry_after_seconds(0, 1, 2 * SECOND), 1);
        assert_eq!(retry_after_seconds(1000, 1, 2 * SECOND), 60);
        assert_eq!(retry_after_seconds(usize::MAX, 1, Duration::MAX), 60);
    }

    #[test]
    fn the_average_follows_measured_durations() {
        let times = OperationTimes::new(2 * SECOND);
        assert_eq!(times.recent(), 2 * SECOND);
        times.record(10 * SECOND);
        assert_eq!(times.recent(), 3 * SECOND, "one eighth of the way");
        for _ in 0..100 {
            times.record(10 * SECOND);
        }
        let recent = times.recent().as_secs_f64();
        assert!((recent - 10.0).abs() < 0.01, "{recent}");
    }
}
