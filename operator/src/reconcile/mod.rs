//! The reconcile pipeline: a `SandboxService` goes validate → build → apply → update status.
//!
//! [`reconcile`] reads top to bottom as that pipeline; each step is one call:
//! 1. [`crate::spec::validate()`] (pure);
//! 2. [`crate::build::children`] (pure, one builder per child kind);
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
pub mod status;
pub mod triggers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use self::apply::MonitoringOutcome;
use self::cr_history::CrHistory;
use self::events::Notice;
use self::last_applied::LastApplied;
use self::status::Observation;
use crate::build;
use crate::error::{Error, Result, is_refusal};
use crate::names::FIELD_MANAGER;
use crate::spec::{SandboxService, validate};
use crate::telemetry::api_calls::measuring_api_wait;
use crate::telemetry::metrics::Metrics;

/// Periodic re-apply of a healthy CR, repairing drift a missed watch event would hide.
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How soon to reconcile again a CR whose ServiceMonitor CRD was missing. Installing the CRD
/// is noticed at once by the CRD watch; this is the fallback where that watch is not allowed.
pub const CRD_RECHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// First retry after a failure; doubles per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_secs(5);

/// Longest wait between retries of a failing CR.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5 * 60);

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
}

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
        }
    }
}

/// Reconcile one `SandboxService`. Failures are counted by category and reported as a Warning
/// Event before `error_policy` schedules the retry.
pub async fn reconcile(cr: Arc<SandboxService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let (result, api_wait) = measuring_api_wait(async {
        let result = reconcile_pipeline(&cr, &ctx).await;
        if let Err(error) = &result {
            ctx.metrics.reconcile_failed(error.category());
            let notice = Notice {
                type_: EventType::Warning,
                reason: error.category(),
                note: error.to_string(),
            };
            events::publish(&ctx.recorder, &cr, notice).await;
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

    // 1. validate, 2. build, 3. apply
    let (observation, action) = match validate(cr) {
        Err(invalid) => {
            info!(name = %cr.name_any(), %namespace, %invalid, "invalid spec; waiting for a change");
            (Observation::Invalid(invalid), Action::await_change())
        }
        Ok(valid) => {
            let children = build::children(&valid);
            match apply::apply_children(&ctx.client, &namespace, &children, &uid, &ctx.last_applied)
                .await
            {
                Ok(applied) => {
                    let action = if applied.monitoring == MonitoringOutcome::CrdMissing {
                        Action::requeue(CRD_RECHECK_INTERVAL)
                    } else {
                        Action::requeue(RESYNC_INTERVAL)
                    };
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

/// Retry a failed reconcile with exponential backoff per CR: 5 s, 10 s, 20 s … up to 5 min.
pub fn error_policy(cr: Arc<SandboxService>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.history.record_failure(&cr);
    let delay = backoff(attempt);
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

/// Delay before retry number `attempt` (1-based).
pub fn backoff(attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    BASE_BACKOFF.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let delays: Vec<u64> = (1..=9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
