//! Uninstalling the operator keeps every SandboxService, on the real node: `kubectl delete -k
//! deploy/operator` as docs/running-in-kubernetes.md says, then the reinstall, which adopts what it
//! finds and changes none of it.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;
use kube::api::Api;
use operator::children::ServiceMonitor;
use serde_json::json;

use super::in_cluster::InClusterOperator;
use super::{OnTheNode, ready_pods};
use crate::audit::AuditLog;
use crate::harness::{
    MetricsServer, delete_namespace, kubectl_ok, wait_for, wait_hpa_settled, wait_until,
};
use crate::load::seed_sample;
use crate::{child_writes, ready_and_current, wait_cr};

/// The uid of `ns/name` of kind `K`, or "missing".
async fn uid<K>(client: &kube::Client, ns: &str, name: &str) -> String
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    let object = Api::<K>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .expect("read a child");
    object
        .and_then(|o| o.uid())
        .unwrap_or_else(|| "missing".to_string())
}

/// The uid of each child of the CR `name`, by kind.
async fn children(client: &kube::Client, ns: &str, name: &str) -> [(&'static str, String); 4] {
    [
        ("Deployment", uid::<Deployment>(client, ns, name).await),
        ("Service", uid::<Service>(client, ns, name).await),
        (
            "HorizontalPodAutoscaler",
            uid::<HorizontalPodAutoscaler>(client, ns, name).await,
        ),
        (
            "ServiceMonitor",
            uid::<ServiceMonitor>(client, ns, name).await,
        ),
    ]
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn uninstalling_the_operator_keeps_every_sandbox_service_and_a_reinstall_adopts_them_unchanged()
 {
    let seed = |ns: &str| seed_sample(ns, json!({}));
    let run = OnTheNode::start("node-uninstall", seed, 1).await;
    let operator = InClusterOperator::leading(&run.client).await;
    let (client, ns, crs) = (&run.client, &run.ns, &run.crs);
    let name = "performance-sandbox";
    let cr = wait_cr(crs, name, "is Ready", ready_and_current).await;
    // From here on the CR's status changes only when the operator writes it.
    wait_hpa_settled(client, ns, name).await;
    let before = children(client, ns, name).await;
    assert!(before.iter().all(|(_, uid)| uid != "missing"), "{before:?}");
    let writes_before = child_writes(client, ns, name).await;
    let monitor_version = wait_for::<ServiceMonitor>(client, ns, name)
        .await
        .resource_version();
    operator.check(client).await;

    // As the docs uninstall: the operator's namespace, RBAC and Deployment go.
    kubectl_ok(&[
        "delete",
        "-k",
        "deploy/operator",
        "--wait=true",
        "--timeout=180s",
    ]);
    kubectl_ok(&["get", "crd", "sandboxservices.sandbox.perf.dev"]);
    let kept = crs.get_opt(name).await.unwrap();
    assert_eq!(
        kept.as_ref().and_then(|cr| cr.uid()),
        cr.uid(),
        "the SandboxService is kept"
    );
    assert_eq!(
        children(client, ns, name).await,
        before,
        "every child is kept"
    );
    // And it keeps serving: its pod stays Ready behind its Service.
    assert_eq!(ready_pods(client, ns, &run.selector).await.len(), 1);

    // Reinstalled, the operator finds it all as it wants it and changes nothing: no child's
    // resourceVersion moves, nor the CR's (no status write).
    let cr = crs.get(name).await.unwrap();
    let audit = AuditLog::from_now();
    let operator = InClusterOperator::leading(client).await;
    wait_until("the new operator has reconciled", || async {
        (operator.reconciliations()? >= 1).then_some(())
    })
    .await;
    operator.wait_idle(Duration::from_secs(5)).await;
    assert_eq!(child_writes(client, ns, name).await, writes_before);
    assert_eq!(
        wait_for::<ServiceMonitor>(client, ns, name)
            .await
            .resource_version(),
        monitor_version
    );
    let after = crs.get(name).await.unwrap();
    assert_eq!(
        after.resource_version(),
        cr.resource_version(),
        "the reinstalled operator wrote the CR's status; before:\n{}\nafter:\n{}",
        serde_json::to_string_pretty(&cr.status).unwrap(),
        serde_json::to_string_pretty(&after.status).unwrap()
    );
    assert_eq!(children(client, ns, name).await, before);
    // A new process remembers nothing it applied (reconcile/last_applied.rs), so it sends one
    // server-side apply per child, each a no-op; nothing else.
    let mut requests: Vec<String> = audit
        .requests()
        .into_iter()
        .filter(|r| r.is_reconcile_write() && r.namespace == *ns)
        .map(|r| format!("{} {}", r.verb, r.resource))
        .collect();
    requests.sort();
    assert_eq!(
        requests,
        [
            "patch deployments",
            "patch horizontalpodautoscalers",
            "patch servicemonitors",
            "patch services"
        ]
    );
    wait_cr(
        crs,
        name,
        "is Ready under the new operator",
        ready_and_current,
    )
    .await;
    operator.check(client).await;
    delete_namespace(client, ns).await;
}
