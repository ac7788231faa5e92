//! Watches Pods, Services and ServiceMonitors, and after every change makes the processes,
//! spreaders and scrape targets match them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::reflector::{self, Store};
use kube::runtime::utils::Backoff;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, warn};

use crate::kubelet::{self, PodHandle, Runtime};
use crate::labels::Labels;
use crate::probe::http_client;
use crate::proxy::ServiceProxy;
use crate::scrape::{self, Writer};
use crate::state::Registry;
use crate::{Args, Error};

/// Retries a failed watch every second: the test bed is local, and the ServiceMonitor CRD comes and
/// goes in the tests (kube's default backoff would wait up to 30 s).
struct EverySecond;

impl Iterator for EverySecond {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::from_secs(1))
    }
}

impl Backoff for EverySecond {
    fn reset(&mut self) {}
}

/// Runs until SIGTERM or Ctrl-C; the workload processes are killed when it returns.
pub async fn run(args: Args) -> Result<(), Error> {
    // Feature unification in `cargo test --workspace` can enable two rustls providers.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = Client::try_default().await.map_err(Error::Connect)?;
    let log_dir = args.state_dir.join("pods");
    let targets_dir = args.state_dir.join("targets");
    for dir in [&log_dir, &targets_dir] {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: "cannot create",
            path: dir.clone(),
            source,
        })?;
    }
    let http = http_client();
    let registry = Arc::new(Registry::with_endpoint_lag(Duration::from_millis(
        args.endpoint_lag_ms,
    )));
    serve_state(&args, registry.clone(), &log_dir).await?;

    let runtime = Arc::new(Runtime {
        workload: args.workload.clone(),
        log_dir,
        client: http.clone(),
        registry: registry.clone(),
    });
    let mut node = Node {
        runtime,
        pods: BTreeMap::new(),
        scrape: Writer::new(
            args.prometheus_config.clone(),
            targets_dir,
            args.prometheus_url.clone(),
            http,
        ),
    };

    let selected = watcher::Config::default().labels(&args.pod_selector);
    let (pods, pod_events) = watch(Api::<Pod>::all(client.clone()), selected.clone(), ());
    let (services, service_events) = watch(Api::<Service>::all(client.clone()), selected, ());
    let gvk = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    let monitor_kind = ApiResource::from_gvk(&gvk);
    let monitors_api = Api::<DynamicObject>::all_with(client, &monitor_kind);
    let (monitors, monitor_events) = watch(monitors_api, watcher::Config::default(), monitor_kind);
    let mut changes = stream::select_all([pod_events, service_events, monitor_events]);

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(Ok(())) => node.sync(&pods, &services, &monitors).await,
                Some(Err(err)) => debug!(%err, "watch failed; retrying"),
                None => break,
            },
            () = &mut shutdown => break,
        }
    }
    Ok(())
}

type Changes = futures::stream::BoxStream<'static, Result<(), watcher::Error>>;

/// A store of `api`'s objects and a stream that yields after each change to it.
fn watch<K>(api: Api<K>, config: watcher::Config, kind: K::DynamicType) -> (Store<K>, Changes)
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    let writer = reflector::store::Writer::new(kind);
    let store = writer.as_reader();
    let changes = reflector::reflector(writer, watcher(api, config))
        .backoff(EverySecond)
        .map_ok(|_| ())
        .boxed();
    (store, changes)
}

/// The stand-in's node: pods it runs, and where their targets go.
struct Node {
    runtime: Arc<Runtime>,
    pods: BTreeMap<String, PodHandle>,
    scrape: Writer,
}

impl Node {
    async fn sync(
        &mut self,
        pods: &Store<Pod>,
        services: &Store<Service>,
        monitors: &Store<DynamicObject>,
    ) {
        let mut live = BTreeSet::new();
        for pod in pods.state() {
            if !kubelet::runs(&pod) {
                continue;
            }
            let uid = pod.uid().unwrap_or_default();
            if !self.pods.contains_key(&uid)
                && let Some(handle) = PodHandle::start(&pod, &self.runtime)
            {
                self.pods.insert(uid.clone(), handle);
            }
            live.insert(uid);
        }
        self.pods.retain(|uid, handle| {
            let keep = live.contains(uid);
            if !keep {
                handle.terminate();
            }
            keep
        });

        let services = services.state();
        let selectors: BTreeMap<String, Labels> = services
            .iter()
            .filter_map(|service| {
                let selector = service
                    .spec
                    .as_ref()?
                    .selector
                    .clone()
                    .filter(|s| !s.is_empty())?;
                Some((
                    format!(
                        "{}/{}",
                        service.namespace().unwrap_or_default(),
                        service.name_any()
                    ),
                    selector,
                ))
            })
            .collect();
        let registry = &self.runtime.registry;
        registry.sync_services(selectors, |key, selector| {
            let (namespace, name) = key.split_once('/')?;
            ServiceProxy::start(
                namespace,
                name,
                selector,
                registry.clone(),
                self.runtime.client.clone(),
            )
            .inspect_err(|err| warn!(service = key, %err, "cannot listen for the Service"))
            .ok()
        });

        let jobs = scrape::jobs(&monitors.state(), &services, &registry.pods());
        self.scrape.write(&jobs).await;
    }
}

async fn serve_state(args: &Args, registry: Arc<Registry>, pod_logs: &Path) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Listen {
        addr: args.listen,
        source,
    })?;
    let addr_file = args.state_dir.join("standin.addr");
    std::fs::write(&addr_file, addr.to_string()).map_err(|source| Error::Io {
        what: "cannot write",
        path: addr_file,
        source,
    })?;
    let app = crate::state::router(registry, pod_logs);
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            warn!(%err, "state endpoint stopped");
        }
    });
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}
