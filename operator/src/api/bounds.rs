//! The numeric bounds of the spec, shared by the types that state them in the schema and by
//! [`validate`](super::validate), which checks them again.

/// Largest `readinessQueueFactor` and `breakerQueueFactor`: a queue of a thousand times the
/// concurrency is already hours of drain at the default operation duration.
pub const MAX_QUEUE_FACTOR: i64 = 1000;

/// Longest `operationDurationMs`, one hour: the pod's grace period is derived from it (see
/// [`crate::children::deployment`]), so it must stay a duration a node can wait for.
pub const MAX_OPERATION_DURATION_MS: i64 = 3_600_000;

/// Upper bound of `behavior.scaleDown.stabilizationWindowSeconds` accepted by the HPA API.
pub const MAX_STABILIZATION_SECONDS: i32 = 3600;

/// Largest value of the integer fields that end up in Kubernetes' int32 fields (replica counts)
/// or that the workload reads as a count. The API server does not enforce `format: int32` on a
/// CRD, so the schema states it as a maximum; the Rust fields are `i64` so that a CR stored under
/// an older CRD without the maximum still decodes and is refused by `validate` alone, instead of
/// failing the decoding of every SandboxService in the watch.
pub const MAX_INT32: i64 = i32::MAX as i64;
