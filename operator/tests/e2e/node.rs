//! On the real node (`TESTBED_NODES=real scripts/testbed.sh up`): what a user meets first. The
//! kubelet, containerd, runc and kube-proxy are real; the images are the ones `scripts/images.sh`
//! built; the operator is the shipped Deployment, from its image, in-cluster. Run alone:
//!
//! ```sh
//! cargo test -p operator --test e2e -- --ignored --test-threads=1 node::
//! ```

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams};
use serde_json::Value;

use operator::api::SandboxService;

mod autoscale;
mod in_cluster;
mod load_tests;
mod logs;
mod monitoring;
mod outage;
mod reconcile;
mod relief;
mod rollout;
mod settling;
mod states;
mod uninstall;

use crate::harness::{
    admin_client, apply, http_get, install, kubectl, kubectl_ok, namespace,
    wait_no_namespace_terminating, wait_until,
};

const NODE: &str = "testbed-node-0";

/// The node's address, from `scripts/testbed.sh env`; fails loudly on any other test bed.
fn node_ip() -> IpAddr {
    let ip = std::env::var("TESTBED_NODE_IP").unwrap_or_else(|_| {
        panic!(
            "TESTBED_NODE_IP is not set: these tests need TESTBED_NODES=real scripts/testbed.sh up"
        )
    });
    ip.parse().expect("TESTBED_NODE_IP is an IP address")
}

fn testbed_dir() -> String {
    std::env::var("TESTBED_DIR").expect("TESTBED_DIR is set by scripts/testbed.sh env")
}

/// `ip ARGS`: its output (stdout, then stderr) and whether it succeeded. Sends nothing.
fn ip(args: &[&str]) -> (bool, String) {
    let output = Command::new("ip").args(args).output().expect("run ip");
    let text = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text.trim().to_string())
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_node_runs_containerd_under_its_own_identity() {
    let ip = node_ip();
    let client = admin_client().await;
    let node = Api::<Node>::all(client)
        .get(NODE)
        .await
        .expect("the real node is registered");
    let status = node.status.expect("node status");
    let info = status.node_info.expect("node info");
    assert!(
        info.container_runtime_version.starts_with("containerd://"),
        "runtime {}",
        info.container_runtime_version
    );
    let server_version = kubectl_ok(&["version", "-o", "json"]);
    let server: Value = serde_json::from_str(&server_version).unwrap();
    assert_eq!(
        info.kubelet_version, server["serverVersion"]["gitVersion"],
        "the kubelet comes from the control plane's release"
    );
    let addresses = status.addresses.unwrap_or_default();
    assert!(
        addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == ip.to_string()),
        "{addresses:?}"
    );
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    );

    // The kubelet's own credentials: system:node:NAME, so the Node authorizer and NodeRestriction
    // hold it to its node.
    let kubelet = format!("{}/kubelet.kubeconfig", testbed_dir());
    let whoami = kubectl_ok(&["--kubeconfig", &kubelet, "auth", "whoami", "-o", "json"]);
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!(
        whoami["status"]["userInfo"]["username"],
        format!("system:node:{NODE}")
    );
    assert!(
        whoami["status"]["userInfo"]["groups"]
            .as_array()
            .unwrap()
            .contains(&Value::from("system:nodes"))
    );
    let refused = kubectl(&[
        "--kubeconfig",
        &kubelet,
        "get",
        "secrets",
        "-n",
        "kube-system",
    ])
    .expect_err("the Node authorizer refuses listing secrets");
    assert!(
        refused.contains("Forbidden") || refused.contains("forbidden"),
        "{refused}"
    );
    let refused = kubectl(&[
        "--kubeconfig",
        &kubelet,
        "label",
        "node",
        NODE,
        "node-restriction.kubernetes.io/test=1",
    ])
    .expect_err("NodeRestriction refuses a kubelet setting restricted labels");
    assert!(
        refused.contains("forbidden") || refused.contains("Forbidden"),
        "{refused}"
    );
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn service_and_pod_addresses_never_leave_the_machine() {
    node_ip();
    let client = admin_client().await;
    // An address of the Service range that no Service holds.
    let used: Vec<String> = Api::<Service>::all(client)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|s| s.spec?.cluster_ip)
        .collect();
    let unused = (1..=254)
        .map(|i| format!("10.96.255.{i}"))
        .find(|a| !used.contains(a))
        .unwrap();
    // The most specific route of each range is a blackhole, and the kernel's own lookup (what a
    // connect() would do) refuses the address instead of sending it by the default route. A
    // blackhole is the only route type that answers "Invalid argument" (unreachable: "No route to
    // host", prohibit: "Permission denied").
    for (range, address) in [
        ("10.96.0.0/16", unused.as_str()),
        ("10.96.0.0/16", "10.96.0.1"),
        ("10.88.0.0/16", "10.88.7.7"),
        ("10.244.0.0/16", "10.244.3.3"),
    ] {
        let (_, route) = ip(&["route", "show", "exact", range]);
        assert!(route.starts_with("blackhole"), "{range}: {route}");
        let (routed, route) = ip(&["route", "get", address]);
        assert!(
            !routed && route.contains("Invalid argument"),
            "{address} would be routed: {route}"
        );
    }
    let (_, pod) = ip(&["route", "get", "10.88.0.200"]);
    assert!(
        pod.starts_with("10.88.0.200 dev tb-cni0"),
        "a pod address stays on the bridge: {pod}"
    );
    // Nor can a pod's packet be forwarded off the bridge, whatever the machine's ip_forward says.
    let guard = Command::new("nft")
        .args(["list", "table", "inet", "testbed-node-guard"])
        .output()
        .expect("run nft");
    let guard = String::from_utf8_lossy(&guard.stdout);
    assert!(
        guard.contains(r#"iifname "tb-cni0" oifname != "tb-cni0" drop"#),
        "no forward guard: {guard}"
    );
}

/// The workload's port (`http`) at a pod's address.
const WORKLOAD_PORT: u16 = 3000;

/// The workload's address at `pod`'s IP (the node reaches pods directly).
fn pod_address(pod: &Pod) -> SocketAddr {
    let ip = pod.status.as_ref().unwrap().pod_ip.as_ref().unwrap();
    SocketAddr::new(ip.parse().unwrap(), WORKLOAD_PORT)
}

/// Holds `count` operations open on the workload at `address`, each sent straight to it; each waits its
/// full duration, or until the stream is dropped.
fn hold_operations(address: SocketAddr, count: usize) -> Vec<std::net::TcpStream> {
    use std::io::Write;
    (0..count)
        .map(|_| {
            let mut stream = std::net::TcpStream::connect(address).unwrap();
            write!(stream, "GET /expensive-op HTTP/1.1\r\nHost: pod\r\n\r\n").unwrap();
            stream
        })
        .collect()
}

/// The Ready pods of the Deployment named `app` in `namespace`, on the real node.
async fn ready_pods(client: &kube::Client, namespace: &str, selector: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(is_ready)
        .collect()
}

/// Whether `pod` is Ready and not being deleted.
fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The address of Service `ns/name`'s NodePort on the node.
async fn node_port_address(client: &kube::Client, ns: &str, name: &str) -> SocketAddr {
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("the SandboxService's Service");
    let port = service.spec.unwrap().ports.unwrap()[0]
        .node_port
        .expect("a NodePort");
    SocketAddr::new(node_ip(), u16::try_from(port).expect("a port number"))
}

/// A SandboxService on the node under the installed operator: the operator installed, a fresh
/// namespace `ns`, and `cr(ns)` applied until `pods` of its pods are Ready.
struct OnTheNode {
    client: kube::Client,
    ns: String,
    crs: Api<SandboxService>,
    /// The label selector of its pods.
    selector: String,
    /// Its Service's NodePort on the node, as `ADDRESS:PORT`.
    address: String,
    /// Its Ready pods when it started.
    pods: Vec<Pod>,
}

impl OnTheNode {
    async fn start(ns: &str, cr: impl Fn(&str) -> Value, pods: usize) -> Self {
        node_ip();
        let client = admin_client().await;
        install_operator();
        super::install_service_monitor_crd();
        wait_no_namespace_terminating(&client).await;
        let ns = namespace(&client, ns).await;
        let cr = cr(&ns);
        let name = cr["metadata"]["name"].as_str().unwrap().to_string();
        let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
        apply(&crs, cr).await.expect("apply the SandboxService");
        let selector = format!("app.kubernetes.io/instance={name}");
        let ready = wait_until(&format!("{pods} Ready pods"), || async {
            let ready = ready_pods(&client, &ns, &selector).await;
            (ready.len() == pods).then_some(ready)
        })
        .await;
        let address = node_port_address(&client, &ns, &name).await.to_string();
        Self {
            client,
            ns,
            crs,
            selector,
            address,
            pods: ready,
        }
    }
}

/// Seconds from a pod's PodScheduled to its Ready condition (both have second resolution).
fn scheduled_to_ready(pod: &Pod) -> i64 {
    let conditions = pod.status.as_ref().unwrap().conditions.as_ref().unwrap();
    let at = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .and_then(|c| c.last_transition_time.as_ref())
            .map(|t| t.0.as_second())
            .unwrap()
    };
    at("Ready") - at("PodScheduled")
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_shipped_operator_runs_in_cluster_and_the_seed_runs_on_the_node() {
    node_ip();
    let client = admin_client().await;
    // As docs/running-in-kubernetes.md says, with the images built here instead of pulled.
    install_operator();
    let operator = ready_pods(
        &client,
        "sandbox-system",
        "app.kubernetes.io/name=sandbox-operator",
    )
    .await;
    assert_eq!(operator.len(), 1, "one Ready operator pod");
    let operator = &operator[0];
    assert_eq!(
        operator.spec.as_ref().unwrap().node_name.as_deref(),
        Some(NODE)
    );
    eprintln!(
        "operator pod: scheduled to Ready in {} s",
        scheduled_to_ready(operator)
    );

    let started = Instant::now();
    kubectl_ok(&["apply", "-f", "deploy/examples/seed.yaml"]);
    let selector = "app.kubernetes.io/instance=performance-sandbox";
    let pods = wait_until("a Ready seed pod on the node", || async {
        let pods = ready_pods(&client, "default", selector).await;
        (!pods.is_empty()).then_some(pods)
    })
    .await;
    let pod = &pods[0];
    let name = pod.metadata.name.clone().unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(NODE));
    eprintln!(
        "seed pod: CR applied to Ready in {:.1} s, scheduled to Ready in {} s",
        started.elapsed().as_secs_f64(),
        scheduled_to_ready(pod)
    );

    // The kubelet serves logs and exec for the pod, through the API server.
    let logs = kubectl_ok(&["logs", &name]);
    assert!(logs.contains("listening"), "the workload's log: {logs}");
    let version = kubectl_ok(&["exec", &name, "--", "/workload", "--version"]);
    assert!(version.starts_with("workload "), "{version}");

    // kube-proxy routes the NodePort on the node address to the pod.
    let address = node_port_address(&client, "default", "performance-sandbox").await;
    let (status, _) = wait_until("the NodePort answers", || async {
        http_get(address, "/liveness")
    })
    .await;
    assert_eq!(status, 200);
    let took = Instant::now();
    let (status, body) = http_get(address, "/expensive-op").expect("the operation answers");
    assert_eq!(status, 200, "{body}");
    assert!(
        took.elapsed() >= Duration::from_secs(2),
        "the operation takes its 2 s"
    );

    kubectl_ok(&[
        "delete",
        "-f",
        "deploy/examples/seed.yaml",
        "--wait=true",
        "--timeout=90s",
    ]);
    wait_until("the seed's pods are gone", || async {
        let left = Api::<Pod>::namespaced(client.clone(), "default")
            .list(&ListParams::default().labels(selector))
            .await
            .unwrap()
            .items;
        left.is_empty().then_some(())
    })
    .await;
}

/// `kubectl apply -k crds` and `-k deploy/operator`, as docs/running-in-kubernetes.md says, and wait
/// for the operator's pod to be Ready.
fn install_operator() {
    install();
    kubectl_ok(&[
        "rollout",
        "status",
        "deployment/sandbox-operator",
        "-n",
        "sandbox-system",
        "--timeout=120s",
    ]);
}
