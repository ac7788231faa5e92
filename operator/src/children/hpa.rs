//! The HorizontalPodAutoscaler scaling the Deployment on the pods' `queue_ratio` or
//! `queue_occupancy` (`spec.autoscaling.metric`), with the spec's scaling behavior.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingPolicy, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::metadata;
use crate::api::Validated;
use crate::api::autoscaling::ScalingRules;
use crate::api::crd::Autoscaling;
use crate::api::quantity::ratio_quantity;

/// Per-pod metrics the workload exports on `/metrics` (via a metrics adapter to the HPA).
pub use workload::contract::{QUEUE_OCCUPANCY_METRIC, QUEUE_RATIO_METRIC};

/// The HPA's per-pod `AverageValue` target for the spec's metric, kept below the value at which
/// pods fail `/readiness`.
pub fn target(scaling: &Autoscaling, readiness_queue_factor: i64) -> Quantity {
    ratio_quantity(
        scaling.metric.target(scaling.target_queue_ratio),
        scaling.metric.readiness_bound(readiness_queue_factor),
    )
}

/// One direction's rules as the HPA takes them; `window` is the stabilization window in effect.
fn rules(rules: Option<&ScalingRules>, window: Option<i32>) -> Option<HPAScalingRules> {
    if rules.is_none() && window.is_none() {
        return None;
    }
    let policies = rules
        .map(|rules| {
            rules
                .policies
                .iter()
                .map(|policy| HPAScalingPolicy {
                    type_: policy.type_.as_str().to_string(),
                    value: i32::try_from(policy.value).unwrap_or(i32::MAX),
                    period_seconds: policy.period_seconds,
                })
                .collect::<Vec<_>>()
        })
        .filter(|policies| !policies.is_empty());
    Some(HPAScalingRules {
        stabilization_window_seconds: window,
        select_policy: rules
            .and_then(|rules| rules.select_policy)
            .map(|policy| policy.as_str().to_string()),
        policies,
        ..Default::default()
    })
}

/// A replica count that `validate` has bounded to `1..=MAX_INT32`, as the HPA's int32.
fn int32(count: i64) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Build the HPA: one `Pods` metric with an `AverageValue` target.
pub fn build(valid: &Validated) -> HorizontalPodAutoscaler {
    let scaling = &valid.spec.autoscaling;
    let behavior = scaling.behavior.as_ref();
    HorizontalPodAutoscaler {
        metadata: metadata(&valid.owner),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_string()),
                kind: "Deployment".to_string(),
                name: valid.owner.name.clone(),
            },
            min_replicas: Some(int32(scaling.min_replicas)),
            max_replicas: int32(scaling.max_replicas),
            metrics: Some(vec![MetricSpec {
                type_: "Pods".to_string(),
                pods: Some(PodsMetricSource {
                    metric: MetricIdentifier {
                        name: scaling.metric.metric_name().to_string(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_string(),
                        average_value: Some(target(scaling, valid.spec.readiness_queue_factor)),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_up: rules(
                    behavior.and_then(|b| b.scale_up.as_ref()),
                    behavior
                        .and_then(|b| b.scale_up.as_ref())
                        .and_then(|rules| rules.stabilization_window_seconds),
                ),
                scale_down: rules(
                    behavior.and_then(|b| b.scale_down.as_ref()),
                    Some(scaling.scale_down_window_seconds()),
                ),
            }),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::test_support::valid;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    #[test]
    fn defaults() {
        let spec = build(&valid("")).spec.unwrap();
        assert_eq!(spec.scale_target_ref.kind, "Deployment");
        assert_eq!(spec.scale_target_ref.name, "demo");
        assert_eq!(
            spec.scale_target_ref.api_version.as_deref(),
            Some("apps/v1")
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(1), 10));
        let metrics = spec.metrics.unwrap();
        assert_eq!(metrics.len(), 1);
        let pods = metrics[0].pods.as_ref().unwrap();
        assert_eq!(metrics[0].type_, "Pods");
        assert_eq!(pods.metric.name, "queue_ratio");
        assert_eq!(pods.target.type_, "AverageValue");
        assert_eq!(pods.target.average_value, Some(Quantity("1".into())));
        let scale_down = spec.behavior.unwrap().scale_down.unwrap();
        assert_eq!(scale_down.stabilization_window_seconds, Some(300));
    }

    #[test]
    fn every_autoscaling_field() {
        let spec = build(&valid(
            "autoscaling: {minReplicas: 2, maxReplicas: 7, targetQueueRatio: 0.5, scaleDownStabilizationSeconds: 60}",
        ))
        .spec
        .unwrap();
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 7));
        let target = spec.metrics.unwrap()[0].pods.clone().unwrap().target;
        assert_eq!(target.average_value, Some(Quantity("500m".into())));
        assert_eq!(
            spec.behavior
                .unwrap()
                .scale_down
                .unwrap()
                .stabilization_window_seconds,
            Some(60)
        );
    }

    #[test]
    fn occupancy_aims_at_the_busy_slot_plus_the_waiting_target() {
        let spec = build(&valid(
            "autoscaling: {metric: Occupancy, targetQueueRatio: 0.5}",
        ))
        .spec
        .unwrap();
        let pods = spec.metrics.unwrap()[0].pods.clone().unwrap();
        assert_eq!(pods.metric.name, "queue_occupancy");
        assert_eq!(pods.target.average_value, Some(Quantity("1500m".into())));
        // Below the readiness limit (2 waiting + the running one), as for queue_ratio.
        let spec = build(&valid(
            "autoscaling: {metric: Occupancy, targetQueueRatio: 1.9999}",
        ))
        .spec
        .unwrap();
        let target = spec.metrics.unwrap()[0].pods.clone().unwrap().target;
        assert_eq!(target.average_value, Some(Quantity("2999m".into())));
    }

    #[test]
    fn behavior_goes_to_the_hpa_and_its_window_wins_over_the_shorthand() {
        let spec = build(&valid(
            "autoscaling:\n  scaleDownStabilizationSeconds: 60\n  behavior:\n    scaleUp: {stabilizationWindowSeconds: 10, selectPolicy: Min, policies: [{type: Pods, value: 2, periodSeconds: 15}, {type: Percent, value: 50, periodSeconds: 30}]}\n    scaleDown: {stabilizationWindowSeconds: 120, selectPolicy: Disabled}",
        ))
        .spec
        .unwrap();
        let behavior = spec.behavior.unwrap();
        let up = behavior.scale_up.unwrap();
        assert_eq!(up.stabilization_window_seconds, Some(10));
        assert_eq!(up.select_policy.as_deref(), Some("Min"));
        let policies = up.policies.unwrap();
        assert_eq!(
            (
                policies[1].type_.as_str(),
                policies[1].value,
                policies[1].period_seconds
            ),
            ("Percent", 50, 30)
        );
        let down = behavior.scale_down.unwrap();
        assert_eq!(down.stabilization_window_seconds, Some(120));
        assert_eq!(down.select_policy.as_deref(), Some("Disabled"));
        assert_eq!(down.policies, None, "Kubernetes' default policies");
    }

    #[test]
    fn the_target_follows_the_readiness_factor() {
        let spec = build(&valid(
            "readinessQueueFactor: 3\nbreakerQueueFactor: 6\nautoscaling: {targetQueueRatio: 2.9996}",
        ))
        .spec
        .unwrap();
        let target = spec.metrics.unwrap()[0].pods.clone().unwrap().target;
        assert_eq!(target.average_value, Some(Quantity("2999m".into())));
    }
}
