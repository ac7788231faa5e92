//! End-to-end on a real API server: the test bed (`testbed/build.sh && scripts/testbed.sh up`)
//! or any disposable cluster. Ignored by default; run with the cluster in `KUBECONFIG`:
//!
//! ```sh
//! eval "$(scripts/testbed.sh env)"
//! cargo test -p operator --test e2e -- --ignored --test-threads=1
//! ```
//!
//! One test at a time (`--test-threads=1`): each starts its own `operator run` process, and two
//! operators on different Leases would both reconcile every namespace. The operator runs as the
//! `sandbox-operator` ServiceAccount (a TokenRequest token), so every call it makes goes through
//! the shipped RBAC; a 403 in its log fails the test. These run on kwok's nodes
//! (`TESTBED_NODES=kwok`), where the installed operator's pod runs nothing; the `node::` tests run
//! on the real node instead, against the installed operator (`--skip node::` and `node::`).

mod audit;
mod autoscale;
mod faults;
mod harness;
mod node;
mod outages;
#[path = "../support/refused_crs.rs"]
mod refused_crs;
mod rollout;

use std::time::{Duration, Instant};

use harness::{
    Operator, admin_client, apply, cluster, delete_and_see_recreated, delete_namespace, eventually,
    kubectl, kubectl_ok, lease_holder, namespace, versions, wait_for, wait_until,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, ValidationDirective};
use kube::{Client, Resource, ResourceExt};
use operator::build::ServiceMonitor;
use operator::names::SERVICE_MONITOR_CRD;
use operator::spec::SandboxService;
use serde_json::{Value, json};

const SERVICE_MONITOR_CRD_FILE: &str =
    "third_party/prometheus-operator/monitoring.coreos.com_servicemonitors.yaml";

fn sandbox(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxService",
        "metadata": {"name": name}, "spec": spec,
    })
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

fn install_service_monitor_crd() {
    kubectl_ok(&["apply", "--server-side", "-f", SERVICE_MONITOR_CRD_FILE]);
    kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        &format!("crd/{SERVICE_MONITOR_CRD}"),
        "--timeout=60s",
    ]);
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

#[tokio::test]
#[ignore = "needs a cluster"]
async fn the_examples_get_owned_children_status_columns_and_events() {
    let client = admin_client().await;
    install_service_monitor_crd();
    let operator = Operator::start_leading(&client, "e2e-examples", "examples").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), "default");
    for (file, name) in [
        ("deploy/examples/seed.yaml", "performance-sandbox"),
        ("deploy/examples/full.yaml", "sandbox-full"),
    ] {
        kubectl_ok(&["apply", "-f", file]);
        let cr = wait_cr(&crs, name, "is Ready", ready_and_current).await;
        owned_children(&client, "default", &cr, true).await;
        assert!(
            cr.status.as_ref().unwrap().ready_replicas >= 1,
            "{:?}",
            cr.status
        );
    }

    // The printer columns, as a user sees them.
    let table = kubectl_ok(&["get", "sbx", "-n", "default"]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["NAME", "READY", "CONCURRENCY", "TARGET", "AGE"],
        "{table}"
    );
    let seed_row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("performance-sandbox "))
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(seed_row[1..4], ["1", "1", "1"], "{table}");

    // A spec change: a new generation, observed once applied.
    let generation = crs
        .get("performance-sandbox")
        .await
        .unwrap()
        .meta()
        .generation
        .unwrap();
    kubectl_ok(&[
        "patch",
        "sbx",
        "performance-sandbox",
        "-n",
        "default",
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":2}}"#,
    ]);
    let cr = wait_cr(
        &crs,
        "performance-sandbox",
        "observes the new generation",
        |cr| cr.meta().generation == Some(generation + 1) && ready_and_current(cr),
    )
    .await;
    let deployment: Deployment = wait_for(&client, "default", &cr.name_any()).await;
    let env = &deployment.spec.unwrap().template.spec.unwrap().containers[0].env;
    let concurrency = env
        .iter()
        .flatten()
        .find(|e| e.name == "CONCURRENCY")
        .unwrap();
    assert_eq!(concurrency.value.as_deref(), Some("2"));

    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let applied: Vec<Event> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == cr.uid().as_deref()
                && e.reporting_controller.as_deref() == Some("sandbox-operator")
        })
        .collect();
    // One Event per generation applied; kube's recorder folds repeats of a reason into one
    // Event's `series.count`.
    let applied_count: i32 = applied
        .iter()
        .filter(|e| e.reason.as_deref() == Some("Applied"))
        .map(|e| e.series.as_ref().map_or(1, |series| series.count))
        .sum();
    assert!(applied_count >= 2, "{applied:?}");

    for name in ["performance-sandbox", "sandbox-full"] {
        crs.delete(name, &DeleteParams::background()).await.unwrap();
    }
    operator.stop();
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn drift_is_repaired_replicas_stay_with_the_hpa_and_deletion_collects_children() {
    let client = admin_client().await;
    install_service_monitor_crd();
    let ns = namespace(&client, "e2e-drift").await;
    let operator = Operator::start_leading(&client, "e2e-drift", "drift").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(
        &crs,
        sandbox("drift", json!({"autoscaling": {"maxReplicas": 5}})),
    )
    .await
    .unwrap();
    let cr = wait_cr(&crs, "drift", "is Ready", ready_and_current).await;
    owned_children(&client, &ns, &cr, true).await;

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let monitors: Api<ServiceMonitor> = Api::namespaced(client.clone(), &ns);

    // A managed field of each child changed by hand comes back.
    kubectl_ok(&["set", "env", "deployment/drift", "-n", &ns, "CONCURRENCY=9"]);
    eventually("the Deployment's CONCURRENCY is restored", || async {
        let d = deployments.get("drift").await.unwrap();
        let env = d.spec.unwrap().template.spec.unwrap().containers[0]
            .env
            .clone()
            .unwrap_or_default();
        env.iter()
            .any(|e| e.name == "CONCURRENCY" && e.value.as_deref() == Some("1"))
    })
    .await;
    kubectl_ok(&[
        "patch",
        "service",
        "drift",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/ports/0/port","value":81}]"#,
    ]);
    // Repaired by one field manager, by apply alone: a field later dropped from the spec must
    // not stay behind, co-owned by a leftover `Update` entry. The repair's merge patch restores
    // the port a moment before its entry is removed, so wait for both.
    let operator_entries = |service: &Service| -> Vec<Option<String>> {
        service
            .managed_fields()
            .iter()
            .filter(|e| e.manager.as_deref() == Some("sandbox-operator"))
            .map(|e| e.operation.clone())
            .collect()
    };
    eventually("the Service port is restored by apply alone", || async {
        let service = services.get("drift").await.unwrap();
        service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port == 80
            && operator_entries(&service) == [Some("Apply".to_string())]
    })
    .await;
    let service = services.get("drift").await.unwrap();
    assert_eq!(
        service.spec.as_ref().unwrap().ports.as_ref().unwrap().len(),
        1
    );
    assert_eq!(operator_entries(&service), [Some("Apply".to_string())]);
    kubectl_ok(&[
        "patch",
        "hpa",
        "drift",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"maxReplicas":7}}"#,
    ]);
    eventually("the HPA's maxReplicas is restored", || async {
        hpas.get("drift").await.unwrap().spec.unwrap().max_replicas == 5
    })
    .await;
    kubectl_ok(&[
        "patch",
        "servicemonitor",
        "drift",
        "-n",
        &ns,
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/endpoints/0/interval","value":"99s"}]"#,
    ]);
    eventually("the ServiceMonitor's interval is restored", || async {
        let sm = serde_json::to_value(monitors.get("drift").await.unwrap()).unwrap();
        sm["spec"]["endpoints"][0]["interval"] == "5s"
    })
    .await;

    // A deleted child is re-created.
    delete_and_see_recreated(&services, "drift").await;

    // `kubectl scale` is not reverted: replicas belong to the HPA, never to the operator.
    kubectl_ok(&["scale", "deployment/drift", "-n", &ns, "--replicas=3"]);
    let before = operator.wait_idle(Duration::from_secs(1)).await;
    kubectl_ok(&["annotate", "sbx", "drift", "-n", &ns, "e2e/touch=1"]);
    eventually("the operator reconciles the touched CR", || async {
        operator.reconciliations().unwrap_or_default() > before
    })
    .await;
    operator.wait_idle(Duration::from_secs(1)).await;
    let deployment = deployments.get("drift").await.unwrap();
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(3));
    for entry in deployment.managed_fields() {
        let fields = serde_json::to_string(&entry.fields_v1).unwrap();
        if entry.manager.as_deref() == Some("sandbox-operator") {
            assert!(
                !fields.contains("f:replicas"),
                "the operator owns spec.replicas: {fields}"
            );
        }
    }

    // Deleting the CR lets the garbage collector remove every child.
    crs.delete("drift", &DeleteParams::background())
        .await
        .unwrap();
    eventually("the garbage collector removed every child", || async {
        deployments.get_opt("drift").await.unwrap().is_none()
            && services.get_opt("drift").await.unwrap().is_none()
            && hpas.get_opt("drift").await.unwrap().is_none()
            && monitors.get_opt("drift").await.unwrap().is_none()
    })
    .await;
    operator.stop();
}

/// Delete the CR `name`, wait until it is gone, and apply a default one of the same name.
async fn recreate(crs: &Api<SandboxService>, name: &str) {
    crs.delete(name, &DeleteParams::background()).await.unwrap();
    eventually(&format!("the old {name} is gone"), || async {
        crs.get_opt(name).await.unwrap().is_none()
    })
    .await;
    apply(crs, sandbox(name, json!({}))).await.unwrap();
}

/// Runs a kubectl command when dropped, also when the test fails half way: what a test changed
/// for itself must not reach the tests after it, or the next run on the same test bed.
struct KubectlOnDrop(Vec<String>);

impl Drop for KubectlOnDrop {
    fn drop(&mut self) {
        let args: Vec<&str> = self.0.iter().map(String::as_str).collect();
        if let Err(error) = kubectl(&args) {
            eprintln!("kubectl {}: {error}", args.join(" "));
        }
    }
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn out_of_range_integers_are_refused_and_an_undecodable_cr_stops_no_other() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-decode").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    for spec in [
        json!({"concurrency": 3_000_000_000_i64}),
        json!({"autoscaling": {"minReplicas": 3_000_000_000_i64, "maxReplicas": 3_000_000_000_i64}}),
        json!({"service": {"port": 3_000_000_000_i64}}),
    ] {
        let refused = apply(&crs, sandbox("huge", spec.clone()))
            .await
            .expect_err("refused");
        assert!(
            refused
                .to_string()
                .contains("should be less than or equal to"),
            "{spec}: {refused}"
        );
    }

    // A CR as an operator meets it when its CRD is older or newer than its types: no int32
    // maximum, a field the operator does not know. Before the fix, decoding it failed the
    // whole SandboxService list and no CR in any namespace was reconciled.
    let crd = "crd/sandboxservices.sandbox.perf.dev";
    let spec_schema = "/spec/versions/0/schema/openAPIV3Schema/properties/spec";
    // The committed CRD again at the end.
    let _restore = KubectlOnDrop(
        ["replace", "-f", "crds/sandboxservice.yaml"]
            .map(String::from)
            .to_vec(),
    );
    kubectl_ok(&["patch", crd, "--type=json", "-p", &json!([
        {"op": "remove", "path": format!("{spec_schema}/properties/concurrency/maximum")},
        {"op": "add", "path": format!("{spec_schema}/x-kubernetes-preserve-unknown-fields"), "value": true},
    ]).to_string()]);
    eventually("the relaxed CRD accepts the undecodable CR", || async {
        let undecodable = json!({"concurrency": 3_000_000_000_i64, "futureField": true});
        apply(&crs, sandbox("undecodable", undecodable))
            .await
            .is_ok()
    })
    .await;
    apply(&crs, sandbox("good", json!({}))).await.unwrap();

    let operator = Operator::start_leading(&client, "e2e-decode", "decode").await;
    wait_cr(
        &crs,
        "good",
        "is Ready beside an undecodable CR",
        ready_and_current,
    )
    .await;
    let bad = wait_cr(&crs, "undecodable", "is Degraded", |cr| {
        is_true(cr, "Degraded")
    })
    .await;
    let degraded = condition(&bad, "Degraded").unwrap();
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded.message.contains("spec.concurrency"),
        "{}",
        degraded.message
    );
    operator.stop();
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn recreated_crs_and_existing_deployments_end_ready_or_degraded_without_403() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-owners").await;
    let operator = Operator::start_leading(&client, "e2e-owners", "owners").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    // Deleted and re-created before the garbage collector removed the old children: the
    // operator takes them over, changing their ownerReferences. A finalizer holds the old
    // Deployment back, so this happens every time rather than when the operator wins a race.
    apply(&crs, sandbox("recreated", json!({}))).await.unwrap();
    let old = wait_cr(&crs, "recreated", "is Ready", ready_and_current).await;
    let set_finalizers = |finalizers: &str| {
        [
            "patch",
            "deployment",
            "recreated",
            "-n",
            &ns,
            "--type=merge",
            "-p",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!(r#"{{"metadata":{{"finalizers":{finalizers}}}}}"#)])
        .collect::<Vec<String>>()
    };
    fn args(command: &[String]) -> Vec<&str> {
        command.iter().map(String::as_str).collect()
    }
    kubectl_ok(&args(&set_finalizers(r#"["e2e.test/hold"]"#)));
    // Released below; also if the test fails first, or the namespace would never go away.
    let release = set_finalizers("null");
    let _release_on_failure = KubectlOnDrop(release.clone());
    recreate(&crs, "recreated").await;
    let new = wait_cr(&crs, "recreated", "exists again", |cr| {
        cr.uid() != old.uid()
    })
    .await;
    eventually("the held Deployment names the new CR", || async {
        let held = deployments.get("recreated").await.unwrap();
        held.owner_references()
            .iter()
            .any(|r| Some(&r.uid) == new.uid().as_ref())
    })
    .await;
    kubectl_ok(&args(&release));
    // The garbage collector may still remove the held Deployment; the operator re-creates it.
    // Then once more without the finalizer, racing the garbage collector as a user would.
    let cr = wait_cr(&crs, "recreated", "is Ready", ready_and_current).await;
    owned_children(&client, &ns, &cr, false).await;
    recreate(&crs, "recreated").await;
    let cr = wait_cr(&crs, "recreated", "is Ready again", ready_and_current).await;
    owned_children(&client, &ns, &cr, false).await;

    // A Deployment made before the CR from `operator render` (a by-hand install): adopted.
    let adopted = sandbox("adopted", json!({}));
    let rendered = operator::manifests::render::render(
        "adopted.yaml",
        &serde_yaml::to_string(&adopted).unwrap(),
    )
    .unwrap();
    let by_hand = rendered
        .split("---\n")
        .find(|doc| doc.contains("kind: Deployment"))
        .unwrap();
    harness::kubectl_with_input(&["create", "-n", &ns, "-f", "-"], Some(by_hand)).unwrap();
    apply(&crs, adopted).await.unwrap();
    let cr = wait_cr(&crs, "adopted", "is Ready", ready_and_current).await;
    owned_children(&client, &ns, &cr, false).await;

    // One whose immutable selector differs cannot be taken over: Degraded, naming it.
    kubectl_ok(&[
        "create",
        "deployment",
        "clash",
        "-n",
        &ns,
        "--image=registry.invalid/clash",
    ]);
    apply(&crs, sandbox("clash", json!({}))).await.unwrap();
    let cr = wait_cr(&crs, "clash", "is Degraded", |cr| is_true(cr, "Degraded")).await;
    let degraded = condition(&cr, "Degraded").unwrap();
    assert_eq!(degraded.reason, "ApplyFailed");
    assert!(
        degraded.message.contains("Deployment") && degraded.message.contains("clash"),
        "{}",
        degraded.message
    );
    assert_eq!(
        deployments.get("clash").await.unwrap().owner_references(),
        []
    );

    delete_namespace(&client, &ns).await;
    operator.stop();
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_service_monitor_crd_installed_while_running_is_used_without_restart() {
    let client = admin_client().await;
    let _ = kubectl(&[
        "delete",
        "crd",
        SERVICE_MONITOR_CRD,
        "--ignore-not-found",
        "--wait=true",
    ]);
    let ns = namespace(&client, "e2e-late-crd").await;
    let mut operator = Operator::start_leading(&client, "e2e-late-crd", "late-crd").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(&crs, sandbox("late", json!({}))).await.unwrap();
    let cr = wait_cr(&crs, "late", "reports the missing CRD", |cr| {
        condition(cr, "Degraded").is_some_and(|c| c.reason == "ServiceMonitorCrdMissing")
    })
    .await;
    owned_children(&client, &ns, &cr, false).await;

    let installed = Instant::now();
    install_service_monitor_crd();
    let monitors: Api<ServiceMonitor> = Api::namespaced(client.clone(), &ns);
    eventually("the ServiceMonitor is created", || async {
        monitors.get_opt("late").await.ok().flatten().is_some()
    })
    .await;
    eprintln!(
        "ServiceMonitor created {:?} after the CRD was installed",
        installed.elapsed()
    );
    wait_cr(&crs, "late", "is no longer Degraded", |cr| {
        condition(cr, "Degraded").is_some_and(|c| c.status == "False")
    })
    .await;
    delete_and_see_recreated(&monitors, "late").await;
    assert_eq!(operator.exited(), None);
    delete_namespace(&client, &ns).await;
    operator.stop();
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
    apply(&crs, sandbox("led", json!({}))).await.unwrap();
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
    second.wait_idle(Duration::from_secs(2)).await;
    let before = child_writes(&client, &ns, "led").await;
    let cr_before = crs.get("led").await.unwrap().resource_version();

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
    assert_eq!(
        crs.get("led").await.unwrap().resource_version(),
        cr_before,
        "the CR status was written"
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
    apply(&crs, sandbox("steady", json!({}))).await.unwrap();
    wait_cr(&crs, "steady", "is Ready", ready_and_current).await;
    first.wait_idle(Duration::from_secs(2)).await;
    let children = child_writes(&client, &ns, "steady").await;
    let monitor = wait_for::<ServiceMonitor>(&client, &ns, "steady")
        .await
        .resource_version();
    let cr = crs.get("steady").await.unwrap().resource_version();

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
    assert_eq!(crs.get("steady").await.unwrap().resource_version(), cr);

    delete_namespace(&client, &ns).await;
    second.stop();
}
