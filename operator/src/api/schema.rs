//! The CRD as the API server gets it: the schema derived from [`super::crd`] plus what a
//! derive cannot say: the cross-field rules of [`SPEC_RULES`] as CEL and the pattern of
//! `metadata.name`.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, ValidationRule,
};
use kube::CustomResourceExt;

use super::crd::{DNS1035_LABEL_PATTERN, SandboxService};
use super::rules::{SPEC_RULES, SpecRule};

/// The CRD: the derived schema plus the cross-field rules of [`SPEC_RULES`] on `spec` and a
/// `metadata.name` restriction.
///
/// The name names the Service, so it must be a DNS-1035 label. A CRD may constrain
/// `metadata.name` in its OpenAPI schema, which costs nothing at admission, whereas a CEL regex
/// on the name is rejected by the CRD cost estimator on current Kubernetes versions (it assumes
/// an unbounded string).
pub fn crd() -> CustomResourceDefinition {
    let mut crd = SandboxService::crd();
    restrict(&mut crd, 63, SPEC_RULES.iter().map(SpecRule::cel).collect());
    crd
}

/// Add to a CRD of ours what a derive cannot say: a `metadata.name` that is a DNS-1035 label of
/// at most `max_name_length` characters (it names children), and `rules` on `spec`.
pub fn restrict(
    crd: &mut CustomResourceDefinition,
    max_name_length: i64,
    rules: Vec<ValidationRule>,
) {
    let name = JSONSchemaProps {
        type_: Some("string".to_string()),
        max_length: Some(max_name_length),
        pattern: Some(DNS1035_LABEL_PATTERN.to_string()),
        ..Default::default()
    };
    let metadata = JSONSchemaProps {
        type_: Some("object".to_string()),
        properties: Some(BTreeMap::from([("name".to_string(), name)])),
        ..Default::default()
    };
    for version in &mut crd.spec.versions {
        if let Some(root) = version
            .schema
            .as_mut()
            .and_then(|schema| schema.open_api_v3_schema.as_mut())
        {
            let properties = root.properties.get_or_insert_default();
            properties.insert("metadata".to_string(), metadata.clone());
            if let Some(spec) = properties.get_mut("spec") {
                spec.x_kubernetes_validations = Some(rules.clone());
            }
        }
    }
}

/// The CRD as YAML, exactly what `operator crd` prints and `crds/sandboxservice.yaml` holds.
pub fn crd_yaml() -> String {
    to_yaml(&crd())
}

/// A CRD built from our own types as YAML.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // Serializing a CRD built from our own types cannot fail; a failure is a programming error.
    serde_yaml::to_string(crd).expect("the CRD serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crd_carries_names_columns_and_cel_rules() {
        let crd = crd_yaml();
        for needle in [
            "name: sandboxservices.sandbox.perf.dev",
            "- sbx",
            "self.autoscaling.maxReplicas >= self.autoscaling.minReplicas",
            "self.autoscaling.targetQueueRatio < double(self.readinessQueueFactor)",
            "self.breakerQueueFactor >= self.readinessQueueFactor",
            "pattern: ^[a-z]([-a-z0-9]*[a-z0-9])?$",
            "maxLength: 63",
            "jsonPath: .status.readyReplicas",
            "jsonPath: .status.autoscaling.replicas",
            "jsonPath: .status.conditions[?(@.type==\"Backpressure\")].status",
            "status: {}",
        ] {
            assert!(crd.contains(needle), "CRD lacks {needle:?}:\n{crd}");
        }
    }
}
