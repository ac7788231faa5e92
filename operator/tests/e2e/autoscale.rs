//! The autoscaling loop with real parts: the stand-in's workload processes, Prometheus, prometheus-
//! adapter as `custom.metrics.k8s.io`, the controller-manager's HPA controller (5 s sync on the test
//! bed), and `autocannon` as the seed runs it, through the stand-in's address for the Service.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::Api;
use operator::names::FIELD_MANAGER;
use serde_json::Value;

use super::*;
use crate::harness::http_get;

/// The stand-in's `/state` endpoint (`TESTBED_STANDIN` from `scripts/testbed.sh env`).
pub(crate) fn standin() -> SocketAddr {
    let url = std::env::var("TESTBED_STANDIN")
        .expect("TESTBED_STANDIN is set: eval \"$(scripts/testbed.sh env)\"");
    url.trim_start_matches("http://")
        .parse()
        .expect("TESTBED_STANDIN is http://ADDRESS:PORT")
}

fn standin_state() -> Value {
    let (status, body) = http_get(standin(), "/state").expect("the stand-in answers");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("/state is JSON")
}

/// The stand-in's Service `ns/name`: its address and the answers it gave, by status.
pub(crate) fn service_state(ns: &str, name: &str) -> Option<Value> {
    standin_state()["services"]
        .as_array()?
        .iter()
        .find(|s| s["namespace"] == ns && s["name"] == name)
        .cloned()
}

/// Pods of `ns` the stand-in runs, not terminating: name → (address, ready).
pub(crate) fn running_pods(ns: &str) -> BTreeMap<String, (SocketAddr, bool)> {
    let state = standin_state();
    state["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["namespace"] == ns && p["terminating"] == false)
        .map(|p| {
            let address = p["address"].as_str().unwrap().parse().unwrap();
            (
                p["name"].as_str().unwrap().to_string(),
                (address, p["ready"] == true),
            )
        })
        .collect()
}

/// Waits until the stand-in runs exactly `count` pods of `ns`, none terminating any more.
pub(crate) async fn settled_at(ns: &str, count: usize) {
    let all_pods = || -> usize {
        standin_state()["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["namespace"] == ns)
            .count()
    };
    eventually(
        &format!("{count} pods of {ns}, none terminating"),
        || async { running_pods(ns).len() == count && all_pods() == count },
    )
    .await;
}

/// Every pod of `ns` that got SIGTERM drained its accepted operations and exited: their number.
pub(crate) async fn stopped_pods_drained(ns: &str) -> usize {
    let stopped = || {
        pod_log_files(ns)
            .into_iter()
            .map(|(_, path)| std::fs::read_to_string(path).unwrap_or_default())
            .filter(|log| log.contains("shutdown requested"))
            .collect::<Vec<_>>()
    };
    eventually("every stopped pod drained and exited", || async {
        stopped().iter().all(|log| log.contains("drained, exiting"))
    })
    .await;
    stopped().len()
}

/// The log files of the workload processes the stand-in ran in `ns`, gone pods included: pod name
/// and path.
pub(crate) fn pod_log_files(ns: &str) -> Vec<(String, PathBuf)> {
    let dir = standin_state()["pod_logs"].as_str().unwrap().to_string();
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .expect("the stand-in's pod log directory")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let pod = path
                .file_stem()?
                .to_str()?
                .strip_prefix(&format!("{ns}_"))?
                .to_string();
            Some((pod, path))
        })
        .collect();
    files.sort();
    files
}

/// One sample of a process's own `/metrics`.
fn process_metric(address: SocketAddr, name: &str) -> Option<f64> {
    let (_, body) = http_get(address, "/metrics")?;
    body.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A Kubernetes quantity as a number (`2`, `1500m`).
fn quantity(text: &str) -> f64 {
    operator::spec::quantity::value(text).unwrap_or_else(|| panic!("not a quantity: {text}"))
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
        let result = self.result().await;
        assert_eq!(
            (&result["errors"], &result["timeouts"]),
            (&json!(0), &json!(0)),
            "{result}"
        );
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
struct Sample {
    current: i32,
    desired: i32,
    /// `queue_ratio` as the HPA last read it.
    ratio: Option<f64>,
    deployment_replicas: i32,
}

/// Samples the HPA and Deployment `name` every second until dropped.
struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(client: &Client, ns: &str, name: &str) -> Self {
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
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
                        current: status.current_replicas.unwrap_or(0),
                        desired: status.desired_replicas,
                        ratio,
                        deployment_replicas: deployment.spec.and_then(|s| s.replicas).unwrap_or(0),
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Self { samples, task }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A SandboxService from `deploy/examples/seed.yaml` in `ns`, with the monitoring interval and the
/// scale-down window shortened, and `changes` merged into its spec.
pub(crate) fn seed_sample(ns: &str, changes: Value) -> Value {
    let text =
        std::fs::read_to_string(super::harness::repo_file("deploy/examples/seed.yaml")).unwrap();
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

/// [`seed_sample`] with exactly `replicas` pods of 20 ms operations and no scale-down window: none
/// is ever full, so a failure under load comes from pods leaving.
pub(crate) fn fixed_replicas(ns: &str, replicas: u32) -> Value {
    seed_sample(
        ns,
        json!({"operationDurationMs": 20, "autoscaling": {
            "minReplicas": replicas, "maxReplicas": replicas, "scaleDownStabilizationSeconds": 0}}),
    )
}

/// A fresh namespace `name` and an operator leading on the Lease of the same name, with the
/// ServiceMonitor CRD installed (the stand-in scrapes what ServiceMonitors say).
pub(crate) async fn start(name: &str) -> (Client, String, Operator) {
    let client = admin_client().await;
    install_service_monitor_crd();
    let ns = namespace(&client, name).await;
    // Logs of an earlier run's pods would count as this run's.
    for (_, path) in pod_log_files(&ns) {
        std::fs::remove_file(&path).expect("remove an earlier run's pod log");
    }
    let operator = Operator::start_leading(&client, name, "autoscale").await;
    (client, ns, operator)
}

/// Checks the HPA's scale-out decisions against its rule, desired = ceil(current × queue_ratio /
/// target), with the ratio it reported in the same status: the first decision (from 1 pod, below
/// the default policy's cap of +4 pods) exactly, later ones as an upper bound (the policy's cap per
/// 15 s may hold them lower). Returns the first decision.
fn assert_proportional(samples: &[Sample], target: f64) -> Sample {
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

/// Applies `cr` and waits until it is Ready, its Service has an address at the stand-in, and the
/// HPA reads `queue_ratio` (the adapter has listed the series).
pub(crate) async fn ready_to_scale(client: &Client, ns: &str, cr: Value) -> String {
    let name = cr["metadata"]["name"].as_str().unwrap().to_string();
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), ns);
    apply(&crs, cr).await.expect("apply the SandboxService");
    wait_cr(&crs, &name, "is Ready", ready_and_current).await;
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), ns);
    eventually("the HPA reads queue_ratio", || async {
        hpas.get(&name)
            .await
            .ok()
            .and_then(|h| h.status)
            .is_some_and(|s| {
                s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "ScalingActive" && c.status == "True")
            })
    })
    .await;
    wait_until("the Service has an address at the stand-in", || async {
        service_state(ns, &name)?["address"]
            .as_str()
            .map(str::to_string)
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: see the module docs"]
async fn the_custom_metrics_api_serves_each_pods_queue_ratio_as_its_metrics_say() {
    let (client, ns, operator) = start("e2e-metrics-api").await;
    // Two pods the HPA cannot change; 60 s operations keep a queue steady while it is read.
    let cr = seed_sample(
        &ns,
        json!({"operationDurationMs": 60000, "autoscaling": {"minReplicas": 2, "maxReplicas": 2}}),
    );
    ready_to_scale(&client, &ns, cr).await;
    let pods = wait_until("two ready pods at the stand-in", || async {
        let pods = running_pods(&ns);
        (pods.len() == 2 && pods.values().all(|(_, ready)| *ready)).then_some(pods)
    })
    .await;
    // Three operations on the first pod: one runs, two wait, so its queue_ratio is 2.
    let (loaded, (address, _)) = pods.iter().next().unwrap();
    let _held: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(address).unwrap();
            write!(stream, "GET /expensive-op HTTP/1.1\r\nHost: pod\r\n\r\n").unwrap();
            stream
        })
        .collect();

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
    let from_processes: BTreeMap<String, f64> = pods
        .iter()
        .map(|(pod, (address, _))| {
            (
                pod.clone(),
                process_metric(*address, "queue_ratio").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        served, from_processes,
        "one value per pod, as each process reports it"
    );
    assert_eq!(from_processes.values().copied().sum::<f64>(), 2.0);

    delete_namespace(&client, &ns).await;
    operator.stop();
}

/// The Service `ns/name` at the stand-in met no failed pod: none refused a connection (a pod
/// that stopped listening while kube-proxy still sent it traffic) and none failed a request.
pub(crate) fn assert_no_failed_upstream(ns: &str, name: &str) {
    let responses = service_state(ns, name).unwrap()["responses"].clone();
    for failure in ["upstream_error", "refused"] {
        assert!(responses.get(failure).is_none(), "{failure}: {responses}");
    }
}

/// What the HPA did during a load run, and what autocannon and the stand-in saw.
struct Run {
    samples: Vec<Sample>,
    load: Value,
}

/// Puts `connections` of load on the Service for `seconds`, sampling the HPA meanwhile.
async fn load_run(
    client: &Client,
    ns: &str,
    name: &str,
    address: &str,
    connections: u32,
    seconds: u32,
) -> Run {
    let sampler = Sampler::start(client, ns, name);
    let load = Load::start(address, connections, seconds).finish().await;
    // The stand-in answered nothing itself but 503 for "no ready endpoint": no upstream error.
    assert_no_failed_upstream(ns, name);
    Run {
        samples: sampler.samples(),
        load,
    }
}

#[tokio::test]
#[ignore = "needs a cluster: see the module docs"]
async fn the_seed_scenario_scales_out_under_load_and_back_to_min_after() {
    let (client, ns, operator) = start("e2e-seed-autoscale").await;
    let cr = seed_sample(&ns, json!({}));
    let name = cr["metadata"]["name"].as_str().unwrap().to_string();
    let address = ready_to_scale(&client, &ns, cr).await;
    let first_pods: Vec<String> = running_pods(&ns).into_keys().collect();
    assert_eq!(first_pods.len(), 1);

    let sampler = Sampler::start(&client, &ns, &name);
    let load = Load::start(&address, 6, 50);
    // Scaled out: new pods Ready at the stand-in, each completing operations.
    let added = wait_until("new pods are ready and complete operations", || async {
        let pods = running_pods(&ns);
        let added: Vec<_> = pods
            .iter()
            .filter(|(pod, (address, ready))| {
                !first_pods.contains(pod)
                    && *ready
                    && process_metric(*address, "expensive_operations_completed_total") >= Some(1.0)
            })
            .map(|(pod, _)| pod.clone())
            .collect();
        (!added.is_empty()).then_some(added)
    })
    .await;
    // `kubectl get sbx` shows the new count of ready pods.
    eventually("kubectl get sbx shows more than one ready pod", || async {
        let row = kubectl(&["get", "sbx", &name, "-n", &ns, "--no-headers"]).unwrap_or_default();
        row.split_whitespace()
            .nth(1)
            .and_then(|r| r.parse::<u32>().ok())
            > Some(1)
    })
    .await;
    // Nobody but the HPA writes spec.replicas: no entry owns it except one through the scale
    // subresource. (v1.34 records no entry at all for a scale write to a field nobody owned
    // before, which is the case here, as the operator's apply leaves replicas out.)
    let deployment: Deployment = Api::namespaced(client.clone(), &ns)
        .get(&name)
        .await
        .unwrap();
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

    let result = load.finish().await;
    assert_no_failed_upstream(&ns, &name);
    let samples = sampler.samples();
    // The seed's load on one pod: the breaker holds its queue at 4 (queue_ratio 4), less once the
    // pod has left the Service and drains; the HPA reads the last scrape.
    let first = assert_proportional(&samples, 1.0);
    assert!(first.ratio <= Some(4.0), "{first:?}");
    assert!(!added.is_empty());
    eprintln!(
        "seed scenario: {} requests, {:?}",
        result["requests"]["total"], result["statusCodeStats"]
    );

    // Load ends: back to minReplicas once the scale-down window (20 s) has passed.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
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
    settled_at(&ns, 1).await;
    // Under -c 6, 4 pods hold queue_ratio 0.5 on average, so the HPA asks for 2 once the 20 s window
    // has passed (and for 4 again at 2): pods are removed while they run accepted operations. They
    // keep serving through the preStop sleep, so most of their queue is done before SIGTERM; each
    // then drained and exited, and the answers above show that none of its operations was lost.
    assert!(stopped_pods_drained(&ns).await > 0, "no pod was stopped");
    delete_namespace(&client, &ns).await;
    operator.stop();
}

#[tokio::test]
#[ignore = "needs a cluster: see the module docs"]
async fn concurrency_2_under_more_load_scales_further_in_proportion_to_queue_ratio() {
    let (client, ns, operator) = start("e2e-concurrency-2").await;
    let cr = seed_sample(&ns, json!({"concurrency": 2}));
    let name = cr["metadata"]["name"].as_str().unwrap().to_string();
    let address = ready_to_scale(&client, &ns, cr).await;

    let connections = 20;
    let run = load_run(&client, &ns, &name, &address, connections, 45).await;
    assert_proportional(&run.samples, 1.0);
    // It scales at least to where each pod's queue holds what the target allows: 20 connections
    // over pods of 2 running + 2 waiting is 5 pods; the seed's 6 connections needed 4 at most.
    let scaled_to = run
        .samples
        .iter()
        .map(|s| s.deployment_replicas)
        .max()
        .unwrap();
    assert!(scaled_to >= 5, "{:?}", run.samples);
    eprintln!(
        "concurrency 2, -c {connections}: up to {scaled_to} replicas; {:?}",
        run.load["statusCodeStats"]
    );
    delete_namespace(&client, &ns).await;
    operator.stop();
}
