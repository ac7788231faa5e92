//! Pods leaving without losing work, on the real node behind kube-proxy: scale-down of idle pods,
//! a rolling update under load, and what triggers a reconcile. kube-proxy's own metric says how
//! soon it stopped sending to a removed pod, against the `preStop` sleep that covers that lag.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::in_cluster::InClusterOperator;
use super::logs::PodLogs;
use super::{OnTheNode, ready_pods, testbed_dir};
use crate::harness::{
    MetricsServer, apply, delete_namespace, hpa_conditions, http_get, wait_until,
};
use crate::load::{Load, fixed_replicas, hpa_reads_queue_ratio};

/// kube-proxy's `kubeproxy_network_programming_duration_seconds`: from an endpoint's change (the pod's
/// deletion, say) to the node's rules being rewritten. Its buckets (upper bound, cumulative count).
fn kube_proxy_programming() -> Vec<(f64, u64)> {
    let config = std::fs::read_to_string(format!("{}/kube-proxy.yaml", testbed_dir())).unwrap();
    let metrics: SocketAddr = config
        .lines()
        .find_map(|l| l.strip_prefix("metricsBindAddress: "))
        .expect("kube-proxy's metrics address")
        .parse()
        .unwrap();
    let (_, body) = http_get(metrics, "/metrics").expect("kube-proxy's /metrics");
    // kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.5"} 1
    body.lines()
        .filter_map(|line| {
            let labels =
                line.strip_prefix("kubeproxy_network_programming_duration_seconds_bucket{")?;
            let (labels, count) = labels.split_once("} ")?;
            let bound = labels.split_once("le=\"")?.1.trim_end_matches('"');
            Some((bound.parse().ok()?, count.trim().parse().ok()?))
        })
        .collect()
}

/// The smallest bucket bound that holds every observation made between `before` and `after`.
fn slowest_programming(before: &[(f64, u64)], after: &[(f64, u64)]) -> (u64, f64) {
    assert!(
        !after.is_empty(),
        "kube-proxy exports no programming latency"
    );
    let new = |i: usize| after[i].1 - before.get(i).map_or(0, |b| b.1);
    let total = new(after.len() - 1);
    let bound = (0..after.len())
        .find(|&i| new(i) == total)
        .map_or(f64::INFINITY, |i| after[i].0);
    (total, bound)
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn pods_removed_on_scale_down_refuse_no_connection_through_kube_proxy() {
    let run = OnTheNode::start("node-scale-down", |ns| fixed_replicas(ns, 3), 3).await;
    let OnTheNode {
        client,
        ns,
        crs,
        selector,
        address,
        ..
    } = &run;
    let logs = PodLogs::follow(client, ns, selector);

    // Two kept-alive connections of 20 ms operations over three pods: no pod is ever full, so a
    // refused connection or a failed request can only come from a pod leaving — a connection that
    // kube-proxy still sends to a pod that has stopped listening.
    let programming_before = kube_proxy_programming();
    let load = Load::start(address, 2, 25);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let removed_at = Instant::now();
    apply(crs, fixed_replicas(ns, 1))
        .await
        .expect("lower the replica bounds");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_until("only one pod left, none terminating", || async {
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?;
        (all.items.len() == 1).then_some(())
    })
    .await;
    eprintln!(
        "scale-down 3 -> 1: pods gone {:.1} s after the change (preStop 5 s, then the drain)",
        removed_at.elapsed().as_secs_f64()
    );
    // autocannon: no connection error, no timeout (checked by `finish`), and nothing but 200.
    let result = load.finish_all_200().await;
    let (changes, slowest) = slowest_programming(&programming_before, &kube_proxy_programming());
    assert!(changes > 0, "kube-proxy programmed no endpoint change");
    eprintln!(
        "kube-proxy: {changes} endpoint changes programmed, each within {slowest} s (the preStop sleep is 5 s); {} requests, all 200",
        result["requests"]["total"]
    );
    assert!(
        slowest < 5.0,
        "kube-proxy took up to {slowest} s, as long as the preStop sleep"
    );
    assert_eq!(
        logs.stopped_pods_drained().await,
        2,
        "both removed pods drained"
    );
    delete_namespace(client, ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn hpa_status_writes_cost_no_reconcile_and_a_rollout_under_load_loses_no_operation() {
    // kube-proxy balances connections, not requests, so one pod may get most of them: high queue
    // limits keep both pods Ready throughout, so that no Deployment status change (which rightly
    // reconciles, for the CR's ready count) hides what an HPA status write triggers.
    let two_pods = |ns: &str, concurrency: u32| {
        let mut cr = fixed_replicas(ns, 2);
        let spec = &mut cr["spec"];
        spec["concurrency"] = json!(concurrency);
        spec["operationDurationMs"] = json!(2000);
        spec["readinessQueueFactor"] = json!(10);
        spec["breakerQueueFactor"] = json!(10);
        cr
    };
    let run = OnTheNode::start("node-rollout", |ns| two_pods(ns, 1), 2).await;
    let OnTheNode {
        client,
        ns,
        crs,
        selector,
        address,
        pods: old,
    } = &run;
    let name = two_pods(ns, 1)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    hpa_reads_queue_ratio(client, ns, &name).await;
    let operator = InClusterOperator::leading(client).await;
    let logs = PodLogs::follow(client, ns, selector);
    let idle = operator.wait_idle(Duration::from_secs(3)).await;

    // Six kept-alive connections on two pods: the HPA's average queue_ratio moves from 0 to about
    // 2, above the target at maxReplicas, and it writes its status with ScalingLimited turned true.
    // Two more connections for a while move the metric again, and back, while its conditions stay
    // as they are. A write that moves only the metric may not trigger a reconcile; one that changes
    // the HPA's conditions does, as the CR's status.autoscaling shows them (see below).
    let load = Load::start(address, 6, 100);
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    let mut last: Option<(String, Vec<_>)> = None;
    let (mut metric_only, mut condition_changes) = (0, 0);
    let started = Instant::now();
    let mut surge = None;
    while metric_only < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the HPA wrote no status under load that moved only its metric"
        );
        if let Ok(hpa) = hpas.get(&name).await {
            let version = hpa.metadata.resource_version.clone().unwrap_or_default();
            let conditions = hpa_conditions(&hpa);
            match &last {
                Some((seen, _)) if *seen == version => {}
                Some((_, before)) => {
                    if *before == conditions {
                        metric_only += 1;
                    } else {
                        condition_changes += 1;
                    }
                    last = Some((version, conditions));
                }
                None => last = Some((version, conditions)),
            }
        }
        if metric_only + condition_changes == 1 && surge.is_none() {
            surge = Some(Load::start(address, 2, 15));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let reconciles = operator.reconciliations().unwrap_or_default() - idle;
    eprintln!(
        "HPA status writes under load: {metric_only} moved only the metric, {condition_changes} \
         changed its conditions; the operator reconciled {reconciles} times"
    );
    // A condition change costs two: the HPA's trigger, and the CR's own status write it makes
    // (the CR's watch sees every change of the CR; that reconcile writes nothing).
    assert!(
        reconciles <= 2 * condition_changes,
        "an HPA status write that moved only the metric triggered a reconcile: {reconciles} \
         reconciles for {condition_changes} condition changes"
    );
    if let Some(surge) = surge {
        surge.finish().await;
    }

    // The rollout (concurrency 1 -> 2) replaces both pods, one at a time (maxSurge 1,
    // maxUnavailable 0), while the load runs.
    apply(crs, two_pods(ns, 2))
        .await
        .expect("change concurrency");
    let old_names: Vec<String> = old
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    wait_until("the old pods are gone and 2 new ones Ready", || async {
        let all = pods
            .list(&ListParams::default().labels(selector))
            .await
            .ok()?
            .items;
        let old_left = all
            .iter()
            .any(|p| old_names.contains(p.metadata.name.as_ref().unwrap()));
        let ready = ready_pods(client, ns, selector).await.len();
        (!old_left && all.len() == 2 && ready == 2).then_some(())
    })
    .await;
    // autocannon: no connection error or timeout, only 200 and 503 (checked by `finish`), so every
    // operation a pod accepted was answered; each replaced pod drained to the end under the kubelet.
    let result = load.finish().await;
    assert_eq!(
        logs.stopped_pods_drained().await,
        2,
        "both old pods drained"
    );
    eprintln!(
        "rollout under load through kube-proxy: {} requests, {} x 200, {} x non-2xx, 0 errors",
        result["requests"]["total"], result["2xx"], result["non2xx"]
    );
    operator.check(client).await;
    delete_namespace(client, ns).await;
}
