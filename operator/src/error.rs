//! The operator's errors. Each variant has a bounded [`Error::category`], used both as the
//! `category` label of the failure metric and as the reason of the Warning event, so neither
//! ever carries an unbounded string.

use crate::api::InvalidSpec;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The spec breaks a rule; waits for the user to change it.
    #[error("invalid SandboxService: {0}")]
    InvalidSpec(#[from] InvalidSpec),

    /// The object handed to `reconcile` lacks a field the API server always sets.
    #[error("SandboxService has no {0}")]
    MissingObjectKey(&'static str),

    /// Server-side apply of a child failed.
    #[error("applying {kind} {namespace}/{name} failed: {source}")]
    Apply {
        /// Child kind.
        kind: String,
        /// Child namespace.
        namespace: String,
        /// Child name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },

    /// Reading or deleting a ServiceMonitor that is no longer wanted failed.
    #[error("removing ServiceMonitor {namespace}/{name} failed: {source}")]
    Cleanup {
        /// ServiceMonitor namespace.
        namespace: String,
        /// ServiceMonitor name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },

    /// Writing the status subresource failed.
    #[error("updating the status of SandboxService {namespace}/{name} failed: {source}")]
    Status {
        /// CR namespace.
        namespace: String,
        /// CR name.
        name: String,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },

    /// A load test's call to the API server failed (reading its target, applying its Job,
    /// writing its status); retried with backoff.
    #[error("SandboxLoadTest {namespace}/{name}: {action} failed: {source}")]
    LoadTest {
        /// Load test namespace.
        namespace: String,
        /// Load test name.
        name: String,
        /// What was being done, e.g. `reading the target SandboxService`.
        action: &'static str,
        /// The API error.
        #[source]
        source: Box<kube::Error>,
    },

    /// A reconcile did not finish within its deadline, e.g. on a connection that stopped
    /// answering without closing (kube's client has no read timeout of its own).
    #[error("reconcile did not finish within {} s; an API request hung, it is retried", .0.as_secs())]
    ReconcileTimeout(std::time::Duration),

    /// Reading the kubeconfig or in-cluster config failed.
    #[error("Kubernetes client configuration: {0}")]
    Config(#[source] Box<kube::Error>),

    /// The leader-election Lease could not be released.
    #[error("leader election: releasing Lease {lease}: {source}")]
    LeaderElection {
        /// The Lease's name.
        lease: String,
        /// What the API server answered.
        #[source]
        source: Box<kube::Error>,
    },

    /// This replica lost the Lease while running the controller.
    #[error("lost leadership of Lease {0}; exiting so a fresh process rejoins as a standby")]
    LostLeadership(String),

    /// The leader election stopped on its own (a bug), so this replica can no longer lead.
    #[error("leader election on Lease {0} stopped; exiting so a fresh process rejoins")]
    ElectionStopped(String),

    /// The admin HTTP server could not bind or serve.
    #[error("admin server on {addr}: {source}")]
    AdminServer {
        /// Listen address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The metrics server could not bind.
    #[error("metrics server on {addr}: {source}")]
    MetricsServer {
        /// Listen address.
        addr: std::net::SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The metrics server's certificate or key could not be read or made.
    #[error("metrics server's TLS certificate: {0}")]
    MetricsCertificate(String),

    /// The async runtime could not start.
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),

    /// Reading the `render` input failed.
    #[error("reading {path}: {source}")]
    ReadInput {
        /// File path or `-` for stdin.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The `render` input is not a SandboxService.
    #[error("{path}: {message}")]
    ParseInput {
        /// File path or `-` for stdin.
        path: String,
        /// What is wrong, naming the field.
        message: String,
    },

    /// Serializing an object to YAML failed.
    #[error("serializing YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// `Result` with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Bounded, PascalCase name of the failure: a metric label and a Kubernetes Event reason.
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "InvalidSpec",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::Apply { .. } => "ApplyFailed",
            Error::Cleanup { .. } => "CleanupFailed",
            Error::Status { .. } => "StatusUpdateFailed",
            Error::LoadTest { .. } => "LoadTestApiFailed",
            Error::ReconcileTimeout(_) => "ReconcileTimeout",
            Error::Config(_) => "ConfigError",
            Error::LeaderElection { .. } => "LeaderElectionFailed",
            Error::LostLeadership(_) => "LostLeadership",
            Error::ElectionStopped(_) => "ElectionStopped",
            Error::AdminServer { .. } => "AdminServerFailed",
            Error::MetricsServer { .. } => "MetricsServerFailed",
            Error::MetricsCertificate(_) => "MetricsCertificateInvalid",
            Error::Runtime(_) => "RuntimeFailed",
            Error::ReadInput { .. } => "ReadInputFailed",
            Error::ParseInput { .. } => "InvalidInput",
            Error::Yaml(_) => "SerializationFailed",
        }
    }
}

/// Whether the API server refused a request for good: a 4xx that trying again unchanged will
/// not fix (not a timeout, a conflict or throttling).
pub fn is_refusal(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status)
        if (400..500).contains(&status.code) && ![408, 409, 429].contains(&status.code))
}

/// Whether a Kubernetes API error is a 404 Not Found.
///
/// By status code as well as by reason: for an API group it does not serve (a CRD that is not
/// installed), the API server answers a plain-text `404 page not found`, which kube reports with
/// code 404 but without the `NotFound` reason.
pub fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found() || status.code == 404)
}

/// Whether `error` is a 409: a write whose `resourceVersion` precondition (or field ownership)
/// no longer holds, because someone wrote the object since it was read.
pub fn is_conflict(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.to_string(),
            ..Default::default()
        }))
    }

    #[test]
    fn not_found_by_reason_or_by_a_bare_404() {
        assert!(is_not_found(&api_error(404, "NotFound")));
        // What the API server answers for a group it does not serve, as kube reports it.
        assert!(is_not_found(&api_error(404, "Failed to parse error data")));
        assert!(!is_not_found(&api_error(403, "Forbidden")));
    }

    #[test]
    fn refusals_are_the_4xx_that_a_retry_does_not_fix() {
        assert!(is_refusal(&api_error(422, "Invalid")));
        assert!(is_refusal(&api_error(403, "Forbidden")));
        for transient in [409, 429, 500, 503] {
            assert!(!is_refusal(&api_error(transient, "")), "{transient}");
        }
    }
}
