//! The JSON summary a run prints: per step and in all, counts by status and failure kind, rates,
//! and latency quantiles per status. The operator reads it back from a load test's termination
//! message, which keeps at most 4096 bytes: [`TERMINATION_MESSAGE_STEPS`] steps fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::RetryAfter;
use crate::run::StepResult;
use crate::stats::{Stats, Unanswered};

/// Most steps whose summary fits a termination message (4096 bytes) with every status and
/// failure kind counted; the `SandboxLoadTest` CRD allows no more.
pub const TERMINATION_MESSAGE_STEPS: usize = 6;

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    /// The URL as given.
    pub url: String,
    /// The `Retry-After` mode.
    pub retry_after: RetryAfter,
    /// Each step.
    pub steps: Vec<StepSummary>,
    /// All steps together.
    pub total: StepSummary,
}

/// One step, or the run in all.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepSummary {
    /// Connections (the largest step's, for the total).
    pub connections: u32,
    /// Seconds it ran.
    pub seconds: f64,
    /// Answers by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// What got no answer, by kind, and the connections opened.
    #[serde(flatten)]
    pub unanswered: Unanswered,
    /// Answers per second by status code.
    pub per_second: BTreeMap<u16, f64>,
    /// Latency quantiles in milliseconds, by status code.
    pub latency_ms: BTreeMap<u16, Latency>,
}

/// Latency quantiles of one status, in milliseconds, from its HDR histogram.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Fastest.
    pub min: f64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
}

impl Summary {
    /// The summary of `results`.
    pub fn new(url: String, retry_after: RetryAfter, results: &[StepResult]) -> Self {
        let mut all = Stats::default();
        for result in results {
            all.merge(&result.stats);
        }
        let seconds = results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let connections = results
            .iter()
            .map(|r| r.step.connections)
            .max()
            .unwrap_or(0);
        Self {
            url,
            retry_after,
            steps: results
                .iter()
                .map(|r| StepSummary::new(r.step.connections, r.elapsed.as_secs_f64(), &r.stats))
                .collect(),
            total: StepSummary::new(connections, seconds, &all),
        }
    }
}

impl StepSummary {
    fn new(connections: u32, seconds: f64, stats: &Stats) -> Self {
        let ms = |micros: f64| (micros / 1000.0 * 1000.0).round() / 1000.0;
        let statuses: BTreeMap<u16, u64> = stats
            .statuses()
            .map(|status| (status, stats.answers(status)))
            .collect();
        let per_second = statuses
            .iter()
            .map(|(status, count)| {
                (
                    *status,
                    (*count as f64 / seconds.max(f64::MIN_POSITIVE) * 100.0).round() / 100.0,
                )
            })
            .collect();
        let latency_ms = stats
            .statuses()
            .filter_map(|status| {
                let histogram = stats.latencies(status)?;
                let at = |q: f64| ms(histogram.value_at_quantile(q) as f64);
                Some((
                    status,
                    Latency {
                        min: ms(histogram.min() as f64),
                        mean: ms(histogram.mean()),
                        p50: at(0.5),
                        p90: at(0.9),
                        p99: at(0.99),
                        max: ms(histogram.max() as f64),
                    },
                ))
            })
            .collect();
        Self {
            connections,
            seconds: (seconds * 1000.0).round() / 1000.0,
            statuses,
            unanswered: stats.unanswered,
            per_second,
            latency_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Step;
    use crate::stats::Failure;

    #[test]
    fn a_summary_has_each_step_and_the_total_by_status() {
        let step = |connections, ms: &[u64], refused| {
            let mut stats = Stats::default();
            for ms in ms {
                stats.answer(200, Duration::from_millis(*ms));
            }
            stats.answer(503, Duration::from_millis(1));
            for _ in 0..refused {
                stats.failure(Failure::Refused);
            }
            StepResult {
                step: Step {
                    connections,
                    duration: Duration::from_secs(2),
                },
                stats,
                elapsed: Duration::from_secs(2),
            }
        };
        let summary = Summary::new(
            "http://s/expensive-op".into(),
            RetryAfter::Honor,
            &[
                step(3, &[600, 600], 0),
                step(6, &[1200, 1200, 1200, 1200], 2),
            ],
        );
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["retryAfter"], "Honor");
        assert_eq!(json["steps"][1]["statuses"]["200"], 4);
        assert_eq!(json["steps"][1]["perSecond"]["200"], 2.0);
        assert_eq!(json["total"]["statuses"]["200"], 6);
        assert_eq!(json["total"]["statuses"]["503"], 2);
        assert_eq!(json["total"]["refused"], 2);
        assert_eq!(json["total"]["connections"], 6);
        assert_eq!(json["total"]["seconds"], 4.0);
        let p50 = json["total"]["latencyMs"]["200"]["p50"].as_f64().unwrap();
        assert!((p50 - 1200.0).abs() < 2.0, "{p50}");
    }

    #[test]
    fn the_largest_summary_a_load_test_can_make_fits_a_termination_message() {
        // Every step with three statuses and every failure kind, at counts and latencies of
        // the largest magnitude a run can reach, and a long URL.
        let step = || {
            let mut stats = Stats::default();
            for status in [200, 503, 500] {
                stats.answer(status, Duration::from_millis(1));
                stats.answer(status, Duration::from_secs(3599));
            }
            for failure in [
                Failure::Refused,
                Failure::Reset,
                Failure::Timeout,
                Failure::Other,
            ] {
                stats.failure(failure);
            }
            StepResult {
                step: Step {
                    connections: crate::config::MAX_CONNECTIONS,
                    duration: Duration::from_secs(600),
                },
                stats,
                elapsed: Duration::from_millis(600_123),
            }
        };
        let results: Vec<_> = (0..TERMINATION_MESSAGE_STEPS).map(|_| step()).collect();
        // The longest path a SandboxLoadTest allows (its MAX_PATH_LENGTH, 256).
        let url = format!(
            "http://[fd00:1234:5678:9abc::ffff]:65535/{}",
            "p".repeat(255)
        );
        let json = serde_json::to_string(&Summary::new(url, RetryAfter::Ignore, &results)).unwrap();
        assert!(json.len() <= 4096, "{} bytes: {json}", json.len());
        let back: Summary = serde_json::from_str(&json).unwrap();
        assert_eq!(back.steps.len(), TERMINATION_MESSAGE_STEPS);
    }
}
