//! kube-runtime's `Controller` wired to [`crate::reconcile`]: the watches (the CRs and their
//! children, by the `managed-by` label), the triggers, readiness, and a restart whenever the
//! ServiceMonitor CRD comes or goes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{ListParams, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use tracing::{debug, info, warn};

use super::admin::AdminState;
use super::discovery::{service_monitor_crd_changed, service_monitor_crd_installed};
use super::scoped_watch::scoped_watcher;
use super::watch_backoff::NoWait;
use crate::api::SandboxService;
use crate::children::ServiceMonitor;
use crate::names::MANAGED_BY_SELECTOR;
use crate::reconcile::last_applied::{ChildCaches, Fingerprint};
use crate::reconcile::{Context, backoff, error_policy, reconcile, triggers};

pub use super::scoped_watch::WatchScope;

/// Run the controller until `shutdown` completes, then let running reconciles finish.
///
/// ServiceMonitors are watched only while their CRD is served, otherwise the watch would fail
/// forever. The CRD itself is watched: when it is installed or removed, the controller is
/// stopped gracefully and started again with or without the ServiceMonitor watch, which also
/// reconciles every CR, so their ServiceMonitors are created at once. Everything runs inside
/// this future: dropping it (lost leadership) stops it all.
pub async fn reconcile_all(
    ctx: Arc<Context>,
    admin: AdminState,
    scope: WatchScope,
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
            () = controller_until(ctx.clone(), own_service_monitors, admin.clone(), &scope, stop) => {}
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
async fn controller_until(
    ctx: Arc<Context>,
    own_service_monitors: bool,
    admin: AdminState,
    scope: &WatchScope,
    stop: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let (deployments, deployment_events) = cached_watch::<Deployment>(scope, &client, |_| {});
    let (services, service_events) = cached_watch::<Service>(scope, &client, |_| {});
    let (hpas, hpa_events) = cached_watch::<HorizontalPodAutoscaler>(scope, &client, |_| {});
    // Pods start no reconcile (their readiness reaches the CR through the Deployment's counts);
    // the cache is read for what the status says of them, so their spec is not kept.
    let (pods, pod_events) = cached_watch::<Pod>(scope, &client, |pod| {
        pod.spec = None;
    });
    let pod_events = pod_events.for_each(|_| futures::future::ready(()));
    // Each watch backs off on its own (see `watch_backoff`), the CRs' too: built here rather
    // than by `Controller::new`, which would leave it to the backoff all watches share.
    let (cache, cache_writer) = reflector::store();
    let cr_events = scoped_watcher(
        scope,
        &client,
        &watcher::Config::default()
            .any_semantic()
            .page_size(WATCH_PAGE_SIZE),
        |_| {},
        &cache,
    )
    .reflect(cache_writer)
    .applied_objects();
    let mut controller = Controller::for_stream(cr_events, cache.clone())
        // A child's status changes come in bursts (a Deployment's replica counts move one after
        // another as its pods start): one reconcile for the burst, not one per write.
        // At most this many reconciles at once, so a new leader or the end of an outage does not
        // start every CR's writes together.
        .with_config(
            controller::Config::default()
                .debounce(DEBOUNCE)
                .concurrency(RECONCILE_CONCURRENCY),
        )
        // The watches have each waited after their errors already.
        .trigger_backoff(NoWait)
        .owns_stream(triggers::significant_changes(
            deployment_events,
            triggers::deployment,
        ))
        .owns_stream(triggers::significant_changes(
            service_events,
            Fingerprint::fingerprint,
        ))
        .owns_stream(triggers::significant_changes(hpa_events, triggers::hpa));
    let mut service_monitors = None;
    if own_service_monitors {
        let (store, events) =
            cached_watch::<PartialObjectMeta<ServiceMonitor>>(scope, &client, |_| {});
        service_monitors = Some(store);
        controller = controller.owns_stream(triggers::significant_changes(
            events,
            Fingerprint::fingerprint,
        ));
    }
    // The status step waits for the HPA and pod caches; one waiter per store here, as
    // kube-runtime's store readiness wakes only the last of its waiters (see below).
    let (synced_tx, status_caches_synced) = tokio::sync::watch::channel(false);
    let status_caches = {
        let (hpas, pods) = (hpas.clone(), pods.clone());
        async move {
            let (hpas_ready, pods_ready) =
                futures::join!(hpas.wait_until_ready(), pods.wait_until_ready());
            if hpas_ready.is_ok() && pods_ready.is_ok() {
                synced_tx.send_replace(true);
            }
        }
    };
    ctx.last_applied.set_caches(Some(ChildCaches {
        deployments,
        services,
        hpas,
        pods,
        service_monitors,
        status_caches_synced,
    }));

    // Ready once the controller has the CRs: at its first reconcile, or at once when there is
    // none to reconcile. Not `store.wait_until_ready()` beside the controller: kube-runtime's
    // store readiness wakes only the last of its waiters, so a second waiter can leave the
    // controller's own runner asleep forever (seen on a real API server).
    let controller = controller
        .graceful_shutdown_on(stop)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| {
            ctx.forget_deleted(&cache);
            // A CR deleted between its trigger and its reconcile is not found in the cache,
            // which the controller has by then (it holds reconciles until its store is ready).
            let reconciled = matches!(
                result,
                Ok(_)
                    | Err(kube::runtime::controller::Error::ReconcilerFailed(..)
                        | kube::runtime::controller::Error::ObjectNotFound(..))
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
    // The pods' watch only fills its cache: it ends with the controller.
    tokio::select! {
        _ = async { futures::join!(controller, ready_if_no_crs(&client, &admin, scope), status_caches) } => {}
        () = pod_events => {}
    }
}

/// Most reconciles running at once.
const RECONCILE_CONCURRENCY: u16 = 8;

/// How long a reconcile waits for more changes of the same CR before it runs.
const DEBOUNCE: Duration = Duration::from_millis(500);

/// Objects per page of a watch's initial list: the peak memory of a (re)list is one page of
/// JSON and its decoded objects, not the whole list.
const WATCH_PAGE_SIZE: u32 = 100;

/// A watch of the children of kind `K` (by the `managed-by` label) over `scope` that fills a
/// cache as it is polled: the cache and the stream of its events. `trim` takes out of each object
/// what the operator never reads.
pub(super) fn cached_watch<K>(
    scope: &WatchScope,
    client: &Client,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl futures::Stream<Item = std::result::Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
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
    // Only the API server reads managedFields; in the cache they would be most of its memory.
    let events = scoped_watcher(scope, client, &config, trim, &store)
        .modify(|child| child.meta_mut().managed_fields = None)
        .reflect(writer);
    (store, events)
}

/// Mark the controller ready when there is no SandboxService at all, so no reconcile will.
/// Asked again every [`NO_CRS_RECHECK`] until the controller is ready: a CR listed here may be
/// deleted before the controller gets to it, leaving no reconcile to make it ready. A failed list
/// is retried with the reconcile backoff.
async fn ready_if_no_crs(client: &Client, admin: &AdminState, scope: &WatchScope) {
    let apis = scope.apis::<SandboxService>(client);
    let one = ListParams::default().limit(1);
    let mut failures = 0;
    while !admin.is_ready() {
        let lists =
            futures::future::try_join_all(apis.iter().map(|crs| crs.list_metadata(&one))).await;
        match lists {
            Ok(lists) => {
                failures = 0;
                if lists.iter().all(|list| list.items.is_empty()) && !admin.is_ready() {
                    info!("no SandboxService exists; controller ready");
                    admin.set_ready(true);
                    return;
                }
                tokio::time::sleep(NO_CRS_RECHECK).await;
            }
            Err(error) => {
                failures += 1;
                warn!(%error, attempt = failures, "listing SandboxServices failed");
                tokio::time::sleep(backoff(failures)).await;
            }
        }
    }
}

/// How often [`ready_if_no_crs`] looks again while the controller is not ready.
const NO_CRS_RECHECK: Duration = Duration::from_secs(1);
