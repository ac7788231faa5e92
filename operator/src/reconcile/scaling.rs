//! What the autoscaler did and how the pods fare, for the status step (pure: no client).
//!
//! [`pod_health`] tells overloaded pods (running, once ready, now failing `/readiness`: the
//! queue, by design) from broken ones (an image that cannot be pulled, a crash loop, no node).
//! [`metric_failure`] reads the HPA's `ScalingActive`. [`autoscaling_status`] turns the HPA's
//! status into `status.autoscaling`, recording each scale decision once with its timings.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use crate::api::autoscaling_status::{
    AutoscalingStatus, HpaCondition, MAX_SCALE_EVENTS, ScaleEvent,
};

/// Container waiting reasons that mean the pod will not serve until someone acts.
pub const BROKEN_REASONS: &[&str] = &[
    "ImagePullBackOff",
    "ErrImagePull",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// `Degraded`'s reason for pods no node can take.
pub const UNSCHEDULABLE: &str = "Unschedulable";

/// `Degraded`'s reason when the HPA cannot read its metric.
pub const FAILED_GET_METRIC: &str = "FailedGetPodsMetric";

/// How long the HPA may fail to read its metric before the CR is `Degraded`: a new HPA cannot
/// read it until prometheus-adapter has relisted the new pods' series (up to its relist interval,
/// 1 minute by our values) and Prometheus has scraped them.
pub const METRIC_GRACE: Duration = Duration::from_secs(120);

/// How long no pod may be over its readiness limit before backpressure counts as over: longer than
/// a loaded pod takes to drain outside the Service and come back, and two default HPA syncs.
pub const BACKPRESSURE_QUIET: Duration = Duration::from_secs(30);

/// The pods of one SandboxService, as far as the status cares.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHealth {
    /// Pods not being deleted.
    pub pods: i32,
    /// Of those, pods that were ready and now fail `/readiness` while their containers run.
    pub overloaded: i32,
    /// Since when the longest-overloaded of them fails `/readiness`: its `Ready` condition's
    /// transition, as its kubelet recorded it (not when the operator saw it).
    pub overloaded_since: Option<Time>,
    /// The first broken pod: `Degraded`'s reason (one of [`BROKEN_REASONS`] or
    /// [`UNSCHEDULABLE`]) and a message naming the pod.
    pub broken: Option<(&'static str, String)>,
}

/// How `pods` fare.
pub fn pod_health(pods: &[Arc<Pod>]) -> PodHealth {
    let mut health = PodHealth::default();
    for pod in pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
    {
        health.pods += 1;
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some(status) = &pod.status else { continue };
        let condition = |type_: &str| {
            status
                .conditions
                .iter()
                .flatten()
                .find(|condition| condition.type_ == type_)
        };
        if health.broken.is_none()
            && let Some(unschedulable) = condition("PodScheduled")
                .filter(|c| c.status == "False" && c.reason.as_deref() == Some(UNSCHEDULABLE))
        {
            let message = unschedulable.message.clone().unwrap_or_default();
            health.broken = Some((UNSCHEDULABLE, format!("pod {name}: {message}")));
        }
        let containers = status.container_statuses.as_deref().unwrap_or_default();
        for container in containers {
            let waiting = container.state.as_ref().and_then(|s| s.waiting.as_ref());
            let known = waiting.and_then(|waiting| {
                let reason = waiting.reason.as_deref()?;
                let known = BROKEN_REASONS.iter().find(|broken| **broken == reason)?;
                Some((*known, waiting.message.clone().unwrap_or_default()))
            });
            if let (None, Some((reason, message))) = (&health.broken, known) {
                health.broken = Some((reason, format!("pod {name}: {reason}: {message}")));
            }
        }
        // Failing readiness since after every container started: it was ready and its queue
        // went over the limit. A pod not yet ready since its start is starting, not overloaded.
        let started = containers
            .iter()
            .map(|c| {
                c.state
                    .as_ref()
                    .and_then(|s| s.running.as_ref())
                    .and_then(|running| running.started_at.clone())
            })
            .collect::<Option<Vec<Time>>>()
            .and_then(|times| times.into_iter().max());
        let unready_since = condition("Ready")
            .filter(|ready| ready.status == "False")
            .and_then(|ready| ready.last_transition_time.clone());
        if !containers.is_empty()
            && let (Some(started), Some(unready_since)) = (started, unready_since)
            && unready_since.0 > started.0
        {
            health.overloaded += 1;
            if health
                .overloaded_since
                .as_ref()
                .is_none_or(|since| unready_since.0 < since.0)
            {
                health.overloaded_since = Some(unready_since);
            }
        }
    }
    health
}

/// The HPA's own condition of `type_`.
fn hpa_condition<'a>(
    hpa: &'a HorizontalPodAutoscaler,
    type_: &str,
) -> Option<&'a k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerCondition> {
    hpa.status
        .as_ref()?
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == type_)
}

/// Whether the HPA has failed to read its metric for longer than [`METRIC_GRACE`] at `now`: its
/// reason (as [`FAILED_GET_METRIC`] or the HPA's own in the message) and message; or, while still
/// within the grace, how long until it ends, so the CR is looked at again then.
pub fn metric_failure(
    hpa: Option<&HorizontalPodAutoscaler>,
    now: &Time,
) -> (Option<(&'static str, String)>, Option<Duration>) {
    let Some(active) = hpa.and_then(|hpa| hpa_condition(hpa, "ScalingActive")) else {
        return (None, None);
    };
    let reason = active.reason.as_deref().unwrap_or_default();
    // `ScalingDisabled` is a Deployment scaled to 0 by hand, not a failure to read.
    if active.status != "False" || reason == "ScalingDisabled" {
        return (None, None);
    }
    let since = active.last_transition_time.as_ref().map_or(now.0, |t| t.0);
    let failing = Duration::try_from(now.0 - since).unwrap_or_default();
    if failing < METRIC_GRACE {
        return (None, Some(METRIC_GRACE - failing));
    }
    let message = active.message.clone().unwrap_or_default();
    let message = if reason == FAILED_GET_METRIC {
        format!("the HPA cannot read its metric: {message}")
    } else {
        format!("the HPA cannot scale ({reason}): {message}")
    };
    (Some((FAILED_GET_METRIC, message)), None)
}

/// The replicas the HPA wants, or `replicas` (the Deployment's) while it has decided nothing: a
/// new HPA's status says `desiredReplicas: 0` until it first reads its metric, which may be never
/// (`ScalingActive=False`), and our HPAs have `minReplicas` of at least 1.
pub fn desired_replicas(hpa: Option<&HorizontalPodAutoscaler>, replicas: i32) -> i32 {
    hpa.and_then(|hpa| hpa.status.as_ref())
        .map(|status| status.desired_replicas)
        .filter(|desired| *desired > 0)
        .unwrap_or(replicas)
}

/// What the status step knows when it builds `status.autoscaling`.
#[derive(Debug, Clone, Copy)]
pub struct ScaleInputs<'a> {
    /// The metric's name and the HPA's target for it (a quantity).
    pub metric: &'a str,
    /// The HPA's per-pod target, as a quantity.
    pub target: &'a str,
    /// The HPA, from the watch cache; `None` before its first watch event.
    pub hpa: Option<&'a HorizontalPodAutoscaler>,
    /// Pods of the Deployment and those ready.
    pub replicas: i32,
    /// Ready pods of the Deployment.
    pub ready: i32,
    /// Since when some pod is over its readiness limit ([`PodHealth::overloaded_since`]); `None`
    /// while none is (the last begin is kept in the status).
    pub backpressure_since: Option<&'a Time>,
}

/// `status.autoscaling` after `inputs`, given the `previous` one. A new `lastScaleTime` of the
/// HPA is a new scale event; the newest scale-out gets `readyAt` once the Deployment has that many
/// pods ready. Nothing changes for a mere move of the metric.
pub fn autoscaling_status(
    previous: Option<&AutoscalingStatus>,
    inputs: ScaleInputs<'_>,
    now: &Time,
) -> AutoscalingStatus {
    let hpa_status = inputs.hpa.and_then(|hpa| hpa.status.as_ref());
    let desired = desired_replicas(inputs.hpa, inputs.replicas);
    let last_scale_time = hpa_status.and_then(|s| s.last_scale_time.clone());
    let mut scale_events = previous.map(|p| p.scale_events.clone()).unwrap_or_default();
    let mut decided_value = previous.and_then(|p| p.decided_value.clone());
    let (backpressure_began, backpressure_ended) =
        backpressure_spell(previous, inputs.backpressure_since, now);
    // A decision the previous status has not seen. Without a previous status (a new CR, or one
    // from before this field) there is nothing it could be compared with: no event.
    if let (Some(previous), Some(status), Some(decided_at)) =
        (previous, hpa_status, &last_scale_time)
        && previous.last_scale_time.as_ref() != Some(decided_at)
    {
        // The HPA writes the decision with the count it scaled from as `currentReplicas`; if
        // that write was missed, the count the previous status knew as desired.
        let current = status.current_replicas.unwrap_or(previous.desired_replicas);
        let from = if current != desired {
            current
        } else {
            previous.desired_replicas
        };
        let metric_value = status
            .current_metrics
            .iter()
            .flatten()
            .find_map(|metric| metric.pods.as_ref())
            .and_then(|pods| pods.current.average_value.as_ref())
            .map(|value| value.0.clone());
        decided_value = metric_value.clone();
        scale_events.push(ScaleEvent {
            from,
            to: desired,
            metric_value,
            // A scale-out's backpressure is looked up below, with the events before it.
            reaction_seconds: None,
            backpressure_since: None,
            decided_at: decided_at.clone(),
            ready_at: None,
            ready_seconds: None,
            time_to_capacity_seconds: None,
        });
        if scale_events.len() > MAX_SCALE_EVENTS {
            scale_events.remove(0);
        }
    }
    // When the newest scale-out's backpressure began: at once, or later, as a pod's unready
    // transition may reach the cache after the decision did.
    let before_newest = scale_events
        .len()
        .checked_sub(2)
        .map(|i| scale_events[i].decided_at.clone());
    if let Some(newest) = scale_events.last_mut()
        && newest.is_scale_out()
        && newest.backpressure_since.is_none()
        && let Some(since) = backpressure_before(
            backpressure_began.as_ref(),
            before_newest.as_ref(),
            &newest.decided_at,
        )
    {
        newest.reaction_seconds = seconds_between(Some(&since), Some(&newest.decided_at));
        newest.time_to_capacity_seconds = seconds_between(Some(&since), newest.ready_at.as_ref());
        newest.backpressure_since = Some(since);
    }
    if let Some(newest) = scale_events.last_mut()
        && newest.is_scale_out()
        && newest.ready_at.is_none()
        && desired == newest.to
        && inputs.ready >= newest.to
    {
        newest.ready_at = Some(now.clone());
        newest.ready_seconds = seconds_between(Some(&newest.decided_at), Some(now));
        newest.time_to_capacity_seconds =
            seconds_between(newest.backpressure_since.as_ref(), Some(now));
    }
    let conditions = hpa_status
        .and_then(|s| s.conditions.as_ref())
        .map(|conditions| {
            conditions
                .iter()
                .map(|c| HpaCondition {
                    type_: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone().unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default();
    AutoscalingStatus {
        metric: inputs.metric.to_string(),
        target: inputs.target.to_string(),
        replicas: format!("{}/{desired}", inputs.replicas),
        desired_replicas: desired,
        decided_value,
        last_scale_time,
        backpressure_began,
        backpressure_ended,
        conditions,
        scale_events,
    }
}

/// When the current spell of backpressure began and when the last one ended, after `previous` and
/// the oldest overloaded pod's unready transition now (`since`; `None` while no pod is overloaded).
/// A pod that leaves the Service drains and is back within seconds, and fills again under the same
/// load: an onset within [`BACKPRESSURE_QUIET`] of the end continues the spell, so a scale-out's
/// reaction is timed from the first pod over its limit, not the last flap. A spell does not reach
/// back past the last decision: the next scale-out is timed from the first onset after it.
fn backpressure_spell(
    previous: Option<&AutoscalingStatus>,
    since: Option<&Time>,
    now: &Time,
) -> (Option<Time>, Option<Time>) {
    let began = previous.and_then(|p| p.backpressure_began.clone());
    let ended = previous.and_then(|p| p.backpressure_ended.clone());
    let Some(since) = since else {
        // Off: the spell ended now, unless it already had.
        let ended = ended.or_else(|| began.as_ref().map(|_| now.clone()));
        return (began, ended);
    };
    let last_decision = previous.and_then(|p| p.last_scale_time.as_ref());
    let continues = began.as_ref().is_some_and(|b| {
        b.0 <= since.0
            && last_decision.is_none_or(|decided| b.0 > decided.0)
            && ended.as_ref().is_none_or(|ended| {
                since.0.as_second() - ended.0.as_second() <= BACKPRESSURE_QUIET.as_secs() as i64
            })
    });
    // On: no end while it lasts, so each quiet is measured from its own start.
    let began = if continues {
        began
    } else {
        Some(since.clone())
    };
    (began, None)
}

/// Backpressure that `began` after the `previous` decision and no later than the one `decided_at`.
fn backpressure_before(
    began: Option<&Time>,
    previous: Option<&Time>,
    decided_at: &Time,
) -> Option<Time> {
    began
        .filter(|began| began.0 <= decided_at.0)
        .filter(|began| previous.is_none_or(|previous| began.0 > previous.0))
        .cloned()
}

/// Whole seconds from `from` to `to`, when both are known.
fn seconds_between(from: Option<&Time>, to: Option<&Time>) -> Option<i64> {
    let (from, to) = (from?, to?);
    Some((to.0.as_second() - from.0.as_second()).max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(second: i64) -> Time {
        Time(Timestamp::from_second(1_800_000_000 + second).unwrap())
    }

    fn pod(yaml: &str) -> Arc<Pod> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    /// A pod whose container started at `started` and whose Ready condition is `ready` since `since`.
    fn running_pod(name: &str, started: &str, ready: &str, since: &str) -> Arc<Pod> {
        pod(&format!(
            "metadata: {{name: {name}}}\nstatus:\n  conditions: [{{type: Ready, status: '{ready}', lastTransitionTime: '{since}'}}]\n  containerStatuses: [{{name: workload, image: w, imageID: '', ready: false, restartCount: 0, state: {{running: {{startedAt: '{started}'}}}}}}]"
        ))
    }

    #[test]
    fn a_pod_unready_since_after_its_start_is_overloaded_one_never_ready_is_starting() {
        let health = pod_health(&[
            running_pod(
                "full",
                "2027-01-01T00:00:00Z",
                "False",
                "2027-01-01T00:00:30Z",
            ),
            running_pod(
                "new",
                "2027-01-01T00:00:30Z",
                "False",
                "2027-01-01T00:00:29Z",
            ),
            running_pod(
                "fine",
                "2027-01-01T00:00:00Z",
                "True",
                "2027-01-01T00:00:02Z",
            ),
            running_pod(
                "full-first",
                "2027-01-01T00:00:00Z",
                "False",
                "2027-01-01T00:00:20Z",
            ),
        ]);
        assert_eq!(
            health,
            PodHealth {
                pods: 4,
                overloaded: 2,
                // The kubelet's time of the first to go over, not the operator's.
                overloaded_since: Some(Time("2027-01-01T00:00:20Z".parse().unwrap())),
                broken: None
            }
        );
    }

    #[test]
    fn image_pulls_crash_loops_and_no_node_are_broken() {
        let pulling = pod(
            "metadata: {name: p}\nstatus:\n  containerStatuses: [{name: workload, image: w, imageID: '', ready: false, restartCount: 0, state: {waiting: {reason: ImagePullBackOff, message: 'Back-off pulling image \"w\"'}}}]",
        );
        let health = pod_health(&[pulling]);
        let (reason, message) = health.broken.unwrap();
        assert_eq!(reason, "ImagePullBackOff");
        assert!(
            message.starts_with("pod p: ImagePullBackOff: Back-off pulling"),
            "{message}"
        );
        assert_eq!(health.overloaded, 0);

        let unschedulable = pod(
            "metadata: {name: u}\nstatus: {conditions: [{type: PodScheduled, status: 'False', reason: Unschedulable, message: '0/1 nodes are available'}]}",
        );
        assert_eq!(
            pod_health(&[unschedulable]).broken.unwrap().0,
            UNSCHEDULABLE
        );
        let leaving = pod("metadata: {name: l, deletionTimestamp: '2027-01-01T00:00:00Z'}");
        assert_eq!(pod_health(&[leaving]).pods, 0);
    }

    fn hpa(yaml_status: &str) -> HorizontalPodAutoscaler {
        serde_yaml::from_str(&format!(
            "metadata: {{name: demo}}\nspec: {{maxReplicas: 10, scaleTargetRef: {{kind: Deployment, name: demo}}}}\nstatus: {yaml_status}"
        ))
        .unwrap()
    }

    #[test]
    fn an_unreadable_metric_degrades_only_after_the_grace() {
        let failing = hpa(&format!(
            "{{desiredReplicas: 1, conditions: [{{type: ScalingActive, status: 'False', reason: FailedGetPodsMetric, message: 'unable to get metric queue_ratio', lastTransitionTime: '{}'}}]}}",
            at(0).0
        ));
        let (failure, recheck) = metric_failure(Some(&failing), &at(30));
        assert_eq!(failure, None);
        assert_eq!(recheck, Some(Duration::from_secs(90)));
        let (failure, recheck) = metric_failure(Some(&failing), &at(120));
        let (reason, message) = failure.unwrap();
        assert_eq!(reason, FAILED_GET_METRIC);
        assert!(
            message.contains("unable to get metric queue_ratio"),
            "{message}"
        );
        assert_eq!(recheck, None);
        let reading = hpa(
            "{desiredReplicas: 1, conditions: [{type: ScalingActive, status: 'True', reason: ValidMetricFound}]}",
        );
        assert_eq!(metric_failure(Some(&reading), &at(500)), (None, None));
    }

    fn scaled(current: i32, desired: i32, decided: i64, value: &str) -> HorizontalPodAutoscaler {
        hpa(&format!(
            "{{currentReplicas: {current}, desiredReplicas: {desired}, lastScaleTime: '{}', currentMetrics: [{{type: Pods, pods: {{metric: {{name: queue_ratio}}, current: {{averageValue: '{value}'}}}}}}], conditions: [{{type: AbleToScale, status: 'True', reason: SucceededRescale}}]}}",
            at(decided).0
        ))
    }

    fn inputs<'a>(
        hpa: &'a HorizontalPodAutoscaler,
        replicas: i32,
        ready: i32,
        backpressure_since: Option<&'a Time>,
    ) -> ScaleInputs<'a> {
        ScaleInputs {
            metric: "queue_ratio",
            target: "1",
            hpa: Some(hpa),
            replicas,
            ready,
            backpressure_since,
        }
    }

    #[test]
    fn a_scale_out_is_recorded_once_with_its_reaction_and_time_to_capacity() {
        let before = AutoscalingStatus {
            desired_replicas: 1,
            ..Default::default()
        };
        let since = at(0);
        let decision = scaled(1, 3, 6, "4");
        let decided =
            autoscaling_status(Some(&before), inputs(&decision, 1, 0, Some(&since)), &at(7));
        assert_eq!(decided.replicas, "1/3");
        assert_eq!(decided.decided_value.as_deref(), Some("4"));
        assert_eq!(decided.conditions[0].reason, "SucceededRescale");
        let event = decided.scale_events.last().unwrap();
        assert_eq!((event.from, event.to), (1, 3));
        assert_eq!(event.reaction_seconds, Some(6));
        assert_eq!(event.ready_at, None);

        // The same decision seen again, pods starting: no second event, not ready yet.
        let starting = autoscaling_status(
            Some(&decided),
            inputs(&decision, 3, 2, Some(&since)),
            &at(9),
        );
        assert_eq!(starting.scale_events.len(), 1);
        assert_eq!(starting.scale_events[0].ready_at, None);
        // Three pods ready: capacity reached.
        let ready = autoscaling_status(Some(&starting), inputs(&decision, 3, 3, None), &at(12));
        let event = &ready.scale_events[0];
        assert_eq!(event.ready_at, Some(at(12)));
        assert_eq!(
            (event.ready_seconds, event.time_to_capacity_seconds),
            (Some(6), Some(12))
        );
        // Unchanged afterwards: an identical status, so no write.
        assert_eq!(
            autoscaling_status(Some(&ready), inputs(&decision, 3, 3, None), &at(40)),
            ready
        );
    }

    #[test]
    fn backpressure_that_ended_before_the_decision_still_times_it_once() {
        let since = at(2);
        let overloaded = scaled(1, 1, 0, "0");
        let began = autoscaling_status(
            Some(&AutoscalingStatus {
                desired_replicas: 1,
                ..Default::default()
            }),
            inputs(&overloaded, 1, 0, Some(&since)),
            &at(2),
        );
        assert_eq!(began.backpressure_began, Some(since.clone()));
        // The pod left the Service and drained: no backpressure now, when the HPA decides.
        let decision = scaled(1, 3, 9, "4");
        let decided = autoscaling_status(Some(&began), inputs(&decision, 1, 1, None), &at(10));
        let event = decided.scale_events.last().unwrap();
        assert_eq!(event.backpressure_since, Some(since));
        assert_eq!(event.reaction_seconds, Some(7));
        // A later scale-out with no new backpressure since: none.
        let again = scaled(3, 5, 30, "2");
        let later = autoscaling_status(Some(&decided), inputs(&again, 3, 3, None), &at(31));
        assert_eq!(later.scale_events.last().unwrap().backpressure_since, None);
    }

    #[test]
    fn a_flapping_pod_times_the_scale_out_from_its_first_onset() {
        let overloaded = scaled(1, 1, 0, "0");
        let mut status = AutoscalingStatus {
            desired_replicas: 1,
            ..Default::default()
        };
        // Over its limit at 1, out of the Service and drained by 3, back and over again at 5: as on
        // the real node under the seed's -c 6, where the last onset made the reaction 1 s of 6.
        for (now, since) in [(1, Some(at(1))), (3, None), (5, Some(at(5)))] {
            let inputs = inputs(&overloaded, 1, 0, since.as_ref());
            status = autoscaling_status(Some(&status), inputs, &at(now));
        }
        assert_eq!(
            (
                status.backpressure_began.clone(),
                status.backpressure_ended.clone()
            ),
            (Some(at(1)), None)
        );
        let decision = scaled(1, 3, 7, "4");
        let decided =
            autoscaling_status(Some(&status), inputs(&decision, 1, 0, Some(&at(5))), &at(7));
        let event = decided.scale_events.last().unwrap();
        assert_eq!(
            (event.backpressure_since.clone(), event.reaction_seconds),
            (Some(at(1)), Some(6))
        );
        // After the decision, an onset starts a spell of its own: the next scale-out's.
        let next = autoscaling_status(
            Some(&decided),
            inputs(&decision, 3, 2, Some(&at(9))),
            &at(9),
        );
        assert_eq!(next.backpressure_began, Some(at(9)));
    }

    #[test]
    fn backpressure_after_a_quiet_spell_is_a_new_one() {
        let quiet = scaled(1, 1, 0, "0");
        let mut status = AutoscalingStatus {
            desired_replicas: 1,
            ..Default::default()
        };
        let quiet_secs = BACKPRESSURE_QUIET.as_secs() as i64;
        for (now, since) in [
            (1, Some(at(1))),
            (2, None),
            (3 + quiet_secs, Some(at(3 + quiet_secs))),
        ] {
            let inputs = inputs(&quiet, 1, 0, since.as_ref());
            status = autoscaling_status(Some(&status), inputs, &at(now));
        }
        assert_eq!(status.backpressure_began, Some(at(3 + quiet_secs)));
        // Short quiets, one after another, over more than the quiet span in all: one spell. Each
        // quiet counts from its own start, not from the first.
        let t = 3 + quiet_secs;
        let mut spell = status.clone();
        for (now, since) in [
            (t + 5, None),
            (t + 10, Some(at(t + 10))),
            (t + 30, None),
            (t + 40, Some(at(t + 40))),
        ] {
            let inputs = inputs(&quiet, 1, 0, since.as_ref());
            spell = autoscaling_status(Some(&spell), inputs, &at(now));
        }
        assert_eq!(
            (spell.backpressure_began, spell.backpressure_ended),
            (Some(at(t)), None)
        );
        // While it lasts, a pod overloaded later changes nothing.
        let same = autoscaling_status(
            Some(&status),
            inputs(&quiet, 2, 0, Some(&at(40 + quiet_secs))),
            &at(40 + quiet_secs),
        );
        assert_eq!(same.backpressure_began, Some(at(3 + quiet_secs)));
    }

    #[test]
    fn backpressure_seen_after_the_decision_still_times_its_scale_out() {
        let before = AutoscalingStatus {
            desired_replicas: 1,
            ..Default::default()
        };
        // The HPA's decision reaches the status before the pod's unready transition does.
        let decision = scaled(1, 3, 6, "4");
        let decided = autoscaling_status(Some(&before), inputs(&decision, 1, 1, None), &at(7));
        assert_eq!(decided.scale_events[0].reaction_seconds, None);
        // The kubelet's transition, from before the decision, arrives: the event learns it.
        let since = at(1);
        let seen = autoscaling_status(
            Some(&decided),
            inputs(&decision, 3, 1, Some(&since)),
            &at(8),
        );
        let event = &seen.scale_events[0];
        assert_eq!(event.backpressure_since, Some(since.clone()));
        assert_eq!(event.reaction_seconds, Some(5));
        let ready = autoscaling_status(Some(&seen), inputs(&decision, 3, 3, None), &at(11));
        assert_eq!(ready.scale_events[0].time_to_capacity_seconds, Some(10));
        // Backpressure that began after the decision is not its cause.
        let late = autoscaling_status(
            Some(&decided),
            inputs(&decision, 3, 1, Some(&at(9))),
            &at(9),
        );
        assert_eq!(late.scale_events[0].backpressure_since, None);
    }

    #[test]
    fn a_scale_in_has_no_backpressure_and_events_are_bounded() {
        let mut status = AutoscalingStatus {
            desired_replicas: 4,
            ..Default::default()
        };
        let since = at(0);
        for step in 0..8 {
            let (from, to) = if step % 2 == 0 { (4, 2) } else { (2, 4) };
            let decision = scaled(from, to, 10 * (step + 1), "1500m");
            status = autoscaling_status(
                Some(&status),
                inputs(&decision, from, from, Some(&since)),
                &at(10 * (step + 1)),
            );
        }
        assert_eq!(status.scale_events.len(), MAX_SCALE_EVENTS);
        let scale_in = status
            .scale_events
            .iter()
            .find(|e| !e.is_scale_out())
            .unwrap();
        assert_eq!(scale_in.backpressure_since, None);
        assert_eq!(scale_in.reaction_seconds, None);
        assert_eq!(status.scale_events.last().unwrap().decided_at, at(80));
    }

    #[test]
    fn an_hpa_wants_what_the_deployment_has_until_it_decides() {
        let new = hpa("{desiredReplicas: 0, currentReplicas: 0}");
        assert_eq!(desired_replicas(Some(&new), 1), 1);
        let status = autoscaling_status(None, inputs(&new, 1, 1, None), &at(0));
        assert_eq!(status.replicas, "1/1");
        // Synced, but it never read its metric: it still decided nothing.
        let unread = hpa(
            "{desiredReplicas: 0, currentReplicas: 1, conditions: [{type: ScalingActive, status: 'False', reason: FailedGetPodsMetric}]}",
        );
        assert_eq!(desired_replicas(Some(&unread), 1), 1);
        let synced = scaled(1, 3, 6, "4");
        assert_eq!(desired_replicas(Some(&synced), 1), 3);
        assert_eq!(desired_replicas(None, 2), 2);
    }

    #[test]
    fn no_event_without_a_previous_status_to_compare_with() {
        let decision = scaled(1, 3, 6, "4");
        let first = autoscaling_status(None, inputs(&decision, 3, 3, None), &at(100));
        assert!(first.scale_events.is_empty());
        assert_eq!(first.last_scale_time, Some(at(6)));
    }
}
