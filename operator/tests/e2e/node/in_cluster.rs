//! The shipped operator as a user runs it: `deploy/operator`'s Deployment, from its image, in-cluster
//! on the real node. The tests that need no control of the operator's process run against it, and
//! read it as a user can: its pod, its `/metrics` at the pod's address, `kubectl logs`.

use std::net::SocketAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::{Client, ResourceExt};

use super::{install_operator, ready_pods};
use crate::harness::{
    MetricsServer, OPERATOR_NAMESPACE, assert_no_forbidden, kubectl_ok, lease_holder, wait_until,
};

/// The installed operator's Lease (`LEASE_NAME` in deploy/operator/deployment.yaml).
const LEASE: &str = "sandbox-operator";
const DEPLOYMENT: &str = "deployment/sandbox-operator";
const SELECTOR: &str = "app.kubernetes.io/name=sandbox-operator";
/// Its metrics server (`METRICS_ADDR`), at the pod's address.
const METRICS_PORT: u16 = 8443;

/// The pod of the installed operator that holds the Lease, as a test found it.
pub struct InClusterOperator {
    pod: String,
    uid: String,
    restarts: i32,
    metrics: SocketAddr,
    /// When the test started to look: the pod's log before this belongs to earlier tests.
    since: Timestamp,
}

impl InClusterOperator {
    /// Install the operator as a user does (`kubectl apply --server-side -k crds` and
    /// `-k deploy/operator`, a no-op once installed) and wait until one of its pods is Ready and holds the Lease.
    pub async fn leading(client: &Client) -> Self {
        let since = Timestamp::now();
        install_operator();
        let pod = wait_until("a Ready operator pod holds the Lease", || async {
            let holder = lease_holder(client, LEASE).await?;
            ready_pods(client, OPERATOR_NAMESPACE, SELECTOR)
                .await
                .into_iter()
                .find(|pod| pod.name_any() == holder)
        })
        .await;
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .expect("a Ready pod has an address");
        Self {
            pod: pod.name_any(),
            uid: pod.uid().expect("a stored pod has a uid"),
            restarts: restarts(&pod),
            metrics: SocketAddr::new(ip.parse().expect("the pod IP"), METRICS_PORT),
            since,
        }
    }

    /// Replace its pod as a user would (`kubectl rollout restart`), so that a new process starts
    /// from a fresh list of everything; wait until the new pod leads.
    pub async fn restart(self, client: &Client) -> Self {
        self.check(client).await;
        kubectl_ok(&["rollout", "restart", DEPLOYMENT, "-n", OPERATOR_NAMESPACE]);
        let next = Self::leading(client).await;
        assert_ne!(next.uid, self.uid, "rollout restart replaced the pod");
        next
    }

    /// Whether the same container still runs: the pod was neither replaced nor restarted.
    pub async fn running_since_found(&self, client: &Client) -> bool {
        let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
        let pod = pods
            .get_opt(&self.pod)
            .await
            .expect("read the operator's pod");
        pod.is_some_and(|pod| {
            pod.uid().as_deref() == Some(&self.uid) && restarts(&pod) == self.restarts
        })
    }

    /// Fail if it restarted, or if its log since the test found it shows a 403 (the shipped RBAC
    /// must allow everything the operator does); that log.
    pub async fn check(&self, client: &Client) -> String {
        assert!(
            self.running_since_found(client).await,
            "operator pod {} was replaced or restarted during the test",
            self.pod
        );
        let log = kubectl_ok(&[
            "logs",
            "-n",
            OPERATOR_NAMESPACE,
            &self.pod,
            &format!("--since-time={}", self.since),
        ]);
        assert_no_forbidden(&self.pod, &log);
        log
    }
}

impl MetricsServer for InClusterOperator {
    fn metrics(&self) -> SocketAddr {
        self.metrics
    }

    fn identity(&self) -> &str {
        &self.pod
    }
}

/// Restarts of the pod's one container.
fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.first())
        .map_or(0, |status| status.restart_count)
}
