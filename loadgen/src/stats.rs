//! What one connection (or a whole step, merged) saw: answers by status with their latencies, and
//! the failures that got no answer, each kind apart.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Longest latency a histogram records, in microseconds (longer ones are clamped to it).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A request that got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The connection was refused (no listener, or a full backlog).
    Refused,
    /// The connection was reset, or closed before the whole answer came.
    Reset,
    /// No whole answer within the timeout.
    Timeout,
    /// Any other error (connect timeout, a malformed answer).
    Other,
}

/// Requests that got no answer, by kind, and the connections they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Unanswered {
    /// Refused connections.
    pub refused: u64,
    /// Resets and connections closed before the answer.
    pub resets: u64,
    /// Requests past the timeout.
    pub timeouts: u64,
    /// Other errors.
    pub errors: u64,
    /// Requests still in flight when their step ended (not counted as answers, as autocannon).
    pub unfinished: u64,
    /// Connections opened.
    pub connects: u64,
}

impl Unanswered {
    fn add(&mut self, other: &Self) {
        self.refused += other.refused;
        self.resets += other.resets;
        self.timeouts += other.timeouts;
        self.errors += other.errors;
        self.unfinished += other.unfinished;
        self.connects += other.connects;
    }
}

/// Counts and latency histograms of answers by status, and failures by kind.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Latencies in microseconds, one histogram per status code.
    by_status: BTreeMap<u16, Histogram<u64>>,
    /// What got no answer.
    pub unanswered: Unanswered,
}

impl Stats {
    /// An answer with `status` after `latency`.
    pub fn answer(&mut self, status: u16, latency: Duration) {
        let histogram = self.by_status.entry(status).or_insert_with(new_histogram);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(micros.clamp(1, MAX_LATENCY_US));
    }

    /// A request that got no answer.
    pub fn failure(&mut self, failure: Failure) {
        let unanswered = &mut self.unanswered;
        *match failure {
            Failure::Refused => &mut unanswered.refused,
            Failure::Reset => &mut unanswered.resets,
            Failure::Timeout => &mut unanswered.timeouts,
            Failure::Other => &mut unanswered.errors,
        } += 1;
    }

    /// Answers with `status`.
    pub fn answers(&self, status: u16) -> u64 {
        self.by_status.get(&status).map_or(0, Histogram::len)
    }

    /// Every answer, whatever its status.
    pub fn all_answers(&self) -> u64 {
        self.by_status.values().map(Histogram::len).sum()
    }

    /// The latency histogram of `status`, in microseconds.
    pub fn latencies(&self, status: u16) -> Option<&Histogram<u64>> {
        self.by_status.get(&status)
    }

    /// The statuses answered, in order.
    pub fn statuses(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_status.keys().copied()
    }

    /// Add `other`'s counts and histograms to these.
    pub fn merge(&mut self, other: &Stats) {
        for (status, histogram) in &other.by_status {
            let mine = self.by_status.entry(*status).or_insert_with(new_histogram);
            // Both histograms have the same bounds, so adding cannot fail.
            mine.add(histogram).expect("histograms of equal bounds add");
        }
        self.unanswered.add(&other.unanswered);
    }
}

fn new_histogram() -> Histogram<u64> {
    // 3 significant digits from 1 µs to an hour: within 0.1 % at any latency.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_timed_per_status_and_failures_counted_apart() {
        let mut one = Stats::default();
        for ms in [100, 200, 300] {
            one.answer(200, Duration::from_millis(ms));
        }
        one.answer(503, Duration::from_micros(400));
        one.failure(Failure::Refused);
        let mut two = Stats::default();
        two.answer(200, Duration::from_millis(2_000));
        two.failure(Failure::Timeout);
        two.failure(Failure::Reset);
        one.merge(&two);
        assert_eq!(
            (one.answers(200), one.answers(503), one.all_answers()),
            (4, 1, 5)
        );
        let unanswered = one.unanswered;
        assert_eq!(
            (
                unanswered.refused,
                unanswered.timeouts,
                unanswered.resets,
                unanswered.errors
            ),
            (1, 1, 1, 0)
        );
        let ok = one.latencies(200).unwrap();
        // Within the histogram's 0.1 %.
        assert!(
            ok.value_at_quantile(0.5).abs_diff(200_000) <= 200,
            "{}",
            ok.value_at_quantile(0.5)
        );
        assert!(ok.max().abs_diff(2_000_000) <= 2_000);
        assert_eq!(one.statuses().collect::<Vec<_>>(), [200, 503]);
    }
}
