//! The SandboxService's conditions tell the three states a user meets apart, on the real node:
//! serving; overloaded by design (every pod over its readiness limit: `Backpressure`, and still
//! `Ready` so `kubectl wait --for=condition=Ready` holds); and broken (an image that cannot be
//! pulled: `Degraded` with the kubelet's own reason).

use kube::api::{Api, Patch, PatchParams};
use operator::spec::SandboxService;
use serde_json::json;

use super::in_cluster::InClusterOperator;
use super::{OnTheNode, hold_operations, pod_address};
use crate::harness::{TEST_MANAGER, delete_namespace, kubectl, wait_until};
use crate::load::held_replicas;

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
    wait_until(what, || async {
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
    let broken = wait_states(
        crs,
        name,
        "broken: Degraded with the kubelet's reason, no backpressure",
        [
            ("True", "PodsReady"),
            ("False", "WithinLimits"),
            ("True", "ErrImagePull|ImagePullBackOff"),
        ],
    )
    .await;
    let degraded = broken
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.starts_with("pod performance-sandbox-"),
        "names the pod: {degraded:?}"
    );

    operator.check(&run.client).await;
    delete_namespace(&run.client, &run.ns).await;
}
