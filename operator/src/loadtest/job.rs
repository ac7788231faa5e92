//! Step 2 for a load test: the load generator's Job (pure). One pod that runs the steps against
//! the target Service's cluster IP and leaves its summary as its termination message, so the
//! operator reads the outcome from the pod's status: the Job needs no API access at all.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::crd::{RetryAfter, SandboxLoadTestSpec};
use crate::children::deployment::{restricted_container_security, restricted_pod_security};
use crate::names::MANAGED_BY;

/// Where the load generator writes its summary: Kubernetes' default termination message path.
pub const SUMMARY_PATH: &str = "/dev/termination-log";

/// Seconds the Job may take past its steps and one request timeout: pulling the image and
/// starting the pod. Past its deadline the Job is failed and its pod stopped.
pub const START_ALLOWANCE_SECONDS: i64 = 120;

/// What the Job is built from.
pub struct JobInputs<'a> {
    /// The load test's name.
    pub test: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its controller owner reference: deleting the test deletes the Job and so stops the load.
    pub owner: OwnerReference,
    /// The Job's name, see [`job_name`].
    pub job: &'a str,
    /// The URL to load.
    pub url: &'a str,
    /// The checked spec.
    pub spec: &'a SandboxLoadTestSpec,
}

/// The Job of one run of a load test: its name, a dash and 8 hex digits of its uid, `spec.run`
/// and the generation it started at, so each run has its own Job and a rerun never meets an
/// earlier one's (not even going back to an earlier `run`). The digits are FNV-1a, stable across
/// operator versions (a restart must find the Job it created).
pub fn job_name(test: &str, uid: &str, run: Option<&str>, generation: i64) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let generation = generation.to_string();
    let parts = [uid, run.unwrap_or(""), &generation];
    for byte in parts.iter().flat_map(|part| part.bytes().chain([0])) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{test}-{:08x}", hash as u32)
}

/// The load generator's arguments for `spec` against `url`.
pub fn loadgen_args(url: &str, spec: &SandboxLoadTestSpec) -> Vec<String> {
    let steps = spec
        .steps
        .iter()
        .map(|step| format!("{}x{}s", step.connections, step.duration_seconds))
        .collect::<Vec<_>>()
        .join(",");
    let retry_after = match spec.retry_after {
        RetryAfter::Ignore => "ignore",
        RetryAfter::Honor => "honor",
    };
    [
        url,
        "--steps",
        &steps,
        "--timeout",
        &format!("{}s", spec.timeout_seconds),
        "--retry-after",
        retry_after,
        "--summary-file",
        SUMMARY_PATH,
    ]
    .map(str::to_string)
    .to_vec()
}

/// Build the Job.
pub fn build(inputs: &JobInputs<'_>) -> Job {
    let spec = inputs.spec;
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "loadgen".to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            inputs.test.to_string(),
        ),
        (
            "app.kubernetes.io/part-of".to_string(),
            "performance-sandbox".to_string(),
        ),
        (
            "app.kubernetes.io/managed-by".to_string(),
            MANAGED_BY.to_string(),
        ),
    ]);
    let largest_step = spec
        .steps
        .iter()
        .map(|step| step.connections)
        .max()
        .unwrap_or(1);
    let container = Container {
        name: "loadgen".to_string(),
        image: Some(spec.image().to_string()),
        image_pull_policy: spec.image_pull_policy.map(|policy| format!("{policy:?}")),
        args: Some(loadgen_args(inputs.url, spec)),
        // The summary when the run ends; the last lines of its log when it failed without one
        // (a bad target), which become the load test's message.
        termination_message_policy: Some("FallbackToLogsOnError".to_string()),
        resources: Some(resources(largest_step)),
        security_context: Some(restricted_container_security()),
        ..Default::default()
    };
    Job {
        metadata: ObjectMeta {
            name: Some(inputs.job.to_string()),
            namespace: Some(inputs.namespace.to_string()),
            labels: Some(labels.clone()),
            owner_references: Some(vec![inputs.owner.clone()]),
            ..Default::default()
        },
        spec: Some(JobSpec {
            // One run: a failed pod is the outcome, not something to retry into a second load.
            backoff_limit: Some(0),
            active_deadline_seconds: Some(
                spec.total_seconds() + spec.timeout_seconds + START_ALLOWANCE_SECONDS,
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    restart_policy: Some("Never".to_string()),
                    // The load generator never talks to the API server, nor needs the Services'
                    // environment variables (it is given the target's address).
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(restricted_pod_security()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// Requests for a pod that mostly waits on its connections, and a memory limit that grows with
/// them (32 KiB each covers hyper's buffers and the histograms, measured well under that).
fn resources(connections: i64) -> ResourceRequirements {
    let limit_mib = 64 + (connections * 32 + 1023) / 1024;
    let quantity = |value: String| Quantity(value);
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), quantity("100m".into())),
            ("memory".to_string(), quantity("32Mi".into())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_string(),
            quantity(format!("{limit_mib}Mi")),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(yaml: &str) -> SandboxLoadTestSpec {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn the_job_runs_the_steps_once_restricted_and_owned() {
        let spec = spec(
            "target: seed\nsteps: [{connections: 3, durationSeconds: 10}, {connections: 6, durationSeconds: 60}]\ntimeoutSeconds: 60\nretryAfter: Honor",
        );
        let owner = OwnerReference {
            api_version: "sandbox.perf.dev/v1alpha1".into(),
            kind: "SandboxLoadTest".into(),
            name: "step".into(),
            uid: "uid-1".into(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        let job = build(&JobInputs {
            test: "step",
            namespace: "demo",
            owner,
            job: "step-0badcafe",
            url: "http://10.96.0.10:80/expensive-op",
            spec: &spec,
        });
        let mut yaml = serde_yaml::to_value(&job).unwrap();
        let container = &mut yaml["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["image"], super::super::crd::DEFAULT_IMAGE);
        container.as_mapping_mut().unwrap().remove("image");
        let expected: serde_yaml::Value = serde_yaml::from_str(
            r#"
            backoffLimit: 0
            activeDeadlineSeconds: 250
            template:
              metadata:
                labels:
                  app.kubernetes.io/instance: step
                  app.kubernetes.io/managed-by: sandbox-operator
                  app.kubernetes.io/name: loadgen
                  app.kubernetes.io/part-of: performance-sandbox
              spec:
                automountServiceAccountToken: false
                enableServiceLinks: false
                restartPolicy: Never
                securityContext:
                  runAsGroup: 65532
                  runAsNonRoot: true
                  runAsUser: 65532
                  seccompProfile: {type: RuntimeDefault}
                containers:
                  - name: loadgen
                    args: [http://10.96.0.10:80/expensive-op, --steps, "3x10s,6x60s", --timeout, 60s,
                           --retry-after, honor, --summary-file, /dev/termination-log]
                    terminationMessagePolicy: FallbackToLogsOnError
                    resources:
                      requests: {cpu: 100m, memory: 32Mi}
                      limits: {memory: 65Mi}
                    securityContext:
                      allowPrivilegeEscalation: false
                      capabilities: {drop: [ALL]}
                      readOnlyRootFilesystem: true
                      runAsNonRoot: true
                      seccompProfile: {type: RuntimeDefault}
            "#,
        )
        .unwrap();
        assert_eq!(yaml["spec"], expected);
        assert_eq!(yaml["metadata"]["ownerReferences"][0]["uid"], "uid-1");
        assert_eq!(yaml["metadata"]["name"], "step-0badcafe");
    }

    #[test]
    fn each_run_has_its_own_job_name_of_at_most_63_characters() {
        let name = "t".repeat(super::super::crd::MAX_NAME_LENGTH);
        let first = job_name(&name, "uid-1", None, 1);
        assert_eq!(first.len(), 63);
        assert_eq!(first, job_name(&name, "uid-1", None, 1), "stable");
        assert_ne!(first, job_name(&name, "uid-1", Some("2"), 2));
        assert_ne!(first, job_name(&name, "uid-2", None, 1));
        // Back to no `run` after a rerun: a later generation, so another Job.
        assert_ne!(first, job_name(&name, "uid-1", None, 3));
    }
}
