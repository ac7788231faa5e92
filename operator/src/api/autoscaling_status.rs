//! `status.autoscaling`: what the HPA did, in the SandboxService's own status: its replica counts,
//! its conditions in short, and the last scale events with their timings (backpressure → decision
//! → new pods ready), so reaction and time to capacity are read with `kubectl get sbx -o yaml`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Scale events kept in `status.autoscaling.scaleEvents`, the newest last.
pub const MAX_SCALE_EVENTS: usize = 5;

/// The HPA as the operator last saw it. Written on scale events and on replica and condition
/// changes, never on a mere move of the metric.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The per-pod metric the HPA scales on (`queue_ratio` or `queue_occupancy`).
    pub metric: String,

    /// The metric's per-pod `AverageValue` target, as the HPA has it (a quantity, e.g. `1500m`).
    pub target: String,

    /// Pods of the Deployment and the HPA's desired count, as `current/desired` (for
    /// `kubectl get sbx`).
    pub replicas: String,

    /// Replicas the HPA wants.
    #[serde(default)]
    pub desired_replicas: i32,

    /// The metric's average over the pods at the HPA's last scale decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_value: Option<String>,

    /// When the HPA last changed the replica count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,

    /// When the current or last spell of backpressure began: the first pod over its readiness limit
    /// since the last decision. Onsets less than 30 s after the spell ended continue it, as pods
    /// leave the Service and drain within seconds under load. The next scale-out's
    /// `backpressureSince`, if it began after the previous decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure_began: Option<Time>,

    /// When the last spell of backpressure ended: no pod over its readiness limit any more. Unset
    /// while a spell lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure_ended: Option<Time>,

    /// The HPA's conditions (`AbleToScale`, `ScalingActive`, `ScalingLimited`) in short.
    #[serde(default)]
    pub conditions: Vec<HpaCondition>,

    /// The last scale decisions, the newest last.
    #[serde(default)]
    pub scale_events: Vec<ScaleEvent>,
}

/// One of the HPA's conditions without its message and time.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HpaCondition {
    /// `AbleToScale`, `ScalingActive` or `ScalingLimited`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// The HPA's reason, e.g. `ValidMetricFound`, `FailedGetPodsMetric`, `TooManyReplicas`.
    #[serde(default)]
    pub reason: String,
}

/// One scale decision of the HPA and how long it took to take effect.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    /// Replicas before the decision.
    pub from: i32,
    /// Replicas the HPA decided on.
    pub to: i32,
    /// The metric's per-pod average that decided it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_value: Option<String>,
    /// For a scale-out: when backpressure began since the previous decision (`Backpressure`
    /// turned true); unset when the HPA scaled out before any pod went over its readiness limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backpressure_since: Option<Time>,
    /// When the HPA decided (its `lastScaleTime`).
    pub decided_at: Time,
    /// For a scale-out: when the Deployment first had `to` pods ready, each at the Service. Unset
    /// while it has not (yet), or when a later decision came first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// Seconds from `backpressureSince` to `decidedAt`: how fast the loop reacted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction_seconds: Option<i64>,
    /// Seconds from `decidedAt` to `readyAt`: how long the new pods took to serve.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_seconds: Option<i64>,
    /// Seconds from `backpressureSince` to `readyAt`: from the first pod shedding load to the
    /// capacity the HPA decided on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_to_capacity_seconds: Option<i64>,
}

impl ScaleEvent {
    /// Whether the decision added pods.
    pub fn is_scale_out(&self) -> bool {
        self.to > self.from
    }
}
