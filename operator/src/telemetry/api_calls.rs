//! Counting the operator's requests to the API server: a tower layer on the kube client that
//! counts every request by verb and resource, as `sandbox_operator_api_requests_total`.
//!
//! The verb and resource are derived from the request's method and URL the way the API
//! server's own `RequestInfo` does: a GET of a collection is a `list`, of a named object a
//! `get`, and either with `watch=true` (or under the legacy `/watch/` prefix) a `watch`; a
//! subresource is counted as `plural/subresource` (`sandboxservices/status`). The layer sits
//! outside kube's retry layer, so a retried request counts once, as the operator issued it.
//!
//! The layer also times each request until its answer's head arrives and adds that to the
//! caller's [`measuring_api_wait`], if any: the reconcile duration less that wait is the
//! operator's own time. kube's client queues requests to a worker task, but the response
//! future comes back to the caller and is polled there, so a task-local sees it.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Method, Request, Uri};
use prometheus::{IntCounterVec, Opts, Registry};
use tower::{Layer, Service};

/// The metric's name.
pub const METRIC: &str = "sandbox_operator_api_requests_total";

/// The `resource` label of a request outside the resource API (`/version`, discovery).
pub const NON_RESOURCE: &str = "nonresource";

/// The verbs that write: what the benchmark counts as the operator's writes.
pub const WRITE_VERBS: [&str; 5] = ["create", "update", "patch", "delete", "deletecollection"];

/// Requests sent to the API server, by verb and resource.
#[derive(Clone)]
pub struct ApiRequests {
    total: IntCounterVec,
}

impl ApiRequests {
    /// A counter registered in `registry`, so it is rendered on the admin server's `/metrics`.
    pub fn registered(registry: &Registry) -> Self {
        let total = IntCounterVec::new(
            Opts::new(
                METRIC,
                "Requests sent to the Kubernetes API server, by verb (get, list, watch, create, \
                 update, patch, delete, deletecollection) and resource (plural[/subresource])",
            ),
            &["verb", "resource"],
        )
        .expect("valid metric definition");
        registry
            .register(Box::new(total.clone()))
            .expect("unique metric");
        Self { total }
    }

    /// The layer to put on a client: `ClientBuilder::with_layer(&requests.layer())`.
    pub fn layer(&self) -> CountRequestsLayer {
        CountRequestsLayer {
            requests: self.clone(),
        }
    }

    fn count(&self, method: &Method, uri: &Uri) {
        let kind = RequestKind::of(method, uri);
        self.total
            .with_label_values(&[kind.verb, kind.resource.as_str()])
            .inc();
    }
}

/// A tower layer counting each request into [`ApiRequests`].
#[derive(Clone)]
pub struct CountRequestsLayer {
    requests: ApiRequests,
}

impl<S> Layer<S> for CountRequestsLayer {
    type Service = CountRequests<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CountRequests {
            inner,
            requests: self.requests.clone(),
        }
    }
}

tokio::task_local! {
    static API_WAIT: Cell<Duration>;
}

/// Runs `future` and returns its output with the time its API requests waited for their
/// answers (requests made through a client with [`CountRequestsLayer`]).
pub async fn measuring_api_wait<F: Future>(future: F) -> (F::Output, Duration) {
    API_WAIT
        .scope(Cell::new(Duration::ZERO), async move {
            let output = future.await;
            (output, API_WAIT.with(Cell::get))
        })
        .await
}

/// The service of [`CountRequestsLayer`]: counts the request when it is sent, whatever the
/// answer, times it, and passes it on unchanged.
#[derive(Clone)]
pub struct CountRequests<S> {
    inner: S,
    requests: ApiRequests,
}

impl<S, B> Service<Request<B>> for CountRequests<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.requests.count(request.method(), request.uri());
        let answer = self.inner.call(request);
        Box::pin(async move {
            let sent = Instant::now();
            let result = answer.await;
            // Outside `measuring_api_wait` (watches, the Lease) there is nothing to add to.
            let _ = API_WAIT.try_with(|wait| wait.set(wait.get() + sent.elapsed()));
            result
        })
    }
}

/// What a request does, as the labels of the metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestKind {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, or
    /// the lower-case method for anything else.
    pub verb: &'static str,
    /// The resource's plural, with `/subresource` if any; [`NON_RESOURCE`] outside `/api` and
    /// `/apis/{group}`.
    pub resource: String,
}

impl RequestKind {
    /// Classify a request from its method and URL (path and query; the authority is ignored).
    pub fn of(method: &Method, uri: &Uri) -> Self {
        let parts: Vec<&str> = uri.path().split('/').filter(|p| !p.is_empty()).collect();
        let rest = match parts.as_slice() {
            ["api", _, rest @ ..] | ["apis", _, _, rest @ ..] => rest,
            _ => &[][..],
        };
        let (legacy_watch, rest) = match rest {
            ["watch", rest @ ..] => (true, rest),
            rest => (false, rest),
        };
        // `namespaces/{ns}/{resource}...` is a namespaced resource; `namespaces/{ns}` and its
        // own subresources (`status`, `finalize`) are the Namespace itself.
        let rest = match rest {
            ["namespaces", _, namespaced @ ..]
                if namespaced
                    .first()
                    .is_some_and(|first| !matches!(*first, "status" | "finalize")) =>
            {
                namespaced
            }
            rest => rest,
        };
        let Some((resource, named)) = rest.split_first() else {
            return Self {
                verb: verb(method, true, false),
                resource: NON_RESOURCE.to_string(),
            };
        };
        let resource = match named.get(1) {
            Some(subresource) => format!("{resource}/{subresource}"),
            None => (*resource).to_string(),
        };
        let watch = legacy_watch || uri.query().is_some_and(watch_requested);
        Self {
            verb: verb(method, !named.is_empty(), watch),
            resource,
        }
    }
}

/// Whether the query asks for a watch (`watch=true`; the API server parses it as a bool).
fn watch_requested(query: &str) -> bool {
    query.split('&').any(|pair| {
        matches!(
            pair.strip_prefix("watch="),
            Some("true" | "True" | "TRUE" | "t" | "T" | "1")
        )
    })
}

fn verb(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        Method::OPTIONS => "options",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::Deployment;
    use kube::api::{Api, ListParams, Patch, PatchParams};
    use kube::client::{Body, ClientBuilder};

    use super::*;

    #[test]
    fn classifies_real_request_paths() {
        let cases: &[(Method, &str, &str, &str)] = &[
            // core group, named and collections
            (
                Method::GET,
                "/api/v1/namespaces/x/services/y",
                "get",
                "services",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/x/services",
                "list",
                "services",
            ),
            (
                Method::GET,
                "/api/v1/services?limit=500",
                "list",
                "services",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/x/services/y",
                "delete",
                "services",
            ),
            (
                Method::DELETE,
                "/api/v1/namespaces/x/pods",
                "deletecollection",
                "pods",
            ),
            (
                Method::POST,
                "/api/v1/namespaces/x/pods/p/eviction",
                "create",
                "pods/eviction",
            ),
            // watches of a whole collection, as kube-runtime's watcher sends them
            (
                Method::GET,
                "/apis/apps/v1/deployments?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=12",
                "watch",
                "deployments",
            ),
            (
                Method::GET,
                "/apis/sandbox.perf.dev/v1alpha1/sandboxservices?watch=1",
                "watch",
                "sandboxservices",
            ),
            (
                Method::GET,
                "/api/v1/watch/namespaces/x/pods",
                "watch",
                "pods",
            ),
            (
                Method::GET,
                "/apis/apps/v1/deployments?watch=false",
                "list",
                "deployments",
            ),
            // the CR's status subresource
            (
                Method::PATCH,
                "/apis/sandbox.perf.dev/v1alpha1/namespaces/x/sandboxservices/s/status?&fieldManager=sandbox-operator",
                "patch",
                "sandboxservices/status",
            ),
            (
                Method::GET,
                "/apis/sandbox.perf.dev/v1alpha1/namespaces/x/sandboxservices/s/status",
                "get",
                "sandboxservices/status",
            ),
            // server-side apply of a child
            (
                Method::PATCH,
                "/apis/apps/v1/namespaces/x/deployments/s?&force=true&fieldManager=sandbox-operator",
                "patch",
                "deployments",
            ),
            (
                Method::PATCH,
                "/apis/monitoring.coreos.com/v1/namespaces/x/servicemonitors/s?fieldManager=sandbox-operator",
                "patch",
                "servicemonitors",
            ),
            (
                Method::PUT,
                "/apis/autoscaling/v2/namespaces/x/horizontalpodautoscalers/s",
                "update",
                "horizontalpodautoscalers",
            ),
            // Events, leader election, the CRD watch
            (
                Method::POST,
                "/apis/events.k8s.io/v1/namespaces/x/events",
                "create",
                "events",
            ),
            (
                Method::PATCH,
                "/apis/events.k8s.io/v1/namespaces/x/events/e.1",
                "patch",
                "events",
            ),
            (
                Method::GET,
                "/apis/coordination.k8s.io/v1/namespaces/sandbox-system/leases/sandbox-operator",
                "get",
                "leases",
            ),
            (
                Method::PATCH,
                "/apis/coordination.k8s.io/v1/namespaces/sandbox-system/leases/sandbox-operator?fieldManager=sandbox-operator-a",
                "patch",
                "leases",
            ),
            (
                Method::GET,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions?fieldSelector=metadata.name%3Dservicemonitors.monitoring.coreos.com&watch=true",
                "watch",
                "customresourcedefinitions",
            ),
            // Namespaces themselves, and their own subresources
            (Method::GET, "/api/v1/namespaces", "list", "namespaces"),
            (Method::GET, "/api/v1/namespaces/x", "get", "namespaces"),
            (
                Method::PUT,
                "/api/v1/namespaces/x/finalize",
                "update",
                "namespaces/finalize",
            ),
            (
                Method::GET,
                "/api/v1/namespaces/x/status",
                "get",
                "namespaces/status",
            ),
            // outside the resource API: version and discovery
            (Method::GET, "/version", "get", NON_RESOURCE),
            (Method::GET, "/apis", "get", NON_RESOURCE),
            (Method::GET, "/api/v1", "get", NON_RESOURCE),
            (Method::GET, "/apis/apps/v1", "get", NON_RESOURCE),
        ];
        for (method, url, verb, resource) in cases {
            let uri: Uri = url.parse().expect("a valid URL");
            assert_eq!(
                RequestKind::of(method, &uri),
                RequestKind {
                    verb,
                    resource: resource.to_string()
                },
                "{method} {url}"
            );
        }
    }

    #[test]
    fn full_urls_classify_like_paths() {
        let uri: Uri = "https://127.0.0.1:6443/apis/apps/v1/namespaces/x/deployments/s"
            .parse()
            .expect("a valid URL");
        assert_eq!(RequestKind::of(&Method::GET, &uri).verb, "get");
    }

    /// The layer on a real kube client counts what kube's `Api` sends, and answers pass through.
    #[tokio::test]
    async fn a_client_with_the_layer_counts_its_requests() {
        let registry = Registry::new();
        let requests = ApiRequests::registered(&registry);
        let service = tower::service_fn(|request: Request<Body>| async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let body = if request.method() == Method::GET {
                r#"{"apiVersion":"apps/v1","kind":"DeploymentList","metadata":{},"items":[]}"#
            } else {
                r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"s"}}"#
            };
            Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(
                body.as_bytes().to_vec(),
            )))
        });
        let client = ClientBuilder::new(service, "x")
            .with_layer(&requests.layer())
            .build();
        let api: Api<Deployment> = Api::namespaced(client, "x");
        let ((), waited) = measuring_api_wait(async {
            api.list(&ListParams::default()).await.expect("list");
            for _ in 0..2 {
                let apply = Patch::Apply(
                    serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment"}),
                );
                api.patch("s", &PatchParams::apply("sandbox-operator"), &apply)
                    .await
                    .expect("apply");
            }
        })
        .await;
        // Three answers of 20 ms each, seen from the caller's task through kube's queue.
        assert!(waited >= Duration::from_millis(60), "{waited:?}");
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encodes");
        assert!(
            text.contains(
                r#"sandbox_operator_api_requests_total{resource="deployments",verb="list"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"sandbox_operator_api_requests_total{resource="deployments",verb="patch"} 2"#
            ),
            "{text}"
        );
    }
}
