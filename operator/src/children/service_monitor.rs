//! The Prometheus Operator ServiceMonitor (`monitoring.coreos.com/v1`) scraping the pods.
//!
//! Only the fields this operator sets are typed. Every field is optional when reading, because
//! the controller's watch also sees ServiceMonitors written by others; the built object is
//! checked against the real CRD schema in `tests/render.rs`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use serde::{Deserialize, Serialize};

use super::{HTTP_PORT_NAME, metadata};
use crate::api::Validated;
use crate::names::selector_labels;

/// The subset of the ServiceMonitor spec this operator writes.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "monitoring.coreos.com",
    version = "v1",
    kind = "ServiceMonitor",
    plural = "servicemonitors",
    namespaced,
    schema = "disabled",
    derive = "PartialEq"
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceMonitorSpec {
    /// Selects the Services whose endpoints are scraped.
    #[serde(default)]
    pub selector: LabelSelector,
    /// Scrape endpoints.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

/// One scrape endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// Name of the Service port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// HTTP path of the metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Scrape interval (Prometheus duration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
}

/// Path the workload serves its Prometheus metrics on.
pub const METRICS_PATH: &str = workload::contract::METRICS_PATH;

/// Build the ServiceMonitor: the Service's `http` port, `/metrics`, interval and extra labels
/// from the spec.
pub fn build(valid: &Validated) -> ServiceMonitor {
    let monitoring = &valid.spec.monitoring;
    let mut service_monitor = ServiceMonitor::new(
        &valid.owner.name,
        ServiceMonitorSpec {
            selector: LabelSelector {
                match_labels: Some(selector_labels(&valid.owner.name)),
                ..Default::default()
            },
            endpoints: vec![Endpoint {
                port: Some(HTTP_PORT_NAME.to_string()),
                path: Some(METRICS_PATH.to_string()),
                interval: Some(monitoring.interval.clone()),
            }],
        },
    );
    service_monitor.metadata = metadata(&valid.owner);
    // The spec's labels come last so a user can't lose the managed-by label by accident: our
    // own labels win on a clash.
    let labels: &mut BTreeMap<String, String> =
        service_monitor.metadata.labels.get_or_insert_default();
    for (key, value) in &monitoring.labels {
        labels.entry(key.clone()).or_insert_with(|| value.clone());
    }
    service_monitor
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::children::test_support::valid;

    #[test]
    fn defaults() {
        let sm = build(&valid(""));
        let json = serde_json::to_value(&sm).unwrap();
        assert_eq!(json["apiVersion"], "monitoring.coreos.com/v1");
        assert_eq!(json["kind"], "ServiceMonitor");
        let endpoint = &sm.spec.endpoints[0];
        assert_eq!(endpoint.port.as_deref(), Some("http"));
        assert_eq!(endpoint.path.as_deref(), Some("/metrics"));
        assert_eq!(endpoint.interval.as_deref(), Some("5s"));
        assert_eq!(
            sm.spec.selector.match_labels.unwrap()["app.kubernetes.io/instance"],
            "demo"
        );
    }

    #[test]
    fn interval_and_labels_from_the_spec() {
        let sm = build(&valid(
            "monitoring: {interval: 30s, labels: {release: kube-prometheus, app.kubernetes.io/managed-by: someone-else}}",
        ));
        assert_eq!(sm.spec.endpoints[0].interval.as_deref(), Some("30s"));
        let labels = sm.metadata.labels.unwrap();
        assert_eq!(labels["release"], "kube-prometheus");
        assert_eq!(labels["app.kubernetes.io/managed-by"], "sandbox-operator");
    }

    #[test]
    fn foreign_service_monitors_deserialize() {
        // A ServiceMonitor from another tool, using fields this type does not know.
        let foreign: ServiceMonitor = serde_yaml::from_str(
            "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {name: x}\nspec:\n  selector: {}\n  endpoints: [{targetPort: 9090, scheme: https}]\n  jobLabel: app",
        )
        .unwrap();
        assert_eq!(foreign.spec.endpoints.len(), 1);
    }
}
