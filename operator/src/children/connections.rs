//! The workload's connection bounds, set explicitly in the pod template: `MAX_CONNECTIONS` from
//! the container's memory limit, and `HEADER_READ_TIMEOUT_MS`.

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::api::quantity;
use workload::contract;

/// The workload's `HEADER_READ_TIMEOUT_MS`: a request head must arrive within it, and a kept-alive
/// connection may stay idle that long. Probes and load tools send their heads at once.
pub const HEADER_READ_TIMEOUT_MS: i64 = contract::HEADER_READ_TIMEOUT_MS.default as i64;

/// Connections a pod with `resources` may hold: half its memory limit at the workload's
/// [`contract::BYTES_PER_CONNECTION`] each (the other half is the process and its queue), at
/// least 1; the workload's default without a memory limit.
pub fn max_connections(resources: &ResourceRequirements) -> i64 {
    let connections = resources
        .limits
        .as_ref()
        .and_then(|limits| limits.get("memory"))
        .and_then(|limit| quantity::value(&limit.0))
        .map_or(contract::MAX_CONNECTIONS.default, |bytes| {
            contract::max_connections_for_memory(bytes as u64)
        });
    i64::try_from(connections).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resources(yaml: &str) -> ResourceRequirements {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn half_the_memory_limit_at_the_measured_cost() {
        assert_eq!(max_connections(&resources("limits: {memory: 128Mi}")), 2048);
        assert_eq!(max_connections(&resources("limits: {memory: 1Gi}")), 16384);
        assert_eq!(max_connections(&resources("limits: {memory: 64M}")), 976);
        assert_eq!(
            max_connections(&resources("limits: {memory: 10Ki}")),
            1,
            "at least one"
        );
    }

    #[test]
    fn without_a_memory_limit_the_workload_default() {
        assert_eq!(max_connections(&resources("limits: {cpu: '1'}")), 2048);
        assert_eq!(max_connections(&resources("requests: {memory: 1Gi}")), 2048);
    }
}
