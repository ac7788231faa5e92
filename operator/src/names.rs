//! The names this operator shares with the cluster, in one place: who it writes as, how its
//! children and pods are labelled, and the objects it looks up by name.

use std::collections::BTreeMap;

/// The single field manager of every write this operator makes, and the controller's name in
/// Events (`reportingController`) and logs.
pub const FIELD_MANAGER: &str = "sandbox-operator";

/// The leader-election Lease's default name (`LEASE_NAME`), the one the install's RBAC grants.
pub const LEASE_NAME: &str = "sandbox-operator";

/// `app.kubernetes.io/managed-by` value on every child; the controller watches children by it.
pub const MANAGED_BY: &str = "sandbox-operator";

/// Label selector matching every child this operator manages.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=sandbox-operator";

/// The Prometheus Operator's ServiceMonitor CRD, watched to learn whether ServiceMonitors can
/// be applied.
pub const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

/// Labels that identify the pods of one `SandboxService`; they never change, because a
/// Deployment's selector is immutable.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "workload".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

/// The recommended `app.kubernetes.io/*` labels of every child and pod.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(
        "app.kubernetes.io/part-of".to_string(),
        "performance-sandbox".to_string(),
    );
    labels.insert(
        "app.kubernetes.io/managed-by".to_string(),
        MANAGED_BY.to_string(),
    );
    labels
}

/// The selector labels in `kubectl get -l` syntax, as published in the CR status.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selector_string_is_the_selector_labels() {
        assert_eq!(
            selector_string("demo"),
            "app.kubernetes.io/instance=demo,app.kubernetes.io/name=workload"
        );
        assert!(
            selector_labels("demo")
                .iter()
                .all(|(key, value)| labels("demo")[key] == *value),
            "every pod carries its selector labels"
        );
    }
}
