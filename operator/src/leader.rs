//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so that of several
//! operator replicas exactly one reconciles at a time.

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apply::FIELD_MANAGER;
use crate::error::{Error, Result};

/// Seconds a leader's lock stays valid without renewal; a crashed leader is replaced after this.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// Seconds before expiry at which the leader renews; also the clock skew tolerated.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Where the Lease lives and who competes for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease name, shared by all replicas.
    pub name: String,
    /// Lease namespace (the operator's own namespace).
    pub namespace: String,
    /// Unique name of this replica (the pod name).
    pub identity: String,
}

/// A running election: `is_leader` follows this replica's lock; dropping it releases the Lease.
pub struct Election {
    /// `true` while this replica holds the Lease.
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
}

impl Election {
    /// Start competing for the Lease (created if missing).
    pub async fn start(client: Client, config: &LeaseConfig) -> Result<Self> {
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_GRACE_SECONDS)
            // The lease manager detects competing replicas through SSA conflicts, so each
            // replica needs its own field manager here, unlike the children.
            .with_field_manager(format!("{FIELD_MANAGER}-{}", config.identity))
            .build()
            .await
            .map_err(|e| Error::LeaderElection(Box::new(e)))?;
        let (is_leader, task) = manager.watch().await;
        Ok(Self { is_leader, task })
    }

    /// Stop competing and release the Lease if held, so a standby takes over at once instead
    /// of after the lease duration.
    pub async fn release(self) -> Result<()> {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(Error::LeaderElection(Box::new(error))),
            // The task only ends by panicking if the lease manager has a bug; nothing to release.
            Err(_) => Ok(()),
        }
    }
}
