//! The seed's load and what the HPA decided under it: `autocannon` as the seed runs it, the CRs the
//! load tests apply, and a sampler of the HPA's status, shared by the tests on the real node.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use crate::harness::{eventually, hpa_reads_its_metric, http_get};

/// One sample of a process's own `/metrics`.
pub(crate) fn process_metric(address: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(address, "/metrics")?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A Kubernetes quantity as a number (`2`, `1500m`).
pub(crate) fn quantity(text: &str) -> f64 {
    operator::api::quantity::value(text).unwrap_or_else(|| panic!("not a quantity: {text}"))
}

/// The seed's load: `autocannon -t 60 -c CONNECTIONS -d SECONDS --json`.
pub(crate) struct Load(std::process::Child);

impl Load {
    pub(crate) fn start(address: &str, connections: u32, seconds: u32) -> Self {
        let child = Command::new("autocannon")
            .args([
                "-t",
                "60",
                "-c",
                &connections.to_string(),
                "-d",
                &seconds.to_string(),
            ])
            .args(["--json", &format!("http://{address}/expensive-op")])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start autocannon (scripts/install-test-deps.sh installs it)");
        Self(child)
    }

    /// autocannon's JSON result, after checking that every answer was 200 or 503 and no request
    /// failed on its connection or timed out.
    pub(crate) async fn finish(self) -> Value {
        let result = self.finish_with_refusals().await;
        assert_eq!(result["errors"], json!(0), "{result}");
        result
    }

    /// autocannon's JSON result, after checking that every answer was 200 or 503 and no request
    /// timed out, allowing connection errors: while none of a Service's pods is ready (the seed's
    /// backpressure, one full pod before the new ones are Ready), kube-proxy refuses connections,
    /// and autocannon counts each retry as an error. An operation accepted and then lost would
    /// time out or be seen in the pod's drain, which the callers check.
    pub(crate) async fn finish_with_refusals(self) -> Value {
        let result = self.result().await;
        assert_eq!(result["timeouts"], json!(0), "{result}");
        let codes: Vec<&String> = result["statusCodeStats"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert!(
            codes.iter().all(|c| *c == "200" || *c == "503"),
            "{codes:?}"
        );
        assert!(result["2xx"].as_u64().unwrap() > 0, "{result}");
        result
    }

    /// autocannon's JSON result as it is, once the run has ended.
    pub(crate) async fn result(self) -> Value {
        let output = tokio::task::spawn_blocking(move || self.0.wait_with_output())
            .await
            .unwrap()
            .expect("autocannon ran");
        serde_json::from_slice(&output.stdout).expect("autocannon --json")
    }

    /// [`Load::finish`], checking too that every answer was 200: no pod was ever full.
    pub(crate) async fn finish_all_200(self) -> Value {
        let result = self.finish().await;
        let codes: Vec<&String> = result["statusCodeStats"]
            .as_object()
            .unwrap()
            .keys()
            .collect();
        assert_eq!(codes, ["200"], "{result}");
        result
    }
}

/// One look at the HPA and the Deployment during a run.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When the Deployment was read (after the HPA).
    pub(crate) at: Timestamp,
    pub(crate) current: i32,
    pub(crate) desired: i32,
    /// `queue_ratio` as the HPA last read it.
    pub(crate) ratio: Option<f64>,
    pub(crate) deployment_replicas: i32,
}

/// Samples the HPA and Deployment `name` every second until dropped, and watches the
/// Deployment's ready count, each change with when the watch saw it: pods flap in and out of
/// readiness under load faster than a look a second sees.
pub(crate) struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    ready_changes: Arc<Mutex<Vec<(Timestamp, i32)>>>,
    task: tokio::task::JoinHandle<()>,
    watch: tokio::task::JoinHandle<()>,
}

impl Sampler {
    pub(crate) fn start(client: &Client, ns: &str, name: &str) -> Self {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
        let (watched, config) = (
            deployments.clone(),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        );
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (name, into) = (name.to_string(), samples.clone());
        let task = tokio::spawn(async move {
            loop {
                if let (Ok(hpa), Ok(deployment)) =
                    (hpas.get(&name).await, deployments.get(&name).await)
                {
                    let status = hpa.status.unwrap_or_default();
                    let ratio = status.current_metrics.iter().flatten().find_map(|m| {
                        Some(quantity(
                            &m.pods.as_ref()?.current.average_value.as_ref()?.0,
                        ))
                    });
                    into.lock().unwrap().push(Sample {
                        at: Timestamp::now(),
                        current: status.current_replicas.unwrap_or(0),
                        desired: status.desired_replicas,
                        ratio,
                        deployment_replicas: deployment.spec.and_then(|s| s.replicas).unwrap_or(0),
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        let ready_changes = Arc::new(Mutex::new(Vec::new()));
        let into = ready_changes.clone();
        let watch = tokio::spawn(async move {
            let mut changes = std::pin::pin!(watcher(watched, config).applied_objects());
            while let Some(change) = changes.next().await {
                let Ok(deployment) = change else { continue };
                let ready = deployment
                    .status
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                let mut seen = into.lock().unwrap();
                if seen.last().is_none_or(|(_, last)| *last != ready) {
                    seen.push((Timestamp::now(), ready));
                }
            }
        });
        Self {
            samples,
            ready_changes,
            task,
            watch,
        }
    }

    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    /// The Deployment's ready count at each change, with when the watch saw it.
    pub(crate) fn ready_changes(&self) -> Vec<(Timestamp, i32)> {
        self.ready_changes.lock().unwrap().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
        self.watch.abort();
    }
}

/// A SandboxService from `deploy/examples/seed.yaml` in `ns`, with the monitoring interval and the
/// scale-down window shortened, and `changes` merged into its spec.
pub(crate) fn seed_sample(ns: &str, changes: Value) -> Value {
    let text =
        std::fs::read_to_string(crate::harness::repo_file("deploy/examples/seed.yaml")).unwrap();
    let mut cr: Value = serde_yaml::from_str(&text).unwrap();
    cr["metadata"]["namespace"] = json!(ns);
    let spec = cr["spec"].as_object_mut().unwrap();
    spec["monitoring"]["interval"] = json!("5s");
    spec["autoscaling"]["scaleDownStabilizationSeconds"] = json!(20);
    for (key, value) in changes.as_object().unwrap() {
        match (spec.get_mut(key), value) {
            (Some(Value::Object(current)), Value::Object(more)) => current.extend(more.clone()),
            _ => {
                spec.insert(key.clone(), value.clone());
            }
        }
    }
    cr
}

/// The seed's sample with `replicas` pods the HPA cannot change and operations of `operation_ms`: long
/// ones keep the queues that a test holds open steady while it reads them.
pub(crate) fn held_replicas(ns: &str, replicas: u32, operation_ms: u64) -> Value {
    seed_sample(
        ns,
        json!({"operationDurationMs": operation_ms,
            "autoscaling": {"minReplicas": replicas, "maxReplicas": replicas}}),
    )
}

/// [`seed_sample`] with exactly `replicas` pods of 20 ms operations and no scale-down window: none
/// is ever full, so a failure under load comes from pods leaving.
pub(crate) fn fixed_replicas(ns: &str, replicas: u32) -> Value {
    seed_sample(
        ns,
        json!({"operationDurationMs": 20, "autoscaling": {
            "minReplicas": replicas, "maxReplicas": replicas, "scaleDownStabilizationSeconds": 0}}),
    )
}

/// Checks the HPA's scale-out decisions against its rule, desired = ceil(current × queue_ratio /
/// target), with the ratio it reported in the same status: the first decision (from 1 pod, below
/// the default policy's cap of +4 pods) exactly, later ones as an upper bound (the policy's cap per
/// 15 s may hold them lower). Returns the first decision.
pub(crate) fn assert_proportional(samples: &[Sample], target: f64) -> Sample {
    let decisions: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.desired > s.current && s.current > 0)
        .collect();
    let first = (*decisions.first().expect("the HPA decided to scale out")).clone();
    let rule = |s: &Sample| {
        let ratio = s.ratio.expect("a decision has a metric");
        (f64::from(s.current) * ratio / target).ceil() as i32
    };
    assert_eq!(first.current, 1, "{first:?}");
    assert_eq!(first.desired, rule(&first).min(5), "{first:?}");
    for decision in decisions {
        assert!(decision.desired <= rule(decision), "{decision:?}");
    }
    first
}

/// What the HPA did during a load run, and what autocannon saw.
pub(crate) struct Run {
    pub(crate) samples: Vec<Sample>,
    pub(crate) load: Value,
}

/// Puts `connections` of load on the Service for `seconds`, sampling the HPA meanwhile; refused
/// connections are allowed (see [`Load::finish_with_refusals`]).
pub(crate) async fn load_run(
    client: &Client,
    ns: &str,
    name: &str,
    address: &str,
    connections: u32,
    seconds: u32,
) -> Run {
    let sampler = Sampler::start(client, ns, name);
    let load = Load::start(address, connections, seconds)
        .finish_with_refusals()
        .await;
    Run {
        samples: sampler.samples(),
        load,
    }
}

/// Waits until the HPA `ns/name` reads `queue_ratio`: the adapter has listed the pods' series.
pub(crate) async fn hpa_reads_queue_ratio(client: &Client, ns: &str, name: &str) {
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    eventually("the HPA reads queue_ratio", || async {
        hpas.get(name)
            .await
            .ok()
            .is_some_and(|hpa| hpa_reads_its_metric(&hpa))
    })
    .await;
}
