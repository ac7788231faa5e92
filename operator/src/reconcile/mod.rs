//! The reconcile pipeline: a `SandboxService` goes validate → build → apply → update status.
//!
//! [`reconcile`] reads top to bottom as that pipeline; each step is one call:
//! 1. [`crate::api::validate()`] (pure);
//! 2. [`crate::children::build`] (pure, one builder per child kind);
//! 3. [`apply::apply_children`]: server-side apply of what changed ([`last_applied`]);
//! 4. [`status::update`]: the status written only when it changed, and the Events it deserves.
//!
//! Per reconcile that is one server-side apply per changed child (more only to repair a child
//! the API server refuses it for, see [`apply`]), one status patch (only when the status
//! changed) and one Event per transition; `tests/reconcile.rs` counts the calls. A CR being
//! deleted is left to the garbage collector: no call at all. What is kept per CR between
//! reconciles is in [`cr_history`]; which child changes start a reconcile is [`triggers`].

pub mod apply;
pub mod cr_history;
pub mod events;
pub mod last_applied;
pub mod scaling;
pub mod status;
pub mod triggers;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use self::apply::MonitoringOutcome;
use self::cr_history::CrHistory;
use self::events::Notice;
use self::last_applied::LastApplied;
use self::status::Observation;
use crate::api::{SandboxService, validate};
use crate::children;
use crate::error::{Error, Result, is_refusal};
use crate::names::FIELD_MANAGER;
use crate::server_version::ServerSupport;
use crate::telemetry::api_calls::measuring_api_wait;
use crate::telemetry::metrics::Metrics;

/// Periodic re-apply of a healthy CR, repairing drift a missed watch event would hide.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How soon to reconcile again a CR whose ServiceMonitor CRD was missing. Installing the CRD
/// is noticed at once by the CRD watch; this is the fallback where that watch is not allowed.
pub const CRD_RECHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How soon to look again at a CR the API server is too old for (it may be upgraded meanwhile).
pub const UNSUPPORTED_SERVER_RECHECK: Duration = Duration::from_secs(5 * 60);

/// First retry after a failure; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(5);

/// Longest wait between retries of a failing CR.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

/// Longest a reconcile may take. Normally a few requests and well under a second; the bound is
/// for a request that hangs, which would otherwise stall this CR for good and keep a shutdown
/// waiting: 20 s leaves a SIGTERM room within the pod's default 30 s grace period.
pub const RECONCILE_TIMEOUT: Duration = Duration::from_secs(20);

/// What `reconcile` and `error_policy` need: the client, the Event recorder, the metrics and
/// what is kept per CR and per child between reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the CRs.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Consecutive failures and the last written status, per CR.
    pub history: CrHistory,
    /// What was last applied of each child, and the children's watch caches.
    pub last_applied: LastApplied,
    /// Whether the API server supports what the children need; checked when leading starts.
    pub server_support: ServerSupport,
    /// Reconciles since the last sweep of deleted CRs, see [`Context::forget_deleted`].
    since_sweep: AtomicUsize,
}

/// Fewest reconciles between two sweeps of deleted CRs.
const MIN_RECONCILES_PER_SWEEP: usize = 64;

impl Context {
    /// A context whose Events name `instance` (the pod name) as the reporting instance.
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            history: CrHistory::default(),
            last_applied: LastApplied::default(),
            server_support: ServerSupport::default(),
            since_sweep: AtomicUsize::new(0),
        }
    }

    /// Called after every reconcile: forgets what is kept for CRs no longer in `cache` (a
    /// deleted CR triggers no reconcile of its own). A sweep costs one look-up per remembered
    /// CR, so it runs once per that many reconciles: constant work per reconcile on average,
    /// where a sweep after each one made a resync of N CRs cost N².
    pub fn forget_deleted(&self, cache: &Store<SandboxService>) {
        let since = self.since_sweep.fetch_add(1, Ordering::Relaxed) + 1;
        if since < self.history.len().max(MIN_RECONCILES_PER_SWEEP) {
            return;
        }
        self.since_sweep.store(0, Ordering::Relaxed);
        self.history.forget_missing(cache);
        self.last_applied
            .retain(|namespace, name| cache.get(&ObjectRef::new(name).within(namespace)).is_some());
    }
}

/// Reconcile one `SandboxService`. Failures are counted by category and reported as a Warning
/// Event before `error_policy` schedules the retry.
pub async fn reconcile(cr: Arc<SandboxService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let (result, api_wait) = measuring_api_wait(async {
        let result = tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_pipeline(&cr, &ctx))
            .await
            .unwrap_or(Err(Error::ReconcileTimeout(RECONCILE_TIMEOUT)));
        if let Err(error) = &result {
            ctx.metrics.reconcile_failed(error.category());
            let note = error.to_string();
            // One Warning per error, not one per retry: during an outage every retry would
            // otherwise be another write to a struggling API server.
            if ctx.history.warning_is_new(&cr, &note) {
                let notice = Notice {
                    type_: EventType::Warning,
                    reason: error.category(),
                    note,
                };
                events::publish(&ctx.recorder, &cr, notice).await;
            }
        }
        result
    })
    .await;
    ctx.metrics.reconciled(started.elapsed(), api_wait);
    if result.is_ok() {
        ctx.history.reset_failures(&cr);
    }
    result
}

async fn reconcile_pipeline(cr: &SandboxService, ctx: &Context) -> Result<Action> {
    let namespace = cr
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let uid = cr.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    if cr.meta().deletion_timestamp.is_some() {
        // Being deleted (foreground or orphan deletion): re-applying children would fight the
        // garbage collector, and nothing about this CR needs remembering any more.
        debug!(name = %cr.name_any(), %namespace, "being deleted; nothing to do");
        ctx.history.forget(cr);
        return Ok(Action::await_change());
    }

    // An API server too old for the children: say so in the status rather than meet an opaque
    // apply failure. It may have been upgraded since it was last asked.
    if ctx.server_support.unsupported().is_some() {
        ctx.server_support.check(&ctx.client).await;
    }
    if let Some(message) = ctx.server_support.unsupported() {
        status::update(cr, ctx, &Observation::UnsupportedServer(message)).await?;
        return Ok(Action::requeue(UNSUPPORTED_SERVER_RECHECK));
    }

    // 1. validate, 2. build, 3. apply
    let (observation, action) = match validate(cr) {
        Err(invalid) => {
            info!(name = %cr.name_any(), %namespace, %invalid, "invalid spec; waiting for a change");
            (Observation::Invalid(invalid), Action::await_change())
        }
        Ok(valid) => {
            let children = children::build(&valid);
            match apply::apply_children(&ctx.client, &namespace, &children, &uid, &ctx.last_applied)
                .await
            {
                Ok(applied) => {
                    let mut action = if applied.monitoring == MonitoringOutcome::CrdMissing {
                        CRD_RECHECK_INTERVAL
                    } else {
                        RESYNC_INTERVAL
                    };
                    // An HPA that cannot read its metric yet: look again when its grace ends,
                    // so that `Degraded` says so then without waiting for another change.
                    if let (_, Some(recheck)) =
                        scaling::metric_failure(applied.hpa.as_ref(), &status::now())
                    {
                        action = action.min(recheck + Duration::from_secs(1));
                    }
                    let action = Action::requeue(action);
                    (Observation::Applied(Box::new(applied)), action)
                }
                Err(error) => {
                    // A refusal that retrying will not fix goes in the status as well, where
                    // `kubectl get sbx` users look; the error still goes to `error_policy` for
                    // the backoff and the Warning.
                    if let Error::Apply { source, .. } = &error
                        && is_refusal(source)
                    {
                        let observation = Observation::ApplyFailed(error.to_string());
                        if let Err(status_error) = status::update(cr, ctx, &observation).await {
                            warn!(%status_error, name = %cr.name_any(), "recording the apply failure in the status failed");
                        }
                    }
                    return Err(error);
                }
            }
        }
    };

    // 4. update status
    status::update(cr, ctx, &observation).await?;
    Ok(action)
}

/// Retry a failed reconcile with exponential backoff per CR, spread: see [`retry_delay`].
pub fn error_policy(cr: Arc<SandboxService>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.history.record_failure(&cr);
    let delay = retry_delay(attempt, &cr.uid().unwrap_or_default());
    warn!(
        name = %cr.name_any(),
        namespace = cr.namespace().unwrap_or_default(),
        category = error.category(),
        %error,
        attempt,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Delay before retry number `attempt` (1-based): 5 s, 10 s, 20 s … up to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    doubling(BASE_BACKOFF, MAX_BACKOFF, attempt)
}

/// Delay before retry number `attempt` (1-based) of a schedule that starts at `first` and
/// doubles up to `max`.
pub fn doubling(first: Duration, max: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    first.saturating_mul(1 << doublings).min(max)
}

/// Delay before retry `attempt` of the CR with `uid`: the [`backoff`] plus up to half of it
/// again, chosen by a hash of the uid and the attempt. CRs that failed together (an outage)
/// then retry spread over that time instead of all at once, and one CR's delays stay
/// reproducible.
pub fn retry_delay(attempt: u32, uid: &str) -> Duration {
    let base = backoff(attempt);
    let mut hasher = DefaultHasher::new();
    (uid, attempt).hash(&mut hasher);
    let spread = (hasher.finish() % 1000) as f64 / 2000.0;
    base + base.mul_f64(spread)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    fn cr(name: &str) -> SandboxService {
        serde_yaml::from_str(&format!(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {{name: {name}, namespace: apps, uid: uid-{name}}}\nspec: {{}}"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn deleted_crs_are_swept_once_per_as_many_reconciles_as_are_remembered() {
        let unused = tower::service_fn(|_: http::Request<kube::client::Body>| async {
            Err::<http::Response<kube::client::Body>, _>(std::io::Error::other("no API server"))
        });
        let ctx = Context::new(Client::new(unused, "apps"), Metrics::new(), None);
        let mut writer = Writer::<SandboxService>::default();
        let cache = writer.as_reader();
        let live = cr("live");
        writer.apply_watcher_event(&watcher::Event::Apply(live.clone()));
        for name in ["live", "gone-1", "gone-2"] {
            ctx.history.record_failure(&cr(name));
        }
        for _ in 1..MIN_RECONCILES_PER_SWEEP {
            ctx.forget_deleted(&cache);
        }
        assert_eq!(ctx.history.len(), 3, "no sweep yet");
        ctx.forget_deleted(&cache);
        assert_eq!(ctx.history.len(), 1, "swept");
        assert_eq!(ctx.history.record_failure(&live), 2, "the live CR is kept");
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn retries_of_many_crs_spread_over_half_a_backoff() {
        let delays: Vec<f64> = (0..100)
            .map(|n| retry_delay(3, &format!("uid-{n}")).as_secs_f64())
            .collect();
        assert!(
            delays.iter().all(|d| (20.0..30.0).contains(d)),
            "{delays:?}"
        );
        // Spread, not bunched: every 2-second slice of [20, 30) gets some, none most.
        for slice in 0..5 {
            let low = 20.0 + 2.0 * slice as f64;
            let count = delays
                .iter()
                .filter(|d| (low..low + 2.0).contains(*d))
                .count();
            assert!(
                (5..=40).contains(&count),
                "{count} retries in [{low}, {})",
                low + 2.0
            );
        }
        assert_eq!(retry_delay(3, "uid-1"), retry_delay(3, "uid-1"));
        assert!(retry_delay(99, "uid-1") < MAX_BACKOFF.mul_f64(1.5));
    }
}
