//! The workload's interface to whoever runs it: environment variables and their defaults, the
//! container port, the HTTP routes and the metric names.
//!
//! The operator builds its pod template from these constants (through a path dependency on this
//! crate without its `server` feature), so a name or a default is written once, here. This module
//! depends on nothing: it must build without the server's crates.

/// An environment variable the workload reads, with its default as the workload applies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Variable name, e.g. `CONCURRENCY`.
    pub env: &'static str,
    /// Default when the variable is unset, as written in the environment.
    pub default: u64,
}

/// TCP port the workload listens on; the container port.
pub const PORT: Setting = Setting {
    env: "PORT",
    default: 3000,
};

/// Address to listen on (`0.0.0.0` when unset); the operator never sets it.
pub const HOST_ENV: &str = "HOST";

/// Operations that run at once.
pub const CONCURRENCY: Setting = Setting {
    env: "CONCURRENCY",
    default: 1,
};

/// Duration of one simulated operation, in milliseconds.
pub const OPERATION_DURATION_MS: Setting = Setting {
    env: "OPERATION_DURATION_MS",
    default: 2000,
};

/// `/readiness` answers 429 when more than this × concurrency operations wait.
pub const READINESS_QUEUE_FACTOR: Setting = Setting {
    env: "READINESS_QUEUE_FACTOR",
    default: 2,
};

/// `/expensive-op` answers 503 when accepting would make more than this × concurrency wait.
pub const BREAKER_QUEUE_FACTOR: Setting = Setting {
    env: "BREAKER_QUEUE_FACTOR",
    default: 4,
};

/// How long a request head may take to arrive, and a kept-alive connection may idle, in ms.
pub const HEADER_READ_TIMEOUT_MS: Setting = Setting {
    env: "HEADER_READ_TIMEOUT_MS",
    default: 5000,
};

/// The span `queue_occupancy` averages over, in ms. The operator sets it to the pod's scrape interval,
/// so that each scrape's sample covers the time since the previous one: no moment of demand is counted
/// twice or missed. The default is the operator's default scrape interval.
pub const OCCUPANCY_WINDOW_MS: Setting = Setting {
    env: "OCCUPANCY_WINDOW_MS",
    default: 5000,
};

/// Memory one open connection may cost, rounded up from the 19.1 KiB measured by
/// `scripts/hostile.sh`; the connection limit is derived from a memory budget with it.
pub const BYTES_PER_CONNECTION: u64 = 32 * 1024;

/// The connection limit for a memory limit of `memory_limit_bytes`: half of it for connections.
pub const fn max_connections_for_memory(memory_limit_bytes: u64) -> u64 {
    let connections = memory_limit_bytes / 2 / BYTES_PER_CONNECTION;
    if connections == 0 { 1 } else { connections }
}

/// Connections served in full; past it a connection gets one probe or `/metrics` request only.
/// The default is what a 128 MiB memory limit allows.
pub const MAX_CONNECTIONS: Setting = Setting {
    env: "MAX_CONNECTIONS",
    default: max_connections_for_memory(128 * 1024 * 1024),
};

/// After SIGTERM, how long the workload keeps admitting while every answer closes its connection, in
/// ms: kept-alive clients take their next request to another pod before new work is refused. A
/// Service stops sending new connections to a pod being deleted, but open ones stay.
pub const SHUTDOWN_LEAVE_MS: Setting = Setting {
    env: "SHUTDOWN_LEAVE_MS",
    default: 0,
};

/// After SIGTERM (and the leave), how long accepted operations may take to finish before the process
/// exits.
pub const SHUTDOWN_GRACE_MS: Setting = Setting {
    env: "SHUTDOWN_GRACE_MS",
    default: 30_000,
};

/// When the workload closes a kept-alive connection after answering on it, so that the client's next
/// connection is balanced anew: a Service balances connections, not requests.
pub const CONNECTION_CLOSE_ENV: &str = "CONNECTION_CLOSE";

/// The values of [`CONNECTION_CLOSE_ENV`]. Every mode but `Never` also closes after a 503, which always
/// means this pod sheds load; they differ in the `200` answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionClose {
    /// Close after the answer when other operations wait in this pod's queue (the default): a client
    /// stays on a pod only while it is served without waiting.
    WhenQueued,
    /// Close after the answer only while `/readiness` fails (more than the readiness limit wait).
    WhenOverloaded,
    /// Keep every connection alive (HTTP/1.1's default): a client stays on its first pod.
    Never,
}

impl ConnectionClose {
    /// Every mode, the default first.
    pub const ALL: [ConnectionClose; 3] = [Self::WhenQueued, Self::WhenOverloaded, Self::Never];

    /// The value as written in the environment.
    pub const fn env_value(self) -> &'static str {
        match self {
            Self::WhenQueued => "when-queued",
            Self::WhenOverloaded => "when-overloaded",
            Self::Never => "never",
        }
    }

    /// The mode an environment value names.
    pub fn from_env_value(value: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|mode| mode.env_value() == value)
    }
}

/// `CONNECTION_CLOSE` when unset.
pub const CONNECTION_CLOSE_DEFAULT: ConnectionClose = ConnectionClose::WhenQueued;

/// The simulated expensive operation.
pub const EXPENSIVE_OP_PATH: &str = "/expensive-op";
/// Readiness probe: 429 under backpressure.
pub const READINESS_PATH: &str = "/readiness";
/// Liveness probe: always 200 while the process serves.
pub const LIVENESS_PATH: &str = "/liveness";
/// Prometheus text exposition.
pub const METRICS_PATH: &str = "/metrics";

/// Per-pod gauge the HPA scales on: operations waiting per unit of concurrency.
pub const QUEUE_RATIO_METRIC: &str = "queue_ratio";

/// Per-pod gauge of load: running plus waiting operations per unit of concurrency, averaged over
/// [`OCCUPANCY_WINDOW_MS`]. Unlike an instant sample it does not depend on when the pod is scraped.
pub const QUEUE_OCCUPANCY_METRIC: &str = "queue_occupancy";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limit_is_half_the_memory_at_the_per_connection_cost() {
        assert_eq!(MAX_CONNECTIONS.default, 2048);
        assert_eq!(max_connections_for_memory(256 * 1024 * 1024), 4096);
        assert_eq!(max_connections_for_memory(0), 1, "never zero");
    }

    #[test]
    fn connection_close_values_read_back() {
        for mode in ConnectionClose::ALL {
            assert_eq!(
                ConnectionClose::from_env_value(mode.env_value()),
                Some(mode)
            );
        }
        assert_eq!(ConnectionClose::ALL[0], CONNECTION_CLOSE_DEFAULT);
        assert_eq!(ConnectionClose::from_env_value("WhenQueued"), None);
    }
}
