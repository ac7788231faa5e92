//! Leader election on a `coordination.k8s.io/v1` Lease, in client-go's manner, so that of
//! several operator replicas exactly one reconciles at a time.
//!
//! Each replica reads the Lease and writes it back (create, take over, renew) with the
//! `resourceVersion` it read as a precondition (see `lock`), so a write can only land on the
//! record its decision was made from (see `record`). Another replica's hold expires once its
//! record has stayed unchanged for its duration on the reader's own clock, never by comparing
//! wall clocks. The leader gives leadership up when it has not renewed its Lease for
//! `LEASE_DURATION_SECONDS - LEASE_GRACE_SECONDS`, counted from when its last successful renewal
//! was sent: `LEASE_GRACE_SECONDS` before any other replica, which saw that renewal no earlier
//! than it was sent, may consider the Lease expired.

mod lock;
mod record;

use std::time::Duration;

use kube::Client;
use kube::api::Api;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, warn};

use self::lock::{Attempt, LeaseLock};
use crate::error::{Error, Result};
/// Seconds a leader's lock stays valid without renewal; a crashed leader is replaced after this.
pub const LEASE_DURATION_SECONDS: u64 = 15;

/// Safety margin: the leader stops leading this long before any other replica may consider its
/// Lease expired (which each times on its own clock from when it saw the last renewal).
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

/// How long a Lease lasts, and the margin by which its leader stops leading before it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    duration_seconds: u64,
    grace_seconds: u64,
}

impl LeaseTiming {
    /// The operator's timing: [`LEASE_DURATION_SECONDS`] and [`LEASE_GRACE_SECONDS`].
    pub const DEFAULT: Self = Self::new(LEASE_DURATION_SECONDS, LEASE_GRACE_SECONDS);

    /// A Lease valid for `duration_seconds` after each renewal, whose leader stops
    /// `grace_seconds` before that. The leader renews `2 × grace` before expiry, so a failed renewal has
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

    /// How often the leader renews: `2 × grace` before its Lease would expire.
    pub fn renew_interval(&self) -> Duration {
        Duration::from_secs(self.duration_seconds - 2 * self.grace_seconds)
    }

    /// How long a Lease request may go unanswered before it fails and is retried.
    //
    // Half the grace: a renewal, sent `2 × grace` before expiry, that gets no answer is
    // abandoned early enough to be retried (after 1 s) before the renew deadline when the grace
    // is over 2 s, as the operator's 5 s is.
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
    lease_name: String,
    task: JoinHandle<kube::Result<()>>,
}

impl Election {
    /// Start competing for the Lease (created if missing) with [`LeaseTiming::DEFAULT`].
    pub fn start(client: Client, config: &LeaseConfig) -> Self {
        Self::start_with(client, config, LeaseTiming::DEFAULT)
    }

    /// Start competing for the Lease (created if missing) with the given timing.
    ///
    /// Returns at once: the Lease requests are made by the election's task, which waits and
    /// retries while the API server cannot be reached. A candidate that exited instead would be
    /// restarted by its kubelet with a growing delay, which then adds to the recovery after
    /// every outage.
    pub fn start_with(client: Client, config: &LeaseConfig, timing: LeaseTiming) -> Self {
        let lock = LeaseLock {
            leases: Api::namespaced(client, &config.namespace),
            name: config.name.clone(),
            identity: config.identity.clone(),
            duration_seconds: i32::try_from(timing.duration_seconds).unwrap_or(i32::MAX),
            observation: std::sync::Mutex::default(),
        };
        let (sender, is_leader) = watch::channel(false);
        let task = tokio::spawn(compete(lock, timing, sender));
        Self {
            is_leader,
            lease_name: config.name.clone(),
            task,
        }
    }

    /// Stop competing and release the Lease if held, so a standby takes over at once instead
    /// of after the lease duration.
    pub async fn release(self) -> Result<()> {
        drop(self.is_leader);
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(source)) => Err(Error::LeaderElection {
                lease: self.lease_name,
                source: Box::new(source),
            }),
            // The task only ends by panicking on a bug; nothing to release.
            Err(_) => Ok(()),
        }
    }
}

/// A standby reads the Lease this often, to take it over soon after it expires or is released.
const STANDBY_PERIOD: Duration = Duration::from_secs(1);

/// Wait after a failed Lease request before the next attempt; a candidate waits 1 s, 2 s, … up
/// to [`MAX_RETRY_FACTOR`] times this.
const RETRY_PERIOD: Duration = Duration::from_secs(1);

/// See [`RETRY_PERIOD`].
const MAX_RETRY_FACTOR: u32 = 5;

/// Compete for the Lease and publish leadership to `sender` until every receiver is gone;
/// then release the Lease if this replica leads.
//
// Leading requires a renewal within the renew deadline, and every request is bounded in time:
// kube's client has no read timeout, and a leader whose renewal hangs must still stop leading
// before its Lease expires and a standby takes over.
async fn compete(
    lock: LeaseLock,
    timing: LeaseTiming,
    sender: watch::Sender<bool>,
) -> kube::Result<()> {
    let mut renewed_at: Option<Instant> = None;
    let mut has_led = false;
    let mut failures: u32 = 0;
    let mut next_attempt = Instant::now();
    loop {
        let valid_until = renewed_at.map(|sent| sent + timing.renew_deadline());
        let leading = valid_until.is_some_and(|until| Instant::now() < until);
        if sender.send_if_modified(|published| std::mem::replace(published, leading) != leading) {
            debug!(leading, "leadership changed");
        }
        if has_led && !leading {
            warn!(
                deadline_s = timing.renew_deadline().as_secs(),
                "no successful Lease renewal within the deadline; giving up leadership"
            );
            break;
        }
        has_led |= leading;
        let attempt = async {
            sleep_until(next_attempt).await;
            let sent = Instant::now();
            let outcome = timeout(timing.request_timeout(), lock.acquire_or_renew()).await;
            (sent, outcome)
        };
        tokio::select! {
            biased;
            () = sender.closed() => {
                // Only a leader releases: a standby's release could clear the Lease another
                // replica has just taken.
                return if leading { release(&lock, timing).await } else { Ok(()) };
            }
            // Give up as soon as the deadline passes, even with a renewal under way.
            () = sleep_until(valid_until.unwrap_or_else(Instant::now)), if leading => {}
            (sent, outcome) = attempt => match outcome {
                Ok(Ok(Attempt::Held)) => {
                    renewed_at = Some(sent);
                    failures = 0;
                    next_attempt = sent + timing.renew_interval();
                }
                // A leader's renewal that met a write since its read (its own earlier renewal,
                // landed late after a timeout, say): retried within the deadline.
                Ok(Ok(Attempt::NotHeld(None))) if leading => {
                    failures += 1;
                    debug!(failures, "the Lease changed since it was read; renewing again");
                    next_attempt = Instant::now() + retry_delay(failures, leading);
                }
                Ok(Ok(Attempt::NotHeld(holder))) => {
                    debug!(?holder, "the Lease is held by another replica");
                    // A leader that finds another holder has lost the Lease: stop at once.
                    renewed_at = None;
                    failures = 0;
                    next_attempt = Instant::now() + STANDBY_PERIOD;
                }
                Ok(Err(error)) => {
                    failures += 1;
                    warn!(%error, failures, "Lease request failed; retrying");
                    next_attempt = Instant::now() + retry_delay(failures, leading);
                }
                Err(_) => {
                    failures += 1;
                    warn!(timeout_ms = timing.request_timeout().as_millis(), failures, "Lease request unanswered; retrying");
                    next_attempt = Instant::now() + retry_delay(failures, leading);
                }
            },
        }
    }
    // Given up: no more renewals, so the Lease expires and a standby takes over. No release
    // either: by now a standby may already hold the Lease.
    sender.closed().await;
    Ok(())
}

/// How long to wait after the `failures`-th failed request in a row: a leader retries at once
/// within its deadline; a candidate backs off, so an outage is not met with a request a second
/// from every replica.
fn retry_delay(failures: u32, leading: bool) -> Duration {
    if leading {
        RETRY_PERIOD
    } else {
        RETRY_PERIOD * failures.min(MAX_RETRY_FACTOR)
    }
}

/// Release the Lease (see [`LeaseLock::release`]). Best effort within the grace period: an
/// unreachable API server must not hold up shutdown, and the Lease expires on its own.
async fn release(lock: &LeaseLock, timing: LeaseTiming) -> kube::Result<()> {
    match timeout(Duration::from_secs(timing.grace_seconds), lock.release()).await {
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
