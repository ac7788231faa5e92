//! The monitoring chain on the real node, as a user installs it: the Prometheus Operator turns the
//! operator's ServiceMonitors into Prometheus' scrape config and `deploy/monitoring/alerts.yaml` into its
//! rules; Prometheus scrapes the pods at their IPs (scripts/testbed-monitoring.sh installs them).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use serde_json::{Value, json};

use super::in_cluster::InClusterOperator;
use super::{OnTheNode, hold_operations, is_ready, pod_address};
use crate::harness::{
    MetricsServer, delete_namespace, http_get, kubectl_ok, kubectl_with_input, metrics_get,
    repo_file, wait_until, wait_until_within,
};
use crate::load::{held_replicas, process_metric};

/// The labels the Prometheus Operator gives a ServiceMonitor endpoint's target; the adapter rule in
/// deploy/monitoring selects on `namespace` and `pod`, the alerts group by `service`.
const TARGET_LABELS: [&str; 7] = [
    "container",
    "endpoint",
    "instance",
    "job",
    "namespace",
    "pod",
    "service",
];

/// Prometheus on the test bed, from `scripts/testbed.sh env`.
fn prometheus_address() -> SocketAddr {
    let url = std::env::var("TESTBED_PROMETHEUS")
        .expect("TESTBED_PROMETHEUS: eval \"$(scripts/testbed.sh env)\" first");
    url.trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|_| panic!("TESTBED_PROMETHEUS={url} is not http://IP:PORT"))
}

/// `GET path` of Prometheus' HTTP API: its `data`, once it answers 200 with status success.
fn prometheus(path: &str) -> Option<Value> {
    let (status, body) = http_get(prometheus_address(), path)?;
    let answer: Value = serde_json::from_str(&body).ok()?;
    (status == 200 && answer["status"] == "success").then(|| answer["data"].clone())
}

/// Prometheus' active targets whose labels say namespace `ns`.
pub(super) fn targets_in(ns: &str) -> Vec<Value> {
    prometheus("/api/v1/targets?state=active")
        .and_then(|data| data["activeTargets"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter(|target| target["labels"]["namespace"] == ns)
        .collect()
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn prometheus_scrapes_every_pod_of_a_service_monitor_with_the_adapters_labels_ready_or_not() {
    // Two pods the HPA cannot change; 10 minute operations keep a queue steady while it is read.
    let two_pods = |ns: &str| held_replicas(ns, 2, 600_000);
    let run = OnTheNode::start("node-targets", two_pods, 2).await;
    let operator = InClusterOperator::leading(&run.client).await;
    let ns = &run.ns;
    let name = "performance-sandbox";
    // Four operations on one pod: one runs and three wait, more than 2×CONCURRENCY, so its
    // readiness probe answers 429 and the kubelet takes it out of the Service's ready endpoints.
    let loaded = run.pods[0].metadata.name.clone().unwrap();
    let _held = hold_operations(pod_address(&run.pods[0]), 4);
    let pods: Api<Pod> = Api::namespaced(run.client.clone(), ns);
    wait_until("the loaded pod is not Ready", || async {
        (!is_ready(&pods.get(&loaded).await.ok()?)).then_some(())
    })
    .await;

    let targets = wait_until(
        "Prometheus scrapes both pods, the one that is not Ready too",
        || async {
            let targets = targets_in(ns);
            let up = targets.iter().filter(|t| t["health"] == "up").count();
            let has_loaded = targets
                .iter()
                .any(|t| t["labels"]["pod"] == loaded.as_str());
            (targets.len() == 2 && up == 2 && has_loaded).then_some(targets)
        },
    )
    .await;
    let scraped: BTreeSet<&str> = targets
        .iter()
        .map(|t| t["labels"]["pod"].as_str().unwrap())
        .collect();
    let expected: BTreeSet<&str> = run
        .pods
        .iter()
        .map(|p| p.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(scraped, expected, "one target per pod");
    for target in &targets {
        let labels = target["labels"].as_object().unwrap();
        let keys: BTreeSet<&str> = labels.keys().map(String::as_str).collect();
        assert_eq!(keys, BTreeSet::from(TARGET_LABELS), "{target}");
        assert_eq!(labels["service"], name, "{target}");
        assert_eq!(labels["job"], name, "{target}");
        assert_eq!(labels["endpoint"], "http", "{target}");
        assert_eq!(labels["container"], "workload", "{target}");
        assert_eq!(
            target["scrapePool"],
            format!("serviceMonitor/{ns}/{name}/0"),
            "discovered from the operator's ServiceMonitor"
        );
    }

    // The loaded pod's queue_ratio as the adapter's query selects it: three waiting operations.
    let query = format!(
        "/api/v1/query?query=queue_ratio%7Bnamespace%3D%22{ns}%22%2Cpod%3D%22{loaded}%22%7D"
    );
    wait_until(
        "Prometheus has the not-Ready pod's queue_ratio at 3",
        || async {
            let data = prometheus(&query)?;
            let value = data["result"].as_array()?.first()?["value"][1]
                .as_str()?
                .to_string();
            (value == "3").then_some(())
        },
    )
    .await;

    operator.check(&run.client).await;
    delete_namespace(&run.client, ns).await;
}

/// `deploy/monitoring/alerts.yaml` as the PrometheusRule `name`, each group renamed `GROUP-name` and every
/// `for:` set to `hold`: the shipped rules as they are, for a test that cannot wait their minutes.
fn alerts_with_short_for(name: &str, hold: &str) -> String {
    let shipped = std::fs::read_to_string(repo_file("deploy/monitoring/alerts.yaml")).unwrap();
    let mut rule: Value = serde_yaml::from_str(&shipped).unwrap();
    rule["metadata"]["name"] = json!(name);
    let groups = rule["spec"]["groups"].as_array_mut().unwrap();
    for group in groups.iter_mut() {
        group["name"] = json!(format!("{}-{name}", group["name"].as_str().unwrap()));
        for rule in group["rules"].as_array_mut().unwrap() {
            if rule.get("for").is_some() {
                rule["for"] = json!(hold);
            }
        }
    }
    serde_json::to_string(&rule).unwrap()
}

/// The alerting rules Prometheus loaded, as (group, alert, state).
fn loaded_alerts() -> Vec<(String, String, String)> {
    let data = prometheus("/api/v1/rules?type=alert").unwrap_or_default();
    let mut alerts = Vec::new();
    for group in data["groups"].as_array().into_iter().flatten() {
        for rule in group["rules"].as_array().into_iter().flatten() {
            alerts.push((
                group["name"].as_str().unwrap_or_default().to_string(),
                rule["name"].as_str().unwrap_or_default().to_string(),
                rule["state"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    alerts
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_shipped_alerts_load_and_the_breaker_alert_fires_when_503s_last_its_for() {
    // The rule as users apply it: every alert of it loaded, none firing on an idle cluster.
    kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        repo_file("deploy/monitoring/alerts.yaml").to_str().unwrap(),
    ]);
    let shipped: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_file("deploy/monitoring/alerts.yaml")).unwrap(),
    )
    .unwrap();
    let shipped_alerts: BTreeSet<String> = shipped["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(str::to_string))
        .collect();
    let loaded = wait_until("Prometheus loads the shipped PrometheusRule", || async {
        let loaded: BTreeSet<String> = loaded_alerts()
            .into_iter()
            .filter(|(group, _, _)| group == "performance-sandbox")
            .map(|(_, alert, _)| alert)
            .collect();
        (loaded == shipped_alerts).then_some(loaded)
    })
    .await;
    eprintln!("loaded from deploy/monitoring/alerts.yaml: {loaded:?}");
    let firing: Vec<_> = loaded_alerts()
        .into_iter()
        .filter(|(group, _, state)| group == "performance-sandbox" && state == "firing")
        .collect();
    assert_eq!(
        firing,
        [],
        "a shipped alert fires with no sandbox in trouble"
    );

    // An edited copy whose `for:` is 20 s instead of minutes.
    let short = "performance-sandbox-short-for";
    kubectl_with_input(
        &["apply", "--server-side", "-f", "-"],
        Some(&alerts_with_short_for(short, "20s")),
    )
    .expect("apply the edited copy");

    // One pod whose queue is full: one operation running, four waiting (4×CONCURRENCY), so each
    // further request, which would make five wait, is refused at once with 503.
    let one_pod = |ns: &str| held_replicas(ns, 1, 600_000);
    let run = OnTheNode::start("node-alerts", one_pod, 1).await;
    let ns = run.ns.clone();
    let address = pod_address(&run.pods[0]);
    let _held = hold_operations(address, 5);
    // All five admitted before anything else is sent: a request that overtook one of them would take
    // its place, and the held one would be the only refusal.
    wait_until("five operations held, four of them waiting", || async {
        (process_metric(address, "queue_waiting_tasks")? == 4.0).then_some(())
    })
    .await;
    let refusing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let refuser = {
        let refusing = refusing.clone();
        std::thread::spawn(move || {
            while refusing.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = http_get(address, "/expensive-op");
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    // The breaker counts what it refuses; without this the wait below could only time out.
    wait_until("the pod's breaker refuses operations", || async {
        let refused = process_metric(
            address,
            r#"expensive_operations_rejected_total{reason="circuit_open"}"#,
        )?;
        (refused > 0.0).then_some(())
    })
    .await;

    let group = format!("performance-sandbox-{short}");
    let waited = std::time::Instant::now();
    wait_until_within(
        Duration::from_secs(240),
        "SandboxCircuitBreakerOpen fires from the edited copy",
        || async {
            loaded_alerts()
                .into_iter()
                .any(|(g, alert, state)| {
                    g == group && alert == "SandboxCircuitBreakerOpen" && state == "firing"
                })
                .then_some(())
        },
    )
    .await;
    eprintln!(
        "SandboxCircuitBreakerOpen firing {:.0} s after the breaker opened (for: 20s)",
        waited.elapsed().as_secs_f64()
    );
    let alerts = prometheus("/api/v1/alerts").unwrap();
    let firing = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["labels"]["alertname"] == "SandboxCircuitBreakerOpen" && a["state"] == "firing")
        .cloned()
        .expect("the firing alert");
    assert_eq!(firing["labels"]["namespace"], ns.as_str(), "{firing}");
    assert_eq!(
        firing["labels"]["service"], "performance-sandbox",
        "{firing}"
    );
    refusing.store(false, std::sync::atomic::Ordering::Relaxed);
    refuser.join().unwrap();
    kubectl_ok(&["delete", "prometheusrule", "-n", "monitoring", short]);
    delete_namespace(&run.client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_operators_own_service_monitor_makes_prometheus_scrape_its_metrics() {
    let operator = InClusterOperator::leading(&crate::harness::admin_client().await).await;
    // Only a token whose user may `get` /metrics reads them: none is 401, another user's 403.
    let at = operator.metrics();
    let (status, body) = metrics_get(at, None).expect("the operator's metrics server answers");
    assert_eq!(status, 401, "{body}");
    let stranger = kubectl_ok(&["create", "token", "default", "-n", "sandbox-system"]);
    let (status, body) = metrics_get(at, Some(stranger.trim())).unwrap();
    assert_eq!(status, 403, "{body}");
    let (status, body) = metrics_get(at, Some(&crate::harness::cluster().metrics_token)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("sandbox_operator_reconciliations_total"),
        "{body}"
    );

    let applied = std::time::Instant::now();
    for file in [
        "operator-servicemonitor.yaml",
        "operator-metrics-reader.yaml",
    ] {
        let path = repo_file(&format!("deploy/monitoring/{file}"));
        kubectl_ok(&["apply", "--server-side", "-f", path.to_str().unwrap()]);
    }
    // A new ServiceMonitor reaches Prometheus through the Prometheus Operator's Secret, the kubelet's
    // sync of that volume and the config reloader: up to a minute or two.
    let target = wait_until_within(
        Duration::from_secs(180),
        "Prometheus scrapes the operator",
        || async {
            targets_in("sandbox-system").into_iter().find(|t| {
                t["labels"]["service"] == "sandbox-operator-metrics" && t["health"] == "up"
            })
        },
    )
    .await;
    eprintln!(
        "the operator's target up {:.0} s after its ServiceMonitor was applied",
        applied.elapsed().as_secs_f64()
    );
    assert_eq!(target["labels"]["endpoint"], "https-metrics", "{target}");
    // Its own reconcile counter, as Prometheus stored it.
    let series = "/api/v1/series?match%5B%5D=%7Bnamespace%3D%22sandbox-system%22%2Cjob%3D%22sandbox-operator-metrics%22%7D";
    let names: BTreeSet<String> = prometheus(series)
        .and_then(|d| d.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s["__name__"].as_str().map(str::to_string))
        .collect();
    assert!(
        names.iter().any(|n| n.starts_with("sandbox_operator_")),
        "the operator's metrics in Prometheus: {names:?}"
    );
    operator.check(&crate::harness::admin_client().await).await;
}
