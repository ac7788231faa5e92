//! The workload Deployment.
//!
//! It never sets `spec.replicas`: the HPA owns the replica count, and an operator that applies
//! replicas resets every scale-up on its next reconcile.

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, Lifecycle, LifecycleHandler,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, SecurityContext,
    SleepAction,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CONTAINER_PORT, HTTP_PORT_NAME, connections, metadata};
use crate::api::Validated;
use crate::api::crd::SandboxServiceSpec;
use crate::api::validate::prometheus_duration_ms;
use crate::names::{labels, selector_labels};
use workload::contract;

/// Name of the workload container.
pub const CONTAINER_NAME: &str = "workload";

/// How long the pod keeps serving after it is marked for deletion, before SIGTERM: the time
/// endpoint removal takes to reach every kube-proxy, so no connection meets a closed port. A
/// `sleep` action, because the image has no shell.
pub const PRE_STOP_SLEEP_SECONDS: i64 = 5;

/// The workload's `SHUTDOWN_LEAVE_MS`: after SIGTERM it still admits for this long, closing every
/// connection after its next answer, so that clients kept alive on it since before the preStop
/// sleep move to other pods before it refuses new work. A client on a kept-alive connection sends its
/// next request within an operation's time, so one second moves every active one.
pub const SHUTDOWN_LEAVE_MS: i64 = 1_000;

/// Added to the worst-case drain for the last answers to reach their clients.
pub const DRAIN_MARGIN_MS: i64 = 5_000;

/// Between the workload's own deadline and the kubelet's SIGKILL.
pub const KILL_MARGIN_SECONDS: i64 = 5;

/// Readiness probe period: an overloaded pod leaves the Service within a second (one failed
/// probe) and is back within a second of its queue draining (one success).
pub const READINESS_PERIOD_SECONDS: i32 = 1;

/// Liveness probe period; with 3 failures, a pod is restarted after 15 s without an answer.
pub const LIVENESS_PERIOD_SECONDS: i32 = 5;

/// The workload's `SHUTDOWN_GRACE_MS`: the longest drain a pod can owe. At SIGTERM its queue
/// holds at most the breaker limit (`breakerQueueFactor` × concurrency) waiting plus
/// The workload's `OCCUPANCY_WINDOW_MS`: the scrape interval, so that each scrape's
/// `queue_occupancy` averages the time since the one before and demand is neither missed between
/// scrapes nor counted twice. `validate` has checked the interval; 1 ms is the workload's floor.
fn occupancy_window_ms(spec: &SandboxServiceSpec) -> i64 {
    prometheus_duration_ms(&spec.monitoring.interval)
        .map_or(contract::OCCUPANCY_WINDOW_MS.default as i64, |ms| {
            i64::try_from(ms).unwrap_or(i64::MAX).max(1)
        })
}

/// `concurrency` running, which takes `(breakerQueueFactor + 1)` operation durations.
pub fn shutdown_grace_ms(spec: &SandboxServiceSpec) -> i64 {
    (spec.breaker_queue_factor + 1) * spec.operation_duration_ms + DRAIN_MARGIN_MS
}

/// `terminationGracePeriodSeconds`: the preStop sleep, the leave, the drain and a margin, so the
/// kubelet never kills a pod that is still finishing accepted operations.
pub fn termination_grace_period_seconds(spec: &SandboxServiceSpec) -> i64 {
    let shutdown_seconds = (SHUTDOWN_LEAVE_MS + shutdown_grace_ms(spec) + 999) / 1000;
    PRE_STOP_SLEEP_SECONDS + shutdown_seconds + KILL_MARGIN_SECONDS
}

/// UID/GID of the `nonroot` user of distroless images, which the workload image runs as.
pub const RUN_AS_USER: i64 = 65532;

/// Build the Deployment.
pub fn build(valid: &Validated) -> Deployment {
    let spec = &valid.spec;
    let owner = &valid.owner;
    // Every setting the pods' behaviour depends on, explicitly: none relies on the workload's
    // defaults matching this operator's.
    let env = [
        (contract::CONCURRENCY, spec.concurrency),
        (contract::OPERATION_DURATION_MS, spec.operation_duration_ms),
        (
            contract::READINESS_QUEUE_FACTOR,
            spec.readiness_queue_factor,
        ),
        (contract::BREAKER_QUEUE_FACTOR, spec.breaker_queue_factor),
        (contract::PORT, CONTAINER_PORT.into()),
        (contract::SHUTDOWN_LEAVE_MS, SHUTDOWN_LEAVE_MS),
        (contract::SHUTDOWN_GRACE_MS, shutdown_grace_ms(spec)),
        (
            contract::HEADER_READ_TIMEOUT_MS,
            connections::HEADER_READ_TIMEOUT_MS,
        ),
        (
            contract::MAX_CONNECTIONS,
            connections::max_connections(&spec.resources()),
        ),
        (contract::OCCUPANCY_WINDOW_MS, occupancy_window_ms(spec)),
    ]
    .into_iter()
    .map(|(setting, value)| (setting.env, value.to_string()))
    .chain([(
        contract::CONNECTION_CLOSE_ENV,
        spec.connection_close.workload().env_value().to_string(),
    )])
    .map(|(name, value)| EnvVar {
        name: name.to_string(),
        value: Some(value),
        ..Default::default()
    })
    .collect();

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image().to_string()),
        image_pull_policy: spec.image_pull_policy.map(|policy| format!("{policy:?}")),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(HTTP_PORT_NAME.to_string()),
            container_port: CONTAINER_PORT,
            protocol: Some("TCP".to_string()),
            ..Default::default()
        }]),
        readiness_probe: Some(http_probe(
            contract::READINESS_PATH,
            READINESS_PERIOD_SECONDS,
            1,
        )),
        liveness_probe: Some(http_probe(
            contract::LIVENESS_PATH,
            LIVENESS_PERIOD_SECONDS,
            3,
        )),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        resources: Some(spec.resources()),
        security_context: Some(restricted_container_security()),
        ..Default::default()
    };

    let annotations = (!spec.pod_annotations.is_empty()).then(|| spec.pod_annotations.clone());
    Deployment {
        metadata: metadata(owner),
        spec: Some(DeploymentSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(&owner.name)),
                ..Default::default()
            },
            // A new pod must be Ready before an old one stops taking traffic, so a rollout
            // never lowers capacity under load; the old one then drains what it accepted.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_string()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_unavailable: Some(IntOrString::Int(0)),
                    max_surge: Some(IntOrString::String("25%".to_string())),
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(&owner.name)),
                    annotations,
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // The workload never talks to the API server.
                    automount_service_account_token: Some(false),
                    termination_grace_period_seconds: Some(termination_grace_period_seconds(spec)),
                    security_context: Some(restricted_pod_security()),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn http_probe(path: &str, period_seconds: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(HTTP_PORT_NAME.to_string()),
            ..Default::default()
        }),
        period_seconds: Some(period_seconds),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

/// A container as the `restricted` Pod Security Standard wants it, its root filesystem read-only.
pub(crate) fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_string()]),
            ..Default::default()
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

/// A pod as the `restricted` Pod Security Standard wants it, as the distroless images' non-root
/// user.
pub(crate) fn restricted_pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..Default::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::crd::DEFAULT_IMAGE;
    use crate::children::test_support::valid;

    fn container(deployment: &Deployment) -> &Container {
        &deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn env(deployment: &Deployment) -> Vec<(String, String)> {
        container(deployment)
            .env
            .clone()
            .unwrap()
            .into_iter()
            .map(|var| (var.name, var.value.unwrap()))
            .collect()
    }

    #[test]
    fn defaults() {
        let deployment = build(&valid(""));
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, None, "the HPA owns replicas");
        let json = serde_json::to_value(&deployment).unwrap();
        assert!(json["spec"].get("replicas").is_none());

        let pod = spec.template.spec.as_ref().unwrap();
        // 5 s preStop + 1 s leave + (4 + 1) × 2 s + 5 s drain margin + 5 s before SIGKILL.
        assert_eq!(pod.termination_grace_period_seconds, Some(26));
        assert_eq!(
            env(&deployment),
            [
                ("CONCURRENCY".into(), "1".into()),
                ("OPERATION_DURATION_MS".into(), "2000".into()),
                ("READINESS_QUEUE_FACTOR".into(), "2".into()),
                ("BREAKER_QUEUE_FACTOR".into(), "4".into()),
                ("PORT".into(), "3000".into()),
                ("SHUTDOWN_LEAVE_MS".into(), "1000".into()),
                ("SHUTDOWN_GRACE_MS".into(), "15000".into()),
                ("HEADER_READ_TIMEOUT_MS".into(), "5000".into()),
                ("MAX_CONNECTIONS".into(), "2048".into()),
                ("OCCUPANCY_WINDOW_MS".into(), "5000".into()),
                ("CONNECTION_CLOSE".into(), "when-queued".into()),
            ]
        );
        let pre_stop = container(&deployment)
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
            .unwrap();
        assert_eq!(pre_stop.sleep.as_ref().map(|sleep| sleep.seconds), Some(5));
        assert!(pre_stop.exec.is_none(), "the image has no shell");
        let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref();
        assert_eq!(
            rolling.and_then(|r| r.max_unavailable.clone()),
            Some(IntOrString::Int(0)),
            "capacity never drops during a rollout"
        );
        let container = container(&deployment);
        assert_eq!(container.image.as_deref(), Some(DEFAULT_IMAGE));
        assert_eq!(container.image_pull_policy, None);
        let port = &container.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("http"), 3000)
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readiness")
        );
        assert_eq!(
            (readiness.period_seconds, readiness.failure_threshold),
            (Some(1), Some(1)),
            "an overloaded pod leaves the Service at its first failed probe"
        );
        let liveness = container.liveness_probe.as_ref().unwrap();
        assert_eq!(
            liveness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/liveness")
        );
        assert_eq!(
            (liveness.period_seconds, liveness.failure_threshold),
            (Some(5), Some(3))
        );
        let requests = container
            .resources
            .as_ref()
            .unwrap()
            .requests
            .clone()
            .unwrap();
        assert_eq!(requests["cpu"].0, "100m");
        assert_eq!(requests["memory"].0, "32Mi");
        assert_eq!(
            spec.selector.match_labels.as_ref().unwrap().len(),
            2,
            "selector stays name+instance"
        );
        assert!(
            spec.template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .is_none()
        );
    }

    #[test]
    fn the_drain_fits_a_full_queue_of_long_operations() {
        let deployment = build(&valid(
            "concurrency: 3\noperationDurationMs: 10000\nreadinessQueueFactor: 3\nbreakerQueueFactor: 6",
        ));
        let env = env(&deployment);
        assert!(env.contains(&("READINESS_QUEUE_FACTOR".into(), "3".into())));
        assert!(env.contains(&("BREAKER_QUEUE_FACTOR".into(), "6".into())));
        // 18 waiting + 3 running at 3 at a time: 7 operations of 10 s, plus the 5 s margin.
        assert!(env.contains(&("SHUTDOWN_GRACE_MS".into(), "75000".into())));
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        // preStop, leave, drain, margin before SIGKILL.
        assert_eq!(pod.termination_grace_period_seconds, Some(5 + 1 + 75 + 5));
    }

    #[test]
    fn restricted_security() {
        let deployment = build(&valid(""));
        let pod = deployment.spec.unwrap().template.spec.unwrap();
        let pod_security = pod.security_context.unwrap();
        assert_eq!(pod_security.run_as_non_root, Some(true));
        assert_eq!(
            pod_security.seccomp_profile.unwrap().type_,
            "RuntimeDefault"
        );
        let security = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(
            security.capabilities.unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");
    }

    #[test]
    fn every_spec_field_reaches_the_pod() {
        let deployment = build(&valid(
            "image: registry.example/workload:dev\n\
             imagePullPolicy: Always\n\
             concurrency: 4\n\
             operationDurationMs: 250\n\
             connectionClose: Never\n\
             resources: {requests: {cpu: 500m, memory: 64Mi}, limits: {cpu: '1', memory: 256Mi}}\n\
             podAnnotations: {example.com/owner: team-a}",
        ));
        let env = env(&deployment);
        assert!(env.contains(&("CONCURRENCY".into(), "4".into())));
        assert!(env.contains(&("OPERATION_DURATION_MS".into(), "250".into())));
        assert!(env.contains(&("CONNECTION_CLOSE".into(), "never".into())));
        assert!(
            env.contains(&("MAX_CONNECTIONS".into(), "4096".into())),
            "256Mi"
        );
        let container = container(&deployment);
        assert_eq!(
            container.image.as_deref(),
            Some("registry.example/workload:dev")
        );
        assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
        let resources = container.resources.clone().unwrap();
        assert_eq!(resources.requests.unwrap()["cpu"].0, "500m");
        assert_eq!(resources.limits.unwrap()["cpu"].0, "1");
        let template = deployment.spec.unwrap().template.metadata.unwrap();
        assert_eq!(template.annotations.unwrap()["example.com/owner"], "team-a");
        assert_eq!(
            template.labels.unwrap()["app.kubernetes.io/instance"],
            "demo"
        );
    }
}
