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

use kube::error::DiscoveryError;

use super::watch_backoff::WatchBackoff;
use crate::children::ServiceMonitor;
use crate::error::is_not_found;
use crate::names::SERVICE_MONITOR_CRD;
use crate::reconcile::doubling;

/// How often to ask discovery again while it does not yet agree with the CRD watch.
const DISCOVERY_RECHECK: Duration = Duration::from_secs(1);

/// Completes once the ServiceMonitor kind's being served differs from `installed`: the CRD's
/// `Established` condition changed and discovery (what the controller decides by) agrees, so
/// a restart never meets the old answer again. A failing watch (e.g. RBAC without the CRD
/// rule) is retried with backoff and logged; it never stops the controller.
pub async fn service_monitor_crd_changed(client: &Client, installed: bool) {
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let mut changes = watch_object(crds, SERVICE_MONITOR_CRD)
        .backoff(WatchBackoff::new())
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
///
/// Only a definite "no" counts as not installed: the group or the kind is not served. Any other
/// failure (a timeout, 429, 5xx) is asked again with backoff until discovery answers, because
/// starting without the ServiceMonitor watch on a transient error would make the CRD watch
/// disagree and restart the controller, relisting everything, as soon as discovery recovers.
pub async fn service_monitor_crd_installed(client: &Client) -> bool {
    let gvk = kube::core::GroupVersionKind::gvk(
        &ServiceMonitor::group(&()),
        &ServiceMonitor::version(&()),
        &ServiceMonitor::kind(&()),
    );
    let mut attempt = 0;
    loop {
        match kube::discovery::pinned_kind(client, &gvk).await {
            Ok(_) => return true,
            Err(error) if not_served(&error) => {
                warn!(%error, "ServiceMonitor CRD not found; ServiceMonitors are not watched and SandboxServices that want one report Degraded");
                return false;
            }
            Err(error) => {
                attempt += 1;
                let retry_in = discovery_retry(attempt);
                warn!(%error, attempt, retry_in_s = retry_in.as_secs_f64(), "discovery of the ServiceMonitor kind failed; asking again");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

/// Whether discovery's `error` says the kind is not served, rather than that it could not tell.
fn not_served(error: &kube::Error) -> bool {
    matches!(
        error,
        kube::Error::Discovery(DiscoveryError::MissingKind(_) | DiscoveryError::MissingApiGroup(_))
    ) || is_not_found(error)
}

/// Wait before asking discovery again after failure number `attempt`: 1 s doubling to 30 s.
fn discovery_retry(attempt: u32) -> Duration {
    doubling(Duration::from_secs(1), Duration::from_secs(30), attempt)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A client whose discovery of `monitoring.coreos.com/v1` answers `statuses` in turn, then
    /// the group with the ServiceMonitor kind; counts the requests.
    fn discovery(statuses: &'static [u16]) -> (Client, Arc<AtomicUsize>) {
        let asked = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&asked);
        let service = tower::service_fn(move |_request: http::Request<kube::client::Body>| {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let (status, body) = match statuses.get(n) {
                Some(&status) => (
                    status,
                    format!(r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","code":{status}}}"#),
                ),
                None => (
                    200,
                    r#"{"kind":"APIResourceList","groupVersion":"monitoring.coreos.com/v1","resources":[{"name":"servicemonitors","singularName":"servicemonitor","namespaced":true,"kind":"ServiceMonitor","verbs":["get","list","watch"]}]}"#.to_string(),
                ),
            };
            let response = http::Response::builder()
                .status(status)
                .body(kube::client::Body::from(body.into_bytes()))
                .unwrap();
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        (Client::new(service, "default"), asked)
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_discovery_is_asked_again_until_it_answers() {
        let (client, asked) = discovery(&[503, 429, 500]);
        assert!(service_monitor_crd_installed(&client).await);
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn only_a_group_that_is_not_served_means_not_installed() {
        let (client, asked) = discovery(&[404]);
        assert!(!service_monitor_crd_installed(&client).await);
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retries_double_up_to_half_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|n| discovery_retry(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
