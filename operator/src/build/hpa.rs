//! The HorizontalPodAutoscaler scaling the Deployment on the pods' `queue_ratio`.

use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricIdentifier, MetricSpec,
    MetricTarget, PodsMetricSource,
};

use super::metadata;
use crate::spec::Validated;
use crate::spec::quantity::ratio_quantity;

/// Per-pod metric the workload exports on `/metrics` (via a metrics adapter to the HPA).
pub use workload::contract::QUEUE_RATIO_METRIC;

/// A replica count that `validate` has bounded to `1..=MAX_INT32`, as the HPA's int32.
fn int32(count: i64) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

/// Build the HPA: one `Pods` metric with an `AverageValue` target.
pub fn build(valid: &Validated) -> HorizontalPodAutoscaler {
    let scaling = &valid.spec.autoscaling;
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
                        name: QUEUE_RATIO_METRIC.to_string(),
                        selector: None,
                    },
                    target: MetricTarget {
                        type_: "AverageValue".to_string(),
                        average_value: Some(ratio_quantity(
                            scaling.target_queue_ratio,
                            valid.spec.readiness_queue_factor,
                        )),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(scaling.scale_down_stabilization_seconds),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }),
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::valid;
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
