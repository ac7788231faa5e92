//! The reconcile loop: a `SandboxService` goes validate → build → apply → update status.
//!
//! [`reconcile`] reads top to bottom as that pipeline. Per reconcile it makes one server-side
//! apply per child (more only to repair a child the API server refuses it for, see
//! [`crate::apply`]), one status patch (only when the status changed) and one Event per
//! transition; see `tests/reconcile.rs` for the counted calls. A CR being deleted is left
//! to the garbage collector: no call at all.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, watch_object};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::admin::AdminState;
use crate::api_calls::measuring_api_wait;
use crate::applied::{ChildCaches, Fingerprint, LastApplied};
use crate::apply::{self, MonitoringOutcome};
use crate::build::{self, MANAGED_BY_SELECTOR, ServiceMonitor};
use crate::crd::SandboxService;
use crate::error::{Error, Result, is_refusal};
use crate::memory::Memory;
use crate::metrics::Metrics;
use crate::rbac::SERVICE_MONITOR_CRD;
use crate::status::{self, Notice, Observation};
use crate::triggers;
use crate::validate::validate;

/// Name of the controller in Events (`reportingController`) and logs.
pub const CONTROLLER_NAME: &str = "sandbox-operator";

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
/// what is remembered per CR between reconciles.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Publishes Events on the CRs.
    pub recorder: Recorder,
    /// Operator metrics.
    pub metrics: Metrics,
    /// Consecutive failures and the last written status, per CR.
    pub memory: Memory,
    /// What was last applied of each child, and the children's watch caches.
    pub last_applied: LastApplied,
}

impl Context {
    /// A context whose Events name `instance` (the pod name) as the reporting instance.
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.to_string(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            memory: Memory::default(),
            last_applied: LastApplied::default(),
        }
    }

    /// Publish an Event on `cr`. Best effort: a lost Event must not fail the reconcile.
    async fn publish(&self, cr: &SandboxService, notice: Notice) {
        let event = Event {
            type_: notice.type_,
            reason: notice.reason.to_string(),
            note: Some(truncate(notice.note, 1024)),
            action: "Reconcile".to_string(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &cr.object_ref(&())).await {
            warn!(%error, name = %cr.name_any(), "publishing an Event failed");
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
            ctx.publish(&cr, notice).await;
        }
        result
    })
    .await;
    ctx.metrics.reconciled(started.elapsed(), api_wait);
    if result.is_ok() {
        ctx.memory.reset_failures(&cr);
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
        ctx.memory.forget(cr);
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
                        if let Err(status_error) = update_status(cr, ctx, &observation).await {
                            warn!(%status_error, name = %cr.name_any(), "recording the apply failure in the status failed");
                        }
                    }
                    return Err(error);
                }
            }
        }
    };

    // 4. update status
    update_status(cr, ctx, &observation).await?;
    Ok(action)
}

/// Pipeline step 4: write the status only when it changed, and tell the user about
/// transitions. "Changed" is judged against the last status written, not only the cached CR:
/// the cache may not have seen that write yet.
async fn update_status(
    cr: &SandboxService,
    ctx: &Context,
    observation: &Observation,
) -> Result<()> {
    let known = ctx.memory.known_status(cr);
    let desired = status::desired(cr, known.as_ref(), observation, status::now());
    if known.as_ref() != Some(&desired) {
        status::patch(&ctx.client, cr, &desired).await?;
        ctx.memory.remember_written(cr, &desired);
    } else {
        debug!(name = %cr.name_any(), "status unchanged");
    }
    for notice in status::notices(known.as_ref(), &desired, observation) {
        ctx.publish(cr, notice).await;
    }
    Ok(())
}

/// Retry a failed reconcile with exponential backoff per CR: 5 s, 10 s, 20 s … up to 5 min.
pub fn error_policy(cr: Arc<SandboxService>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.memory.record_failure(&cr);
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

/// Run the controller until `shutdown` completes, then let running reconciles finish.
///
/// ServiceMonitors are watched only while their CRD is served, otherwise the watch would fail
/// forever. The CRD itself is watched: when it is installed or removed, the controller is
/// stopped gracefully and started again with or without the ServiceMonitor watch, which also
/// reconciles every CR, so their ServiceMonitors are created at once. Everything runs inside
/// this future: dropping it (lost leadership) stops it all.
pub async fn run(
    ctx: Arc<Context>,
    admin: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let shutdown = shutdown.shared();
    loop {
        let own_service_monitors = service_monitor_crd_installed(&ctx.client).await;
        let (changed_tx, changed) = tokio::sync::oneshot::channel::<()>();
        let crd_watch = async {
            service_monitor_crd_changed(&ctx.client, own_service_monitors).await;
            let _ = changed_tx.send(());
            futures::future::pending::<()>().await;
        };
        let stop = {
            let shutdown = shutdown.clone();
            async move {
                tokio::select! {
                    () = shutdown => {}
                    _ = changed => {}
                }
            }
        };
        tokio::select! {
            () = run_once(ctx.clone(), own_service_monitors, admin.clone(), stop) => {}
            () = crd_watch => {}
        }
        if shutdown.peek().is_some() {
            break;
        }
        info!(
            installed = !own_service_monitors,
            "ServiceMonitor CRD changed; restarting the controller"
        );
    }
    info!("controller stopped");
}

/// One run of kube-runtime's Controller until `stop`.
///
/// Every child kind is owned, so an edited or deleted child triggers a reconcile that repairs
/// it; status writes do not (see [`triggers`]). Children are watched by the `managed-by` label
/// only; ServiceMonitors metadata-only (their generation shows every edit), the others whole
/// (the Deployment's status is the CR's; Services and HPAs have no generation, so an edit shows
/// only in their spec).
async fn run_once(
    ctx: Arc<Context>,
    own_service_monitors: bool,
    admin: AdminState,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (deployments, deployment_events) = cached_watch(Api::<Deployment>::all(client.clone()));
    let (services, service_events) = cached_watch(Api::<Service>::all(client.clone()));
    let (hpas, hpa_events) = cached_watch(Api::<HorizontalPodAutoscaler>::all(client.clone()));
    let mut controller = Controller::new(
        Api::<SandboxService>::all(client.clone()),
        watcher::Config::default()
            .any_semantic()
            .page_size(WATCH_PAGE_SIZE),
    )
    // A child's status changes come in bursts (a Deployment's replica counts move one after
    // another as its pods start): one reconcile for the burst, not one per write.
    .with_config(controller::Config::default().debounce(DEBOUNCE))
    .owns_stream(triggers::significant_changes(
        deployment_events,
        triggers::deployment,
    ))
    .owns_stream(triggers::significant_changes(
        service_events,
        Fingerprint::fingerprint,
    ))
    .owns_stream(triggers::significant_changes(
        hpa_events,
        Fingerprint::fingerprint,
    ));
    let mut service_monitors = None;
    if own_service_monitors {
        let (store, events) = cached_watch(Api::<PartialObjectMeta<ServiceMonitor>>::all(
            client.clone(),
        ));
        service_monitors = Some(store);
        controller = controller.owns_stream(triggers::significant_changes(
            events,
            Fingerprint::fingerprint,
        ));
    }
    ctx.last_applied.set_caches(Some(ChildCaches {
        deployments,
        services,
        hpas,
        service_monitors,
    }));

    // Ready once the controller has the CRs: at its first reconcile, or at once when there is
    // none to reconcile. Not `store.wait_until_ready()` beside the controller: kube-runtime's
    // store readiness wakes only the last of its waiters, so a second waiter can leave the
    // controller's own runner asleep forever (seen on a real API server).
    let cache = controller.store();
    let controller = controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            // Deleted CRs trigger no reconcile of their own; this is where they are forgotten,
            // so memory stays bounded by the CRs that exist.
            ctx.memory.forget_missing(&cache);
            ctx.last_applied.retain(|namespace, name| {
                cache.get(&ObjectRef::new(name).within(namespace)).is_some()
            });
            let reconciled = matches!(
                result,
                Ok(_) | Err(kube::runtime::controller::Error::ReconcilerFailed(..))
            );
            if reconciled && !admin.is_ready() {
                info!("SandboxService cache synced; controller ready");
                admin.set_ready(true);
            }
            async move {
                match result {
                    Ok((object, _)) => debug!(name = %object.name, "reconciled"),
                    // Already logged, counted and reported by `reconcile`/`error_policy`.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    // Watch failures (missing CRD, RBAC): the watcher retries with backoff.
                    Err(error) => warn!(%error, "controller watch error"),
                }
            }
        });
    futures::join!(controller, ready_if_no_crs(&client, &admin));
}

/// How long a reconcile waits for more changes of the same CR before it runs.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Objects per page of a watch's initial list: the peak memory of a (re)list is one page of
/// JSON and its decoded objects, not the whole list.
const WATCH_PAGE_SIZE: u32 = 100;

/// A watch of the children of kind `K` (by the `managed-by` label) that fills a cache as it is
/// polled: the cache and the stream of its events.
fn cached_watch<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let config = watcher::Config::default()
        .labels(MANAGED_BY_SELECTOR)
        .page_size(WATCH_PAGE_SIZE);
    let events = watcher::watcher(api, config)
        .default_backoff()
        // Only the API server reads managedFields; in the cache they would be most of its memory.
        .modify(|child| child.meta_mut().managed_fields = None)
        .reflect(writer);
    (store, events)
}

/// Mark the controller ready when there is no SandboxService at all, so no reconcile will.
/// A failed list is retried with the reconcile backoff.
async fn ready_if_no_crs(client: &Client, admin: &AdminState) {
    let crs = Api::<SandboxService>::all(client.clone());
    for attempt in 1.. {
        match crs.list_metadata(&ListParams::default().limit(1)).await {
            Ok(list) => {
                if list.items.is_empty() && !admin.is_ready() {
                    info!("no SandboxService exists; controller ready");
                    admin.set_ready(true);
                }
                return;
            }
            Err(error) => {
                warn!(%error, attempt, "listing SandboxServices failed");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
}

/// How often to ask discovery again while it does not yet agree with the CRD watch.
const DISCOVERY_RECHECK: Duration = Duration::from_secs(1);

/// Completes once the ServiceMonitor kind's being served differs from `installed`: the CRD's
/// `Established` condition changed and discovery (what the controller decides by) agrees, so
/// a restart never meets the old answer again. A failing watch (e.g. RBAC without the CRD
/// rule) is retried with backoff and logged; it never stops the controller.
async fn service_monitor_crd_changed(client: &Client, installed: bool) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut changes = watch_object(crds, SERVICE_MONITOR_CRD)
        .default_backoff()
        .boxed();
    while let Some(event) = changes.next().await {
        match event {
            Ok(crd) if established(crd.as_ref()) != installed => {
                while service_monitor_crd_installed(client).await == installed {
                    tokio::time::sleep(DISCOVERY_RECHECK).await;
                }
                return;
            }
            Ok(_) => {}
            Err(error) => {
                warn!(%error, crd = SERVICE_MONITOR_CRD, "watching the ServiceMonitor CRD failed")
            }
        }
    }
    // The stream only ends if the watcher gives up, which it does not; never restart then.
    futures::future::pending::<()>().await;
}

fn established(crd: Option<&CustomResourceDefinition>) -> bool {
    crd.and_then(|crd| crd.status.as_ref())
        .and_then(|status| status.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
        })
}

/// Whether the `monitoring.coreos.com/v1` ServiceMonitor kind is served by the cluster.
async fn service_monitor_crd_installed(client: &Client) -> bool {
    let gvk = kube::core::GroupVersionKind::gvk(
        &ServiceMonitor::group(&()),
        &ServiceMonitor::version(&()),
        &ServiceMonitor::kind(&()),
    );
    match kube::discovery::pinned_kind(client, &gvk).await {
        Ok(_) => true,
        Err(error) => {
            warn!(%error, "ServiceMonitor CRD not found; ServiceMonitors are not watched and SandboxServices that want one report Degraded");
            false
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
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

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("äbc".to_string(), 1), "");
        assert_eq!(truncate("abc".to_string(), 2), "ab");
        assert_eq!(truncate("abc".to_string(), 5), "abc");
    }
}
