//! The Lease as a lock: every write carries the `resourceVersion` it read, so of two replicas
//! writing at once one gets a 409 and neither overwrites the other's hold.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::debug;

use super::record::{Claim, Observation, claim, released};
use crate::error::is_conflict;
use crate::names::FIELD_MANAGER;

/// What an attempt to acquire or renew the Lease found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Attempt {
    /// This replica holds the Lease, renewed by the write that answered.
    Held,
    /// It does not: another replica holds it (`None`: one wrote between the read and the write).
    NotHeld(Option<String>),
}

/// One replica's view of the Lease it competes for.
pub(super) struct LeaseLock {
    pub(super) leases: Api<Lease>,
    pub(super) name: String,
    pub(super) identity: String,
    pub(super) duration_seconds: i32,
    /// When the record last changed as this replica saw it: when another's hold runs out.
    pub(super) observation: std::sync::Mutex<Observation>,
}

impl LeaseLock {
    /// Read the Lease, and create, take or renew it as [`claim`] says.
    pub(super) async fn acquire_or_renew(&self) -> kube::Result<Attempt> {
        let current = self.leases.get_opt(&self.name).await?;
        let spec = current.as_ref().and_then(|lease| lease.spec.as_ref());
        let hold_expired = self
            .observation
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .expired(spec, tokio::time::Instant::now());
        // Taken after the read, so `renewTime` is never earlier than the send that the leader
        // counts its deadline from.
        let now = Timestamp::now();
        let record = match claim(
            spec,
            &self.identity,
            self.duration_seconds,
            now,
            hold_expired,
        ) {
            Claim::Write(record) => record,
            Claim::HeldBy(holder) => return Ok(Attempt::NotHeld(Some(holder))),
        };
        let written = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(record),
                };
                self.leases.create(&params(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(record);
                self.leases.replace(&self.name, &params(), &lease).await
            }
        };
        match written {
            Ok(_) => Ok(Attempt::Held),
            // Created or written by another replica since the read.
            Err(error) if is_conflict(&error) => Ok(Attempt::NotHeld(None)),
            Err(error) => Err(error),
        }
    }

    /// Clear the Lease if this replica holds it, with the `resourceVersion` just read as a
    /// precondition: a Lease another replica took in between is left to it.
    pub(super) async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.take().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            debug!(holder = ?spec.holder_identity, "the Lease is no longer this replica's; nothing to release");
            return Ok(());
        }
        lease.spec = Some(released(&spec));
        match self.leases.replace(&self.name, &params(), &lease).await {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => {
                debug!("the Lease changed since it was read; left to its new holder");
                Ok(())
            }
            Err(error) => Err(error),
        }
    }
}

/// Every replica writes the Lease with the operator's one field manager: the preconditions,
/// not field ownership, keep replicas apart.
fn params() -> PostParams {
    PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    }
}
