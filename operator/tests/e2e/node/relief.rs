//! The seed scenario through the NodePort, behind the real kube-proxy, which balances connections,
//! not requests: once the HPA's new pods are Ready, the kept-alive clients must reach them
//! (`CONNECTION_CLOSE`'s default), or scaling out relieves nobody.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use serde_json::json;

use super::{OnTheNode, is_ready, ready_pods};
use crate::harness::{delete_namespace, http_get, wait_until};
use crate::load::{Load, seed_sample};

/// The seed's operation time and concurrency, as `seed_sample` leaves them.
const OPERATION_SECONDS: f64 = 2.0;
/// The seed's readiness limit: more than this many waiting fails `/readiness`.
const READINESS_LIMIT: f64 = 2.0;
/// How long after the new pods are Ready the clients must have reached them.
const SETTLE: Duration = Duration::from_secs(10);
/// How long the served rate is measured after that.
const MEASURED: Duration = Duration::from_secs(20);

/// One pod's counters as its `/metrics` said them.
#[derive(Debug, Clone, Copy)]
pub(super) struct PodSample {
    completed: f64,
    waiting: f64,
    in_flight: f64,
}

/// One look at every running pod, and how many were Ready.
pub(super) struct Round {
    at: Instant,
    ready: usize,
    pods: BTreeMap<String, PodSample>,
}

pub(super) async fn look(client: &kube::Client, ns: &str, selector: &str) -> Round {
    let at = Instant::now();
    let listed = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap();
    let ready = listed.items.iter().filter(|pod| is_ready(pod)).count();
    let mut pods = BTreeMap::new();
    for pod in listed.items {
        let Some(ip) = pod.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
            continue;
        };
        let address = SocketAddr::new(ip.parse().unwrap(), 3000);
        let name = pod.metadata.name.clone().unwrap();
        let Some(body) = tokio::task::spawn_blocking(move || http_get(address, "/metrics"))
            .await
            .unwrap()
            .map(|(_, body)| body)
        else {
            continue;
        };
        let read = |name: &str| {
            body.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or(0.0)
        };
        pods.insert(
            name,
            PodSample {
                completed: read("expensive_operations_completed_total"),
                waiting: read("queue_waiting_tasks"),
                in_flight: read("queue_in_flight_tasks"),
            },
        );
    }
    Round { at, ready, pods }
}

/// Operations completed over `rounds`, per pod from the first round it is seen in (from 0 if it started
/// later) to the last: a pod the HPA removes mid-way counts until it left.
pub(super) fn completed_over(rounds: &[&Round]) -> f64 {
    let mut first: BTreeMap<&str, f64> = BTreeMap::new();
    let mut last: BTreeMap<&str, f64> = BTreeMap::new();
    for (i, round) in rounds.iter().enumerate() {
        for (pod, sample) in &round.pods {
            let start = if i == 0 { sample.completed } else { 0.0 };
            first.entry(pod).or_insert(start);
            last.insert(pod, sample.completed);
        }
    }
    last.iter().map(|(pod, done)| done - first[pod]).sum()
}

/// The longest run of rounds in which one pod had more than the readiness limit waiting while
/// another had nothing to do.
fn longest_full_beside_idle(rounds: &[Round]) -> Duration {
    let mut longest = Duration::ZERO;
    let mut since: Option<Instant> = None;
    for round in rounds {
        let full = round.pods.values().any(|p| p.waiting > READINESS_LIMIT);
        let idle = round
            .pods
            .values()
            .any(|p| p.waiting == 0.0 && p.in_flight == 0.0);
        if full && idle {
            let start = *since.get_or_insert(round.at);
            longest = longest.max(round.at - start);
        } else {
            since = None;
        }
    }
    longest
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn scale_out_relieves_kept_alive_clients_behind_kube_proxy() {
    let run = OnTheNode::start("node-relief", |ns| seed_sample(ns, json!({})), 1).await;
    let OnTheNode {
        client,
        ns,
        selector,
        address,
        ..
    } = &run;

    // The seed's `autocannon -c 6` with its default keep-alive, long enough for the scale-out and
    // the measurement.
    let load_seconds = 60;
    let load = Load::start(address, 6, load_seconds);
    let load_start = Instant::now();
    wait_until("the HPA's new pods Ready", || async {
        (ready_pods(client, ns, selector).await.len() > 1).then_some(())
    })
    .await;
    let ready_at = Instant::now();
    let mut rounds = Vec::new();
    while ready_at.elapsed() < SETTLE + MEASURED {
        rounds.push(look(client, ns, selector).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let measured: Vec<&Round> = rounds
        .iter()
        .filter(|r| r.at >= ready_at + SETTLE)
        .collect();
    let (first, last) = (measured[0], measured[measured.len() - 1]);
    let seconds = (last.at - first.at).as_secs_f64();
    let served = completed_over(&measured) / seconds;
    let ready = measured.iter().map(|r| r.ready as f64).sum::<f64>() / measured.len() as f64;
    let capacity = ready / OPERATION_SECONDS;
    let stuck = longest_full_beside_idle(&rounds);
    let per_pod: Vec<String> = last
        .pods
        .iter()
        .map(|(pod, s)| format!("{}={}", &pod[pod.len() - 5..], s.completed))
        .collect();
    eprintln!(
        "relief: new pods Ready {:.1} s into the load; from {} s later, {served:.2} operations/s \
         where {ready:.1} ready pods serve {capacity:.2} ({:.0} %); a full pod beside an idle one \
         for at most {:.1} s; completed per pod: {}",
        (ready_at - load_start).as_secs_f64(),
        SETTLE.as_secs(),
        100.0 * served / capacity,
        stuck.as_secs_f64(),
        per_pod.join(" ")
    );

    let result = load.result().await;
    eprintln!(
        "relief: autocannon {} requests, {} × 200, {} × 503, {} errors (connections refused while no \
         pod was ready), {} timeouts",
        result["requests"]["total"],
        result["2xx"],
        result["non2xx"],
        result["errors"],
        result["timeouts"]
    );
    assert!(
        served >= 0.8 * capacity,
        "{served:.2} operations/s, below 80 % of the {capacity:.2} that {ready:.1} ready pods serve"
    );
    assert!(
        stuck <= Duration::from_secs(10),
        "a pod kept a full queue beside an idle pod for {stuck:?}"
    );
    assert_eq!(result["timeouts"], json!(0), "{result}");
    delete_namespace(client, ns).await;
}
