//! The workload's connection bounds, set explicitly in the pod template: `MAX_CONNECTIONS` from
//! the container's memory limit, and `HEADER_READ_TIMEOUT_MS`.

use k8s_openapi::api::core::v1::ResourceRequirements;

use super::quantity;

/// The workload's `HEADER_READ_TIMEOUT_MS`: a request head must arrive within it, and a kept-alive
/// connection may stay idle that long. Probes and load tools send their heads at once.
pub const HEADER_READ_TIMEOUT_MS: i64 = 5_000;

/// What one open connection costs the workload: 19.1 KiB measured by `scripts/hostile.sh`, rounded
/// up (the workload's `connections::BYTES_PER_CONNECTION`).
pub const BYTES_PER_CONNECTION: i64 = 32 * 1024;

/// `MAX_CONNECTIONS` without a memory limit: the workload's default, sized for 128 MiB.
pub const DEFAULT_MAX_CONNECTIONS: i64 = 2048;

/// Connections a pod with `resources` may hold: half its memory limit at
/// [`BYTES_PER_CONNECTION`] each (the other half is the process and its queue), at least 1.
pub fn max_connections(resources: &ResourceRequirements) -> i64 {
    resources
        .limits
        .as_ref()
        .and_then(|limits| limits.get("memory"))
        .and_then(|limit| quantity::value(&limit.0))
        .map_or(DEFAULT_MAX_CONNECTIONS, |bytes| {
            ((bytes / 2.0) as i64 / BYTES_PER_CONNECTION).max(1)
        })
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
