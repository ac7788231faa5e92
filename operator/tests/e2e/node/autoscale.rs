//! The autoscaling loop on the real node: the workload's containers, Prometheus and prometheus-adapter
//! as `custom.metrics.k8s.io`, the controller-manager's HPA controller (5 s sync on the test bed),
//! the installed operator in-cluster, and `autocannon` as the seed runs it, through the Service's
//! NodePort behind kube-proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use operator::api::SandboxService;
use operator::api::autoscaling_status::ScaleEvent;
use operator::children::deployment::READINESS_PERIOD_SECONDS;
use operator::names::FIELD_MANAGER;
use serde_json::{Value, json};

use super::in_cluster::InClusterOperator;
use super::logs::PodLogs;
use super::{OnTheNode, hold_operations, pod_address, ready_pods};
use crate::harness::{delete_namespace, eventually, kubectl, wait_until};
use crate::load::{
    Load, Sample, Sampler, assert_proportional, held_replicas, hpa_reads_queue_ratio, load_run,
    process_metric, quantity, seed_sample,
};

/// A seed-like SandboxService on the node, its HPA reading `queue_ratio`, under the installed
/// operator: the run, the CR's name and the operator.
pub(super) async fn ready_to_scale(
    ns: &str,
    cr: impl Fn(&str) -> Value,
    pods: usize,
) -> (OnTheNode, String, InClusterOperator) {
    let run = OnTheNode::start(ns, &cr, pods).await;
    let name = cr(&run.ns)["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    hpa_reads_queue_ratio(&run.client, &run.ns, &name).await;
    let operator = InClusterOperator::leading(&run.client).await;
    (run, name, operator)
}

/// Ready pods of the run, not being deleted: name → workload address.
async fn ready_addresses(run: &OnTheNode) -> BTreeMap<String, SocketAddr> {
    ready_pods(&run.client, &run.ns, &run.selector)
        .await
        .into_iter()
        .map(|pod| (pod.name_any(), pod_address(&pod)))
        .collect()
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_custom_metrics_api_serves_each_pods_queue_ratio_as_its_metrics_say() {
    // Two pods the HPA cannot change; 60 s operations keep a queue steady while it is read.
    let two_pods = |ns: &str| held_replicas(ns, 2, 60_000);
    let (run, _, operator) = ready_to_scale("node-metrics-api", two_pods, 2).await;
    let ns = &run.ns;
    let pods = ready_addresses(&run).await;
    assert_eq!(pods.len(), 2);
    // Three operations on the first pod, straight to its address: one runs, two wait, so its
    // queue_ratio is 2.
    let (loaded, address) = pods.iter().next().unwrap();
    let _held = hold_operations(*address, 3);

    let path = format!("/apis/custom.metrics.k8s.io/v1beta1/namespaces/{ns}/pods/*/queue_ratio");
    let served = wait_until(
        "the adapter serves every pod's queue_ratio, the loaded pod's at 2",
        || async {
            let list: Value =
                serde_json::from_str(&kubectl(&["get", "--raw", &path]).ok()?).ok()?;
            let served: BTreeMap<String, f64> = list["items"]
                .as_array()?
                .iter()
                .map(|item| {
                    let pod = item["describedObject"]["name"]
                        .as_str()
                        .unwrap()
                        .to_string();
                    (pod, quantity(item["value"].as_str().unwrap()))
                })
                .collect();
            // The adapter lists each pod's series on its own relist: wait for all of them.
            (served.get(loaded) == Some(&2.0) && served.len() == pods.len()).then_some(served)
        },
    )
    .await;
    let from_pods: BTreeMap<String, f64> = pods
        .iter()
        .map(|(pod, address)| {
            (
                pod.clone(),
                process_metric(*address, "queue_ratio").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        served, from_pods,
        "one value per pod, as each pod reports it"
    );
    assert_eq!(from_pods.values().copied().sum::<f64>(), 2.0);

    operator.check(&run.client).await;
    delete_namespace(&run.client, ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_seed_scenario_scales_out_under_load_and_back_to_min_after() {
    let seed = |ns: &str| seed_sample(ns, json!({}));
    let (run, name, operator) = ready_to_scale("node-seed-autoscale", seed, 1).await;
    let OnTheNode {
        client,
        ns,
        address,
        pods: first_pods,
        selector,
        ..
    } = &run;
    let first_pods: Vec<String> = first_pods.iter().map(|pod| pod.name_any()).collect();
    let logs = PodLogs::follow(client, ns, selector);

    let sampler = Sampler::start(client, ns, &name);
    let load = Load::start(address, 6, 50);
    // Scaled out: new pods Ready, each completing operations.
    let added = wait_until("new pods are ready and complete operations", || async {
        let added: Vec<String> = ready_addresses(&run)
            .await
            .into_iter()
            .filter(|(pod, address)| {
                !first_pods.contains(pod)
                    && process_metric(*address, "expensive_operations_completed_total") >= Some(1.0)
            })
            .map(|(pod, _)| pod)
            .collect();
        (!added.is_empty()).then_some(added)
    })
    .await;
    // `kubectl get sbx` shows the new count of ready pods.
    eventually("kubectl get sbx shows more than one ready pod", || async {
        let row = kubectl(&["get", "sbx", &name, "-n", ns, "--no-headers"]).unwrap_or_default();
        // NAME, REPLICAS (current/desired), READY.
        row.split_whitespace()
            .nth(2)
            .and_then(|r| r.parse::<u32>().ok())
            > Some(1)
    })
    .await;
    // Nobody but the HPA writes spec.replicas: no entry owns it except one through the scale
    // subresource. (v1.34 records no entry at all for a scale write to a field nobody owned
    // before, which is the case here, as the operator's apply leaves replicas out.)
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let deployment = deployments.get(&name).await.unwrap();
    let owners: Vec<(String, Option<String>)> = deployment
        .managed_fields()
        .iter()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|f| f.0["f:spec"].get("f:replicas").is_some())
        })
        .map(|entry| {
            (
                entry.manager.clone().unwrap_or_default(),
                entry.subresource.clone(),
            )
        })
        .collect();
    assert!(
        owners
            .iter()
            .all(|(manager, sub)| manager != FIELD_MANAGER && sub.as_deref() == Some("scale")),
        "{owners:?}"
    );
    let replicas = deployment.spec.and_then(|s| s.replicas);
    assert!(replicas > Some(1), "scaled out by the HPA: {replicas:?}");

    let scale_out = the_status_tells_the_scale_out(client, ns, &name, &sampler).await;
    // The seed's load fills the one pod's queue at once, a scrape and an HPA sync before the
    // decision: the status times the reaction from there.
    assert!(scale_out.reaction_seconds.is_some(), "{scale_out:?}");

    // autocannon: no timeout, only 200 and 503 (the breaker); connections refused while the one pod
    // was full and not ready.
    let result = load.finish_with_refusals().await;
    let samples = sampler.samples();
    // The seed's load on one pod: the breaker holds its queue at 4 (queue_ratio 4), less once the
    // pod has left the Service and drains; the HPA reads the last scrape.
    let first = assert_proportional(&samples, 1.0);
    assert!(first.ratio <= Some(4.0), "{first:?}");
    eprintln!(
        "seed scenario on the node: {} requests, {:?}, {} refused connections; first decision {} -> {} at queue_ratio {:?}; {} pods added",
        result["requests"]["total"],
        result["statusCodeStats"],
        result["errors"],
        first.current,
        first.desired,
        first.ratio,
        added.len()
    );

    // Load ends: back to minReplicas once the scale-down window (20 s) has passed.
    let took = eventually("the Deployment is back to 1 replica", || async {
        deployments
            .get(&name)
            .await
            .ok()
            .and_then(|d| d.spec?.replicas)
            == Some(1)
    })
    .await;
    eprintln!("back to minReplicas {took:?} after the load ended");
    eprintln!("the scale-out in the CR's status: {scale_out:?}");
    // Pods are removed while they may still run accepted operations. They keep serving through the
    // preStop sleep, then get SIGTERM from the kubelet; each drained and exited, and the answers
    // above show that none of its operations was lost.
    let stopped = logs.stopped_pods_drained().await;
    assert!(stopped > 0, "no pod was stopped");
    eprintln!("{stopped} pods stopped, each drained");
    operator.check(client).await;
    delete_namespace(client, ns).await;
}

/// The CR's `status.autoscaling` records a scale-out of the run whose new pods got ready, its
/// timings agree with what `sampler` saw of the HPA and the Deployment (the decision within the
/// sampler's second plus the API's whole seconds; the pods ready within a readiness-probe period
/// plus one second), and an Event says each step in one line. The scale event.
async fn the_status_tells_the_scale_out(
    client: &kube::Client,
    ns: &str,
    name: &str,
    sampler: &Sampler,
) -> ScaleEvent {
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), ns);
    let event = wait_until(
        "the CR's status records a scale-out whose new pods are ready",
        || async {
            let autoscaling = crs.get(name).await.ok()?.status?.autoscaling?;
            autoscaling
                .scale_events
                .into_iter()
                .find(|event| event.is_scale_out() && event.ready_at.is_some())
        },
    )
    .await;
    let seconds = |from: &Time, to: &Time| to.0.as_second() - from.0.as_second();
    let ready_at = event.ready_at.clone().unwrap();
    assert_eq!(
        event.ready_seconds,
        Some(seconds(&event.decided_at, &ready_at)),
        "{event:?}"
    );
    if let Some(since) = &event.backpressure_since {
        assert_eq!(
            event.reaction_seconds,
            Some(seconds(since, &event.decided_at)),
            "{event:?}"
        );
        assert_eq!(
            event.time_to_capacity_seconds,
            Some(seconds(since, &ready_at)),
            "{event:?}"
        );
    }
    // What the sampler saw: the first look at the decided count, and the first with that many
    // pods ready, from a second before the decision on.
    let samples = sampler.samples();
    let after_decision =
        |sample: &&Sample| sample.at.as_second() >= event.decided_at.0.as_second() - 1;
    let seen_decided = samples
        .iter()
        .filter(after_decision)
        .find(|sample| sample.desired == event.to)
        .unwrap_or_else(|| panic!("the sampler never saw {} desired: {samples:?}", event.to));
    let seen_ready = sampler
        .ready_changes()
        .into_iter()
        .find(|(at, ready)| {
            at.as_second() >= event.decided_at.0.as_second() - 1 && *ready >= event.to
        })
        .map(|(at, _)| at)
        .unwrap_or_else(|| {
            panic!(
                "the watch never saw {} ready: {:?}",
                event.to,
                sampler.ready_changes()
            )
        });
    let off = |status: &Time, seen: Timestamp| (seen.as_second() - status.0.as_second()).abs();
    assert!(
        off(&event.decided_at, seen_decided.at) <= 2,
        "decided at {:?}, the sampler saw it at {}",
        event.decided_at,
        seen_decided.at
    );
    let probe_and_a_second = i64::from(READINESS_PERIOD_SECONDS) + 1;
    assert!(
        off(&ready_at, seen_ready) <= probe_and_a_second,
        "ready at {ready_at:?}, the watch saw {} ready at {seen_ready}",
        event.to
    );

    let cr = crs.get(name).await.unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let notes: Vec<(String, String)> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == cr.uid().as_deref())
        .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
        .collect();
    let decided = format!("scaled {} -> {} pods", event.from, event.to);
    assert!(
        notes
            .iter()
            .any(|(reason, note)| reason == "ScaledOut" && note.contains(&decided)),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|(reason, note)| reason == "ScaleOutReady" && note.contains("time to capacity")),
        "{notes:?}"
    );
    event
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn concurrency_2_under_more_load_scales_further_in_proportion_to_queue_ratio() {
    let concurrency_2 = |ns: &str| seed_sample(ns, json!({"concurrency": 2}));
    let (run, name, operator) = ready_to_scale("node-concurrency-2", concurrency_2, 1).await;
    let connections = 20;
    let load = load_run(&run.client, &run.ns, &name, &run.address, connections, 45).await;
    assert_proportional(&load.samples, 1.0);
    // It scales at least to where each pod's queue holds what the target allows: 20 connections
    // over pods of 2 running + 2 waiting is 5 pods; the seed's 6 connections needed 4 at most.
    let scaled_to = load
        .samples
        .iter()
        .map(|s| s.deployment_replicas)
        .max()
        .unwrap();
    assert!(scaled_to >= 5, "{:?}", load.samples);
    eprintln!(
        "concurrency 2, -c {connections}: up to {scaled_to} replicas; {:?}, {} refused connections",
        load.load["statusCodeStats"], load.load["errors"]
    );
    operator.check(&run.client).await;
    delete_namespace(&run.client, &run.ns).await;
}
