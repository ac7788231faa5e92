//! What every e2e test needs: the cluster (set up once per run), `kubectl`, namespaces, and the
//! operator under test as its own process, authenticated as its ServiceAccount.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use operator::api::SandboxService;
use serde::de::DeserializeOwned;
use serde_json::json;

/// The operator's namespace, from deploy/operator.
pub const OPERATOR_NAMESPACE: &str = "sandbox-system";

/// Field manager of the test's own writes.
pub const TEST_MANAGER: &str = "e2e-test";

/// How long anything the suite waits for may take on a slow, shared machine.
pub const TIMEOUT: Duration = Duration::from_secs(90);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the repository by its path from the root.
pub fn repo_file(path: &str) -> PathBuf {
    repo_root().join(path)
}

/// Scratch files of this run: the operator's kubeconfig and logs.
fn work_dir() -> PathBuf {
    let dir = repo_root().join("target/e2e");
    std::fs::create_dir_all(&dir).expect("create target/e2e");
    dir
}

/// Run `kubectl` (the test bed's, first on PATH after `scripts/testbed.sh env`) as the admin.
pub fn kubectl(args: &[&str]) -> Result<String, String> {
    kubectl_with_input(args, None)
}

/// `kubectl` that must succeed.
pub fn kubectl_ok(args: &[&str]) -> String {
    kubectl(args).unwrap_or_else(|error| panic!("kubectl {}: {error}", args.join(" ")))
}

/// `kubectl` with `input` on stdin.
pub fn kubectl_with_input(args: &[&str], input: Option<&str>) -> Result<String, String> {
    let mut child = Command::new("kubectl")
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH (eval \"$(scripts/testbed.sh env)\")");
    let mut stdin = child.stdin.take().expect("piped stdin");
    if let Some(input) = input {
        stdin
            .write_all(input.as_bytes())
            .expect("write kubectl's stdin");
    }
    drop(stdin);
    let output = child.wait_with_output().expect("kubectl ran");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// What the run shares: the install is applied and the operator's kubeconfig written once.
pub struct Cluster {
    /// A kubeconfig with a TokenRequest token of the `sandbox-operator` ServiceAccount.
    pub operator_kubeconfig: PathBuf,
    /// Output of `kubectl apply --server-side -k crds` and `-k deploy/operator`.
    pub install_output: String,
    /// A TokenRequest token of a ServiceAccount bound to the metrics-reader ClusterRole, as a
    /// scraper has: what the tests read the operators' /metrics with.
    pub metrics_token: String,
}

/// Set the cluster up once per test run: install the operator with kubectl (CRD, namespace,
/// RBAC, its Deployment) and make the operator's ServiceAccount kubeconfig.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        // Asked for explicitly but without a cluster: say so loudly rather than pass.
        assert!(
            std::env::var_os("KUBECONFIG").is_some(),
            "KUBECONFIG is not set: start the test bed (scripts/testbed.sh up) and eval \"$(scripts/testbed.sh env)\""
        );
        let install_output = install();
        wait_established("sandboxservices.sandbox.perf.dev");
        let token = kubectl_ok(&[
            "create",
            "token",
            "sandbox-operator",
            "-n",
            OPERATOR_NAMESPACE,
            "--duration=4h",
        ]);
        let server = kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.server}",
        ]);
        let ca = kubectl_ok(&[
            "config",
            "view",
            "--minify",
            "--raw",
            "-o",
            "jsonpath={.clusters[0].cluster.certificate-authority}",
        ]);
        let operator_kubeconfig = work_dir().join("operator.kubeconfig");
        let kubeconfig = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "testbed", "cluster": {"server": server, "certificate-authority": ca}}],
            "users": [{"name": "sandbox-operator", "user": {"token": token.trim()}}],
            "contexts": [{"name": "operator", "context": {"cluster": "testbed", "user": "sandbox-operator", "namespace": OPERATOR_NAMESPACE}}],
            "current-context": "operator",
        });
        std::fs::write(&operator_kubeconfig, kubeconfig.to_string())
            .expect("write the operator's kubeconfig");
        Cluster {
            operator_kubeconfig,
            install_output,
            metrics_token: metrics_reader_token(),
        }
    })
}

/// Wait until the CRD `name` is Established. Polled rather than `kubectl wait`, which fails at once
/// on a CRD so new that it has no conditions yet.
pub fn wait_established(name: &str) {
    let crd = format!("crd/{name}");
    let established = r#"jsonpath={.status.conditions[?(@.type=="Established")].status}"#;
    let start = Instant::now();
    while kubectl_ok(&["get", &crd, "-o", established]).trim() != "True" {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{crd} was not Established within 60 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The operator's kubeconfig with its server's address replaced by `proxy` (same scheme and
/// certificate checks): where a test puts something between the operator and the API server.
pub fn operator_kubeconfig_via(proxy: SocketAddr) -> PathBuf {
    let path = &cluster().operator_kubeconfig;
    let mut kubeconfig: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("read the operator's kubeconfig"))
            .expect("the operator's kubeconfig is JSON");
    let server = &mut kubeconfig["clusters"][0]["cluster"]["server"];
    let url = server.as_str().expect("a server URL").to_string();
    let (scheme, _) = url.split_once("://").expect("a URL with a scheme");
    *server = json!(format!("{scheme}://{proxy}"));
    let via = work_dir().join(format!("operator-via-{}.kubeconfig", proxy.port()));
    std::fs::write(&via, kubeconfig.to_string()).expect("write the kubeconfig");
    via
}

/// The API server's address, as the test bed's kubeconfig names it.
pub fn api_server_address() -> SocketAddr {
    let server = kubectl_ok(&[
        "config",
        "view",
        "--minify",
        "-o",
        "jsonpath={.clusters[0].cluster.server}",
    ]);
    let authority = server
        .trim()
        .split_once("://")
        .map_or(server.trim(), |(_, rest)| rest)
        .trim_end_matches('/');
    authority
        .parse()
        .unwrap_or_else(|e| panic!("the API server {authority:?} is not IP:port: {e}"))
}

/// `kubectl apply --server-side -k crds`, then `-k deploy/operator`, as docs/running-in-kubernetes.md
/// installs the CRD and the operator; their output.
pub fn install() -> String {
    // Forcing only matters on a test bed reused across runs, where a test edited the CRD.
    let apply = |dir| kubectl_ok(&["apply", "--server-side", "--force-conflicts", "-k", dir]);
    apply("crds") + &apply("deploy/operator")
}

/// Grants the operator's ServiceAccount the Lease `lease` beside the one the shipped Role names,
/// as a user who sets another `LEASE_NAME` does: each test elects on a Lease of its own, so that
/// a leader a test killed holds up no later test. Once per Lease and run: a replacement started
/// while the control plane is down (as a kubelet would) must not need it.
fn grant_lease(lease: &str) {
    static GRANTED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut granted = GRANTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if lease == operator::names::LEASE_NAME || granted.iter().any(|l| l == lease) {
        return;
    }
    let name = format!("e2e-lease-{lease}");
    let grant = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
         "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                    "resourceNames": [lease], "verbs": ["get", "update"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": OPERATOR_NAMESPACE},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": "sandbox-operator", "namespace": OPERATOR_NAMESPACE}]},
    ]});
    kubectl_with_input(
        &["apply", "--server-side", "-f", "-"],
        Some(&grant.to_string()),
    )
    .unwrap_or_else(|error| panic!("grant the operator the Lease {lease}: {error}"));
    // The authorizer sees a new grant a moment later; a 403 in the operator's log fails a test.
    let account = format!("--as=system:serviceaccount:{OPERATOR_NAMESPACE}:sandbox-operator");
    let resource = format!("leases/{lease}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while kubectl(&[
        "auth",
        "can-i",
        "update",
        &resource,
        "-n",
        OPERATOR_NAMESPACE,
        &account,
    ])
    .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the grant of the Lease {lease} never took effect"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    granted.push(lease.to_owned());
}

/// The admin client of the test, through the operator crate's one way of connecting.
pub async fn admin_client() -> Client {
    cluster();
    operator::process::client::connect()
        .await
        .expect("a client from KUBECONFIG")
}

/// A fresh namespace that enforces the restricted Pod Security Standard, as the operator's own
/// does: the workload's pod template must pass it for kwok to get Pods at all.
pub async fn namespace(client: &Client, name: &str) -> String {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    if namespaces
        .get_opt(name)
        .await
        .expect("read namespace")
        .is_some()
    {
        namespaces
            .delete(name, &DeleteParams::foreground())
            .await
            .expect("delete the namespace of an earlier run");
        eventually(
            &format!("namespace {name} of an earlier run is gone"),
            || async {
                wake_namespace_controller_once_empty(client, name).await;
                namespaces
                    .get_opt(name)
                    .await
                    .expect("read namespace")
                    .is_none()
            },
        )
        .await;
    }
    let namespace: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}
    }))
    .unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .expect("create the test namespace");
    name.to_string()
}

/// Wait until no namespace is terminating: an earlier test's cleanup (its pods draining, the
/// operator's reconciles of CRs whose children go) over before a test counts or times anything.
///
/// The namespace controller looks at a namespace whose pods are still terminating again only after
/// half their grace period, and pods held by long operations get long ones (50 min for 10 min
/// operations): CI saw a namespace stay Terminating minutes after its last pod had gone. So once a
/// terminating namespace has no pods left, an annotation is written on it, an update the controller
/// acts on at once.
pub async fn wait_no_namespace_terminating(client: &Client) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    loop {
        let terminating: Vec<String> = namespaces
            .list(&Default::default())
            .await
            .expect("list namespaces")
            .items
            .into_iter()
            .filter(|ns| ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating"))
            .map(|ns| ns.name_any())
            .collect();
        if terminating.is_empty() {
            return;
        }
        for name in &terminating {
            wake_namespace_controller_once_empty(client, name).await;
        }
        assert!(
            started.elapsed() < 2 * TIMEOUT,
            "namespaces still terminating: {terminating:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// If the terminating namespace `name` holds no pods, touch it so the namespace controller finishes it
/// now rather than when the estimate it took from the pods' grace periods runs out.
async fn wake_namespace_controller_once_empty(client: &Client, name: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), name);
    let Ok(left) = pods.list(&Default::default()).await else {
        return;
    };
    if !left.items.is_empty() {
        return;
    }
    let touch = json!({"metadata": {"annotations": {
        "e2e.sandbox.perf.dev/emptied-at": unix_millis().to_string(),
    }}});
    // A namespace that went meanwhile is what was waited for; any other failure shows in the wait.
    let _ = Api::<Namespace>::all(client.clone())
        .patch(name, &PatchParams::default(), &Patch::Merge(&touch))
        .await;
}

/// Milliseconds since the Unix epoch: a value that differs on every write, so each one is an update.
fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_millis())
        .unwrap_or_default()
}

/// Delete the namespace of a test; the next run's [`namespace`] waits for it to be gone.
pub async fn delete_namespace(client: &Client, name: &str) {
    Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
        .expect("delete the test namespace");
}

/// Delete a child and wait until the operator has re-created it (a new uid).
pub async fn delete_and_see_recreated<K>(api: &Api<K>, name: &str)
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    let old = api.get(name).await.expect("read the child").uid();
    api.delete(name, &DeleteParams::default())
        .await
        .expect("delete the child");
    eventually(&format!("the deleted {name} is re-created"), || async {
        api.get_opt(name)
            .await
            .expect("read the child")
            .is_some_and(|child| child.uid() != old)
    })
    .await;
}

/// Poll every 250 ms until `poll` gives a value, or fail naming `what`.
pub async fn wait_until<T, F, Fut>(what: &str, poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until_within(TIMEOUT, what, poll).await
}

/// [`wait_until`] with another limit than [`TIMEOUT`].
pub async fn wait_until_within<T, F, Fut>(limit: Duration, what: &str, mut poll: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = poll().await {
            return value;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Wait until `check` holds (see [`wait_until`]); how long that took.
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    wait_until(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await;
    start.elapsed()
}

/// The HPA's conditions as (type, status, reason): what the CR's `status.autoscaling` shows of
/// them.
pub fn hpa_conditions(hpa: &HorizontalPodAutoscaler) -> Vec<(String, String, String)> {
    hpa.status
        .iter()
        .flat_map(|status| status.conditions.iter().flatten())
        .map(|c| {
            let reason = c.reason.clone().unwrap_or_default();
            (c.type_.clone(), c.status.clone(), reason)
        })
        .collect()
}

/// Whether the HPA reads its metric (`ScalingActive=True`): the adapter serves the pods' series.
pub fn hpa_reads_its_metric(hpa: &HorizontalPodAutoscaler) -> bool {
    hpa_conditions(hpa)
        .iter()
        .any(|(type_, status, _)| type_ == "ScalingActive" && status == "True")
}

/// How long an HPA must leave its status alone to count as settled: two of the test bed's HPA
/// sync periods (`TESTBED_HPA_SYNC`, 5 s), with a second to spare.
const HPA_QUIET: Duration = Duration::from_secs(11);

/// Whether the HPA holds a stabilized recommendation (`AbleToScale` reason `ScaleDownStabilized`
/// or `ScaleUpStabilized`): a state that ends by itself when its window passes, writing the HPA's
/// conditions (and so the CR's) with no one acting. Right after its creation an HPA holds its
/// first replica count for the whole scale-down window (300 s unless the CR says otherwise).
fn hpa_is_stabilized(hpa: &HorizontalPodAutoscaler) -> bool {
    hpa_conditions(hpa)
        .iter()
        .any(|(type_, _, reason)| type_ == "AbleToScale" && reason.ends_with("Stabilized"))
}

/// Wait until the HPA `name` reads its metric (`ScalingActive=True`), holds no stabilized
/// recommendation, has not written its status for [`HPA_QUIET`], and the SandboxService `name`
/// reports the HPA's conditions. A test calling this gives its CR a short scale-down window
/// (`scaleDownStabilizationSeconds: 0`), or waits out the default 300 s. The
/// CR's status reflects the HPA's decisions and conditions, so a test that counts the operator's
/// own writes starts from here: later CR writes are not the HPA's, reflected (nor owed to an
/// operator that had not caught up yet, which a restarted one would rightly make).
pub async fn wait_hpa_settled(client: &Client, namespace: &str, name: &str) {
    let settled = wait_hpa_quiet(client, namespace, name).await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), namespace);
    let conditions = hpa_conditions(&settled);
    wait_until("the CR's status reports its HPA's conditions", || async {
        let reported = crs.get(name).await.ok()?.status?.autoscaling?.conditions;
        let reported: Vec<_> = reported
            .into_iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect();
        (reported == conditions).then_some(())
    })
    .await;
}

/// The HPA `name` once it reads its metric, holds no stabilized recommendation and has not
/// written its status for [`HPA_QUIET`].
async fn wait_hpa_quiet(client: &Client, namespace: &str, name: &str) -> HorizontalPodAutoscaler {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
    let start = Instant::now();
    let mut last_seen = None;
    let mut last_change: Option<(String, Instant)> = None;
    loop {
        if let Some(hpa) = hpas.get_opt(name).await.expect("read the HPA") {
            let reads = hpa_reads_its_metric(&hpa);
            let version = hpa.resource_version().unwrap_or_default();
            match &last_change {
                Some((seen, since)) if *seen == version => {
                    if reads && !hpa_is_stabilized(&hpa) && since.elapsed() >= HPA_QUIET {
                        return hpa;
                    }
                }
                _ => last_change = Some((version, Instant::now())),
            }
            last_seen = Some(hpa_conditions(&hpa));
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "timed out after {TIMEOUT:?} waiting until the HPA {namespace}/{name} reads its metric, holds no stabilized recommendation and is quiet for {HPA_QUIET:?}; its conditions: {last_seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Counts, per HPA of a namespace, the changes of its conditions (type, status, reason) from its
/// start until dropped: what the CR's `status.autoscaling.conditions` reflects, so each is one
/// status write the HPA caused. The HPA controller writes an HPA's status at most once per sync
/// (5 s on the test bed), so a look every 250 ms sees every state it passes through; an API
/// server that does not answer answers no writer either.
pub struct HpaConditionChanges {
    changes: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, usize>>>,
    task: tokio::task::JoinHandle<()>,
}

impl HpaConditionChanges {
    pub fn count(client: &Client, namespace: &str) -> Self {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
        let changes = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
        let into = changes.clone();
        let task = tokio::spawn(async move {
            let mut last: std::collections::HashMap<String, Vec<(String, String, String)>> =
                std::collections::HashMap::new();
            loop {
                if let Ok(list) = hpas.list(&Default::default()).await {
                    for hpa in list.items {
                        let name = hpa.name_any();
                        let conditions = hpa_conditions(&hpa);
                        if let Some(before) = last.insert(name.clone(), conditions.clone())
                            && before != conditions
                        {
                            *into.lock().unwrap().entry(name).or_insert(0) += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Self { changes, task }
    }

    /// The changes so far, per HPA name.
    pub fn changes(&self) -> std::collections::BTreeMap<String, usize> {
        self.changes.lock().unwrap().clone()
    }
}

impl Drop for HpaConditionChanges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Wait until the namespaced object `name` exists, and return it.
pub async fn wait_for<K>(client: &Client, namespace: &str, name: &str) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    wait_until(
        &format!("{} {namespace}/{name} exists", K::kind(&())),
        || async { api.get_opt(name).await.expect("read the object") },
    )
    .await
}

/// Server-side apply `object` as the test's field manager.
pub async fn apply<K>(api: &Api<K>, object: serde_json::Value) -> Result<K, kube::Error>
where
    K: Resource + Clone + std::fmt::Debug + DeserializeOwned,
{
    let name = object["metadata"]["name"]
        .as_str()
        .expect("named")
        .to_string();
    api.patch(
        &name,
        &PatchParams::apply(TEST_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// The operator under test: `operator run` as its own process, authenticated as its
/// ServiceAccount, so every call goes through the shipped RBAC.
pub struct Operator {
    child: Child,
    /// Identity in the leader election.
    pub identity: String,
    /// Name of its Lease in `sandbox-system`.
    pub lease: String,
    /// Its admin server (/readyz).
    pub admin: SocketAddr,
    /// Its metrics server (HTTPS /metrics).
    pub metrics: SocketAddr,
    log: PathBuf,
}

impl Operator {
    /// Start `operator run` competing for `lease` as `identity`.
    pub fn start(lease: &str, identity: &str) -> Self {
        Self::start_via(lease, identity, &cluster().operator_kubeconfig)
    }

    /// [`Operator::start`] with another kubeconfig of the operator's ServiceAccount (e.g. one
    /// whose server is a proxy, see [`operator_kubeconfig_via`]).
    pub fn start_via(lease: &str, identity: &str, kubeconfig: &Path) -> Self {
        Self::spawn(lease, identity, kubeconfig, &[])
    }

    /// [`Operator::start`] with more `operator run` arguments (e.g. `--namespace`).
    pub fn start_with_args(lease: &str, identity: &str, args: &[&str]) -> Self {
        Self::spawn(lease, identity, &cluster().operator_kubeconfig, args)
    }

    fn spawn(lease: &str, identity: &str, kubeconfig: &Path, args: &[&str]) -> Self {
        grant_lease(lease);
        let admin = free_port();
        let metrics = free_port();
        // One log per process of this run: a 403 of an earlier run must not fail this one.
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let log = work_dir().join(format!("operator-{lease}-{identity}-{n}.log"));
        let log_file = std::fs::File::create(&log).expect("create the operator's log");
        let child = Command::new(env!("CARGO_BIN_EXE_operator"))
            .args([
                "run",
                "--admin-addr",
                &admin.to_string(),
                "--metrics-addr",
                &metrics.to_string(),
                "--lease-name",
                lease,
            ])
            .args([
                "--lease-namespace",
                OPERATOR_NAMESPACE,
                "--identity",
                identity,
            ])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube=warn,operator=debug")
            .stdout(log_file.try_clone().expect("clone log handle"))
            .stderr(log_file)
            .spawn()
            .expect("start operator run");
        Self {
            child,
            identity: identity.to_string(),
            lease: lease.to_string(),
            admin,
            metrics,
            log,
        }
    }

    /// Start an operator and wait until it holds its Lease with synced caches.
    pub async fn start_leading(client: &Client, lease: &str, identity: &str) -> Self {
        let operator = Self::start(lease, identity);
        operator.wait_leading(client).await;
        operator
    }

    /// Wait until this process holds the Lease and answers /readyz.
    pub async fn wait_leading(&self, client: &Client) {
        eventually(
            &format!("{} leads Lease {}", self.identity, self.lease),
            || async {
                lease_holder(client, &self.lease).await.as_deref() == Some(self.identity.as_str())
                    && http_get(self.admin, "/readyz").is_some_and(|(status, _)| status == 200)
            },
        )
        .await;
    }

    /// Process id, for signals.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send a signal by name (`STOP`, `CONT`, `KILL`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Its exit status, if it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("poll the operator process")
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stop it with SIGTERM (as Kubernetes does), wait for it, and fail on any 403 it met:
    /// the shipped RBAC must allow everything the operator does.
    pub fn stop(self) -> String {
        let identity = self.identity.clone();
        let log = self.stop_unchecked();
        assert_no_forbidden(&identity, &log);
        log
    }

    /// Stop it with SIGTERM and wait for it, without looking at its log: for a test that checks
    /// the 403s it may meet itself (an API server just restarted answers some until its RBAC
    /// caches are filled).
    pub fn stop_unchecked(mut self) -> String {
        if self.exited().is_none() {
            self.signal("TERM");
            let deadline = Instant::now() + Duration::from_secs(20);
            while self.exited().is_none() {
                assert!(
                    Instant::now() < deadline,
                    "{} ignored SIGTERM",
                    self.identity
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        self.log()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        // A failed test must not leave an operator running: kill it hard.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An operator's metrics server, where a test reads how much it reconciled: the process a test
/// started ([`Operator`]) or the installed one's pod.
pub trait MetricsServer {
    /// Address of its HTTPS /metrics.
    fn metrics(&self) -> SocketAddr;

    /// Who it is, for messages.
    fn identity(&self) -> &str;

    /// `sandbox_operator_reconciliations_total` from its /metrics.
    fn reconciliations(&self) -> Option<u64> {
        let (status, body) = metrics_get(self.metrics(), Some(&cluster().metrics_token))?;
        if status != 200 {
            return None;
        }
        body.lines()
            .find_map(|line| line.strip_prefix("sandbox_operator_reconciliations_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(|value| value as u64)
    }

    /// Wait until its reconciliations stop for `quiet`, and return the count.
    async fn wait_idle(&self, quiet: Duration) -> u64 {
        let mut last = (self.reconciliations(), Instant::now());
        let start = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = self.reconciliations();
            if now != last.0 {
                last = (now, Instant::now());
            } else if now.is_some() && last.1.elapsed() >= quiet {
                return now.unwrap_or_default();
            }
            assert!(
                start.elapsed() < TIMEOUT,
                "{} never went idle",
                self.identity()
            );
        }
    }
}

impl MetricsServer for Operator {
    fn metrics(&self) -> SocketAddr {
        self.metrics
    }

    fn identity(&self) -> &str {
        &self.identity
    }
}

/// Fail when the operator's log shows a 403 from the API server. The one 403 that is not about
/// permissions, an Event refused because its namespace is being deleted, does not count.
pub fn assert_no_forbidden(identity: &str, log: &str) {
    let forbidden = forbidden_lines(log);
    assert!(
        forbidden.is_empty(),
        "operator {identity} was refused by RBAC:\n{}",
        forbidden.join("\n")
    );
}

/// The lines of an operator's log that show a 403 from the API server, but for an Event refused
/// because its namespace is being deleted.
pub fn forbidden_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("Forbidden") || line.contains("code: 403"))
        .filter(|line| !line.contains("NamespaceTerminating"))
        .collect()
}

/// Holder of the Lease `name` in the operator's namespace.
pub async fn lease_holder(client: &Client, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    leases
        .get_opt(name)
        .await
        .expect("read the Lease")
        .and_then(|lease| lease.spec)
        .and_then(|spec| spec.holder_identity)
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// A plain HTTP/1.0 GET to the admin server: status and body, `None` when it does not answer.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())?;
    Some((status, body))
}

/// `kubectl auth can-i VERB RESOURCE SCOPE… --as USER`, RESOURCE being `plural.group` or
/// `plural.group/subresource`, SCOPE e.g. `-n NS` or `--all-namespaces`: whether the API server
/// allows it.
pub fn can_i(user: &str, verb: &str, resource: &str, scope: &[&str]) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let subresource = format!("--subresource={subresource}");
    let mut args = vec!["auth", "can-i", verb, resource, &subresource, "--as", user];
    args.extend(scope);
    kubectl(&args).is_ok()
}

/// `GET /metrics` over HTTPS at `addr` with `token` as the bearer token (none: no header), as
/// curl does it: the status and the body. The operator's certificate is self-signed, so it is
/// not verified; the token is what the operator checks.
pub fn metrics_get(addr: SocketAddr, token: Option<&str>) -> Option<(u16, String)> {
    let mut curl = Command::new("curl");
    curl.args(["-sk", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(token) = token {
        curl.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = curl.arg(format!("https://{addr}/metrics")).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once('\n')?;
    let status = status.trim().parse().ok().filter(|&code| code != 0)?;
    Some((status, body.to_string()))
}

/// Where the tests' metrics reader lives: not in the operator's namespace, which uninstalling
/// the operator deletes (and with its ServiceAccount, the token), as a scraper's is not.
const METRICS_READER_NAMESPACE: &str = "default";

/// A token of the ServiceAccount `e2e-metrics-reader`, made and bound to the shipped
/// metrics-reader ClusterRole here.
fn metrics_reader_token() -> String {
    let reader = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "e2e-metrics-reader", "namespace": METRICS_READER_NAMESPACE}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "e2e-metrics-reader"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                     "name": operator::manifests::rbac::METRICS_READER_ROLE},
         "subjects": [{"kind": "ServiceAccount", "name": "e2e-metrics-reader", "namespace": METRICS_READER_NAMESPACE}]},
    ]});
    kubectl_with_input(
        &["apply", "--server-side", "-f", "-"],
        Some(&reader.to_string()),
    )
    .unwrap_or_else(|error| panic!("make the metrics reader: {error}"));
    kubectl_ok(&[
        "create",
        "token",
        "e2e-metrics-reader",
        "-n",
        METRICS_READER_NAMESPACE,
        "--duration=4h",
    ])
    .trim()
    .to_string()
}

/// The `resourceVersion` of each object, to show that nothing was written.
pub fn versions<K: Resource>(objects: &[&K]) -> Vec<(String, Option<String>)> {
    objects
        .iter()
        .map(|o| (o.name_any(), o.resource_version()))
        .collect()
}

/// `scripts/testbed.sh ARGS` (e.g. `stop etcd`, `start kube-apiserver`), which must succeed: the
/// fault tests' outages. Only a test bed started by that script can be driven this way.
fn testbed(args: &[&str]) {
    assert!(
        std::env::var_os("TESTBED_DIR").is_some(),
        "TESTBED_DIR is not set: this test stops and starts the test bed's components, which \
         only scripts/testbed.sh can do; eval \"$(scripts/testbed.sh env)\""
    );
    let output = Command::new(repo_file("scripts/testbed.sh"))
        .args(args)
        .output()
        .expect("run scripts/testbed.sh");
    assert!(
        output.status.success(),
        "scripts/testbed.sh {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A test bed component stopped by a test, started again when dropped if the test did not start
/// it itself: a test that fails mid-outage must not leave etcd down under every later test.
pub struct StoppedComponent(Option<&'static str>);

impl StoppedComponent {
    /// `scripts/testbed.sh stop COMPONENT`.
    pub fn stop(component: &'static str) -> Self {
        testbed(&["stop", component]);
        Self(Some(component))
    }

    /// `scripts/testbed.sh start COMPONENT`, which must succeed.
    pub fn start(mut self) {
        if let Some(component) = self.0.take() {
            testbed(&["start", component]);
        }
    }
}

impl Drop for StoppedComponent {
    fn drop(&mut self) {
        if let Some(component) = self.0.take() {
            let _ = Command::new(repo_file("scripts/testbed.sh"))
                .args(["start", component])
                .status();
        }
    }
}
