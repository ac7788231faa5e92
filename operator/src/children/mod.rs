//! Pipeline step 2, **build** (pure, no client): the children of a validated `SandboxService`,
//! one module per kind. `operator run` applies exactly these objects and `operator render`
//! prints them, so what a user renders is what the cluster gets.

pub mod connections;
pub mod deployment;
pub mod hpa;
pub mod service;
pub mod service_monitor;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{Owner, Validated};
use crate::names::labels;
pub use service_monitor::ServiceMonitor;

/// Name of the container port (and the Service port) serving HTTP.
pub const HTTP_PORT_NAME: &str = "http";

/// Port the workload listens on (its `PORT` env, set to this).
pub const CONTAINER_PORT: i32 = workload::contract::PORT.default as i32;

/// Everything one `SandboxService` consists of, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    /// The workload pods.
    pub deployment: Deployment,
    /// Stable address of the pods.
    pub service: Service,
    /// Scales the Deployment on the pods' `queue_ratio`.
    pub hpa: HorizontalPodAutoscaler,
    /// Prometheus scrape configuration; `None` when `spec.monitoring.serviceMonitor` is false.
    pub service_monitor: Option<ServiceMonitor>,
}

/// Build every child of a validated `SandboxService`.
pub fn build(valid: &Validated) -> Children {
    Children {
        deployment: deployment::build(valid),
        service: service::build(valid),
        hpa: hpa::build(valid),
        service_monitor: valid
            .spec
            .monitoring
            .service_monitor
            .then(|| service_monitor::build(valid)),
    }
}

impl Children {
    /// The children as a multi-document YAML stream, in apply order (`operator render`).
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        let mut documents = vec![
            serde_yaml::to_string(&self.deployment)?,
            serde_yaml::to_string(&self.service)?,
            serde_yaml::to_string(&self.hpa)?,
        ];
        if let Some(service_monitor) = &self.service_monitor {
            documents.push(serde_yaml::to_string(service_monitor)?);
        }
        Ok(documents
            .iter()
            .map(|doc| format!("---\n{doc}"))
            .collect::<String>())
    }
}

/// Metadata shared by all children: same name and namespace as the CR, labels, owner reference.
fn metadata(owner: &Owner) -> ObjectMeta {
    ObjectMeta {
        name: Some(owner.name.clone()),
        namespace: owner.namespace.clone(),
        labels: Some(labels(&owner.name)),
        owner_references: owner.reference.clone().map(|reference| vec![reference]),
        ..Default::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Inline-YAML CRs for the builder tests.
    use crate::api::{SandboxService, Validated, validate};

    /// Validate a CR named `demo` in namespace `apps` (uid `uid-1`) with the given spec YAML.
    pub fn valid(spec_yaml: &str) -> Validated {
        let spec = if spec_yaml.trim().is_empty() {
            "{}".to_string()
        } else {
            spec_yaml
                .lines()
                .map(|line| format!("  {line}\n"))
                .collect::<String>()
        };
        let separator = if spec == "{}" { " " } else { "\n" };
        let yaml = format!(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {{name: demo, namespace: apps, uid: uid-1}}\nspec:{separator}{spec}"
        );
        let cr: SandboxService = serde_yaml::from_str(&yaml).expect("test CR parses");
        validate(&cr).expect("test CR is valid")
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::valid;
    use super::*;
    use crate::names::MANAGED_BY_SELECTOR;

    #[test]
    fn every_child_shares_name_namespace_labels_and_owner() {
        let children = build(&valid(""));
        let metas = [
            &children.deployment.metadata,
            &children.service.metadata,
            &children.hpa.metadata,
            &children.service_monitor.as_ref().unwrap().metadata,
        ];
        for meta in metas {
            assert_eq!(meta.name.as_deref(), Some("demo"));
            assert_eq!(meta.namespace.as_deref(), Some("apps"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "demo");
            let owners = meta.owner_references.as_ref().unwrap();
            assert_eq!(owners.len(), 1);
            assert_eq!(owners[0].uid, "uid-1");
            assert_eq!(owners[0].controller, Some(true));
            // The controller watches children with this selector: each must match it.
            for requirement in MANAGED_BY_SELECTOR.split(',') {
                let (key, value) = requirement.split_once('=').unwrap();
                assert_eq!(labels.get(key).map(String::as_str), Some(value));
            }
        }
    }

    #[test]
    fn service_monitor_is_left_out_when_disabled() {
        let children = build(&valid("monitoring: {serviceMonitor: false}"));
        assert!(children.service_monitor.is_none());
        let yaml = children.to_yaml().unwrap();
        assert_eq!(yaml.matches("---\n").count(), 3);
        assert!(!yaml.contains("ServiceMonitor"));
    }
}
