//! `spec.autoscaling`'s choices beyond the bounds: which per-pod metric the HPA scales on, and the
//! HPA's `behavior` (scale-up and scale-down policies and windows), as KEDA's ScaledObject exposes it.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workload::contract;

use super::bounds::{MAX_INT32, MAX_STABILIZATION_SECONDS};

/// Longest `periodSeconds` of a scaling policy the HPA API accepts (30 minutes).
pub const MAX_POLICY_PERIOD_SECONDS: i32 = 1800;

/// Most policies per direction: the HPA takes any number, ten is already more than anyone reads.
pub const MAX_POLICIES: usize = 10;

/// The per-pod metric the HPA scales on. Both aim at the same balanced point: `targetQueueRatio`
/// waiting operations per slot.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AutoscalingMetric {
    /// `queue_ratio`, waiting operations per slot, sampled at each scrape: the seed's metric. It
    /// counts no running operation, so the HPA's proportional rule has a fixed point only where
    /// the load divides evenly, and hunts elsewhere.
    #[default]
    QueueRatio,
    /// `queue_occupancy`, running plus waiting operations per slot, averaged over the scrape
    /// interval: proportional to the load, so the HPA lands on the replica count the load needs.
    /// Its target is `1 + targetQueueRatio`.
    Occupancy,
}

impl AutoscalingMetric {
    /// The metric's name as the workload exports it and the custom metrics API serves it.
    pub fn metric_name(self) -> &'static str {
        match self {
            Self::QueueRatio => contract::QUEUE_RATIO_METRIC,
            Self::Occupancy => contract::QUEUE_OCCUPANCY_METRIC,
        }
    }

    /// The HPA's per-pod `AverageValue` target for `target_queue_ratio` waiting operations per slot:
    /// a pod whose slots are all busy and that has that many waiting per slot.
    pub fn target(self, target_queue_ratio: f64) -> f64 {
        match self {
            Self::QueueRatio => target_queue_ratio,
            Self::Occupancy => 1.0 + target_queue_ratio,
        }
    }

    /// The value of `target` below which a target must stay so that pods still pass `/readiness`
    /// at it: the readiness factor, plus the busy slot for occupancy.
    pub fn readiness_bound(self, readiness_queue_factor: i64) -> i64 {
        match self {
            Self::QueueRatio => readiness_queue_factor,
            Self::Occupancy => readiness_queue_factor + 1,
        }
    }
}

/// The HPA's scaling behavior, per direction; what is unset keeps Kubernetes' defaults (scale up
/// by 100 % or 4 pods per 15 s, whichever is more; scale down by 100 % per 15 s after the window).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingBehavior {
    /// How the HPA adds pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,
    /// How the HPA removes pods. Its `stabilizationWindowSeconds`, where set, wins over
    /// `autoscaling.scaleDownStabilizationSeconds`, the shorthand for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// One direction's rules, as `HPAScalingRules` of `autoscaling/v2`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// How long past recommendations count: the HPA picks the most cautious of them (the highest
    /// when scaling down, the lowest when scaling up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = MAX_STABILIZATION_SECONDS))]
    pub stabilization_window_seconds: Option<i32>,

    /// Which policy applies when several do: `Max` (the largest change, Kubernetes' default), `Min`
    /// or `Disabled` (no scaling in this direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select_policy: Option<SelectPolicy>,

    /// How much may change per period; empty keeps Kubernetes' default policies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_POLICIES))]
    pub policies: Vec<ScalingPolicy>,
}

/// Which of several policies applies.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SelectPolicy {
    /// The policy allowing the largest change.
    Max,
    /// The policy allowing the smallest change.
    Min,
    /// No scaling in this direction.
    Disabled,
}

impl SelectPolicy {
    /// The value as the HPA writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Max => "Max",
            Self::Min => "Min",
            Self::Disabled => "Disabled",
        }
    }
}

/// At most `value` pods (or percent of the current pods) per `periodSeconds`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` or `Percent`.
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    /// Pods, or percent of the current pods; at least 1.
    #[schemars(range(min = 1, max = MAX_INT32))]
    pub value: i64,
    /// The period the change is counted over, 1 to 1800 seconds.
    #[schemars(range(min = 1, max = MAX_POLICY_PERIOD_SECONDS))]
    pub period_seconds: i32,
}

/// What a policy's `value` counts.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ScalingPolicyType {
    /// A number of pods.
    Pods,
    /// A percentage of the current pods.
    Percent,
}

impl ScalingPolicyType {
    /// The value as the HPA writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pods => "Pods",
            Self::Percent => "Percent",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_metrics_aim_at_the_same_waiting_per_slot() {
        assert_eq!(AutoscalingMetric::QueueRatio.target(0.5), 0.5);
        assert_eq!(AutoscalingMetric::Occupancy.target(0.5), 1.5);
        assert_eq!(AutoscalingMetric::QueueRatio.metric_name(), "queue_ratio");
        assert_eq!(
            AutoscalingMetric::Occupancy.metric_name(),
            "queue_occupancy"
        );
        assert_eq!(AutoscalingMetric::Occupancy.readiness_bound(2), 3);
    }

    #[test]
    fn behavior_reads_as_the_hpa_writes_it() {
        let behavior: ScalingBehavior = serde_yaml::from_str(
            "scaleUp: {stabilizationWindowSeconds: 30, selectPolicy: Min, policies: [{type: Pods, value: 2, periodSeconds: 15}]}",
        )
        .unwrap();
        let up = behavior.scale_up.unwrap();
        assert_eq!(up.stabilization_window_seconds, Some(30));
        assert_eq!(up.select_policy, Some(SelectPolicy::Min));
        assert_eq!(up.policies[0].type_, ScalingPolicyType::Pods);
        assert!(behavior.scale_down.is_none());
    }
}
