//! The `SandboxLoadTest` custom resource (`sandbox.perf.dev/v1alpha1`): a load run against a
//! SandboxService from inside the cluster, and its outcome in the status.
//!
//! As for `SandboxService`, these types are the single source of the CRD (`operator crd
//! sandbox-load-test`, `crds/sandboxloadtest.yaml`), and [`super::validate`] checks every bound
//! of the schema again in Rust.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::api::autoscaling_status::ScaleEvent;
use crate::api::crd::{DNS1035_LABEL_PATTERN, ImagePullPolicy};

/// Image used when `spec.image` is not set: the load generator released with this operator.
pub const DEFAULT_IMAGE: &str = concat!(
    "ghcr.io/performance-sandbox/loadgen:",
    env!("CARGO_PKG_VERSION")
);

/// Most steps of one load test: the most whose summary fits a termination message.
pub const MAX_STEPS: usize = loadgen::summary::TERMINATION_MESSAGE_STEPS;

/// Most connections of one step (the load generator's own bound).
pub const MAX_CONNECTIONS: i64 = loadgen::config::MAX_CONNECTIONS as i64;

/// Longest load test, all its steps together, in seconds.
pub const MAX_TOTAL_SECONDS: i64 = 3600;

/// Longest request timeout, in seconds.
pub const MAX_TIMEOUT_SECONDS: i64 = 600;

/// Longest name: the Job is named after the load test plus a dash and 8 characters of its run,
/// and a Job's name must fit a 63-character label.
pub const MAX_NAME_LENGTH: usize = 54;

/// Longest path: the summary, which names the URL, must fit a termination message.
pub const MAX_PATH_LENGTH: usize = 256;

/// A path as the load generator sends it: absolute, without spaces.
pub const PATH_PATTERN: &str = r"^/[^\s]*$";

/// A load run against one SandboxService and its outcome.
// Repeated `printcolumn(...)` entries are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sandbox.perf.dev",
    version = "v1alpha1",
    kind = "SandboxLoadTest",
    plural = "sandboxloadtests",
    shortname = "sblt",
    namespaced,
    status = "SandboxLoadTestStatus",
    derive = "PartialEq",
    doc = "Closed-loop HTTP load against a SandboxService from inside the cluster, with counts, true latencies, the scale events it caused and a verdict in its status",
    printcolumn(
        name = "Target",
        type_ = "string",
        json_path = ".spec.target",
        description = "The SandboxService loaded"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded (the load ran) or Failed (it could not)"
    ),
    printcolumn(
        name = "Verdict",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Passed\")].reason",
        description = "ThresholdsMet, or the threshold that failed"
    ),
    printcolumn(
        name = "200/s",
        type_ = "number",
        json_path = ".status.total.okPerSecond",
        description = "200 answers per second over the whole run"
    ),
    printcolumn(
        name = "503s",
        type_ = "integer",
        json_path = ".status.total.serviceUnavailable",
        description = "503 answers (the circuit breaker) over the whole run"
    ),
    printcolumn(
        name = "p99 ms",
        type_ = "number",
        json_path = ".status.total.okLatencyMs.p99",
        description = "99th percentile latency of the 200 answers"
    ),
    printcolumn(
        name = "Peak",
        type_ = "integer",
        json_path = ".status.peakReplicas",
        description = "Most replicas the target had during the run"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLoadTestSpec {
    /// The SandboxService to load, by name, in this load test's namespace (never another).
    #[schemars(length(min = 1, max = 63), pattern(DNS1035_LABEL_PATTERN))]
    pub target: String,

    /// The path requested.
    #[serde(default = "default_path")]
    #[schemars(length(min = 1, max = MAX_PATH_LENGTH), pattern(PATH_PATTERN))]
    pub path: String,

    /// The load, step after step: each so many connections for so long, each connection with one
    /// request out at a time (autocannon's `-c` and `-d`). At most 6 steps and an hour in all.
    #[schemars(length(min = 1, max = MAX_STEPS))]
    pub steps: Vec<LoadStep>,

    /// How long an answer may take before the request counts as timed out (autocannon's `-t`).
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = 1, max = MAX_TIMEOUT_SECONDS))]
    pub timeout_seconds: i64,

    /// `Ignore`: send again at once after a 503, as autocannon does; `Honor`: wait as its
    /// `Retry-After` says and back off after a refused connection, as a well-behaved client.
    #[serde(default)]
    pub retry_after: RetryAfter,

    /// What the run must show to pass; none set passes any run that completes.
    #[serde(default)]
    pub thresholds: Thresholds,

    /// Load generator image; defaults to the one released with this operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Image pull policy of the load generator; Kubernetes' default applies when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// A finished load test runs again when this changes (any new value); other edits of a
    /// finished test change nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub run: Option<String>,
}

/// One step of the load.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadStep {
    /// Connections, each with one request out at a time.
    #[schemars(range(min = 1, max = MAX_CONNECTIONS))]
    pub connections: i64,
    /// How long the step sends, in seconds.
    #[schemars(range(min = 1, max = MAX_TOTAL_SECONDS))]
    pub duration_seconds: i64,
}

/// What a client does with a 503's `Retry-After`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum RetryAfter {
    /// Send the next request at once (autocannon).
    #[default]
    Ignore,
    /// Wait as `Retry-After` says; back off on refused connections.
    Honor,
}

/// The expectations of a run, over all its steps. Each one set is checked; the first that fails
/// names the `Passed` condition's reason.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Thresholds {
    /// Fewest 200 answers per second (reason `MinOkPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub min_ok_per_second: Option<f64>,

    /// Longest 99th percentile latency of the 200 answers, in milliseconds (`MaxP99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0))]
    pub max_p99_ms: Option<f64>,

    /// Largest share of 503s among the answers, in percent (`MaxServiceUnavailablePercent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub max_service_unavailable_percent: Option<f64>,

    /// Smallest share of 503s among the answers, in percent: a run that should trip the circuit
    /// breaker (`MinServiceUnavailablePercent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub min_service_unavailable_percent: Option<f64>,

    /// Longest scale-out reaction (backpressure to the HPA's decision), in seconds, of the
    /// scale-outs during the run; a run with none fails it (`MaxScaleOutReaction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_scale_out_reaction_seconds: Option<i64>,

    /// Longest time to capacity (backpressure to the new pods ready), in seconds, of the
    /// scale-outs during the run; a run with none fails it (`MaxTimeToCapacity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_time_to_capacity_seconds: Option<i64>,
}

/// Where a load test is.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LoadTestPhase {
    /// Waiting: for the target's Service, or for another load test on the same target.
    Pending,
    /// The load generator's Job runs.
    Running,
    /// The load ran; the `Passed` condition has the verdict.
    Succeeded,
    /// The load could not run (bad input, no target, the Job failed); `message` says why.
    Failed,
}

impl LoadTestPhase {
    /// Whether the run is over.
    pub fn is_finished(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SandboxLoadTestStatus {
    /// Where the run is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<LoadTestPhase>,

    /// Why it waits or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// The `spec.run` this status is of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,

    /// The load generator's Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,

    /// The URL loaded (the target Service's cluster IP and port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// When the Job was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the outcome was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// The target's replicas when the run began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas_at_start: Option<i32>,

    /// Most replicas the target had during the run: at the start or after a scale decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_replicas: Option<i32>,

    /// The whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total: Option<StepOutcome>,

    /// Each step.
    #[serde(default)]
    pub steps: Vec<StepOutcome>,

    /// The target's scale decisions during the run, with their timings, from its status.
    #[serde(default)]
    pub scale_events: Vec<ScaleEvent>,

    /// `Passed`: whether the thresholds held; its reason names the first that did not.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// What one step (or the whole run) saw.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepOutcome {
    /// Connections (the largest step's, for the whole run).
    pub connections: i64,
    /// Seconds it ran.
    pub seconds: f64,
    /// 200 answers.
    pub ok: i64,
    /// 503 answers: the circuit breaker turned the request away.
    pub service_unavailable: i64,
    /// Answers of any other status.
    pub other_statuses: i64,
    /// Refused connections (no ready pod behind the Service, or a full backlog).
    pub refused: i64,
    /// Resets and connections closed before the answer.
    pub resets: i64,
    /// Requests past `timeoutSeconds`.
    pub timeouts: i64,
    /// Other errors.
    pub errors: i64,
    /// Connections opened.
    pub connects: i64,
    /// 200 answers per second.
    pub ok_per_second: f64,
    /// 503s among all answers, in percent.
    pub service_unavailable_percent: f64,
    /// Latency of the 200 answers, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok_latency_ms: Option<LatencyMs>,
}

/// Latency quantiles in milliseconds.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct LatencyMs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl SandboxLoadTestSpec {
    /// The image to run: `spec.image` or [`DEFAULT_IMAGE`].
    pub fn image(&self) -> &str {
        self.image.as_deref().unwrap_or(DEFAULT_IMAGE)
    }

    /// All steps' seconds together.
    pub fn total_seconds(&self) -> i64 {
        self.steps.iter().map(|step| step.duration_seconds).sum()
    }
}

fn default_path() -> String {
    workload::contract::EXPENSIVE_OP_PATH.to_string()
}

fn default_timeout_seconds() -> i64 {
    10
}
