//! What the stand-in runs, shared by the kubelet tasks, the spreaders, the scrape targets and
//! `GET /state`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use serde_json::{Value, json};

use crate::labels::{Labels, selects};
use crate::proxy::{Endpoints, ServiceProxy};

/// One pod's workload process, as the endpoints controller and Prometheus would see it.
#[derive(Debug)]
pub struct PodProcess {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: Labels,
    /// The pod's (only) container, for the `container` target label.
    pub container: String,
    /// Where the process listens, standing in for pod IP and container port.
    pub address: SocketAddr,
    ready: AtomicBool,
    /// When the pod's deletion was seen.
    terminating_since: Mutex<Option<Instant>>,
    restarts: AtomicU32,
}

impl PodProcess {
    pub fn new(
        namespace: String,
        name: String,
        uid: String,
        labels: Labels,
        container: String,
        address: SocketAddr,
    ) -> Self {
        Self {
            namespace,
            name,
            uid,
            labels,
            container,
            address,
            ready: AtomicBool::new(false),
            terminating_since: Mutex::new(None),
            restarts: AtomicU32::new(0),
        }
    }

    /// Whether the readiness probe passes.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the pod is being deleted.
    pub fn is_terminating(&self) -> bool {
        self.terminating_since.lock().unwrap().is_some()
    }

    pub fn start_terminating(&self) {
        self.terminating_since
            .lock()
            .unwrap()
            .get_or_insert_with(Instant::now);
    }

    pub fn count_restart(&self) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
    }

    /// A Service endpoint: ready, and not terminating for longer than `endpoint_lag` (the time
    /// a deletion takes to reach kube-proxy, which keeps routing to the pod until then).
    pub fn serves(&self, endpoint_lag: Duration) -> bool {
        let since = *self.terminating_since.lock().unwrap();
        self.is_ready() && since.is_none_or(|since| since.elapsed() < endpoint_lag)
    }

    fn to_json(&self) -> Value {
        json!({
            "namespace": self.namespace,
            "name": self.name,
            "address": self.address.to_string(),
            "ready": self.is_ready(),
            "terminating": self.is_terminating(),
            "restarts": self.restarts.load(Ordering::Relaxed),
        })
    }
}

/// The running pods (terminating ones until their process exits) and the Services' spreaders.
#[derive(Default)]
pub struct Registry {
    pods: RwLock<BTreeMap<String, Arc<PodProcess>>>,
    services: RwLock<BTreeMap<String, Arc<ServiceProxy>>>,
    endpoint_lag: Duration,
}

impl Registry {
    /// A registry whose Services keep routing to a deleted pod for `endpoint_lag`.
    pub fn with_endpoint_lag(endpoint_lag: Duration) -> Self {
        Self {
            endpoint_lag,
            ..Self::default()
        }
    }

    /// How long `pod` stays an endpoint of its Services after its deletion was seen.
    pub fn lag_left(&self, pod: &PodProcess) -> Duration {
        let since = *pod.terminating_since.lock().unwrap();
        since.map_or(Duration::ZERO, |since| {
            self.endpoint_lag.saturating_sub(since.elapsed())
        })
    }

    pub fn insert_pod(&self, pod: Arc<PodProcess>) {
        self.pods.write().unwrap().insert(pod.uid.clone(), pod);
    }

    pub fn remove_pod(&self, uid: &str) {
        self.pods.write().unwrap().remove(uid);
    }

    pub fn pods(&self) -> Vec<Arc<PodProcess>> {
        self.pods.read().unwrap().values().cloned().collect()
    }

    /// Keeps exactly the spreaders named in `keep` (`namespace/name`), adding with `start`.
    pub fn sync_services(
        &self,
        keep: BTreeMap<String, Labels>,
        start: impl Fn(&str, Labels) -> Option<Arc<ServiceProxy>>,
    ) {
        let mut services = self.services.write().unwrap();
        services.retain(|key, _| keep.contains_key(key));
        for (key, selector) in keep {
            match services.get(&key) {
                Some(proxy) => proxy.set_selector(selector),
                None => {
                    if let Some(proxy) = start(&key, selector) {
                        services.insert(key, proxy);
                    }
                }
            }
        }
    }

    fn to_json(&self) -> Value {
        let services: Vec<Value> = self
            .services
            .read()
            .unwrap()
            .values()
            .map(|proxy| proxy.to_json(self))
            .collect();
        let pods: Vec<Value> = self.pods().iter().map(|pod| pod.to_json()).collect();
        json!({ "services": services, "pods": pods })
    }
}

impl Endpoints for Registry {
    /// Addresses of the ready, not terminating pods in `namespace` that `selector` selects.
    fn endpoints(&self, namespace: &str, selector: &Labels) -> Vec<SocketAddr> {
        self.pods
            .read()
            .unwrap()
            .values()
            .filter(|pod| pod.namespace == namespace && selects(selector, &pod.labels))
            .filter(|pod| pod.serves(self.endpoint_lag))
            .map(|pod| pod.address)
            .collect()
    }
}

/// `GET /state`: every spreader and pod process as JSON, and where the pods' logs are
/// (`NAMESPACE_POD.log`, kept after the pod is gone).
pub fn router(registry: Arc<Registry>, pod_logs: &Path) -> Router {
    let pod_logs = pod_logs.display().to_string();
    Router::new()
        .route(
            "/state",
            get(|State(registry): State<Arc<Registry>>| async move {
                let mut state = registry.to_json();
                state["pod_logs"] = json!(pod_logs);
                axum::Json(state)
            }),
        )
        .with_state(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_selector_needs_every_label() {
        let pod = labels(&[("app", "a"), ("tier", "web")]);
        assert!(selects(&labels(&[("app", "a")]), &pod));
        assert!(selects(&labels(&[]), &pod));
        assert!(!selects(&labels(&[("app", "b")]), &pod));
        assert!(!selects(&labels(&[("app", "a"), ("zone", "x")]), &pod));
    }

    #[test]
    fn endpoints_are_ready_pods_of_the_namespace_not_terminating() {
        let registry = Registry::default();
        let pod = |ns: &str, name: &str, port: u16| {
            let pod = Arc::new(PodProcess::new(
                ns.into(),
                name.into(),
                format!("{ns}-{name}"),
                labels(&[("app", "a")]),
                "workload".into(),
                SocketAddr::from(([127, 0, 0, 1], port)),
            ));
            registry.insert_pod(pod.clone());
            pod
        };
        let ready = pod("ns", "ready", 1);
        let terminating = pod("ns", "terminating", 2);
        pod("ns", "starting", 3);
        let elsewhere = pod("other", "ready", 4);
        for p in [&ready, &terminating, &elsewhere] {
            p.set_ready(true);
        }
        terminating.start_terminating();
        let selector = labels(&[("app", "a")]);
        assert_eq!(
            registry.endpoints("ns", &selector),
            vec![SocketAddr::from(([127, 0, 0, 1], 1))]
        );
        ready.set_ready(false);
        assert!(registry.endpoints("ns", &selector).is_empty());
    }

    #[test]
    fn a_deleted_pod_stays_an_endpoint_for_the_lag() {
        let registry = Registry::with_endpoint_lag(Duration::from_secs(3600));
        let pod = Arc::new(PodProcess::new(
            "ns".into(),
            "leaving".into(),
            "uid".into(),
            labels(&[("app", "a")]),
            "workload".into(),
            SocketAddr::from(([127, 0, 0, 1], 1)),
        ));
        registry.insert_pod(pod.clone());
        pod.set_ready(true);
        pod.start_terminating();
        assert_eq!(registry.endpoints("ns", &labels(&[("app", "a")])).len(), 1);
        assert!(!pod.serves(Duration::ZERO));
    }
}
