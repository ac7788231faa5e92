//! The `SandboxPolicy` custom resource (`sandbox.perf.dev/v1alpha1`, cluster-scoped): what a
//! cluster admin allows SandboxServices to run, read by the API server as the parameter of the
//! ValidatingAdmissionPolicy in `deploy/policies/`. The operator never reads it: the API server
//! enforces the policy at admission, before any SandboxService reaches the operator.
//!
//! A CRD rather than a ConfigMap: the lists are typed (a Service type that does not exist is
//! refused when the admin writes it, not ignored when a user is judged), need no parsing in CEL,
//! and the API server watches a custom parameter kind with an informer of the policy's own. A
//! ConfigMap parameter shares the API server's ConfigMap informer, which stops for good once the
//! last policy using it is deleted, so a reinstalled policy finds no parameter until the API
//! server restarts (kubernetes/kubernetes#133827, seen on the test bed's 1.34).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::crd::ServiceType;

/// What a SandboxService may be, cluster-wide.
// Repeated `printcolumn(...)` entries are distinct columns, not duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, JsonSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sandbox.perf.dev",
    version = "v1alpha1",
    kind = "SandboxPolicy",
    plural = "sandboxpolicies",
    doc = "What the admission policy sandboxservice-policy (deploy/policies) allows a SandboxService to run",
    printcolumn(
        name = "Images",
        type_ = "string",
        json_path = ".spec.allowedImagePrefixes",
        description = "Allowed prefixes of spec.image"
    ),
    printcolumn(
        name = "Service types",
        type_ = "string",
        json_path = ".spec.allowedServiceTypes",
        description = "Allowed spec.service.type values"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SandboxPolicySpec {
    /// `spec.image` must start with one of these (e.g. `registry.example.com/team/`). A
    /// SandboxService that sets no image runs the operator's own workload image and is always
    /// allowed. Empty: every explicit image is refused.
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub allowed_image_prefixes: Vec<String>,

    /// `spec.service.type` must be one of these. Empty: every SandboxService is refused.
    #[schemars(length(max = 3))]
    pub allowed_service_types: Vec<ServiceType>,
}

/// The SandboxPolicy CRD as YAML, exactly what `operator crd sandbox-policy` prints and
/// `crds/sandboxpolicy.yaml` holds.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    super::schema::to_yaml(&SandboxPolicy::crd())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_crd_is_cluster_scoped_with_typed_lists() {
        let crd: serde_json::Value = serde_yaml::from_str(&crd_yaml()).unwrap();
        assert_eq!(crd["metadata"]["name"], "sandboxpolicies.sandbox.perf.dev");
        assert_eq!(crd["spec"]["scope"], "Cluster");
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let types = &spec["properties"]["allowedServiceTypes"]["items"]["enum"];
        assert_eq!(
            types,
            &serde_json::json!(["ClusterIP", "NodePort", "LoadBalancer"])
        );
        let prefix = &spec["properties"]["allowedImagePrefixes"]["items"];
        assert_eq!(
            prefix["minLength"], 1,
            "an empty prefix would allow every image"
        );
        let columns = version["additionalPrinterColumns"].as_array().unwrap();
        assert_eq!(columns.len(), 2);
    }

    #[test]
    fn a_policy_reads_from_yaml() {
        let policy: SandboxPolicySpec = serde_yaml::from_str(
            "allowedImagePrefixes: [registry.example.com/]\nallowedServiceTypes: [ClusterIP, NodePort]",
        )
        .unwrap();
        assert_eq!(
            policy.allowed_service_types,
            [ServiceType::ClusterIP, ServiceType::NodePort]
        );
        let unknown = serde_yaml::from_str::<SandboxPolicySpec>(
            "allowedImagePrefixes: []\nallowedServiceTypes: [ExternalName]",
        );
        assert!(unknown.is_err());
    }
}
