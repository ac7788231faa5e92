//! The Service's part: a listener per Service that spreads requests over its ready pods.
//!
//! kube-proxy balances connections (L4): a load tool's keep-alive connections would stay on the
//! pods that existed when it connected, and the pods the HPA adds would get nothing from it. This
//! spreader balances each request (L7), as an ingress controller or a mesh sidecar in front of the
//! Service would, so scaling out shows as load on the new pods. It follows readiness as the
//! endpoints controller does: a pod whose `/readiness` fails (429) gets no new requests; requests
//! already sent to it are answered by it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{StatusCode, header};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::labels::Labels;
use crate::probe::HttpClient;

/// Where a spreader finds the ready pods of its Service (the stand-in's registry of pods).
pub trait Endpoints: Send + Sync {
    /// Addresses of the ready, not terminating pods in `namespace` that `selector` selects.
    fn endpoints(&self, namespace: &str, selector: &Labels) -> Vec<SocketAddr>;
}

/// Largest request body forwarded (the workload's requests have none).
const MAX_BODY: usize = 1 << 20;
/// Response header on the spreader's own answers, so they are not taken for the workload's.
pub const PROXY_HEADER: &str = "x-testbed-proxy";

/// One Service's spreader; dropping it stops the listener.
pub struct ServiceProxy {
    spreader: Arc<Spreader>,
    pub address: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for ServiceProxy {
    fn drop(&mut self) {
        self.server.abort();
        info!(service = %self.spreader.key(), "spreader stopped");
    }
}

struct Spreader {
    namespace: String,
    name: String,
    selector: RwLock<Labels>,
    next: AtomicUsize,
    /// Answers by status code, plus `no_endpoints` and `upstream_error` for the spreader's own,
    /// and `refused` for each pod that refused the connection.
    responses: Mutex<BTreeMap<String, u64>>,
    registry: Arc<dyn Endpoints>,
    client: HttpClient,
}

impl Spreader {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn count(&self, outcome: &str) {
        *self
            .responses
            .lock()
            .unwrap()
            .entry(outcome.to_string())
            .or_default() += 1;
    }
}

impl ServiceProxy {
    /// Listens on a free 127.0.0.1 port for the Service `namespace/name` selecting `selector`.
    pub fn start(
        namespace: &str,
        name: &str,
        selector: Labels,
        registry: Arc<dyn Endpoints>,
        client: HttpClient,
    ) -> std::io::Result<Arc<Self>> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let spreader = Arc::new(Spreader {
            namespace: namespace.to_string(),
            name: name.to_string(),
            selector: RwLock::new(selector),
            next: AtomicUsize::new(0),
            responses: Mutex::default(),
            registry,
            client,
        });
        let app = Router::new().fallback(forward).with_state(spreader.clone());
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                warn!(%err, "spreader stopped serving");
            }
        });
        info!(service = %spreader.key(), %address, "spreader listening");
        Ok(Arc::new(Self {
            spreader,
            address,
            server,
        }))
    }

    /// Follows a change of the Service's `spec.selector`.
    pub fn set_selector(&self, selector: Labels) {
        *self.spreader.selector.write().unwrap() = selector;
    }

    pub fn to_json(&self, registry: &dyn Endpoints) -> Value {
        let spreader = &self.spreader;
        let selector = spreader.selector.read().unwrap().clone();
        let endpoints: Vec<String> = registry
            .endpoints(&spreader.namespace, &selector)
            .iter()
            .map(ToString::to_string)
            .collect();
        json!({
            "namespace": spreader.namespace,
            "name": spreader.name,
            "address": self.address.to_string(),
            "endpoints": endpoints,
            "responses": *spreader.responses.lock().unwrap(),
        })
    }
}

/// Sends the request to the next ready pod. A pod that refuses the connection (it just stopped)
/// is skipped, as nothing reached it; any other failure is a 502.
async fn forward(State(spreader): State<Arc<Spreader>>, request: Request) -> Response {
    let selector = spreader.selector.read().unwrap().clone();
    let endpoints = spreader.registry.endpoints(&spreader.namespace, &selector);
    if endpoints.is_empty() {
        spreader.count("no_endpoints");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(PROXY_HEADER, "no ready endpoints")],
            "no ready endpoints\n",
        )
            .into_response();
    }
    let (parts, body) = request.into_parts();
    let Ok(body) = to_bytes(body, MAX_BODY).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            [(PROXY_HEADER, "body too large")],
        )
            .into_response();
    };
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let first = spreader.next.fetch_add(1, Ordering::Relaxed);
    for offset in 0..endpoints.len() {
        let address = endpoints[(first + offset) % endpoints.len()];
        let mut upstream = http::Request::new(Body::from(body.clone()));
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = match format!("http://{address}{path}").parse() {
            Ok(uri) => uri,
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        };
        *upstream.headers_mut() = parts.headers.clone();
        upstream.headers_mut().remove(header::CONNECTION);
        match spreader.client.request(upstream).await {
            Ok(response) => {
                spreader.count(response.status().as_str());
                return response.map(Body::new);
            }
            // kube-proxy would hand the client this refusal; it is counted so a test can
            // fail on it, and the request goes on to the next pod so the load goes on.
            Err(err) if err.is_connect() => {
                spreader.count("refused");
                continue;
            }
            Err(err) => {
                warn!(service = %spreader.key(), %address, %err, "upstream failed");
                break;
            }
        }
    }
    spreader.count("upstream_error");
    (StatusCode::BAD_GATEWAY, [(PROXY_HEADER, "upstream error")]).into_response()
}
