//! Leader election on a `coordination.k8s.io/v1` Lease (kube-lease-manager), so that of several
//! operator replicas exactly one reconciles at a time.
//!
//! The leader gives leadership up when it has not renewed its Lease for
//! `LEASE_DURATION_SECONDS - LEASE_GRACE_SECONDS`, i.e. before any other replica may consider
//! the Lease expired, even allowing for `LEASE_GRACE_SECONDS` of clock skew. A renewal counts
//! only when the API server's answer shows this replica as the holder, and from no later than
//! it was sent (see `renewals`).

mod renewals;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource};
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, warn};

use self::renewals::{Renewal, recording_renewals};
use crate::error::{Error, Result, is_conflict};
use crate::names::FIELD_MANAGER;

/// Seconds a leader's lock stays valid without renewal; a crashed leader is replaced after this.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// Clock skew tolerated between replicas: the leader stops leading this long before its Lease
/// expires, counted from its last successful renewal.
pub const LEASE_GRACE_SECONDS: u64 = 5;

/// Wait after a failed Lease request before the next attempt.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

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

/// How long a Lease lasts, and how much clock skew between replicas is tolerated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    duration_seconds: u64,
    grace_seconds: u64,
}

impl LeaseTiming {
    /// The operator's timing: [`LEASE_DURATION_SECONDS`] and [`LEASE_GRACE_SECONDS`].
    pub const DEFAULT: Self = Self::new(LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS);

    /// A Lease valid for `duration_seconds` after each renewal, with `grace_seconds` of clock
    /// skew tolerated. The leader renews `2 × grace` before expiry, so a failed renewal has
    /// `grace` seconds of retries before leadership is given up.
    ///
    /// # Panics
    /// If `grace_seconds` is 0 or `2 × grace_seconds >= duration_seconds`.
    pub const fn new(duration_seconds: u64, grace_seconds: u64) -> Self {
        assert!(grace_seconds > 0 && 2 * grace_seconds < duration_seconds);
        Self {
            duration_seconds,
            grace_seconds,
        }
    }

    /// How long after its last successful renewal the leader still leads.
    pub fn renew_deadline(&self) -> Duration {
        Duration::from_secs(self.duration_seconds - self.grace_seconds)
    }

    /// How long a Lease request may go unanswered before it fails and is retried.
    //
    // Half the grace: a renewal, sent `2 × grace` before expiry, that gets no answer is
    // abandoned early enough to be retried once before the renew deadline.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.grace_seconds) / 2
    }
}

/// A running election: `is_leader` follows this replica's leadership; releasing it releases the
/// Lease. Once leadership is given up for want of renewals, it stays false and the Lease is no
/// longer renewed: start a new election to compete again.
pub struct Election {
    /// `true` while this replica holds the Lease and renewed it within the renew deadline.
    pub is_leader: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<()>>,
}

impl Election {
    /// Start competing for the Lease (created if missing) with [`LeaseTiming::DEFAULT`].
    pub fn start(client: Client, config: &LeaseConfig) -> Self {
        Self::start_with(client, config, LeaseTiming::DEFAULT)
    }

    /// Start competing for the Lease (created if missing) with the given timing.
    ///
    /// Returns at once: the first Lease requests are made by the election's task, which waits
    /// and retries while the API server cannot be reached. A candidate that exited instead
    /// would be restarted by its kubelet with a growing delay, which then adds to the recovery
    /// after every outage.
    pub fn start_with(client: Client, config: &LeaseConfig, timing: LeaseTiming) -> Self {
        let (renewed_tx, renewed) = watch::channel(None);
        let lease_path = format!(
            "{}/{}",
            Lease::url_path(&(), Some(&config.namespace)),
            config.name
        );
        let client = recording_renewals(
            client,
            lease_path,
            config.identity.clone(),
            timing.request_timeout(),
            renewed_tx,
        );
        // The lease manager detects competing replicas through SSA conflicts, so each replica
        // needs its own field manager here, unlike the children; the release writes with it too.
        let field_manager = format!("{FIELD_MANAGER}-{}", config.identity);
        let own = OwnLease {
            leases: Api::namespaced(client.clone(), &config.namespace),
            name: config.name.clone(),
            identity: config.identity.clone(),
            field_manager: field_manager.clone(),
        };
        let config = config.clone();
        let builder = move || {
            LeaseManagerBuilder::new(client.clone(), &config.name)
                .with_namespace(&config.namespace)
                .with_identity(&config.identity)
                .with_duration(timing.duration_seconds)
                // The manager's "grace" is how long before expiry it renews.
                .with_grace(2 * timing.grace_seconds)
                .with_field_manager(field_manager.clone())
        };
        let (sender, is_leader) = watch::channel(false);
        let task = tokio::spawn(async move {
            match build(builder, &sender).await {
                Some(manager) => drive(manager, own, timing, renewed, sender).await,
                None => Ok(()),
            }
        });
        Self { is_leader, task }
    }

    /// Stop competing and release the Lease if held, so a standby takes over at once instead
    /// of after the lease duration.
    pub async fn release(self) -> Result<()> {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(Error::LeaderElection(Box::new(error))),
            // The task only ends by panicking if the lease manager has a bug; nothing to release.
            Err(_) => Ok(()),
        }
    }
}

/// The lease manager, once its first requests (reading, or creating, the Lease) succeed;
/// `None` if every receiver of `sender` is gone first.
async fn build(
    builder: impl Fn() -> LeaseManagerBuilder,
    sender: &watch::Sender<bool>,
) -> Option<LeaseManager> {
    let mut attempt: u32 = 0;
    loop {
        tokio::select! {
            biased;
            () = sender.closed() => return None,
            built = builder().build() => match built {
                Ok(manager) => return Some(manager),
                Err(error) => {
                    attempt += 1;
                    let retry_in = RETRY_PERIOD * attempt.min(MAX_START_RETRY_FACTOR);
                    warn!(%error, attempt, retry_in_s = retry_in.as_secs(), "reading the Lease failed; waiting to compete");
                    tokio::select! {
                        () = sender.closed() => return None,
                        () = sleep(retry_in) => {}
                    }
                }
            },
        }
    }
}

/// A candidate that cannot read the Lease asks again after 1 s, 2 s, … up to this many seconds.
const MAX_START_RETRY_FACTOR: u32 = 5;

/// Compete for the Lease and publish leadership to `sender` until every receiver is gone.
//
// Not `LeaseManager::watch()`: in kube-lease-manager 0.12 its loop only logs a failed renewal
// and retries, leaving the published state `true`, and kube's client has no read timeout, so a
// renewal can also hang forever. A leader cut off from the API server would keep reconciling
// after its Lease expired and a standby took over. Here, leadership also requires a renewal
// of this replica's hold (as seen by `recording_renewals`) within `renew_deadline`.
async fn drive(
    manager: LeaseManager,
    own: OwnLease,
    timing: LeaseTiming,
    mut renewed: watch::Receiver<Option<Renewal>>,
    sender: watch::Sender<bool>,
) -> kube_lease_manager::Result<()> {
    let mut holder = false; // what the lease manager believes
    let mut has_led = false;
    let mut next = Box::pin(next_state(&manager, Duration::ZERO));
    loop {
        let valid_until = (*renewed.borrow_and_update())
            .filter(|_| holder)
            .map(|renewal| renewal.at + timing.renew_deadline());
        let leading = valid_until.is_some_and(|until| Instant::now() < until);
        sender.send_if_modified(|published| std::mem::replace(published, leading) != leading);
        if holder && has_led && !leading {
            warn!(
                deadline_s = timing.renew_deadline().as_secs(),
                "no successful Lease renewal within the deadline; giving up leadership"
            );
            break;
        }
        has_led |= leading;
        tokio::select! {
            biased;
            () = sender.closed() => {
                drop(next);
                // Only a leader releases, and not through the lease manager, whose release
                // clears an expired Lease too and has no precondition (see `release`).
                if !leading {
                    return Ok(());
                }
                return release(&own, timing).await;
            }
            // Wake up to recompute when a renewal lands or the deadline passes.
            Ok(()) = renewed.changed() => {}
            () = sleep_until(valid_until.unwrap_or_else(Instant::now)), if leading => {}
            result = &mut next => match result {
                Ok(state) => {
                    debug!(holder = state, "Lease holder changed");
                    holder = state;
                    next = Box::pin(next_state(&manager, Duration::ZERO));
                }
                Err(error) => {
                    warn!(%error, "Lease request failed; retrying");
                    next = Box::pin(next_state(&manager, RETRY_PERIOD));
                }
            },
        }
    }
    // Given up: stop renewing (drop the pending request) so the Lease expires and a standby
    // takes over. No release either: by now a standby may already hold the Lease.
    drop(next);
    sender.closed().await;
    Ok(())
}

/// After `delay`, wait for the lease manager's next change of holder; it renews the Lease
/// meanwhile when this replica holds it.
async fn next_state(manager: &LeaseManager, delay: Duration) -> kube_lease_manager::Result<bool> {
    sleep(delay).await;
    manager.changed().await
}

/// This replica's Lease, as its release reads and writes it.
struct OwnLease {
    leases: Api<Lease>,
    name: String,
    identity: String,
    /// The field manager the lease manager writes this replica's hold with.
    field_manager: String,
}

/// Release the Lease if this replica holds it: its holder and times are cleared with the
/// `resourceVersion` just read as a precondition, so a Lease that another replica took in
/// between (this one's expired while the request was under way) is left to it. Best effort
/// within the grace period: an unreachable API server must not hold up shutdown, and the
/// Lease expires on its own.
async fn release(own: &OwnLease, timing: LeaseTiming) -> kube_lease_manager::Result<()> {
    let attempt = async {
        let Some(lease) = own.leases.get_opt(&own.name).await? else {
            return Ok(());
        };
        let holder = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref());
        if holder != Some(own.identity.as_str()) {
            debug!(
                ?holder,
                "the Lease is no longer this replica's; nothing to release"
            );
            return Ok(());
        }
        let cleared = serde_json::json!({
            "metadata": {"resourceVersion": lease.metadata.resource_version},
            "spec": {"holderIdentity": null, "acquireTime": null, "renewTime": null, "leaseDurationSeconds": null},
        });
        let params = PatchParams {
            field_manager: Some(own.field_manager.clone()),
            ..PatchParams::default()
        };
        match own
            .leases
            .patch(&own.name, &params, &Patch::Merge(&cleared))
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_conflict(&error) => {
                debug!("the Lease changed since it was read; left to its new holder");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    };
    match timeout(Duration::from_secs(timing.grace_seconds), attempt).await {
        Ok(result) => result,
        Err(_) => {
            warn!("releasing the Lease timed out; it expires on its own");
            Ok(())
        }
    }
}

/// Wait until this replica leads: `true` once it does, `false` if the election ended first.
//
// An ended election (its task panicked) must not count as leadership: the Lease is no longer
// renewed, so a standby takes it over.
pub async fn leadership_acquired(mut is_leader: watch::Receiver<bool>) -> bool {
    is_leader.wait_for(|leading| *leading).await.is_ok()
}

/// Run `work` while this replica leads: its output, or `None` as soon as leadership is lost
/// (or the election ended), in which case `work` is dropped at once, not wound down.
//
// Winding down (e.g. a graceful shutdown waiting for running reconciles) could take forever:
// kube's client has no read timeout, and a write that completes late would land after a
// standby took over.
pub async fn while_leading<F: Future>(
    mut is_leader: watch::Receiver<bool>,
    work: F,
) -> Option<F::Output> {
    tokio::select! {
        biased;
        _ = is_leader.wait_for(|leading| !*leading) => None,
        output = work => Some(output),
    }
}
