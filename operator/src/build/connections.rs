//! The workload's connection bounds, set explicitly in the pod template: `MAX_CONNECTIONS` from
//! the container's memory limit, and `HEADER_READ_TIMEOUT_MS`.

use k8s_openapi::api::core::v1::ResourceRequirements;

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
        .and_then(|limit| quantity_bytes(&limit.0))
        .map_or(DEFAULT_MAX_CONNECTIONS, |bytes| {
            (bytes / 2 / BYTES_PER_CONNECTION).max(1)
        })
}

/// A memory quantity in bytes: a decimal number with an optional binary (`Ki`…`Ei`), decimal
/// (`k`…`E`) or exponent (`e6`) suffix. `None` for anything else.
fn quantity_bytes(text: &str) -> Option<i64> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let multiplier = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exponent => 10f64.powi(exponent.strip_prefix(['e', 'E'])?.parse().ok()?),
    };
    let bytes = number * multiplier;
    (bytes.is_finite() && bytes >= 0.0 && bytes < i64::MAX as f64).then_some(bytes as i64)
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

    #[test]
    fn quantities_in_every_notation() {
        for (text, bytes) in [
            ("134217728", Some(134_217_728)),
            ("128Mi", Some(134_217_728)),
            ("0.5Gi", Some(536_870_912)),
            ("1e9", Some(1_000_000_000)),
            ("1E3", Some(1000)),
            ("2k", Some(2000)),
            ("12x", None),
            ("Mi", None),
        ] {
            assert_eq!(quantity_bytes(text), bytes, "{text}");
        }
    }
}
