//! The `SandboxService` custom resource (`sandbox.perf.dev/v1alpha1`).
//!
//! The Rust types are the single source of the CRD: `operator crd` prints them with the rules
//! [`super::schema`] adds, and `crds/sandboxservice.yaml` is that output, checked by a test. The
//! OpenAPI bounds here (and the `metadata.name` pattern of the schema) are mirrored, rule for
//! rule, by [`validate`](mod@super::validate); the CEL rules and their Rust checks are both
//! generated from [`super::rules::SPEC_RULES`]. So a CR that slips past the schema (an old CRD,
//! `--validate=false`, a file given to `operator render`) is still rejected.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use workload::contract;

pub use super::autoscaling::{AutoscalingMetric, ScalingBehavior};
pub use super::autoscaling_status::AutoscalingStatus;
pub use super::bounds::{
    MAX_INT32, MAX_OPERATION_DURATION_MS, MAX_QUEUE_FACTOR, MAX_STABILIZATION_SECONDS,
};

/// Smallest `targetQueueRatio`; the HPA target is expressed in milli-units.
pub const MIN_TARGET_QUEUE_RATIO: f64 = 0.001;

/// Image used when `spec.image` is not set: the workload released together with this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/performance-sandbox/workload:",
    env!("CARGO_PKG_VERSION")
);

/// A Prometheus duration as the ServiceMonitor CRD accepts it (without the bare `0`).
pub const INTERVAL_PATTERN: &str =
    "^(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?$";

/// A DNS-1035 label: the CR name names the Service, which requires one (with at most 63 bytes).
pub const DNS1035_LABEL_PATTERN: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";

/// Desired state of one workload deployment and everything it needs to run and autoscale.
// Repeated `printcolumn(...)` entries are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sandbox.perf.dev",
    version = "v1alpha1",
    kind = "SandboxService",
    plural = "sandboxservices",
    shortname = "sbx",
    namespaced,
    status = "SandboxServiceStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "A workload Deployment with its Service, ServiceMonitor and queue-based HorizontalPodAutoscaler",
    printcolumn(
        name = "Replicas",
        type_ = "string",
        json_path = ".status.autoscaling.replicas",
        description = "Pods now / pods the HPA wants"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Pods passing /readiness"
    ),
    printcolumn(
        name = "Backpressure",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Backpressure\")].status",
        description = "Whether pods are over their readiness limit, shedding load by design"
    ),
    printcolumn(
        name = "Metric",
        type_ = "string",
        json_path = ".status.autoscaling.metric",
        description = "The per-pod metric the HPA scales on"
    ),
    printcolumn(
        name = "Decided",
        type_ = "string",
        json_path = ".status.autoscaling.decidedValue",
        description = "The metric's average at the HPA's last scale decision"
    ),
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".status.autoscaling.target",
        description = "The HPA's per-pod target for the metric"
    ),
    printcolumn(
        name = "Concurrency",
        type_ = "integer",
        json_path = ".spec.concurrency",
        priority = 1,
        description = "Operations each pod runs at once"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxServiceSpec {
    /// Workload container image. Defaults to the workload image of the operator's own version,
    /// so upgrading the operator upgrades every SandboxService that does not pin an image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Container image pull policy; Kubernetes' default applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Operations each pod runs at once (the `CONCURRENCY` env of the workload).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = MAX_INT32))]
    pub concurrency: i64,

    /// Duration of one operation in milliseconds (the `OPERATION_DURATION_MS` env), at most an
    /// hour. The pods' shutdown grace is derived from it so that a full queue always drains.
    #[serde(default = "default_operation_duration_ms")]
    #[schemars(range(min = 0, max = MAX_OPERATION_DURATION_MS))]
    pub operation_duration_ms: i64,

    /// A pod fails `/readiness` (and leaves the Service) when more than this × concurrency
    /// operations wait (the `READINESS_QUEUE_FACTOR` env). `autoscaling.targetQueueRatio` must
    /// stay below it.
    #[serde(default = "default_readiness_queue_factor")]
    #[schemars(range(min = 1, max = MAX_QUEUE_FACTOR))]
    pub readiness_queue_factor: i64,

    /// A pod answers `503` at once when accepting would make more than this × concurrency
    /// operations wait (the `BREAKER_QUEUE_FACTOR` env); at least `readinessQueueFactor`.
    #[serde(default = "default_breaker_queue_factor")]
    #[schemars(range(min = 1, max = MAX_QUEUE_FACTOR))]
    pub breaker_queue_factor: i64,

    /// When a pod closes a kept-alive connection after answering on it, so that the client reconnects
    /// and the Service picks a pod anew (the `CONNECTION_CLOSE` env). A Service balances connections,
    /// not requests: with `Never`, a client that keeps its connections alive stays on the pods it
    /// first reached, and the pods a scale-out adds get none of its load.
    #[serde(default)]
    pub connection_close: ConnectionClose,

    /// HorizontalPodAutoscaler settings: scale on the pods' `queue_ratio` metric.
    #[serde(default)]
    pub autoscaling: Autoscaling,

    /// The Service in front of the pods.
    #[serde(default)]
    pub service: ServiceSettings,

    /// Prometheus Operator ServiceMonitor for the pods' `/metrics`.
    #[serde(default)]
    pub monitoring: Monitoring,

    /// Container resources; when unset, requests of 100m CPU and 32Mi memory and a 128Mi
    /// memory limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Annotations added to the pod template.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,
}

/// Container image pull policy.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull only when the node does not have the image.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

/// When a pod closes a kept-alive connection after answering on it. Every value but `Never` also
/// closes after a 503.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ConnectionClose {
    /// When operations wait behind the answered one: a client stays on a pod only while it is served
    /// without waiting.
    #[default]
    WhenQueued,
    /// Only while the pod fails `/readiness`.
    WhenOverloaded,
    /// Never: HTTP/1.1 keep-alive as usual.
    Never,
}

impl ConnectionClose {
    /// The workload's value for this mode.
    pub fn workload(self) -> contract::ConnectionClose {
        match self {
            ConnectionClose::WhenQueued => contract::ConnectionClose::WhenQueued,
            ConnectionClose::WhenOverloaded => contract::ConnectionClose::WhenOverloaded,
            ConnectionClose::Never => contract::ConnectionClose::Never,
        }
    }
}

/// HorizontalPodAutoscaler settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    /// Lower bound of the HPA.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1, max = MAX_INT32))]
    pub min_replicas: i64,

    /// Upper bound of the HPA; at least `minReplicas`.
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = MAX_INT32))]
    pub max_replicas: i64,

    /// The per-pod metric the HPA scales on: `QueueRatio` (waiting per slot, the seed's) or
    /// `Occupancy` (running and waiting per slot, averaged over the scrape interval, which
    /// settles where `QueueRatio` hunts).
    #[serde(default)]
    pub metric: AutoscalingMetric,

    /// Waiting operations per slot the HPA aims for at each pod (rounded to 0.001); below
    /// `readinessQueueFactor`. The HPA's `AverageValue` target is this for `QueueRatio` and one
    /// more (the busy slot) for `Occupancy`.
    #[serde(default = "default_target_queue_ratio")]
    #[schemars(range(min = MIN_TARGET_QUEUE_RATIO))]
    pub target_queue_ratio: f64,

    /// How long the HPA waits before scaling down: the shorthand for
    /// `behavior.scaleDown.stabilizationWindowSeconds`, which wins where both are set.
    #[serde(default = "default_scale_down_stabilization_seconds")]
    #[schemars(range(min = 0, max = MAX_STABILIZATION_SECONDS))]
    pub scale_down_stabilization_seconds: i32,

    /// The HPA's scaling behavior (policies and windows per direction), as `autoscaling/v2` has
    /// it; unset parts keep Kubernetes' defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<ScalingBehavior>,
}

impl Autoscaling {
    /// The scale-down window in effect: `behavior.scaleDown.stabilizationWindowSeconds` or the
    /// shorthand.
    pub fn scale_down_window_seconds(&self) -> i32 {
        self.behavior
            .as_ref()
            .and_then(|behavior| behavior.scale_down.as_ref())
            .and_then(|rules| rules.stabilization_window_seconds)
            .unwrap_or(self.scale_down_stabilization_seconds)
    }
}

/// Service settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSettings {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,

    /// Service port, forwarded to the pods' `http` port (3000).
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Kubernetes Service type.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also exposed on a port of every node.
    NodePort,
    /// Also exposed through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The value of `spec.type` in a Service.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Monitoring settings.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Create a ServiceMonitor; when switched off, a ServiceMonitor this CR owns is deleted.
    #[serde(default = "default_true")]
    pub service_monitor: bool,

    /// Scrape interval as a Prometheus duration, e.g. `5s`, `1m30s`. The default, 5s, is part of
    /// the time from a full queue to the HPA's decision (scrape + the HPA's sync period).
    #[serde(default = "default_interval")]
    #[schemars(length(min = 2), pattern(INTERVAL_PATTERN))]
    pub interval: String,

    /// Labels added to the ServiceMonitor, e.g. `release: kube-prometheus` for a Prometheus
    /// that selects ServiceMonitors by label.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Progressing` and `Degraded`, per the Kubernetes API conventions.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// Pods of the Deployment.
    #[serde(default)]
    pub replicas: i32,

    /// Pods passing their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,

    /// Label selector of the pods, in `kubectl get -l` syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// What the HPA did: replicas, its conditions, the last scale events and their timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
}

impl SandboxServiceSpec {
    /// The image to run: `spec.image` or [`DEFAULT_IMAGE`].
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// The container resources: `spec.resources` or [`default_resources`].
    pub fn resources(&self) -> ResourceRequirements {
        self.resources.clone().unwrap_or_else(default_resources)
    }
}

/// Requests sized for one idle workload pod (a few MB of RSS, little CPU while waiting) and a
/// memory limit with ample headroom; CPU is not limited so throttling never skews latency.
pub fn default_resources() -> ResourceRequirements {
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    let quantities = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect::<BTreeMap<_, _>>()
    };
    ResourceRequirements {
        requests: Some(quantities(&[("cpu", "100m"), ("memory", "32Mi")])),
        limits: Some(quantities(&[("memory", "128Mi")])),
        ..Default::default()
    }
}

impl Default for SandboxServiceSpec {
    fn default() -> Self {
        Self {
            image: None,
            image_pull_policy: None,
            concurrency: default_concurrency(),
            operation_duration_ms: default_operation_duration_ms(),
            readiness_queue_factor: default_readiness_queue_factor(),
            breaker_queue_factor: default_breaker_queue_factor(),
            connection_close: ConnectionClose::default(),
            autoscaling: Autoscaling::default(),
            service: ServiceSettings::default(),
            monitoring: Monitoring::default(),
            resources: None,
            pod_annotations: BTreeMap::new(),
        }
    }
}

impl Default for Autoscaling {
    fn default() -> Self {
        Self {
            min_replicas: default_min_replicas(),
            max_replicas: default_max_replicas(),
            metric: AutoscalingMetric::default(),
            target_queue_ratio: default_target_queue_ratio(),
            scale_down_stabilization_seconds: default_scale_down_stabilization_seconds(),
            behavior: None,
        }
    }
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            type_: ServiceType::default(),
            port: default_service_port(),
        }
    }
}

impl Default for Monitoring {
    fn default() -> Self {
        Self {
            service_monitor: default_true(),
            interval: default_interval(),
            labels: BTreeMap::new(),
        }
    }
}

// The workload's own defaults, so a SandboxService that sets nothing runs the seed's numbers.
fn default_concurrency() -> i64 {
    contract::CONCURRENCY.default as i64
}

fn default_operation_duration_ms() -> i64 {
    contract::OPERATION_DURATION_MS.default as i64
}

fn default_readiness_queue_factor() -> i64 {
    contract::READINESS_QUEUE_FACTOR.default as i64
}

fn default_breaker_queue_factor() -> i64 {
    contract::BREAKER_QUEUE_FACTOR.default as i64
}

fn default_min_replicas() -> i64 {
    1
}

fn default_max_replicas() -> i64 {
    10
}

fn default_target_queue_ratio() -> f64 {
    1.0
}

fn default_scale_down_stabilization_seconds() -> i32 {
    300
}

fn default_service_port() -> i32 {
    80
}

fn default_true() -> bool {
    true
}

fn default_interval() -> String {
    "5s".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_spec_deserializes_to_the_documented_defaults() {
        let spec: SandboxServiceSpec = serde_yaml::from_str("{}").unwrap();
        assert_eq!(spec, SandboxServiceSpec::default());
        assert_eq!(spec.concurrency, 1);
        assert_eq!(spec.operation_duration_ms, 2000);
        assert_eq!(spec.autoscaling.min_replicas, 1);
        assert_eq!(spec.autoscaling.max_replicas, 10);
        assert_eq!(spec.autoscaling.target_queue_ratio, 1.0);
        assert_eq!(spec.autoscaling.scale_down_stabilization_seconds, 300);
        assert_eq!(spec.service.type_, ServiceType::ClusterIP);
        assert_eq!(spec.service.port, 80);
        assert!(spec.monitoring.service_monitor);
        assert_eq!(spec.monitoring.interval, "5s");
        assert_eq!(spec.image(), DEFAULT_IMAGE);
        assert_eq!(
            (spec.readiness_queue_factor, spec.breaker_queue_factor),
            (2, 4)
        );
    }

    #[test]
    fn unknown_and_out_of_range_fields_still_decode() {
        // A CR stored under another version of the CRD must reach `validate`, not fail the
        // decoding of the whole watched list.
        let spec: SandboxServiceSpec =
            serde_yaml::from_str("concurrency: 3000000000\nautoscaling: {maxReplica: 3}").unwrap();
        assert_eq!(spec.concurrency, 3_000_000_000);
    }
}
