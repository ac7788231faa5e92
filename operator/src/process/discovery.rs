//! Whether the cluster serves ServiceMonitors, and when that changes: the controller watches
//! ServiceMonitors only while their CRD is installed.

use futures::StreamExt;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::watch_object;
use kube::{Client, Resource};
use std::time::Duration;
use tracing::warn;

use crate::build::ServiceMonitor;
use crate::names::SERVICE_MONITOR_CRD;

/// How often to ask discovery again while it does not yet agree with the CRD watch.
const DISCOVERY_RECHECK: Duration = Duration::from_secs(1);

/// Completes once the ServiceMonitor kind's being served differs from `installed`: the CRD's
/// `Established` condition changed and discovery (what the controller decides by) agrees, so
/// a restart never meets the old answer again. A failing watch (e.g. RBAC without the CRD
/// rule) is retried with backoff and logged; it never stops the controller.
pub async fn service_monitor_crd_changed(client: &Client, installed: bool) {
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
pub async fn service_monitor_crd_installed(client: &Client) -> bool {
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
