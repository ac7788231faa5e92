//! Step 4 for a load test, the pure part: the load generator's summary as the status's steps, the
//! target's scale events during the run, and the verdict of the thresholds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use loadgen::summary::{StepSummary, Summary};

use super::crd::{LatencyMs, StepOutcome, Thresholds};
use crate::api::autoscaling_status::ScaleEvent;

/// The `Passed` condition's reason when every threshold held.
pub const THRESHOLDS_MET: &str = "ThresholdsMet";

/// The `Passed` condition's reason when the load could not run.
pub const RUN_FAILED: &str = "RunFailed";

/// What a termination message says: the load generator's summary, or why it is not one.
pub fn parse_summary(message: &str) -> Result<Summary, String> {
    serde_json::from_str(message).map_err(|error| {
        let shown: String = message.chars().take(300).collect();
        format!("the load generator's termination message is no summary ({error}): {shown}")
    })
}

/// One step (or the whole run) as the status has it.
pub fn step_outcome(step: &StepSummary) -> StepOutcome {
    let count = |status: u16| step.statuses.get(&status).copied().unwrap_or(0);
    let answers: u64 = step.statuses.values().sum();
    let (ok, service_unavailable) = (count(200), count(503));
    let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
    let unanswered = &step.unanswered;
    StepOutcome {
        connections: i64::from(step.connections),
        seconds: step.seconds,
        ok: signed(ok),
        service_unavailable: signed(service_unavailable),
        other_statuses: signed(answers - ok - service_unavailable),
        refused: signed(unanswered.refused),
        resets: signed(unanswered.resets),
        timeouts: signed(unanswered.timeouts),
        errors: signed(unanswered.errors),
        connects: signed(unanswered.connects),
        ok_per_second: step.per_second.get(&200).copied().unwrap_or(0.0),
        service_unavailable_percent: if answers == 0 {
            0.0
        } else {
            (service_unavailable as f64 * 100.0 / answers as f64 * 100.0).round() / 100.0
        },
        ok_latency_ms: step.latency_ms.get(&200).map(|latency| LatencyMs {
            p50: latency.p50,
            p90: latency.p90,
            p99: latency.p99,
            max: latency.max,
            mean: latency.mean,
        }),
    }
}

/// The target's scale decisions from `start` to `end`, as its status lists them.
pub fn scale_events_between(events: &[ScaleEvent], start: &Time, end: &Time) -> Vec<ScaleEvent> {
    events
        .iter()
        .filter(|event| event.decided_at.0 >= start.0 && event.decided_at.0 <= end.0)
        .cloned()
        .collect()
}

/// Most replicas during the run: at its start, or decided on by a scale event in it.
pub fn peak_replicas(at_start: Option<i32>, events: &[ScaleEvent]) -> Option<i32> {
    events.iter().map(|event| event.to).chain(at_start).max()
}

/// A measured value as a message shows it: to 0.01, but never 0 for what is not 0.
fn shown(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    if rounded == 0.0 && value > 0.0 {
        format!("{value:.2e}")
    } else {
        rounded.to_string()
    }
}

/// One threshold as checked: its reason, its bound, and what the run measured.
struct Check {
    reason: &'static str,
    what: &'static str,
    threshold: Option<f64>,
    at_least: bool,
    measured: Option<f64>,
    /// Measured on scale-outs: without one there is nothing to measure.
    needs_scale_out: bool,
}

/// The verdict: `Ok(message)` when every threshold set held, else the reason naming the first
/// that failed and a message with what was measured.
pub fn verdict(
    thresholds: &Thresholds,
    total: &StepOutcome,
    events: &[ScaleEvent],
) -> Result<String, (&'static str, String)> {
    let scale_outs: Vec<&ScaleEvent> = events.iter().filter(|e| e.is_scale_out()).collect();
    // The slowest of the scale-outs' measured values; `None` when none was measured. A scale-out
    // that a later decision overtook is never timed, so only the measured ones count.
    let slowest = |value: fn(&ScaleEvent) -> Option<i64>| -> Option<f64> {
        scale_outs
            .iter()
            .filter_map(|event| value(event))
            .max()
            .map(|max| max as f64)
    };
    // Unrounded, so that "at most 0 %" fails on a single 503; unmeasured without an answer.
    let answers = total.ok + total.service_unavailable + total.other_statuses;
    let share = (answers > 0).then(|| total.service_unavailable as f64 * 100.0 / answers as f64);
    let checks = [
        Check {
            reason: "MinOkPerSecond",
            what: "200s per second",
            threshold: thresholds.min_ok_per_second,
            at_least: true,
            measured: Some(total.ok_per_second),
            needs_scale_out: false,
        },
        Check {
            reason: "MaxP99",
            what: "p99 latency of the 200s, ms",
            threshold: thresholds.max_p99_ms,
            at_least: false,
            measured: total.ok_latency_ms.as_ref().map(|latency| latency.p99),
            needs_scale_out: false,
        },
        Check {
            reason: "MaxServiceUnavailablePercent",
            what: "503s among the answers, %",
            threshold: thresholds.max_service_unavailable_percent,
            at_least: false,
            measured: share,
            needs_scale_out: false,
        },
        Check {
            reason: "MinServiceUnavailablePercent",
            what: "503s among the answers, %",
            threshold: thresholds.min_service_unavailable_percent,
            at_least: true,
            measured: share,
            needs_scale_out: false,
        },
        Check {
            reason: "MaxScaleOutReaction",
            what: "slowest scale-out reaction, s",
            threshold: thresholds.max_scale_out_reaction_seconds.map(|s| s as f64),
            at_least: false,
            measured: slowest(|event| event.reaction_seconds),
            needs_scale_out: true,
        },
        Check {
            reason: "MaxTimeToCapacity",
            what: "slowest time to capacity, s",
            threshold: thresholds.max_time_to_capacity_seconds.map(|s| s as f64),
            at_least: false,
            measured: slowest(|event| event.time_to_capacity_seconds),
            needs_scale_out: true,
        },
    ];
    let mut held = Vec::new();
    for check in checks {
        let Some(threshold) = check.threshold else {
            continue;
        };
        let (what, reason) = (check.what, check.reason);
        let bound = if check.at_least {
            "at least"
        } else {
            "at most"
        };
        let measured = match check.measured {
            Some(value) => value,
            None if check.needs_scale_out && scale_outs.is_empty() => {
                return Err((
                    reason,
                    format!("{what}: no scale-out during the run, expected {bound} {threshold}"),
                ));
            }
            None => {
                return Err((
                    reason,
                    format!("{what}: not measured, expected {bound} {threshold}"),
                ));
            }
        };
        let holds = if check.at_least {
            measured >= threshold
        } else {
            measured <= threshold
        };
        if !holds {
            return Err((
                reason,
                format!("{what}: {}, expected {bound} {threshold}", shown(measured)),
            ));
        }
        held.push(format!("{what} {} ({bound} {threshold})", shown(measured)));
    }
    Ok(if held.is_empty() {
        "no threshold set; the run completed".to_string()
    } else {
        held.join("; ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED_C6: &str = r#"{"url":"http://10.96.0.10:80/expensive-op","retryAfter":"Ignore",
        "steps":[{"connections":6,"seconds":10.001,"statuses":{"200":5,"503":2000},"refused":0,
          "resets":0,"timeouts":0,"errors":0,"unfinished":1,"connects":6,
          "perSecond":{"200":0.5,"503":199.98},
          "latencyMs":{"200":{"min":2001.0,"mean":8000.0,"p50":9000.0,"p90":10001.0,"p99":10001.0,"max":10001.0},
                       "503":{"min":0.1,"mean":0.3,"p50":0.3,"p90":0.4,"p99":0.9,"max":3.0}}}],
        "total":{"connections":6,"seconds":10.001,"statuses":{"200":5,"503":2000},"refused":0,
          "resets":0,"timeouts":0,"errors":0,"unfinished":1,"connects":6,
          "perSecond":{"200":0.5,"503":199.98},
          "latencyMs":{"200":{"min":2001.0,"mean":8000.0,"p50":9000.0,"p90":10001.0,"p99":10001.0,"max":10001.0}}}}"#;

    fn total() -> StepOutcome {
        step_outcome(&parse_summary(SEED_C6).unwrap().total)
    }

    fn thresholds(yaml: &str) -> Thresholds {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn event(from: i32, to: i32, decided: &str, reaction: Option<i64>) -> ScaleEvent {
        ScaleEvent {
            from,
            to,
            metric_value: None,
            backpressure_since: None,
            decided_at: Time(decided.parse().unwrap()),
            ready_at: None,
            reaction_seconds: reaction,
            ready_seconds: None,
            time_to_capacity_seconds: None,
        }
    }

    #[test]
    fn a_summary_becomes_counts_rates_shares_and_the_200s_latency() {
        let total = total();
        assert_eq!(
            (total.ok, total.service_unavailable, total.other_statuses),
            (5, 2000, 0)
        );
        assert_eq!(total.ok_per_second, 0.5);
        assert_eq!(total.service_unavailable_percent, 99.75);
        assert_eq!(total.ok_latency_ms.unwrap().p99, 10001.0);
        assert!(parse_summary("loadgen: no address for seed").is_err());
    }

    #[test]
    fn the_verdict_names_the_first_threshold_that_failed() {
        let total = total();
        // The seed's -c 6 row: mostly 503s.
        assert!(verdict(&thresholds("minServiceUnavailablePercent: 90"), &total, &[]).is_ok());
        // The -c 5 row's expectation, deliberately wrong here.
        let (reason, message) =
            verdict(&thresholds("maxServiceUnavailablePercent: 0"), &total, &[]).unwrap_err();
        assert_eq!(reason, "MaxServiceUnavailablePercent");
        assert!(message.contains("99.75"), "{message}");
        assert_eq!(
            verdict(
                &thresholds("minOkPerSecond: 1\nmaxP99Ms: 20000"),
                &total,
                &[]
            )
            .unwrap_err()
            .0,
            "MinOkPerSecond"
        );
        assert_eq!(
            verdict(&thresholds("{}"), &total, &[]).unwrap(),
            "no threshold set; the run completed"
        );
    }

    #[test]
    fn one_503_in_many_answers_fails_at_most_0_percent_and_no_answer_measures_nothing() {
        let mut total = total();
        (total.ok, total.service_unavailable) = (99_999, 1);
        total.service_unavailable_percent = 0.0; // as rounded for the status
        let none = thresholds("maxServiceUnavailablePercent: 0");
        let (reason, message) = verdict(&none, &total, &[]).unwrap_err();
        assert_eq!(reason, "MaxServiceUnavailablePercent");
        assert!(message.contains("1.00e-3"), "{message}");
        (total.ok, total.service_unavailable) = (0, 0);
        let (_, message) = verdict(&none, &total, &[]).unwrap_err();
        assert!(message.contains("not measured"), "{message}");
    }

    #[test]
    fn scale_thresholds_need_a_scale_out_in_the_window_and_its_timing() {
        let total = total();
        let reaction = thresholds("maxScaleOutReactionSeconds: 30");
        let (reason, message) = verdict(&reaction, &total, &[]).unwrap_err();
        assert_eq!(reason, "MaxScaleOutReaction");
        assert!(message.contains("no scale-out"), "{message}");
        let events = [
            event(1, 3, "2026-12-07T10:00:20Z", Some(12)),
            event(3, 1, "2026-12-07T10:09:00Z", None),
        ];
        assert!(verdict(&reaction, &total, &events).is_ok());
        let capacity = thresholds("maxTimeToCapacitySeconds: 60");
        let (reason, message) = verdict(&capacity, &total, &[]).unwrap_err();
        assert_eq!(reason, "MaxTimeToCapacity");
        assert!(message.contains("no scale-out"), "{message}");
        // An overtaken scale-out, never timed, does not count; the measured one does.
        let overtaken = [
            event(1, 2, "2026-12-07T10:00:20Z", None),
            event(2, 4, "2026-12-07T10:00:30Z", Some(12)),
        ];
        assert!(verdict(&reaction, &total, &overtaken).is_ok());
        let slow = [event(1, 3, "2026-12-07T10:00:20Z", Some(45))];
        assert_eq!(
            verdict(&reaction, &total, &slow).unwrap_err().0,
            "MaxScaleOutReaction"
        );
        let in_window = scale_events_between(
            &events,
            &Time("2026-12-07T10:00:00Z".parse().unwrap()),
            &Time("2026-12-07T10:01:00Z".parse().unwrap()),
        );
        assert_eq!(in_window.len(), 1);
        assert_eq!(peak_replicas(Some(1), &in_window), Some(3));
        assert_eq!(peak_replicas(Some(2), &[]), Some(2));
    }
}
