//! How long the watches wait after an error before they ask again.
//!
//! kube-runtime's default (client-go's reflector figures: 0.8 s doubling to 30 s) is shared by all
//! of a Controller's watches, so during an outage the errors of six watches drive it to 30 s within
//! seconds; once the API server is back, the first answer is often a 410 (its new watch cache no
//! longer has the old resourceVersion), which is one more error and one more wait before the
//! relist. On the test bed, an 8 s API server restart left the operator blind for over a minute.
//! A watch retry is one cheap request per watch, so a short cap costs a struggling API server
//! little and bounds how long the operator stays blind after it recovers.

use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use kube::runtime::utils::Backoff;

use crate::reconcile::doubling;

/// First wait after an error.
const FIRST: Duration = Duration::from_millis(250);

/// Longest wait between attempts, however long the errors last.
pub const MAX: Duration = Duration::from_secs(5);

/// 250 ms doubling to [`MAX`], each wait shortened by up to half at random so that the watches of
/// many replicas (or of one, after a shared outage) do not retry in step; back to the start on
/// the next event a watch delivers (kube-runtime's `StreamBackoff` resets it then).
pub struct WatchBackoff {
    attempt: u32,
    jitter: RandomState,
}

impl WatchBackoff {
    /// A backoff at its first step.
    pub fn new() -> Self {
        Self {
            attempt: 0,
            jitter: RandomState::new(),
        }
    }
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.attempt = self.attempt.saturating_add(1);
        let wait = doubling(FIRST, MAX, self.attempt);
        let cut = (self.jitter.hash_one(self.attempt) % 1000) as f64 / 2000.0;
        Some(wait.mul_f64(1.0 - cut))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// No wait at all: for kube-runtime's Controller, whose one backoff would otherwise pause every
/// watch after any one's error (a 410 per watch after an API server restart: one wait each, in
/// turn, seen adding 20 s to an 8 s restart). Each watch is given a [`WatchBackoff`] of its own.
pub struct NoWait;

impl Iterator for NoWait {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoWait {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_five_seconds_shortened_by_at_most_half() {
        let waits: Vec<Duration> = WatchBackoff::new().take(8).collect();
        let full = [250, 500, 1000, 2000, 4000, 5000, 5000, 5000].map(Duration::from_millis);
        for (wait, full) in waits.iter().zip(full) {
            assert!(
                *wait <= full && *wait >= full / 2,
                "{wait:?} outside {:?}..={full:?}",
                full / 2
            );
        }
    }

    #[test]
    fn a_reset_starts_over() {
        let mut backoff = WatchBackoff::new();
        backoff.by_ref().take(6).for_each(drop);
        backoff.reset();
        assert!(backoff.next().unwrap() <= FIRST);
    }

    #[test]
    fn two_backoffs_do_not_wait_in_step() {
        let a: Vec<Duration> = WatchBackoff::new().take(6).collect();
        let b: Vec<Duration> = WatchBackoff::new().take(6).collect();
        assert_ne!(a, b);
    }
}
