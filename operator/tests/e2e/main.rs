//! End-to-end on a real API server: the test bed (`testbed/build.sh && scripts/testbed.sh up`)
//! or any disposable cluster. Ignored by default; run with the cluster in `KUBECONFIG`:
//!
//! ```sh
//! eval "$(scripts/testbed.sh env)"
//! cargo test -p operator --test e2e -- --ignored --test-threads=1
//! ```
//!
//! One test at a time (`--test-threads=1`): two operators on different Leases would both
//! reconcile every namespace. Two test beds, two halves of the suite:
//! - `node::` (`TESTBED_NODES=real`): the installed operator, in-cluster on the real node, for
//!   everything that needs no control of the operator's process;
//! - the rest (`--skip node::`, `TESTBED_NODES=kwok`, where the installed operator's pod runs
//!   nothing): tests that stop, freeze, kill or cut off the operator, or outages of the control
//!   plane, each starting its own `operator run` as the `sandbox-operator` ServiceAccount (a
//!   TokenRequest token, so every call goes through the shipped RBAC); and the stand-in's
//!   autoscaling and rollout tests, whose pods are its processes.
//!
//! Either way a 403 in the operator's log fails the test.

mod access;
mod audit;
mod faults;
mod harness;
mod load;
mod namespaced;
mod node;
mod outages;
mod policies;
#[path = "../support/refused_crs.rs"]
mod refused_crs;

use std::time::{Duration, Instant};

use harness::{
    MetricsServer, Operator, admin_client, apply, cluster, delete_namespace, eventually,
    kubectl_ok, lease_holder, namespace, versions, wait_for, wait_hpa_settled, wait_until,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, Patch, PatchParams, ValidationDirective};
use kube::{Client, Resource, ResourceExt};
use operator::api::SandboxService;
use operator::children::ServiceMonitor;
use operator::names::SERVICE_MONITOR_CRD;
use serde_json::{Value, json};

const SERVICE_MONITOR_CRD_FILE: &str =
    "third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml";

fn sandbox(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxService",
        "metadata": {"name": name}, "spec": spec,
    })
}

/// A spec whose HPA settles at once: without a scale-down window it holds no stabilized
/// recommendation that would end, and rewrite its conditions and the CR's, mid-test.
fn quick_to_settle() -> Value {
    json!({"autoscaling": {"scaleDownStabilizationSeconds": 0}})
}

fn condition(cr: &SandboxService, type_: &str) -> Option<Condition> {
    cr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .cloned()
}

fn is_true(cr: &SandboxService, type_: &str) -> bool {
    condition(cr, type_).is_some_and(|c| c.status == "True")
}

/// Wait until the CR satisfies `check`, and return it.
async fn wait_cr(
    crs: &Api<SandboxService>,
    name: &str,
    what: &str,
    check: impl Fn(&SandboxService) -> bool,
) -> SandboxService {
    wait_until(&format!("SandboxService {name} {what}"), || async {
        let cr = crs.get_opt(name).await.expect("read the CR")?;
        check(&cr).then_some(cr)
    })
    .await
}

/// Ready with the current generation observed.
fn ready_and_current(cr: &SandboxService) -> bool {
    is_true(cr, "Ready")
        && cr.status.as_ref().and_then(|s| s.observed_generation) == cr.meta().generation
}

/// Apply the ServiceMonitor CRD and wait until it is Established.
fn install_service_monitor_crd() {
    kubectl_ok(&["apply", "--server-side", "-f", SERVICE_MONITOR_CRD_FILE]);
    harness::wait_established(SERVICE_MONITOR_CRD);
}

/// Every child of CR `name`, each with a controller owner reference to it.
async fn owned_children(client: &Client, ns: &str, cr: &SandboxService, monitor: bool) {
    let uid = cr.uid().expect("stored CR has a uid");
    let name = cr.name_any();
    let owners = [
        wait_for::<Deployment>(client, ns, &name)
            .await
            .owner_references()
            .to_vec(),
        wait_for::<Service>(client, ns, &name)
            .await
            .owner_references()
            .to_vec(),
        wait_for::<HorizontalPodAutoscaler>(client, ns, &name)
            .await
            .owner_references()
            .to_vec(),
    ];
    let mut owners = owners.to_vec();
    if monitor {
        let service_monitor: ServiceMonitor = wait_for(client, ns, &name).await;
        owners.push(service_monitor.owner_references().to_vec());
    }
    for references in &owners {
        assert!(
            references
                .iter()
                .any(|r| r.uid == uid && r.controller == Some(true) && r.kind == "SandboxService"),
            "child of {name} lacks a controller owner reference to it: {references:?}"
        );
    }
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn install_applies_server_side_and_the_operator_pod_passes_restricted() {
    let output = &cluster().install_output;
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/sandboxservices.sandbox.perf.dev",
        "namespace/sandbox-system",
        "serviceaccount/sandbox-operator",
        "clusterrole.rbac.authorization.k8s.io/sandbox-operator",
        "clusterrolebinding.rbac.authorization.k8s.io/sandbox-operator",
        "deployment.apps/sandbox-operator",
    ] {
        assert!(
            output.contains(&format!("{object} serverside-applied")),
            "{output}"
        );
    }
    let client = admin_client().await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let labels = namespaces
        .get("sandbox-system")
        .await
        .unwrap()
        .labels()
        .clone();
    assert_eq!(labels["pod-security.kubernetes.io/enforce"], "restricted");
    // kwok's fake pod only exists if the restricted Pod Security admission accepted the template.
    let deployments: Api<Deployment> = Api::namespaced(client, "sandbox-system");
    eventually("the operator's own Deployment has a Ready pod", || async {
        let deployment = deployments.get("sandbox-operator").await.unwrap();
        deployment.status.and_then(|s| s.ready_replicas) == Some(1)
    })
    .await;
}

/// The client of every test comes from `operator::process::client::connect`; no test picks a rustls
/// crypto provider itself, although this test build links both ring and aws-lc-rs.
#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_client_connects_without_the_test_choosing_a_crypto_provider() {
    let client = admin_client().await;
    let version = client
        .apiserver_version()
        .await
        .expect("GET /version over TLS");
    assert_eq!(
        (version.major.as_str(), version.minor.as_str()),
        ("1", "34")
    );
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn the_api_server_and_render_refuse_the_same_crs_naming_the_same_field() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-validation").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    let dry_run = PatchParams {
        dry_run: true,
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply(harness::TEST_MANAGER)
    };
    for case in refused_crs::refused_crs() {
        let object = case.object();
        let name = object["metadata"]["name"].as_str().unwrap();
        let refused = crs
            .patch(name, &dry_run, &Patch::Apply(&object))
            .await
            .expect_err(&format!(
                "the API server's {:?} validation accepts {}",
                case.refused_by,
                case.yaml()
            ))
            .to_string();
        assert!(
            refused.contains(&case.field),
            "{refused}\nshould name {}",
            case.field
        );
        let rendered = operator::manifests::render::render("case.yaml", &case.yaml())
            .expect_err("render accepts what the API server refuses")
            .to_string();
        assert!(
            rendered.contains(&case.field),
            "{rendered}\nshould name {}",
            case.field
        );
    }
    // And the reverse: what the examples and fixtures hold, both accept.
    for file in [
        "deploy/examples/seed.yaml",
        "deploy/examples/full.yaml",
        "operator/tests/fixtures/minimal.yaml",
        "operator/tests/fixtures/full.yaml",
    ] {
        let text =
            std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        operator::manifests::render::render(file, &text)
            .unwrap_or_else(|e| panic!("render refuses {file}: {e}"));
        let mut object: Value = serde_yaml::from_str(&text).unwrap();
        object["metadata"]["namespace"] = json!(ns);
        // A fixture's uid (for render's owner references) names no stored object.
        object["metadata"].as_object_mut().unwrap().remove("uid");
        let name = object["metadata"]["name"].as_str().unwrap().to_string();
        crs.patch(&name, &dry_run, &Patch::Apply(&object))
            .await
            .unwrap_or_else(|e| panic!("the API server refuses {file}: {e}"));
    }
    delete_namespace(&client, &ns).await;
}

/// What shows a write to the children of `name`: the resourceVersion of the Deployment and the
/// Service, the generation of the HPA (the HPA controller writes its status every sync, so its
/// resourceVersion moves without the operator), and the time of each of the operator's
/// managedFields entries.
async fn child_writes(client: &Client, ns: &str, name: &str) -> Vec<(String, Option<String>)> {
    let deployment: Deployment = wait_for(client, ns, name).await;
    let service: Service = wait_for(client, ns, name).await;
    let hpa: HorizontalPodAutoscaler = wait_for(client, ns, name).await;
    let mut writes = versions(&[&deployment]);
    writes.extend(versions(&[&service]));
    writes.push((
        "hpa generation".into(),
        hpa.metadata.generation.map(|g| g.to_string()),
    ));
    for fields in [
        deployment.managed_fields(),
        service.managed_fields(),
        hpa.managed_fields(),
    ] {
        for entry in fields {
            if entry.manager.as_deref() == Some("sandbox-operator") {
                writes.push((
                    format!("{:?} {:?}", entry.operation, entry.subresource),
                    entry.time.as_ref().map(|t| t.0.to_string()),
                ));
            }
        }
    }
    writes
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_stopped_leader_is_replaced_and_writes_nothing_once_resumed() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-leader").await;
    let lease = "e2e-leader";
    let mut first = Operator::start(lease, "leader-a");
    first.wait_leading(&client).await;
    let mut second = Operator::start(lease, "leader-b");
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(&crs, sandbox("led", quick_to_settle()))
        .await
        .unwrap();
    wait_cr(&crs, "led", "is Ready", ready_and_current).await;

    // Idle first, so what follows tests stale state, not a write already under way.
    first.wait_idle(Duration::from_secs(2)).await;
    first.signal("STOP");
    let stopped = Instant::now();
    eventually("the standby takes the Lease over", || async {
        lease_holder(&client, lease).await.as_deref() == Some("leader-b")
    })
    .await;
    let takeover = stopped.elapsed();
    let limit = Duration::from_secs(operator::process::leader::LEASE_DURATION_SECONDS + 5);
    assert!(
        takeover <= limit,
        "took over after {takeover:?}, more than {limit:?}"
    );
    second.wait_leading(&client).await;
    eprintln!("standby took over {takeover:?} after SIGSTOP");

    // The new leader works: a spec change reaches the Deployment.
    kubectl_ok(&[
        "patch",
        "sbx",
        "led",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":3}}"#,
    ]);
    wait_cr(&crs, "led", "observes generation 2", |cr| {
        cr.meta().generation == Some(2) && ready_and_current(cr)
    })
    .await;
    // The new pod's metric reaches the HPA, whose conditions the CR's status shows.
    wait_hpa_settled(&client, &ns, "led").await;
    second.wait_idle(Duration::from_secs(2)).await;
    let before = child_writes(&client, &ns, "led").await;
    let cr_before = crs.get("led").await.unwrap();

    // The old leader resumes with stale state: it must notice it lost the Lease, write
    // nothing, and step down (exit, to rejoin as a fresh standby).
    first.signal("CONT");
    let resumed = Instant::now();
    while first.exited().is_none() {
        assert!(
            resumed.elapsed() < Duration::from_secs(30),
            "the old leader did not step down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        child_writes(&client, &ns, "led").await,
        before,
        "children were written"
    );
    let cr_after = crs.get("led").await.unwrap();
    assert_eq!(
        cr_after.resource_version(),
        cr_before.resource_version(),
        "the CR status was written: {:#?}\nwas {:#?}",
        cr_after.status,
        cr_before.status
    );
    assert!(first.log().contains("lost leadership"), "{}", first.log());
    assert_eq!(
        lease_holder(&client, lease).await.as_deref(),
        Some("leader-b")
    );
    assert_eq!(second.exited(), None);

    delete_namespace(&client, &ns).await;
    harness::assert_no_forbidden("leader-a", &first.log());
    second.stop();
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_killed_and_restarted_operator_moves_no_resource_version() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-restart").await;
    let lease = "e2e-restart";
    let first = Operator::start_leading(&client, lease, "restart").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    install_service_monitor_crd();
    apply(&crs, sandbox("steady", quick_to_settle()))
        .await
        .unwrap();
    wait_cr(&crs, "steady", "is Ready", ready_and_current).await;
    wait_hpa_settled(&client, &ns, "steady").await;
    first.wait_idle(Duration::from_secs(2)).await;
    let children = child_writes(&client, &ns, "steady").await;
    let monitor = wait_for::<ServiceMonitor>(&client, &ns, "steady")
        .await
        .resource_version();
    let cr = crs.get("steady").await.unwrap();

    first.signal("KILL");
    drop(first);
    let second = Operator::start_leading(&client, lease, "restart").await;
    // Its first list reconciles every CR at once; then it is idle.
    eventually("the restarted operator reconciles", || async {
        second.reconciliations().unwrap_or_default() >= 1
    })
    .await;
    second.wait_idle(Duration::from_secs(3)).await;
    assert_eq!(child_writes(&client, &ns, "steady").await, children);
    assert_eq!(
        wait_for::<ServiceMonitor>(&client, &ns, "steady")
            .await
            .resource_version(),
        monitor
    );
    let restarted = crs.get("steady").await.unwrap();
    assert_eq!(
        restarted.resource_version(),
        cr.resource_version(),
        "the restarted operator wrote the CR's status: {:#?}\nwas {:#?}",
        restarted.status,
        cr.status
    );

    delete_namespace(&client, &ns).await;
    second.stop();
}
