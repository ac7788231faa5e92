//! What the operator makes of SandboxServices, shown by the shipped operator running in-cluster on
//! the real node ([`InClusterOperator`]): children, status, drift, adoption, refusals, a CRD that
//! comes late. Each test finds the operator where the install left it and reads it as a user can.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams};
use kube::{Resource, ResourceExt};
use operator::api::SandboxService;
use operator::children::ServiceMonitor;
use operator::names::SERVICE_MONITOR_CRD;
use serde_json::json;

use super::in_cluster::InClusterOperator;
use crate::harness::{
    self, MetricsServer, admin_client, apply, delete_and_see_recreated, delete_namespace,
    eventually, kubectl, kubectl_ok, namespace, wait_for, wait_until_within,
};
use crate::{
    condition, install_service_monitor_crd, is_true, owned_children, ready_and_current, sandbox,
    wait_cr,
};

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_examples_get_owned_children_status_columns_and_events() {
    let client = admin_client().await;
    install_service_monitor_crd();
    let operator = InClusterOperator::leading(&client).await;
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
        [
            "NAME",
            "REPLICAS",
            "READY",
            "BACKPRESSURE",
            "METRIC",
            "DECIDED",
            "TARGET",
            "AGE"
        ],
        "{table}"
    );
    let seed_row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("performance-sandbox "))
        .unwrap()
        .split_whitespace()
        .collect();
    // DECIDED stays empty until the HPA's first scale decision: the cells after it are counted
    // from the end.
    assert_eq!(
        seed_row[1..5],
        ["1/1", "1", "False", "queue_ratio"],
        "{table}"
    );
    assert_eq!(seed_row[seed_row.len() - 2], "1", "the target: {table}");

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
    operator.check(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn drift_is_repaired_replicas_stay_with_the_hpa_and_deletion_collects_children() {
    let client = admin_client().await;
    install_service_monitor_crd();
    let ns = namespace(&client, "e2e-drift").await;
    let operator = InClusterOperator::leading(&client).await;
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

    // `kubectl scale` is not reverted: replicas belong to the HPA, never to the operator. Shown on
    // a CR whose HPA holds still: without a ServiceMonitor nothing scrapes its pods, so the HPA has
    // no queue_ratio and leaves replicas alone; only the operator could move them.
    let held = sandbox("held", json!({"monitoring": {"serviceMonitor": false}}));
    apply(&crs, held).await.unwrap();
    wait_cr(&crs, "held", "is Ready", ready_and_current).await;
    kubectl_ok(&["scale", "deployment/held", "-n", &ns, "--replicas=3"]);
    let before = operator.wait_idle(Duration::from_secs(1)).await;
    kubectl_ok(&["annotate", "sbx", "held", "-n", &ns, "e2e/touch=1"]);
    eventually("the operator reconciles the touched CR", || async {
        operator.reconciliations().unwrap_or_default() > before
    })
    .await;
    operator.wait_idle(Duration::from_secs(1)).await;
    let deployment = deployments.get("held").await.unwrap();
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
    operator.check(&client).await;
    delete_namespace(&client, &ns).await;
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
#[ignore = "needs the test bed's real node"]
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
    // whole SandboxService list and no CR in any namespace was reconciled. The running operator
    // meets it in its watch, and a new one in its first list.
    let operator = InClusterOperator::leading(&client).await;
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
    let operator = operator.restart(&client).await;
    kubectl_ok(&[
        "patch",
        "sbx",
        "good",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":2}}"#,
    ]);
    wait_cr(
        &crs,
        "good",
        "is reconciled by a new operator whose first list held an undecodable CR",
        |cr| cr.meta().generation == Some(2) && ready_and_current(cr),
    )
    .await;
    operator.check(&client).await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn recreated_crs_and_existing_deployments_end_ready_or_degraded_without_403() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-owners").await;
    let operator = InClusterOperator::leading(&client).await;
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
    operator.check(&client).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn a_service_monitor_crd_installed_while_running_is_used_without_restart() {
    let client = admin_client().await;
    let operator = InClusterOperator::leading(&client).await;
    let _ = kubectl(&[
        "delete",
        "crd",
        SERVICE_MONITOR_CRD,
        "--ignore-not-found",
        "--wait=true",
    ]);
    // A user who installs the Prometheus Operator after this one: it starts without the CRD.
    let operator = operator.restart(&client).await;
    let ns = namespace(&client, "e2e-late-crd").await;
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
    // The Prometheus Operator lost its ServiceMonitor watch with the CRD: it must pick the new one up
    // too, or every later ServiceMonitor in the cluster goes unscraped.
    wait_until_within(
        Duration::from_secs(180),
        "Prometheus scrapes the ServiceMonitor created after the CRD came back",
        || async { (!super::monitoring::targets_in(&ns).is_empty()).then_some(()) },
    )
    .await;
    eprintln!(
        "scraped {:?} after the CRD was installed",
        installed.elapsed()
    );
    delete_and_see_recreated(&monitors, "late").await;
    operator.check(&client).await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn a_request_above_its_limit_is_invalid_once_not_an_apply_loop() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-resources").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    let operator = InClusterOperator::leading(&client).await;
    let resources = json!({"requests": {"memory": "256Mi"}, "limits": {"memory": "128Mi"}});
    apply(&crs, sandbox("greedy", json!({"resources": resources})))
        .await
        .expect("the CRD does not compare quantities");
    let cr = wait_cr(&crs, "greedy", "is Degraded", |cr| is_true(cr, "Degraded")).await;
    let degraded = condition(&cr, "Degraded").unwrap();
    assert_eq!(degraded.reason, "InvalidSpec");
    assert!(
        degraded
            .message
            .contains(r#"spec.resources.requests["memory"]"#),
        "{}",
        degraded.message
    );
    // Three backoffs' time (5, 10, 20 s) would be 3 more Warnings and applies in a retry loop.
    let reconciled = operator.wait_idle(Duration::from_secs(12)).await;
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warnings = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .count();
    assert_eq!(warnings, 1, "one Warning for the invalid spec");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert!(deployments.get_opt("greedy").await.unwrap().is_none());
    assert_eq!(operator.reconciliations(), Some(reconciled));
    operator.check(&client).await;
    delete_namespace(&client, &ns).await;
}
