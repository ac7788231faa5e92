//! The Kubernetes API this operator uses, as data: the single list a ClusterRole is derived
//! from (and checked against).

/// One resource the operator calls, with the verbs it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedResource {
    /// API group (`""` for the core group).
    pub api_group: &'static str,
    /// Plural resource name, with `/subresource` when it is one.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// The only objects the grant covers (`resourceNames`); empty for all of them.
    pub resource_names: &'static [&'static str],
}

// Server-side apply of an object that does not exist yet is authorized as `create`. `delete`
// is what the OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened
// clusters) asks of whoever changes an object's `ownerReferences`: adopting an existing child,
// or taking over the children of a re-created CR before the garbage collector removed them.
const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Name of the Prometheus Operator's ServiceMonitor CRD, the one CRD the operator reads.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// Every resource and verb the operator uses.
pub const MANAGED_RESOURCES: &[ManagedResource] = &[
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
    },
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices/status",
        verbs: &["get", "patch"],
        resource_names: &[],
    },
    // The owner references of the children block the CR's deletion until they are gone
    // (`blockOwnerDeletion`), which OwnerReferencesPermissionEnforcement allows only to those
    // who may update the owner's finalizers.
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices/finalizers",
        verbs: &["update"],
        resource_names: &[],
    },
    ManagedResource {
        api_group: "apps",
        resource: "deployments",
        verbs: CHILD_VERBS,
        resource_names: &[],
    },
    ManagedResource {
        api_group: "",
        resource: "services",
        verbs: CHILD_VERBS,
        resource_names: &[],
    },
    ManagedResource {
        api_group: "autoscaling",
        resource: "horizontalpodautoscalers",
        verbs: CHILD_VERBS,
        resource_names: &[],
    },
    // Watched so that installing the Prometheus Operator later starts ServiceMonitors at once.
    ManagedResource {
        api_group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["get", "list", "watch"],
        resource_names: &[SERVICE_MONITOR_CRD],
    },
    ManagedResource {
        api_group: "monitoring.coreos.com",
        resource: "servicemonitors",
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: &[],
    },
    ManagedResource {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        resource_names: &[],
    },
    ManagedResource {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "create", "patch"],
        resource_names: &[],
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::ServiceMonitor;
    use crate::crd::SandboxService;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Resource;

    fn entry<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }

    #[test]
    fn list_matches_the_types_the_operator_uses() {
        let listed: Vec<(String, String)> = MANAGED_RESOURCES
            .iter()
            .filter(|r| !r.resource.contains('/'))
            .map(|r| (r.api_group.to_string(), r.resource.to_string()))
            .collect();
        let used = [
            entry::<SandboxService>(),
            entry::<Deployment>(),
            entry::<Service>(),
            entry::<HorizontalPodAutoscaler>(),
            entry::<CustomResourceDefinition>(),
            entry::<ServiceMonitor>(),
            entry::<Event>(),
            entry::<Lease>(),
        ];
        assert_eq!(listed, used);
    }

    #[test]
    fn every_watched_kind_can_be_listed_and_watched() {
        for resource in MANAGED_RESOURCES
            .iter()
            .filter(|r| !["events", "leases"].contains(&r.resource) && !r.resource.contains('/'))
        {
            for verb in ["get", "list", "watch"] {
                assert!(resource.verbs.contains(&verb), "{resource:?} lacks {verb}");
            }
        }
    }
}
