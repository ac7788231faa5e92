//! The workload Deployment.
//!
//! It never sets `spec.replicas`: the HPA owns the replica count, and an operator that applies
//! replicas resets every scale-up on its next reconcile.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, HTTPGetAction, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, SeccompProfile, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{CONTAINER_PORT, HTTP_PORT_NAME, connections, labels, metadata, selector_labels};
use crate::validate::Validated;

/// Name of the workload container.
pub const CONTAINER_NAME: &str = "workload";

/// The workload's `SHUTDOWN_GRACE_MS`, set explicitly so the grace period below stays above it
/// even if the workload's default changes.
pub const SHUTDOWN_GRACE_MS: i64 = 30_000;

/// Longer than the workload's drain (`SHUTDOWN_GRACE_MS`) plus the time endpoints take to drop
/// the pod, so the kubelet never kills a pod that is still finishing accepted operations.
pub const TERMINATION_GRACE_PERIOD_SECONDS: i64 = 45;

// Checked at compile time: the drain plus 10 s for endpoint removal fits in the grace period.
const _: () = assert!(TERMINATION_GRACE_PERIOD_SECONDS * 1000 >= SHUTDOWN_GRACE_MS + 10_000);

/// Probe period of the seed chart: a loaded pod leaves the Service within ~3 s.
pub const PROBE_PERIOD_SECONDS: i32 = 3;

/// UID/GID of the `nonroot` user of distroless images, which the workload image runs as.
pub const RUN_AS_USER: i64 = 65532;

/// Build the Deployment.
pub fn build(valid: &Validated) -> Deployment {
    let spec = &valid.spec;
    let owner = &valid.owner;
    let env = [
        ("CONCURRENCY", spec.concurrency.to_string()),
        (
            "OPERATION_DURATION_MS",
            spec.operation_duration_ms.to_string(),
        ),
        ("PORT", CONTAINER_PORT.to_string()),
        ("SHUTDOWN_GRACE_MS", SHUTDOWN_GRACE_MS.to_string()),
        (
            "HEADER_READ_TIMEOUT_MS",
            connections::HEADER_READ_TIMEOUT_MS.to_string(),
        ),
        (
            "MAX_CONNECTIONS",
            connections::max_connections(&spec.resources()).to_string(),
        ),
    ]
    .into_iter()
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
        readiness_probe: Some(http_probe("/readiness")),
        liveness_probe: Some(http_probe("/liveness")),
        resources: Some(spec.resources()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                ..Default::default()
            }),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..Default::default()
        }),
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
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_PERIOD_SECONDS),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(runtime_default_seccomp()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

fn http_probe(path: &str) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_string()),
            port: IntOrString::String(HTTP_PORT_NAME.to_string()),
            ..Default::default()
        }),
        period_seconds: Some(PROBE_PERIOD_SECONDS),
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
    use crate::build::test_support::valid;
    use crate::crd::DEFAULT_IMAGE;

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
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        assert_eq!(
            env(&deployment),
            [
                ("CONCURRENCY".into(), "1".into()),
                ("OPERATION_DURATION_MS".into(), "2000".into()),
                ("PORT".into(), "3000".into()),
                ("SHUTDOWN_GRACE_MS".into(), "30000".into()),
                ("HEADER_READ_TIMEOUT_MS".into(), "5000".into()),
                ("MAX_CONNECTIONS".into(), "2048".into()),
            ]
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
        assert_eq!(readiness.period_seconds, Some(3));
        let liveness = container.liveness_probe.as_ref().unwrap();
        assert_eq!(
            liveness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/liveness")
        );
        assert_eq!(liveness.period_seconds, Some(3));
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
             resources: {requests: {cpu: 500m, memory: 64Mi}, limits: {cpu: '1', memory: 256Mi}}\n\
             podAnnotations: {example.com/owner: team-a}",
        ));
        let env = env(&deployment);
        assert!(env.contains(&("CONCURRENCY".into(), "4".into())));
        assert!(env.contains(&("OPERATION_DURATION_MS".into(), "250".into())));
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
