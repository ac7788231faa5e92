//! The SandboxService's conditions tell the three states a user meets apart, on the real node:
//! serving; overloaded by design (every pod over its readiness limit: `Backpressure`, and still
//! `Ready` so `kubectl wait --for=condition=Ready` holds); and broken (an image that cannot be
//! pulled: `Degraded` with the kubelet's own reason; an HPA whose metric prometheus-adapter does not
//! serve: `Degraded` with the HPA's).

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use operator::api::SandboxService;
use operator::reconcile::scaling::METRIC_GRACE;
use serde_json::{Value, json};

use super::in_cluster::InClusterOperator;
use super::{OnTheNode, hold_operations, pod_address};
use crate::harness::{
    TEST_MANAGER, TIMEOUT, delete_namespace, kubectl, kubectl_ok, kubectl_with_input,
    wait_until_within,
};
use crate::load::{held_replicas, seed_sample};

/// The CR's condition `type_` as `(status, reason)`.
fn condition(cr: &SandboxService, type_: &str) -> Option<(String, String)> {
    let condition = cr
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)?;
    Some((condition.status.clone(), condition.reason.clone()))
}

/// Wait until the CR's Ready, Backpressure and Degraded conditions are `expected`, each as
/// `(status, reason)` with `reason` one of the `|`-separated names; the CR then.
async fn wait_states(
    crs: &Api<SandboxService>,
    name: &str,
    what: &str,
    expected: [(&str, &str); 3],
) -> SandboxService {
    wait_states_within(TIMEOUT, crs, name, what, expected).await
}

/// [`wait_states`] with another limit than the harness's.
async fn wait_states_within(
    limit: Duration,
    crs: &Api<SandboxService>,
    name: &str,
    what: &str,
    expected: [(&str, &str); 3],
) -> SandboxService {
    wait_until_within(limit, what, || async {
        let cr = crs.get(name).await.ok()?;
        let holds = ["Ready", "Backpressure", "Degraded"]
            .iter()
            .zip(expected)
            .all(|(type_, (status, reasons))| {
                condition(&cr, type_).is_some_and(|(s, r)| {
                    s == status && reasons.split('|').any(|reason| reason == r)
                })
            });
        holds.then_some(cr)
    })
    .await
}

/// Wait until the CR is broken while its pods serve: Ready, no backpressure, and `Degraded` for one
/// of `reasons` (`|`-separated); `Degraded`'s message then.
async fn wait_degraded(
    limit: Duration,
    crs: &Api<SandboxService>,
    name: &str,
    what: &str,
    reasons: &str,
) -> String {
    let expected = [
        ("True", "PodsReady"),
        ("False", "WithinLimits"),
        ("True", reasons),
    ];
    let cr = wait_states_within(limit, crs, name, what, expected).await;
    let conditions = cr.status.unwrap().conditions;
    let degraded = conditions.into_iter().find(|c| c.type_ == "Degraded");
    degraded.unwrap().message
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn serving_overloaded_and_broken_are_three_states_of_the_conditions() {
    // One pod the HPA cannot change; 60 s operations keep its queue full while it is read.
    let one_pod = |ns: &str| held_replicas(ns, 1, 60_000);
    let run = OnTheNode::start("node-states", one_pod, 1).await;
    let operator = InClusterOperator::leading(&run.client).await;
    let name = "performance-sandbox";
    let crs = &run.crs;

    wait_states(
        crs,
        name,
        "serving: Ready, no backpressure, not degraded",
        [
            ("True", "PodsReady"),
            ("False", "WithinLimits"),
            ("False", "AsExpected"),
        ],
    )
    .await;

    // Four operations on the one pod: one runs, three wait, more than 2 x concurrency, so its
    // readiness answers 429 and it leaves the Service, by design.
    let held = hold_operations(pod_address(&run.pods[0]), 4);
    let overloaded = wait_states(
        crs,
        name,
        "overloaded: Backpressure, Ready by design, not degraded",
        [
            ("True", "Overloaded"),
            ("True", "PodsOverloaded"),
            ("False", "AsExpected"),
        ],
    )
    .await;
    assert_eq!(overloaded.status.as_ref().unwrap().ready_replicas, 0);
    // As the docs use it after an apply: it holds while every pod sheds load.
    let waited = kubectl(&[
        "wait",
        "-n",
        &run.ns,
        "--for=condition=Ready",
        &format!("sbx/{name}"),
        "--timeout=10s",
    ]);
    assert!(waited.is_ok(), "{waited:?}");
    let row = kubectl(&["get", "sbx", name, "-n", &run.ns, "--no-headers"]).unwrap();
    assert!(row.contains("True"), "the Backpressure column: {row}");
    drop(held);
    wait_states(
        crs,
        name,
        "serving again once the held operations are gone",
        [
            ("True", "PodsReady"),
            ("False", "WithinLimits"),
            ("False", "AsExpected"),
        ],
    )
    .await;

    // An image no registry serves (a closed port on this machine: nothing leaves it). The old
    // pod keeps serving while the new one cannot start: Ready, and Degraded with the reason.
    crs.patch(
        name,
        &PatchParams {
            field_manager: Some(TEST_MANAGER.to_string()),
            ..Default::default()
        },
        &Patch::Merge(json!({"spec": {"image": "127.0.0.1:9/missing/workload:none"}})),
    )
    .await
    .unwrap();
    let degraded = wait_degraded(
        TIMEOUT,
        crs,
        name,
        "broken: Degraded with the kubelet's reason, no backpressure",
        "ErrImagePull|ImagePullBackOff",
    )
    .await;
    assert!(
        degraded.starts_with("pod performance-sandbox-"),
        "names the pod: {degraded}"
    );

    operator.check(&run.client).await;
    delete_namespace(&run.client, &run.ns).await;
}

/// The test bed's prometheus-adapter without its rule for one metric, as a user's adapter whose
/// config lacks it: restored, and the adapter restarted on it, when dropped.
struct AdapterRuleRemoved {
    original: String,
}

const ADAPTER_NS: &str = "monitoring";
const ADAPTER_CONFIG: &str = "configmap/prometheus-adapter-sandbox";

impl AdapterRuleRemoved {
    fn removing(metric: &str) -> Self {
        let map: Value = serde_json::from_str(&kubectl_ok(&[
            "get",
            ADAPTER_CONFIG,
            "-n",
            ADAPTER_NS,
            "-o",
            "json",
        ]))
        .unwrap();
        let original = map["data"]["config.yaml"].as_str().unwrap().to_string();
        let mut config: Value = serde_yaml::from_str(&original).unwrap();
        let rules = config["rules"].as_array_mut().unwrap();
        let before = rules.len();
        rules.retain(|rule| rule["name"]["as"] != metric);
        assert_eq!(
            rules.len(),
            before - 1,
            "the adapter has one rule for {metric}"
        );
        set_adapter_config(&serde_yaml::to_string(&config).unwrap())
            .unwrap_or_else(|error| panic!("remove the adapter's rule for {metric}: {error}"));
        Self { original }
    }
}

impl Drop for AdapterRuleRemoved {
    fn drop(&mut self) {
        // No panic here: it may run while a failed test unwinds.
        if let Err(error) = set_adapter_config(&self.original) {
            eprintln!("could not restore the adapter's rules, later tests will fail: {error}");
        }
    }
}

/// Puts `config` in the adapter's ConfigMap and restarts the adapter on it (it reads its rules
/// once, at start).
fn set_adapter_config(config: &str) -> Result<(), String> {
    let patch = json!({"data": {"config.yaml": config}}).to_string();
    kubectl_with_input(
        &[
            "patch",
            ADAPTER_CONFIG,
            "-n",
            ADAPTER_NS,
            "--type=merge",
            "--patch-file=/dev/stdin",
        ],
        Some(&patch),
    )?;
    let adapter = "deployment/prometheus-adapter";
    kubectl(&["rollout", "restart", adapter, "-n", ADAPTER_NS])?;
    kubectl(&[
        "rollout",
        "status",
        adapter,
        "-n",
        ADAPTER_NS,
        "--timeout=180s",
    ])?;
    Ok(())
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn an_hpa_whose_metric_the_adapter_does_not_serve_makes_the_service_degraded() {
    let removed = AdapterRuleRemoved::removing("queue_occupancy");
    let on_occupancy = |ns: &str| seed_sample(ns, json!({"autoscaling": {"metric": "Occupancy"}}));
    let run = OnTheNode::start("node-unread-metric", on_occupancy, 1).await;
    let operator = InClusterOperator::leading(&run.client).await;
    let name = "performance-sandbox";
    let crs = &run.crs;

    // A new HPA may fail to read for the grace (the adapter relists new series); then it is
    // broken, with the HPA's own reason, while the pods serve.
    let degraded = wait_degraded(
        METRIC_GRACE + TIMEOUT,
        crs,
        name,
        "broken: Degraded as the HPA cannot read queue_occupancy, the pods serving",
        "FailedGetPodsMetric",
    )
    .await;
    assert!(
        degraded.starts_with("the HPA cannot read its metric")
            && degraded.contains("queue_occupancy"),
        "the HPA's message: {degraded}"
    );

    // The rule back: the HPA reads again within a relist, and the CR is no longer degraded.
    drop(removed);
    wait_states_within(
        METRIC_GRACE,
        crs,
        name,
        "serving again once the adapter serves queue_occupancy",
        [
            ("True", "PodsReady"),
            ("False", "WithinLimits"),
            ("False", "AsExpected"),
        ],
    )
    .await;
    operator.check(&run.client).await;
    delete_namespace(&run.client, &run.ns).await;
}
