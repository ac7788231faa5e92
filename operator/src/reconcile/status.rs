//! Pipeline step 4, **update status**: what the CR's status should say after validate/apply,
//! which Events the change deserves, and the one status write when (and only when) it changed.
//!
//! [`update`] is the step. It takes the newest known status from [`CrHistory`], asks the pure
//! [`change`] (built from [`desired`] and [`notices`]) what to write and tell, writes with
//! [`patch`] and remembers what it wrote.
//!
//! [`CrHistory`]: crate::reconcile::cr_history::CrHistory

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Client, Resource, ResourceExt};

use tracing::debug;

use super::Context;
use super::apply::{ApplyOutcome, MonitoringOutcome};
use super::events::{self, Notice};
use super::scaling::{self, ScaleInputs};
use crate::api::{InvalidSpec, SandboxService, SandboxServiceStatus};
use crate::children::hpa;
use crate::error::{Error, Result};
use crate::names::{FIELD_MANAGER, selector_string};

/// `type` of the condition that is true while at least one pod serves traffic.
pub const READY: &str = "Ready";
/// `type` of the condition that is true while a rollout of the Deployment is under way.
pub const PROGRESSING: &str = "Progressing";
/// `type` of the condition that is true while the spec cannot be (fully) honoured, or the pods or
/// the HPA are broken (an image that cannot be pulled, a crash loop, a metric the HPA cannot read).
pub const DEGRADED: &str = "Degraded";
/// `type` of the condition that is true while some pod is over its readiness limit: shedding load
/// by design, not an outage.
pub const BACKPRESSURE: &str = "Backpressure";

/// What the reconcile found out: the spec is invalid, or the children were applied.
#[derive(Debug, Clone)]
pub enum Observation {
    /// Validation failed; nothing was applied.
    Invalid(InvalidSpec),
    /// The children were applied (boxed: it holds the whole Deployment).
    Applied(Box<ApplyOutcome>),
    /// The API server refused a child (e.g. an existing object of the same name whose immutable
    /// selector differs); the error, which names the child.
    ApplyFailed(String),
    /// The API server is too old for the children; nothing was applied. What it lacks.
    UnsupportedServer(String),
}

/// Pipeline step 4: write the status only when it changed, and tell the user about
/// transitions. "Changed" is judged against the newest known status, not only the cached CR:
/// the cache may not have seen the last write yet.
pub async fn update(cr: &SandboxService, ctx: &Context, observation: &Observation) -> Result<()> {
    let known = ctx.history.known_status(cr);
    let change = change(cr, known.as_ref(), observation, now());
    match &change.write {
        Some(status) => {
            patch(&ctx.client, cr, status).await?;
            ctx.history.remember_written(cr, status);
        }
        None => debug!(name = %cr.name_any(), "status unchanged"),
    }
    for notice in change.notices {
        events::publish(&ctx.recorder, cr, notice).await;
    }
    Ok(())
}

/// What the status step decided: the status to write and the Events to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    /// The new status; `None` when it equals the newest known one.
    pub write: Option<SandboxServiceStatus>,
    /// Events for the transition, published after the write.
    pub notices: Vec<Notice>,
}

/// From the newest `known` status and `observation`: what to write, and what to tell.
pub fn change(
    cr: &SandboxService,
    known: Option<&SandboxServiceStatus>,
    observation: &Observation,
    now: Time,
) -> StatusChange {
    let desired = desired(cr, known, observation, now.clone());
    let notices = notices(known, &desired, observation, &now);
    let write = (known != Some(&desired)).then_some(desired);
    StatusChange { write, notices }
}

/// The current time at the precision the API server stores (whole seconds), so a timestamp
/// written and read back compares equal.
pub fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The status the CR should have after `observation`, given its `previous` status (the newest
/// known, which may be newer than `cr.status`). Conditions keep their `lastTransitionTime`
/// unless their `status` flips, so an unchanged world yields an identical status and no write.
pub fn desired(
    cr: &SandboxService,
    previous: Option<&SandboxServiceStatus>,
    observation: &Observation,
    now: Time,
) -> SandboxServiceStatus {
    let previous = previous.cloned().unwrap_or_default();
    let generation = cr.meta().generation;
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" }.to_string();
        let last_transition_time = previous
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time,
        }
    };

    let degraded = match degradation(observation, &now) {
        Some((reason, message)) => condition(DEGRADED, true, reason, message),
        None => condition(DEGRADED, false, "AsExpected", ALL_APPLIED.into()),
    };

    match observation {
        Observation::Invalid(_)
        | Observation::ApplyFailed(_)
        | Observation::UnsupportedServer(_) => {
            // Nothing (or not everything) was applied: the children keep their last state, so
            // Ready and the replica counts stay as last observed.
            let (reason, waiting_for) = match observation {
                Observation::Invalid(_) => ("InvalidSpec", "a valid spec"),
                Observation::UnsupportedServer(_) => (
                    UNSUPPORTED_KUBERNETES,
                    "an API server of a supported Kubernetes version",
                ),
                _ => ("ApplyFailed", "the API server to accept every child"),
            };
            let ready = previous
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .cloned()
                .unwrap_or_else(|| {
                    condition(READY, false, reason, format!("waiting for {waiting_for}"))
                });
            SandboxServiceStatus {
                // An invalid spec is observed (and refused); a refused apply left the children
                // at the generation last applied.
                observed_generation: match observation {
                    Observation::Invalid(_) => generation,
                    _ => previous.observed_generation,
                },
                conditions: vec![
                    ready,
                    condition(
                        PROGRESSING,
                        false,
                        reason,
                        format!(
                            "waiting for {waiting_for}; the children keep their last applied state"
                        ),
                    ),
                    degraded,
                ],
                ..previous
            }
        }
        Observation::Applied(applied) => {
            let rollout = Rollout::of(applied);
            let pods = &applied.pods;
            let autoscaling_spec = &cr.spec.autoscaling;
            let desired_replicas =
                scaling::desired_replicas(applied.hpa.as_ref(), rollout.replicas);
            let backpressure = if pods.overloaded > 0 {
                let hpa = if desired_replicas > rollout.replicas {
                    format!("; the HPA scales to {desired_replicas}")
                } else if i64::from(rollout.replicas) >= autoscaling_spec.max_replicas {
                    format!("; at maxReplicas ({})", autoscaling_spec.max_replicas)
                } else {
                    String::new()
                };
                condition(
                    BACKPRESSURE,
                    true,
                    "PodsOverloaded",
                    format!(
                        "{} of {} pods over their readiness limit (more than {} x concurrency waiting): shedding load by design{hpa}",
                        pods.overloaded, pods.pods, cr.spec.readiness_queue_factor
                    ),
                )
            } else {
                condition(
                    BACKPRESSURE,
                    false,
                    "WithinLimits",
                    "no pod is over its readiness limit".into(),
                )
            };
            let autoscaling = scaling::autoscaling_status(
                previous.autoscaling.as_ref(),
                ScaleInputs {
                    metric: autoscaling_spec.metric.metric_name(),
                    target: &hpa::target(autoscaling_spec, cr.spec.readiness_queue_factor).0,
                    hpa: applied.hpa.as_ref(),
                    replicas: rollout.replicas,
                    ready: rollout.ready,
                    backpressure_since: pods.overloaded_since.as_ref(),
                },
                &now,
            );
            let ready = if rollout.ready > 0 {
                condition(
                    READY,
                    true,
                    "PodsReady",
                    format!("{} of {} pods ready", rollout.ready, rollout.replicas),
                )
            } else if pods.overloaded > 0 && pods.broken.is_none() {
                // Every running pod is full, by design: they serve what they queued. Not an
                // outage, so not `Ready=False` as for pods that cannot start.
                condition(
                    READY,
                    true,
                    "Overloaded",
                    format!(
                        "0 of {} pods pass /readiness: every running pod's queue is over its readiness limit and it serves what it holds",
                        rollout.replicas
                    ),
                )
            } else {
                condition(
                    READY,
                    false,
                    "NoPodsReady",
                    "no pod passes /readiness yet".into(),
                )
            };
            SandboxServiceStatus {
                observed_generation: generation,
                conditions: vec![
                    ready,
                    if rollout.complete {
                        condition(
                            PROGRESSING,
                            false,
                            "RolloutComplete",
                            format!("all {} pods run the current spec", rollout.replicas),
                        )
                    } else {
                        condition(
                            PROGRESSING,
                            true,
                            "RollingOut",
                            format!(
                                "{} of {} pods updated, {} available",
                                rollout.updated, rollout.replicas, rollout.available
                            ),
                        )
                    },
                    degraded,
                    backpressure,
                ],
                replicas: rollout.replicas,
                ready_replicas: rollout.ready,
                selector: Some(selector_string(&cr.name_any())),
                autoscaling: Some(autoscaling),
            }
        }
    }
}

/// The reason of `Degraded` (and of the Warning Event) while the API server is too old.
pub const UNSUPPORTED_KUBERNETES: &str = "UnsupportedKubernetesVersion";

/// The `Degraded` message while nothing is wrong.
const ALL_APPLIED: &str = "all children are applied";

/// Why the CR is degraded after `observation` at `now`: the `Degraded` condition's reason (also
/// the Warning Event's) and message; `None` when it is not. The spec and the children come first,
/// then broken pods, then an HPA that cannot read its metric.
fn degradation(observation: &Observation, now: &Time) -> Option<(&'static str, String)> {
    match observation {
        Observation::Invalid(invalid) => Some(("InvalidSpec", invalid.to_string())),
        Observation::ApplyFailed(error) => Some(("ApplyFailed", error.clone())),
        Observation::UnsupportedServer(missing) => Some((UNSUPPORTED_KUBERNETES, missing.clone())),
        Observation::Applied(applied) if applied.monitoring == MonitoringOutcome::CrdMissing => {
            Some((
                "ServiceMonitorCrdMissing",
                "the ServiceMonitor CRD (monitoring.coreos.com/v1) is not installed; the Deployment, Service and HPA are applied. Install the Prometheus Operator CRDs or set spec.monitoring.serviceMonitor: false".to_string(),
            ))
        }
        Observation::Applied(applied) => applied
            .pods
            .broken
            .clone()
            .or_else(|| scaling::metric_failure(applied.hpa.as_ref(), now).0),
    }
}

/// The Deployment's progress as its status reports it.
struct Rollout {
    replicas: i32,
    ready: i32,
    updated: i32,
    available: i32,
    complete: bool,
}

impl Rollout {
    fn of(applied: &ApplyOutcome) -> Self {
        let generation = applied.deployment.metadata.generation;
        let Some(status) = &applied.deployment.status else {
            return Self {
                replicas: 0,
                ready: 0,
                updated: 0,
                available: 0,
                complete: false,
            };
        };
        let replicas = status.replicas.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0);
        let available = status.available_replicas.unwrap_or(0);
        // As `kubectl rollout status`: the controller saw the latest spec, every pod is updated
        // and available, and no old pod is left.
        let complete = status.observed_generation >= generation
            && updated == replicas
            && available == replicas;
        Self {
            replicas,
            ready: status.ready_replicas.unwrap_or(0),
            updated,
            available,
            complete,
        }
    }
}

/// Events for the change from `old` to `new`: Normal when a new generation is applied, when a
/// ServiceMonitor is removed, or when a problem clears; Warning when `Degraded` turns true.
/// Nothing for a reconcile that changed nothing.
pub fn notices(
    old: Option<&SandboxServiceStatus>,
    new: &SandboxServiceStatus,
    observation: &Observation,
    now: &Time,
) -> Vec<Notice> {
    let find = |status: Option<&SandboxServiceStatus>, type_: &str| {
        status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_).cloned())
    };
    let mut notices = Vec::new();
    if let Observation::ApplyFailed(_) = observation {
        // `reconcile` publishes the error as a Warning itself, once per attempt.
        return notices;
    }
    let old_degraded = find(old, DEGRADED);
    let new_degraded = find(Some(new), DEGRADED);

    if let Observation::Applied(applied) = observation {
        if old.and_then(|s| s.observed_generation) != new.observed_generation {
            let mut kinds = "Deployment, Service, HorizontalPodAutoscaler".to_string();
            if applied.monitoring == MonitoringOutcome::Applied {
                kinds.push_str(", ServiceMonitor");
            }
            notices.push(Notice {
                type_: EventType::Normal,
                reason: "Applied",
                note: format!(
                    "applied generation {}: {kinds}",
                    new.observed_generation.unwrap_or_default()
                ),
            });
        }
        if applied.monitoring == MonitoringOutcome::Deleted {
            notices.push(Notice {
                type_: EventType::Normal,
                reason: "ServiceMonitorDeleted",
                note: "spec.monitoring.serviceMonitor is false; deleted the owned ServiceMonitor"
                    .into(),
            });
        }
    }

    if let Some(degraded) = new_degraded {
        let was_degraded = old_degraded.as_ref().is_some_and(|c| c.status == "True");
        let same_problem = old_degraded
            .as_ref()
            .is_some_and(|c| c.reason == degraded.reason && c.message == degraded.message);
        // `new` was built from `observation`: its Degraded condition is true exactly when
        // `degradation` names a reason.
        notices.extend(scale_notices(old, new));
        match degradation(observation, now) {
            Some((reason, _)) if !(was_degraded && same_problem) => notices.push(Notice {
                type_: EventType::Warning,
                reason,
                note: degraded.message,
            }),
            None if was_degraded => notices.push(Notice {
                type_: EventType::Normal,
                reason: "Recovered",
                note: ALL_APPLIED.into(),
            }),
            _ => {}
        }
    }
    notices
}

/// One Event per scale decision the status gained, and one when a scale-out's pods are ready.
fn scale_notices(old: Option<&SandboxServiceStatus>, new: &SandboxServiceStatus) -> Vec<Notice> {
    let Some(autoscaling) = &new.autoscaling else {
        return Vec::new();
    };
    let old_events = old
        .and_then(|status| status.autoscaling.as_ref())
        .map(|status| status.scale_events.as_slice())
        .unwrap_or_default();
    let seconds = |value: Option<i64>| value.map_or("-".to_string(), |s| format!("{s} s"));
    let mut notices = Vec::new();
    for event in &autoscaling.scale_events {
        let before = old_events
            .iter()
            .find(|old| old.decided_at == event.decided_at);
        let value = event.metric_value.as_deref().unwrap_or("-");
        if before.is_none() {
            let reaction = match (event.is_scale_out(), event.reaction_seconds) {
                (true, Some(reaction)) => {
                    format!("; {reaction} s after the first pod went over its readiness limit")
                }
                (true, None) => "; before any pod went over its readiness limit".to_string(),
                (false, _) => String::new(),
            };
            notices.push(Notice {
                type_: EventType::Normal,
                reason: if event.is_scale_out() {
                    "ScaledOut"
                } else {
                    "ScaledIn"
                },
                note: format!(
                    "the HPA scaled {} -> {} pods on {} {value} (target {}){reaction}",
                    event.from, event.to, autoscaling.metric, autoscaling.target
                ),
            });
        }
        if event.ready_at.is_some() && before.is_none_or(|old| old.ready_at.is_none()) {
            notices.push(Notice {
                type_: EventType::Normal,
                reason: "ScaleOutReady",
                note: format!(
                    "{} pods ready: reaction {}, pods ready {} after the decision, time to capacity {}",
                    event.to,
                    seconds(event.reaction_seconds),
                    seconds(event.ready_seconds),
                    seconds(event.time_to_capacity_seconds)
                ),
            });
        }
    }
    notices
}

/// Write `status` to the CR's status subresource: one server-side apply patch carrying
/// `apiVersion` and `kind`, with the operator's field manager.
pub async fn patch(
    client: &Client,
    cr: &SandboxService,
    status: &SandboxServiceStatus,
) -> Result<()> {
    let namespace = cr.namespace().unwrap_or_default();
    let name = cr.name_any();
    let api: Api<SandboxService> = Api::namespaced(client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": SandboxService::api_version(&()),
        "kind": SandboxService::kind(&()),
        "status": status,
    });
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map(|_| ())
    .map_err(|source| Error::Status {
        namespace,
        name,
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, DeploymentStatus};

    fn cr() -> SandboxService {
        serde_yaml::from_str(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {name: demo, namespace: apps, uid: u, generation: 3}\nspec: {}",
        )
        .unwrap()
    }

    fn applied(status: Option<DeploymentStatus>, monitoring: MonitoringOutcome) -> Observation {
        let mut deployment = Deployment::default();
        deployment.metadata.generation = Some(2);
        deployment.status = status;
        Observation::Applied(Box::new(ApplyOutcome {
            deployment,
            monitoring,
            hpa: None,
            pods: Default::default(),
        }))
    }

    fn rolled_out(replicas: i32) -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(2),
            replicas: Some(replicas),
            ready_replicas: Some(replicas),
            updated_replicas: Some(replicas),
            available_replicas: Some(replicas),
            ..Default::default()
        }
    }

    fn condition<'a>(status: &'a SandboxServiceStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    /// The status of a CR with no status yet after `observation`.
    fn first_status(observation: Observation) -> SandboxServiceStatus {
        desired(&cr(), None, &observation, now())
    }

    #[test]
    fn healthy_rollout() {
        let status = first_status(applied(Some(rolled_out(2)), MonitoringOutcome::Applied));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!((status.replicas, status.ready_replicas), (2, 2));
        assert_eq!(
            status.selector.as_deref(),
            Some("app.kubernetes.io/instance=demo,app.kubernetes.io/name=workload")
        );
        assert_eq!(condition(&status, READY).status, "True");
        assert_eq!(condition(&status, PROGRESSING).status, "False");
        assert_eq!(condition(&status, DEGRADED).status, "False");
        assert!(
            status
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(3))
        );
    }

    #[test]
    fn fresh_deployment_is_progressing_and_not_ready() {
        let status = first_status(applied(None, MonitoringOutcome::Applied));
        assert_eq!(condition(&status, READY).status, "False");
        assert_eq!(condition(&status, PROGRESSING).status, "True");
        let mut stale = rolled_out(2);
        stale.observed_generation = Some(1);
        let status = first_status(applied(Some(stale), MonitoringOutcome::Applied));
        assert_eq!(condition(&status, PROGRESSING).reason, "RollingOut");
    }

    #[test]
    fn missing_service_monitor_crd_degrades_with_a_reason() {
        let status = first_status(applied(None, MonitoringOutcome::CrdMissing));
        let degraded = condition(&status, DEGRADED);
        assert_eq!(degraded.status, "True");
        assert_eq!(degraded.reason, "ServiceMonitorCrdMissing");
    }

    #[test]
    fn unchanged_world_gives_an_identical_status() {
        let mut cr = cr();
        let observation = applied(Some(rolled_out(1)), MonitoringOutcome::Applied);
        let first = desired(
            &cr,
            cr.status.as_ref(),
            &observation,
            Time(Timestamp::UNIX_EPOCH),
        );
        cr.status = Some(first.clone());
        let second = desired(&cr, cr.status.as_ref(), &observation, now());
        assert_eq!(first, second, "transition times are kept");
        assert_eq!(
            change(&cr, cr.status.as_ref(), &observation, now()),
            StatusChange {
                write: None,
                notices: vec![]
            }
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let mut cr = cr();
        let epoch = Time(Timestamp::UNIX_EPOCH);
        cr.status = Some(desired(
            &cr,
            cr.status.as_ref(),
            &applied(None, MonitoringOutcome::Applied),
            epoch.clone(),
        ));
        let later = now();
        let status = desired(
            &cr,
            cr.status.as_ref(),
            &applied(Some(rolled_out(1)), MonitoringOutcome::Applied),
            later.clone(),
        );
        assert_eq!(condition(&status, READY).last_transition_time, later);
        assert_eq!(condition(&status, DEGRADED).last_transition_time, epoch);
    }

    #[test]
    fn invalid_spec_keeps_the_last_observed_pods() {
        let mut cr = cr();
        cr.status = Some(desired(
            &cr,
            cr.status.as_ref(),
            &applied(Some(rolled_out(3)), MonitoringOutcome::Applied),
            now(),
        ));
        let invalid = InvalidSpec {
            field: "spec.autoscaling.maxReplicas".into(),
            message: "must be greater than or equal to minReplicas (5), got 4".into(),
        };
        let observation = Observation::Invalid(invalid);
        let status = desired(&cr, cr.status.as_ref(), &observation, now());
        assert_eq!(status.ready_replicas, 3);
        assert_eq!(condition(&status, READY).status, "True");
        let degraded = condition(&status, DEGRADED);
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "InvalidSpec")
        );
        assert!(degraded.message.contains("spec.autoscaling.maxReplicas"));
        let events = notices(cr.status.as_ref(), &status, &observation, &now());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].type_, EventType::Warning);
        assert_eq!(events[0].reason, "InvalidSpec");
        assert!(events[0].note.contains("spec.autoscaling.maxReplicas"));
    }

    #[test]
    fn events_on_first_apply_deletion_and_recovery() {
        let cr = cr();
        let observation = applied(None, MonitoringOutcome::Deleted);
        let status = desired(&cr, cr.status.as_ref(), &observation, now());
        let reasons: Vec<_> = notices(None, &status, &observation, &now())
            .into_iter()
            .map(|n| (n.type_, n.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (EventType::Normal, "Applied"),
                (EventType::Normal, "ServiceMonitorDeleted")
            ]
        );

        let missing = applied(None, MonitoringOutcome::CrdMissing);
        let degraded = desired(&cr, cr.status.as_ref(), &missing, now());
        let healed = desired(
            &cr,
            cr.status.as_ref(),
            &applied(None, MonitoringOutcome::Applied),
            now(),
        );
        let recovered = notices(
            Some(&degraded),
            &healed,
            &applied(None, MonitoringOutcome::Applied),
            &now(),
        );
        assert_eq!(recovered.len(), 1);
        assert_eq!(recovered[0].reason, "Recovered");
    }
}
