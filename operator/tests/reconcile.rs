//! `reconcile` against an in-memory API server (kube-fake-client). The fake has no watches, so
//! the tests call `reconcile` and `error_policy` directly, the way the Controller would.
//!
//! Every request the operator sends goes through a recording layer, so each test asserts the
//! exact API calls of a reconcile: what a cluster's audit log would show.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use kube_fake_client::{ClientBuilder, interceptor};
use operator::api::SandboxService;
use operator::children::ServiceMonitor;
use operator::names::FIELD_MANAGER;
use operator::reconcile::last_applied::ChildCaches;
use operator::reconcile::status::{DEGRADED, PROGRESSING, READY};
use operator::reconcile::{
    CRD_RECHECK_INTERVAL, Context, RECONCILE_TIMEOUT, RESYNC_INTERVAL, error_policy, reconcile,
    retry_delay,
};
use operator::telemetry::metrics::Metrics;

const NAMESPACE: &str = "sandbox";
const NAME: &str = "demo";
const UID: &str = "uid-demo";

/// One request as the API server would log it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Call {
    method: String,
    path: String,
    query: String,
}

impl Call {
    /// `METHOD path`, with generated Event names cut off.
    fn describe(&self) -> String {
        let path = match self.path.split_once("/events/") {
            Some((collection, _)) => format!("{collection}/events/<name>"),
            None => self.path.clone(),
        };
        format!("{} {path}", self.method)
    }
}

type Log = Arc<Mutex<Vec<Call>>>;

/// Wrap `inner` so every request is recorded before it is served.
fn recording(inner: Client) -> (Client, Log) {
    let log: Log = Arc::default();
    let recorder = log.clone();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        recorder.lock().unwrap().push(Call {
            method: request.method().to_string(),
            path: request.uri().path().to_string(),
            query: normalized_query(request.uri().query().unwrap_or_default()),
        });
        let inner = inner.clone();
        async move { inner.send(request).await }
    });
    (Client::new(service, NAMESPACE), log)
}

/// Query parameters sorted, so the assertion does not depend on kube's parameter order.
fn normalized_query(query: &str) -> String {
    let mut pairs: Vec<&str> = query.split('&').filter(|p| !p.is_empty()).collect();
    pairs.sort_unstable();
    pairs.join("&")
}

/// The value of one sample of the operator's `/metrics` text, as Prometheus would scrape it.
fn metric(metrics: &Metrics, sample: &str) -> Option<f64> {
    metrics.render().lines().find_map(|line| {
        let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
        value.parse().ok()
    })
}

fn take(log: &Log) -> Vec<Call> {
    std::mem::take(&mut *log.lock().unwrap())
}

fn cr(spec: &str) -> SandboxService {
    serde_yaml::from_str(&format!(
        "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {{name: {NAME}, namespace: {NAMESPACE}, uid: uid-demo, generation: 1}}\nspec: {spec}"
    ))
    .unwrap()
}

struct Harness {
    client: Client,
    log: Log,
    ctx: Arc<Context>,
}

impl Harness {
    async fn new(builder: ClientBuilder, cr: SandboxService) -> Self {
        let fake = builder
            .with_resource::<SandboxService>()
            .with_status_subresource::<SandboxService>()
            .with_return_managed_fields()
            .with_object(cr)
            .build()
            .await
            .unwrap();
        let (client, log) = recording(fake);
        let ctx = Arc::new(Context::new(
            client.clone(),
            Metrics::new(),
            Some("test".into()),
        ));
        Self { client, log, ctx }
    }

    /// Reconcile the CR as the API server currently has it (the Controller's cache would).
    async fn reconcile(&self) -> (operator::Result<Action>, Vec<Call>, Arc<SandboxService>) {
        let cr = Arc::new(self.crs().get(NAME).await.unwrap());
        let (result, calls) = self.reconcile_cached(&cr).await;
        (result, calls, cr)
    }

    /// Reconcile `cached`, as a Controller whose cache lags behind the API server would.
    async fn reconcile_cached(
        &self,
        cached: &Arc<SandboxService>,
    ) -> (operator::Result<Action>, Vec<Call>) {
        take(&self.log);
        let result = reconcile(cached.clone(), self.ctx.clone()).await;
        (result, take(&self.log))
    }

    /// Fill the operator's child caches from the API server, as its watches would have them
    /// by now (the fake API server has no watches).
    async fn cache_children(&self) {
        let caches = ChildCaches {
            deployments: cached(self.api()).await,
            services: cached(self.api()).await,
            hpas: cached(self.api()).await,
            // The fake API server runs no pods.
            pods: Writer::default().as_reader(),
            service_monitors: Some(cached_metadata(self.api::<ServiceMonitor>()).await),
            status_caches_synced: tokio::sync::watch::channel(true).1,
        };
        self.ctx.last_applied.set_caches(Some(caches));
        take(&self.log);
    }

    fn crs(&self) -> Api<SandboxService> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    fn api<K>(&self) -> Api<K>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
    {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    async fn events(&self) -> Vec<Event> {
        let events = self
            .api::<Event>()
            .list(&ListParams::default())
            .await
            .unwrap();
        take(&self.log);
        events.items
    }

    async fn condition(&self, type_: &str) -> (String, String, String) {
        let cr = self.crs().get(NAME).await.unwrap();
        take(&self.log);
        let condition = cr
            .status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.type_ == type_)
            .unwrap();
        (condition.status, condition.reason, condition.message)
    }
}

/// A watch cache holding every object `api` lists.
async fn cached<K>(api: Api<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    let mut writer = Writer::default();
    let store = writer.as_reader();
    for object in api.list(&ListParams::default()).await.unwrap() {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    store
}

/// A metadata-only watch cache of what `api` lists, as the operator keeps ServiceMonitors.
async fn cached_metadata<K>(api: Api<K>) -> Store<kube::api::PartialObjectMeta<K>>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + 'static,
{
    let mut writer = Writer::default();
    let store = writer.as_reader();
    for object in api.list_metadata(&ListParams::default()).await.unwrap() {
        writer.apply_watcher_event(&watcher::Event::Apply(object));
    }
    store
}

fn with_service_monitor_crd() -> ClientBuilder {
    ClientBuilder::new().with_resource::<ServiceMonitor>()
}

const SSA_QUERY: &str = "fieldManager=sandbox-operator&force=true";

fn apply_call(path: &str) -> Call {
    Call {
        method: "PATCH".into(),
        path: format!("/{path}"),
        query: SSA_QUERY.into(),
    }
}

fn child_applies(with_service_monitor: bool) -> Vec<Call> {
    let mut calls = vec![
        apply_call("apis/apps/v1/namespaces/sandbox/deployments/demo"),
        apply_call("api/v1/namespaces/sandbox/services/demo"),
        apply_call("apis/autoscaling/v2/namespaces/sandbox/horizontalpodautoscalers/demo"),
    ];
    if with_service_monitor {
        calls.push(apply_call(
            "apis/monitoring.coreos.com/v1/namespaces/sandbox/servicemonitors/demo",
        ));
    }
    calls
}

fn status_call() -> Call {
    apply_call("apis/sandbox.perf.dev/v1alpha1/namespaces/sandbox/sandboxservices/demo/status")
}

fn event_call() -> Call {
    Call {
        method: "POST".into(),
        path: "/apis/events.k8s.io/v1/namespaces/sandbox/events".into(),
        query: String::new(),
    }
}

fn assert_owned_and_managed<K: Resource + ResourceExt>(object: &K) {
    let owners = object.owner_references();
    assert_eq!(owners.len(), 1, "{}", object.name_any());
    assert_eq!(owners[0].uid, "uid-demo");
    assert_eq!(owners[0].kind, "SandboxService");
    assert_eq!(owners[0].controller, Some(true));
    let managers: Vec<&str> = object
        .managed_fields()
        .iter()
        .filter_map(|entry| entry.manager.as_deref())
        .collect();
    assert_eq!(managers, [FIELD_MANAGER], "{}", object.name_any());
}

#[tokio::test]
async fn first_reconcile_applies_four_children_then_status_and_one_event() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;

    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(result.unwrap(), Action::requeue(RESYNC_INTERVAL));
    let mut expected = child_applies(true);
    expected.extend([status_call(), event_call()]);
    assert_eq!(
        calls, expected,
        "6 calls: 4 applies, 1 status patch, 1 Event"
    );

    let deployment = harness.api::<Deployment>().get(NAME).await.unwrap();
    assert_owned_and_managed(&deployment);
    assert_eq!(
        deployment.spec.as_ref().unwrap().replicas,
        None,
        "the HPA owns replicas"
    );
    assert_owned_and_managed(&harness.api::<Service>().get(NAME).await.unwrap());
    assert_owned_and_managed(
        &harness
            .api::<HorizontalPodAutoscaler>()
            .get(NAME)
            .await
            .unwrap(),
    );
    assert_owned_and_managed(&harness.api::<ServiceMonitor>().get(NAME).await.unwrap());

    let status = harness.crs().get(NAME).await.unwrap().status.unwrap();
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(
        status.selector.as_deref(),
        Some("app.kubernetes.io/instance=demo,app.kubernetes.io/name=workload")
    );
    // The fake runs no Deployment controller: no pods, rollout pending.
    assert_eq!(harness.condition(READY).await.0, "False");
    assert_eq!(harness.condition(PROGRESSING).await.0, "True");
    assert_eq!(harness.condition(DEGRADED).await.0, "False");

    let events = harness.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].type_.as_deref(), Some("Normal"));
    assert_eq!(events[0].reason.as_deref(), Some("Applied"));
    assert_eq!(
        events[0].regarding.as_ref().unwrap().name.as_deref(),
        Some(NAME)
    );
    assert_eq!(
        metric(
            &harness.ctx.metrics,
            "sandbox_operator_reconciliations_total"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn unchanged_second_reconcile_applies_children_and_writes_no_status() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    harness.reconcile().await.0.unwrap();
    let status_before = harness.crs().get(NAME).await.unwrap().status;

    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(result.unwrap(), Action::requeue(RESYNC_INTERVAL));
    assert_eq!(
        calls,
        child_applies(true),
        "without watch caches (as in a new process), one apply per child and nothing else"
    );
    assert_eq!(harness.crs().get(NAME).await.unwrap().status, status_before);
    assert_eq!(harness.events().await.len(), 1, "no new Event");
}

#[tokio::test]
async fn with_the_children_watched_only_what_changed_is_applied() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    harness.reconcile().await.0.unwrap();
    harness.cache_children().await;

    let (result, calls, _) = harness.reconcile().await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC_INTERVAL));
    assert_eq!(calls, vec![], "nothing changed: not one call");

    // The HPA scales the Deployment: /scale moves its replicas and its generation.
    let generation = harness
        .api::<Deployment>()
        .get(NAME)
        .await
        .unwrap()
        .metadata
        .generation
        .unwrap_or(1);
    let scale = serde_json::json!({
        "metadata": {"generation": generation + 1},
        "spec": {"replicas": 3},
    });
    harness
        .api::<Deployment>()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(scale))
        .await
        .unwrap();
    harness.cache_children().await;
    let scaled = harness.api::<Deployment>().get(NAME).await.unwrap();
    assert_eq!(scaled.metadata.generation, Some(generation + 1));
    let (_, calls, _) = harness.reconcile().await;
    assert_eq!(calls, vec![], "a scale is the HPA's, not drift");

    // Someone edits the Service: it alone is applied again.
    let edit = serde_json::json!({"spec": {"sessionAffinity": "ClientIP"}});
    harness
        .api::<Service>()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(edit))
        .await
        .unwrap();
    harness.cache_children().await;
    let (_, calls, _) = harness.reconcile().await;
    assert_eq!(
        calls,
        vec![apply_call("api/v1/namespaces/sandbox/services/demo")]
    );
}

#[tokio::test]
async fn missing_service_monitor_crd_applies_the_rest_and_degrades_once() {
    // No ServiceMonitor registered: the fake answers 404, as a cluster without the CRD does.
    let harness = Harness::new(ClientBuilder::new(), cr("{}")).await;

    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(
        result.unwrap(),
        Action::requeue(CRD_RECHECK_INTERVAL),
        "a slow recheck, not a hot loop"
    );
    let mut expected = child_applies(true);
    expected.extend([status_call(), event_call(), event_call()]);
    assert_eq!(calls, expected, "Applied + ServiceMonitorCrdMissing Events");
    assert!(harness.api::<Deployment>().get(NAME).await.is_ok());
    assert!(harness.api::<Service>().get(NAME).await.is_ok());
    assert!(
        harness
            .api::<HorizontalPodAutoscaler>()
            .get(NAME)
            .await
            .is_ok()
    );
    let (status, reason, message) = harness.condition(DEGRADED).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "ServiceMonitorCrdMissing")
    );
    assert!(
        message.contains("spec.monitoring.serviceMonitor: false"),
        "{message}"
    );
    let warnings: Vec<_> = harness
        .events()
        .await
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .collect();
    assert_eq!(warnings.len(), 1);
    assert_eq!(
        warnings[0].reason.as_deref(),
        Some("ServiceMonitorCrdMissing")
    );

    // The next reconcile retries the ServiceMonitor but repeats neither status nor Event.
    let (result, calls, _) = harness.reconcile().await;
    assert_eq!(result.unwrap(), Action::requeue(CRD_RECHECK_INTERVAL));
    assert_eq!(calls, child_applies(true));
}

/// `event` is a Warning with `reason` whose note mentions `mentions`.
fn assert_warning(event: &Event, reason: &str, mentions: &str) {
    assert_eq!(event.type_.as_deref(), Some("Warning"), "{event:?}");
    assert_eq!(event.reason.as_deref(), Some(reason), "{event:?}");
    let note = event.note.as_deref().unwrap_or_default();
    assert!(
        note.contains(mentions),
        "{note:?} does not mention {mentions:?}"
    );
}

/// A default CR whose Deployment patches fail with a 500, as when etcd is unavailable.
async fn harness_with_failing_deployment_patches() -> Harness {
    let failing_deployments = interceptor::Funcs::new().patch(|ctx| {
        if ctx.patch.get("kind").and_then(|k| k.as_str()) == Some("Deployment") {
            return Err(kube_fake_client::Error::Internal(
                "etcd is unavailable".into(),
            ));
        }
        Ok(None)
    });
    Harness::new(
        with_service_monitor_crd().with_interceptor_funcs(failing_deployments),
        cr("{}"),
    )
    .await
}

#[tokio::test]
async fn api_error_ends_in_a_warning_event_and_a_backed_off_requeue() {
    let harness = harness_with_failing_deployment_patches().await;

    let (result, calls, cr) = harness.reconcile().await;

    let error = result.unwrap_err();
    assert_eq!(error.category(), "ApplyFailed");
    assert!(
        error.to_string().contains("Deployment sandbox/demo"),
        "{error}"
    );
    assert_eq!(
        calls,
        vec![
            apply_call("apis/apps/v1/namespaces/sandbox/deployments/demo"),
            event_call()
        ],
        "stop at the first failure; no status write"
    );
    let events = harness.events().await;
    assert_eq!(events.len(), 1);
    assert_warning(&events[0], "ApplyFailed", "etcd is unavailable");
    assert_eq!(
        metric(
            &harness.ctx.metrics,
            r#"sandbox_operator_reconcile_failures_total{category="ApplyFailed"}"#
        ),
        Some(1.0)
    );

    assert_eq!(
        error_policy(cr.clone(), &error, harness.ctx.clone()),
        Action::requeue(retry_delay(1, UID))
    );
    assert_eq!(
        error_policy(cr, &error, harness.ctx.clone()),
        Action::requeue(retry_delay(2, UID)),
        "consecutive failures back off"
    );

    // The retry meets the same error: counted, but no second Warning (a write per retry
    // would add to an outage's load).
    let (result, calls, _) = harness.reconcile().await;
    assert_eq!(result.unwrap_err().category(), "ApplyFailed");
    assert_eq!(
        calls,
        vec![apply_call(
            "apis/apps/v1/namespaces/sandbox/deployments/demo"
        )]
    );
    assert_eq!(harness.events().await.len(), 1);
    assert_eq!(
        metric(
            &harness.ctx.metrics,
            r#"sandbox_operator_reconcile_failures_total{category="ApplyFailed"}"#
        ),
        Some(2.0)
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_request_fails_the_reconcile_at_its_deadline() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    // A connection that takes the Deployment's apply and never answers, without closing.
    let inner = harness.client.clone();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let inner = inner.clone();
        async move {
            if request.uri().path().contains("/deployments/") {
                std::future::pending::<()>().await;
            }
            inner.send(request).await
        }
    });
    let ctx = Arc::new(Context::new(
        Client::new(service, NAMESPACE),
        Metrics::new(),
        None,
    ));
    let cr = Arc::new(harness.crs().get(NAME).await.unwrap());
    take(&harness.log);

    let started = tokio::time::Instant::now();
    let error = reconcile(cr.clone(), ctx.clone()).await.unwrap_err();

    assert_eq!(error.category(), "ReconcileTimeout");
    assert_eq!(started.elapsed().as_secs(), RECONCILE_TIMEOUT.as_secs());
    let events = harness.events().await;
    assert_eq!(events.len(), 1);
    assert_warning(&events[0], "ReconcileTimeout", "an API request hung");
    assert_eq!(
        error_policy(cr, &error, ctx),
        Action::requeue(retry_delay(1, UID)),
        "retried like any failure"
    );
}

#[tokio::test]
async fn invalid_spec_degrades_names_the_field_and_waits_for_a_change() {
    // minReplicas > maxReplicas: the CRD's CEL rule would refuse it; this CR slipped past.
    let harness = Harness::new(
        with_service_monitor_crd(),
        cr("{autoscaling: {minReplicas: 5, maxReplicas: 2}}"),
    )
    .await;

    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(calls, vec![status_call(), event_call()], "nothing applied");
    let (status, reason, message) = harness.condition(DEGRADED).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "InvalidSpec"));
    assert!(
        message.contains("spec.autoscaling.maxReplicas"),
        "{message}"
    );
    let events = harness.events().await;
    assert_warning(&events[0], "InvalidSpec", "spec.autoscaling.maxReplicas");
    assert!(harness.api::<Deployment>().get(NAME).await.is_err());

    let (result, calls, _) = harness.reconcile().await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        calls,
        vec![],
        "no loop: an unchanged invalid CR costs no calls"
    );
}

#[tokio::test]
async fn an_api_server_too_old_for_the_children_degrades_every_cr_and_applies_nothing() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    harness.ctx.server_support.assume_minor(29);

    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(
        result.unwrap(),
        Action::requeue(operator::reconcile::UNSUPPORTED_SERVER_RECHECK)
    );
    // It asks the server's version again (it may have been upgraded); the fake has none to give.
    let version = Call {
        method: "GET".into(),
        path: "/version".into(),
        query: String::new(),
    };
    assert_eq!(calls, vec![version.clone(), status_call(), event_call()]);
    let (status, reason, message) = harness.condition(DEGRADED).await;
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("True", "UnsupportedKubernetesVersion")
    );
    assert!(
        message.contains(
            "Kubernetes 1.29; this operator needs 1.30 or later for: the preStop sleep action"
        ),
        "{message}"
    );
    let events = harness.events().await;
    assert_warning(&events[0], "UnsupportedKubernetesVersion", "preStop sleep");
    assert!(harness.api::<Deployment>().get(NAME).await.is_err());
    let (result, calls, _) = harness.reconcile().await;
    assert!(result.is_ok());
    assert_eq!(calls, vec![version], "an unchanged verdict writes nothing");

    // Upgraded: the next reconcile applies the children.
    harness.ctx.server_support.assume_minor(30);
    let (result, calls, _) = harness.reconcile().await;
    assert_eq!(result.unwrap(), Action::requeue(RESYNC_INTERVAL));
    assert!(calls.starts_with(&child_applies(true)), "{calls:?}");
}

#[tokio::test]
async fn switching_monitoring_off_deletes_only_the_owned_service_monitor() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    harness.reconcile().await.0.unwrap();
    assert!(harness.api::<ServiceMonitor>().get(NAME).await.is_ok());

    harness
        .crs()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"monitoring": {"serviceMonitor": false}}})),
        )
        .await
        .unwrap();
    let (result, calls, _) = harness.reconcile().await;

    assert_eq!(result.unwrap(), Action::requeue(RESYNC_INTERVAL));
    let sm_path = "/apis/monitoring.coreos.com/v1/namespaces/sandbox/servicemonitors/demo";
    let described: Vec<String> = calls.iter().map(Call::describe).collect();
    assert_eq!(
        described,
        [
            "PATCH /apis/apps/v1/namespaces/sandbox/deployments/demo".to_string(),
            "PATCH /api/v1/namespaces/sandbox/services/demo".to_string(),
            "PATCH /apis/autoscaling/v2/namespaces/sandbox/horizontalpodautoscalers/demo"
                .to_string(),
            format!("GET {sm_path}"),
            format!("DELETE {sm_path}"),
            "PATCH /apis/sandbox.perf.dev/v1alpha1/namespaces/sandbox/sandboxservices/demo/status"
                .to_string(),
            // The Recorder folds the repeated "Applied" into a series of the first Event.
            "PATCH /apis/events.k8s.io/v1/namespaces/sandbox/events/<name>".to_string(),
            "POST /apis/events.k8s.io/v1/namespaces/sandbox/events".to_string(),
        ],
        "new generation: Applied (again) and ServiceMonitorDeleted Events"
    );
    assert!(harness.api::<ServiceMonitor>().get(NAME).await.is_err());

    // Steady state with monitoring off: 3 applies and one GET finding nothing.
    let (_, calls, _) = harness.reconcile().await;
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[3].describe(), format!("GET {sm_path}"));
}

#[tokio::test]
async fn a_service_monitor_owned_by_someone_else_is_left_alone() {
    let mut foreign: ServiceMonitor = serde_yaml::from_str(&format!(
        "apiVersion: monitoring.coreos.com/v1\nkind: ServiceMonitor\nmetadata: {{name: {NAME}, namespace: {NAMESPACE}}}\nspec: {{selector: {{}}, endpoints: []}}"
    ))
    .unwrap();
    foreign.metadata.labels = Some([("team".to_string(), "other".to_string())].into());
    let harness = Harness::new(
        with_service_monitor_crd().with_object(foreign),
        cr("{monitoring: {serviceMonitor: false}}"),
    )
    .await;

    let (result, calls, _) = harness.reconcile().await;

    assert!(result.is_ok());
    assert!(calls.iter().all(|c| c.method != "DELETE"), "{calls:?}");
    assert!(harness.api::<ServiceMonitor>().get(NAME).await.is_ok());
}

#[tokio::test]
async fn drift_in_a_child_is_repaired_by_the_next_reconcile() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{concurrency: 3}")).await;
    harness.reconcile().await.0.unwrap();
    // Someone edits the Deployment's env by hand.
    harness
        .api::<Deployment>()
        .patch(
            NAME,
            &PatchParams::apply("kubectl-edit").force(),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "spec": {"template": {"spec": {"containers": [{"name": "workload",
                    "env": [{"name": "CONCURRENCY", "value": "99"}]}]}}}
            })),
        )
        .await
        .unwrap();

    harness.reconcile().await.0.unwrap();

    let deployment = harness.api::<Deployment>().get(NAME).await.unwrap();
    let env = deployment.spec.unwrap().template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    let concurrency = env.iter().find(|v| v.name == "CONCURRENCY").unwrap();
    assert_eq!(concurrency.value.as_deref(), Some("3"));
}

#[tokio::test]
async fn a_stale_cache_repeats_neither_the_status_patch_nor_the_event() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    // The cache holds the CR as created, and never sees the operator's status patch.
    let cached = Arc::new(harness.crs().get(NAME).await.unwrap());
    assert!(cached.status.is_none());

    let (first, calls_first) = harness.reconcile_cached(&cached).await;
    let status_written = harness.crs().get(NAME).await.unwrap().status;
    let (second, calls_second) = harness.reconcile_cached(&cached).await;

    assert_eq!(first.unwrap(), Action::requeue(RESYNC_INTERVAL));
    assert_eq!(second.unwrap(), Action::requeue(RESYNC_INTERVAL));
    let mut expected = child_applies(true);
    expected.extend([status_call(), event_call()]);
    assert_eq!(calls_first, expected);
    assert_eq!(
        calls_second,
        child_applies(true),
        "no second status patch, no second Event"
    );
    assert_eq!(
        harness.crs().get(NAME).await.unwrap().status,
        status_written
    );
    assert_eq!(harness.events().await.len(), 1);
}

#[tokio::test]
async fn a_stale_cache_keeps_the_transition_times_of_unchanged_conditions() {
    let builder = with_service_monitor_crd().with_status_subresource::<Deployment>();
    let harness = Harness::new(builder, cr("{}")).await;
    let cached = Arc::new(harness.crs().get(NAME).await.unwrap());
    harness.reconcile_cached(&cached).await.0.unwrap();
    let first = harness.crs().get(NAME).await.unwrap().status.unwrap();

    // Times are whole seconds: make sure a new one would differ. Then the rollout moves on
    // (Progressing stays True with a new message; Ready stays False, Degraded stays False).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    harness
        .api::<Deployment>()
        .patch_status(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "observedGeneration": 1, "replicas": 2, "updatedReplicas": 1,
                "availableReplicas": 0, "readyReplicas": 0
            }})),
        )
        .await
        .unwrap();
    let (result, calls) = harness.reconcile_cached(&cached).await;

    result.unwrap();
    assert!(calls.contains(&status_call()), "the status did change");
    let second = harness.crs().get(NAME).await.unwrap().status.unwrap();
    assert_eq!(second.replicas, 2);
    for condition in &second.conditions {
        let before = first
            .conditions
            .iter()
            .find(|c| c.type_ == condition.type_)
            .unwrap();
        assert_eq!(before.status, condition.status, "{}", condition.type_);
        assert_eq!(
            before.last_transition_time, condition.last_transition_time,
            "{} did not flip",
            condition.type_
        );
    }
    assert_eq!(harness.events().await.len(), 1, "no repeated Applied Event");
}

#[tokio::test]
async fn a_deleted_cr_is_forgotten_so_a_new_one_backs_off_from_the_start() {
    let harness = harness_with_failing_deployment_patches().await;
    let (result, _, cr) = harness.reconcile().await;
    let error = result.unwrap_err();
    let ctx = harness.ctx.clone();
    assert_eq!(
        error_policy(cr.clone(), &error, ctx.clone()),
        Action::requeue(retry_delay(1, UID))
    );

    // The Controller's cache, as the controller loop hands it to `Memory::forget_missing`.
    let mut writer = Writer::<SandboxService>::default();
    let cache = writer.as_reader();
    writer.apply_watcher_event(&watcher::Event::Apply((*cr).clone()));
    ctx.history.forget_missing(&cache);
    assert_eq!(
        error_policy(cr.clone(), &error, ctx.clone()),
        Action::requeue(retry_delay(2, UID)),
        "a CR still in the cache keeps its backoff"
    );

    writer.apply_watcher_event(&watcher::Event::Delete((*cr).clone()));
    ctx.history.forget_missing(&cache);
    assert_eq!(
        error_policy(cr, &error, ctx),
        Action::requeue(retry_delay(1, UID)),
        "one under the same name starts from the base backoff"
    );
}

#[tokio::test]
async fn a_cr_being_deleted_costs_no_calls_and_is_forgotten() {
    let harness = Harness::new(with_service_monitor_crd(), cr("{}")).await;
    let (result, _, cr) = harness.reconcile().await;
    result.unwrap();
    // `cr` is the copy from before the status write, as a lagging cache would still hand it
    // over: the status the next reconcile compares with is the one written.
    let written = harness.crs().get(NAME).await.unwrap().status;
    assert!(written.is_some());
    assert_eq!(harness.ctx.history.known_status(&cr), written);
    let error = operator::Error::MissingObjectKey("metadata.uid");
    assert_eq!(
        error_policy(cr.clone(), &error, harness.ctx.clone()),
        Action::requeue(retry_delay(1, UID))
    );

    // Foreground deletion: the CR stays, with a deletionTimestamp, while its children go.
    let mut deleting = (*cr).clone();
    deleting.metadata.deletion_timestamp = Some(operator::reconcile::status::now());
    deleting.metadata.finalizers = Some(vec!["foregroundDeletion".into()]);
    let (result, calls) = harness.reconcile_cached(&Arc::new(deleting)).await;

    assert_eq!(result.unwrap(), Action::await_change());
    assert_eq!(
        calls,
        vec![],
        "nothing re-applied behind the garbage collector"
    );
    assert_eq!(
        harness.ctx.history.known_status(&cr),
        None,
        "the written status is no longer kept"
    );
    assert_eq!(
        error_policy(cr, &error, harness.ctx.clone()),
        Action::requeue(retry_delay(1, UID))
    );
}

#[test]
fn backoff_is_bounded() {
    assert_eq!(operator::reconcile::backoff(1), Duration::from_secs(5));
    assert_eq!(
        operator::reconcile::backoff(100),
        operator::reconcile::MAX_BACKOFF
    );
}

#[tokio::test]
async fn a_refused_apply_degrades_without_claiming_the_generation() {
    // The API server refuses the Deployment for good (422), as for an existing Deployment with
    // another, immutable selector.
    let refused = interceptor::Funcs::new().patch(|ctx| {
        if ctx.patch.get("kind").and_then(|k| k.as_str()) == Some("Deployment") {
            return Err(kube_fake_client::Error::InvalidRequest(
                "spec.selector: field is immutable".into(),
            ));
        }
        Ok(None)
    });
    let harness = Harness::new(
        with_service_monitor_crd().with_interceptor_funcs(refused),
        cr("{}"),
    )
    .await;

    let (result, _, _) = harness.reconcile().await;

    assert_eq!(result.unwrap_err().category(), "ApplyFailed");
    let (status, reason, message) = harness.condition(DEGRADED).await;
    assert_eq!((status.as_str(), reason.as_str()), ("True", "ApplyFailed"));
    assert!(message.contains("field is immutable"), "{message}");
    let cr = harness.crs().get(NAME).await.unwrap();
    assert_eq!(
        cr.status.unwrap().observed_generation,
        None,
        "nothing of this generation was applied"
    );
    let events = harness.events().await;
    assert_eq!(events.len(), 1, "one Warning per attempt, from reconcile");
    assert_warning(&events[0], "ApplyFailed", "field is immutable");
}
