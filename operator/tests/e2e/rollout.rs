//! Pods leaving without losing work: scale-down of idle pods, a rolling update under load, and
//! what triggers a reconcile. The stand-in keeps routing to a deleted pod for its endpoint lag
//! (2 s), as kube-proxy does, and counts every connection a pod refuses.

use std::collections::BTreeSet;

use super::autoscale::{
    Load, assert_no_failed_upstream, fixed_replicas, ready_to_scale, seed_sample, settled_at,
    start, stopped_pods_drained,
};
use super::*;

#[tokio::test]
#[ignore = "needs a cluster: see the module docs"]
async fn idle_pods_removed_on_scale_down_refuse_no_connection() {
    let (client, ns, operator) = start("e2e-scale-down").await;
    let fixed = |replicas: u32| fixed_replicas(&ns, replicas);
    let name = fixed(3)["metadata"]["name"].as_str().unwrap().to_string();
    let address = ready_to_scale(&client, &ns, fixed(3)).await;
    settled_at(&ns, 3).await;

    // Two connections of 20 ms operations over three pods: every pod is idle most of the time and
    // none is ever full, so any failure below comes from a pod leaving.
    let load = Load::start(&address, 2, 25);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(&crs, fixed(1))
        .await
        .expect("lower the replica bounds");
    settled_at(&ns, 1).await;
    load.finish_all_200().await;
    assert_no_failed_upstream(&ns, &name);
    assert_eq!(stopped_pods_drained(&ns).await, 2);
    delete_namespace(&client, &ns).await;
    operator.stop();
}

#[tokio::test]
#[ignore = "needs a cluster: see the module docs"]
async fn hpa_status_writes_cost_no_reconcile_and_a_rollout_under_load_loses_no_operation() {
    let (client, ns, operator) = start("e2e-rollout").await;
    let two_pods = |concurrency: u32| {
        seed_sample(
            &ns,
            json!({"concurrency": concurrency, "autoscaling": {"minReplicas": 2, "maxReplicas": 2}}),
        )
    };
    let name = two_pods(1)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let address = ready_to_scale(&client, &ns, two_pods(1)).await;
    settled_at(&ns, 2).await;
    let idle = operator.wait_idle(Duration::from_secs(3)).await;

    // Four connections on two pods: each runs one operation with one waiting, so the HPA's average
    // moves from 0 to 1 and it writes its status. Under steady load the average then stays at
    // (connections - pods) / pods whatever the split, so two more connections for a while move
    // it to 2 (above the target, at maxReplicas) for a second status write.
    let load = Load::start(&address, 4, 110);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    let mut versions = BTreeSet::new();
    let started = Instant::now();
    let mut surge = None;
    // Its first version and two status writes after it.
    while versions.len() < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the HPA wrote no status under load: {versions:?}"
        );
        if let Ok(hpa) = hpas.get(&name).await {
            versions.extend(hpa.metadata.resource_version);
        }
        if versions.len() == 2 && surge.is_none() {
            surge = Some(Load::start(&address, 2, 15));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        operator.reconciliations(),
        Some(idle),
        "an HPA status write triggered a reconcile"
    );
    if let Some(surge) = surge {
        surge.finish().await;
    }

    // The rollout: concurrency 1 → 2 while the load runs.
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(&crs, two_pods(2)).await.expect("change concurrency");
    wait_cr(&crs, &name, "is rolled out and Ready", ready_and_current).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually("every pod runs the new template", || async {
        let status = deployments.get(&name).await.ok().and_then(|d| d.status);
        status.is_some_and(|s| s.updated_replicas == Some(2) && s.replicas == Some(2))
    })
    .await;
    settled_at(&ns, 2).await;
    // autocannon: no error or timeout, only 200 and 503 (the breaker), so every operation a pod
    // accepted was answered; each replaced pod drained to the end.
    load.finish().await;
    assert_no_failed_upstream(&ns, &name);
    assert_eq!(stopped_pods_drained(&ns).await, 2);
    delete_namespace(&client, &ns).await;
    operator.stop();
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_request_above_its_limit_is_invalid_once_not_an_apply_loop() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-resources").await;
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    let operator = Operator::start_leading(&client, "e2e-resources", "resources").await;
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
    operator.stop();
    delete_namespace(&client, &ns).await;
}
