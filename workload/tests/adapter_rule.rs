//! The prometheus-adapter rules in `deploy/monitoring/` against a real Prometheus: the workload runs
//! under load and is scraped with the `namespace` and `pod` target labels the Prometheus Operator
//! adds, and each rule's `seriesQuery` and `metricsQuery` (its placeholders filled as the adapter
//! fills them) return that pod's `queue_ratio` or `queue_occupancy`. Also: the chart values and the
//! plain adapter config carry the same rules, and the adapter relists no faster than Prometheus
//! scrapes.
//! `prometheus` (Debian) is required: a missing binary fails the test.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus_server;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Load, OCCUPANCY_WINDOW, SEED_LIMITS, Service};
use prometheus_server::{PrometheusServer, labels};
use serde_yaml::Value;
use workload::contract::{QUEUE_OCCUPANCY_METRIC, QUEUE_RATIO_METRIC};

/// The per-pod gauges an HPA may scale on, each served by one rule.
const SERVED: [&str; 2] = [QUEUE_RATIO_METRIC, QUEUE_OCCUPANCY_METRIC];

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

/// Every `.yaml` file under `dir`, in its subdirectories too (e.g. `deploy/examples/load-tests/`).
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(yaml_files(&path));
        } else if path
            .extension()
            .is_some_and(|extension| extension == "yaml")
        {
            files.push(path);
        }
    }
    files
}

fn read_yaml(relative: &str) -> Value {
    let path = repo_path(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// The prometheus-adapter chart values.
const CHART_VALUES: &str = "deploy/monitoring/prometheus-adapter-values.yaml";

/// The rules of the prometheus-adapter chart values (`rules.custom`).
fn chart_rules() -> Value {
    read_yaml(CHART_VALUES)["rules"]["custom"].clone()
}

/// The one rule serving `metric`.
fn rule_serving(metric: &str) -> Value {
    let rules = chart_rules();
    let serving: Vec<&Value> = rules
        .as_sequence()
        .expect("rules.custom is a list")
        .iter()
        .filter(|rule| rule["name"]["as"] == metric)
        .collect();
    assert_eq!(serving.len(), 1, "exactly one rule must serve {metric}");
    serving[0].clone()
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {value:?}"))
}

/// The Prometheus label a rule maps to a Kubernetes resource (`resources.overrides`).
fn label_for(rule: &Value, resource: &str) -> String {
    let overrides = rule["resources"]["overrides"]
        .as_mapping()
        .expect("the rule maps labels to resources with resources.overrides");
    overrides
        .iter()
        .find(|(_, target)| target["resource"] == resource && target.get("group").is_none())
        .map(|(label, _)| text(label, "an override label").to_string())
        .unwrap_or_else(|| panic!("no label maps to the resource {resource}"))
}

/// The PromQL the adapter runs for the rule's metric of `pods` in `namespace`, as
/// prometheus-adapter's `metricsQuery.Build` makes it (pkg/naming/metrics_query.go): the namespace
/// matcher, then the pod matcher (`=` for one name, `=~` with `|` for several), grouped by the pod
/// label. Fails on template syntax beyond these three placeholders, which this filler cannot run.
fn adapter_query(rule: &Value, namespace: &str, pods: &[&str]) -> String {
    let (namespace_label, pod_label) = (label_for(rule, "namespace"), label_for(rule, "pod"));
    let series = rule["name"]["as"].as_str().unwrap();
    let pod_matcher = match pods {
        [one] => format!("{pod_label}=\"{one}\""),
        several => format!("{pod_label}=~\"{}\"", several.join("|")),
    };
    let query = text(&rule["metricsQuery"], "metricsQuery")
        .replace("<<.Series>>", series)
        .replace(
            "<<.LabelMatchers>>",
            &format!("{namespace_label}=\"{namespace}\",{pod_matcher}"),
        )
        .replace("<<.GroupBy>>", &pod_label);
    assert!(
        !query.contains("<<") && !query.contains(">>"),
        "metricsQuery uses template syntax this test does not fill: {query}"
    );
    query
}

/// Seconds in a Prometheus duration such as `1m`, `15s` or `1m30s`.
fn seconds(duration: &str) -> f64 {
    let mut total = 0.0;
    let mut rest = duration;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .unwrap_or_else(|_| panic!("bad duration {duration:?}"));
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            other => panic!("unit {other:?} in duration {duration:?}"),
        };
        total += number * unit;
        rest = &rest[unit_len..];
    }
    total
}

#[test]
fn chart_values_and_plain_config_carry_the_same_rules() {
    let config_map = read_yaml("deploy/monitoring/adapter-config.yaml");
    assert_eq!(config_map["kind"], "ConfigMap");
    let config: Value =
        serde_yaml::from_str(text(&config_map["data"]["config.yaml"], "config.yaml"))
            .expect("data.config.yaml is YAML");
    let values = read_yaml(CHART_VALUES);
    let rules = &values["rules"]["custom"];
    assert_eq!(
        &config["rules"], rules,
        "deploy/monitoring/adapter-config.yaml and prometheus-adapter-values.yaml differ"
    );

    // The chart's default rules would serve a second, generic queue_ratio.
    assert_eq!(values["rules"]["default"], false);
    for metric in SERVED {
        rule_serving(metric);
    }
    assert_eq!(rules.as_sequence().map(Vec::len), Some(SERVED.len()));
    // The chart passes rules.custom through Helm's `tpl`, which would evaluate `{{ }}`.
    let rules = serde_yaml::to_string(rules).unwrap();
    assert!(!rules.contains("{{"), "{rules}");
}

#[test]
fn adapter_relists_no_faster_than_prometheus_scrapes() {
    let relist = seconds(text(
        &read_yaml("deploy/monitoring/prometheus-adapter-values.yaml")["metricsRelistInterval"],
        "metricsRelistInterval",
    ));
    let stack = read_yaml("deploy/monitoring/kube-prometheus-stack-values.yaml");
    let crd = read_yaml("crds/sandboxservice.yaml");
    let default_interval = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["monitoring"]["properties"]["interval"]["default"];
    let mut intervals = vec![
        (
            "kube-prometheus-stack scrapeInterval".to_string(),
            text(
                &stack["prometheus"]["prometheusSpec"]["scrapeInterval"],
                "scrapeInterval",
            )
            .to_string(),
        ),
        (
            "SandboxService default interval".to_string(),
            text(default_interval, "the CRD's default interval").to_string(),
        ),
        (
            "operator ServiceMonitor".to_string(),
            text(
                &read_yaml("deploy/monitoring/operator-servicemonitor.yaml")["spec"]["endpoints"]
                    [0]["interval"],
                "interval",
            )
            .to_string(),
        ),
    ];
    for path in yaml_files(&repo_path("deploy/examples")) {
        let text = std::fs::read_to_string(&path).unwrap();
        // Multi-document files: split at each `---` line.
        for document in text.split("\n---\n") {
            let example: Value = serde_yaml::from_str(document).unwrap();
            if let Some(interval) = example["spec"]["monitoring"]["interval"].as_str() {
                intervals.push((path.display().to_string(), interval.to_string()));
            }
        }
    }
    for (source, interval) in intervals {
        assert!(
            relist >= seconds(&interval),
            "metricsRelistInterval ({relist}s) is shorter than the {source} ({interval}): series would flap"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_queries_return_the_loaded_pods_gauges_from_a_real_prometheus() {
    // The loaded pod, an idle pod beside it, and a pod of the same name in another namespace: the
    // namespace and pod matchers must keep the last two out of the loaded pod's value.
    let loaded = Service::start(SEED_LIMITS, Duration::from_secs(30)).await;
    let idle = Service::start(SEED_LIMITS, Duration::from_secs(30)).await;
    let elsewhere = Service::start(SEED_LIMITS, Duration::from_secs(30)).await;
    let client = common::client();
    let target = |service: &Service, namespace: &str, pod: &str| {
        format!(
            "      - targets: ['{}']\n        labels: {{namespace: {namespace}, pod: {pod}}}\n",
            service.addr
        )
    };
    let prometheus = PrometheusServer::start(
        &client,
        &format!(
            "  - job_name: workload\n    static_configs:\n{}{}{}",
            target(&loaded, "default", "thepod"),
            target(&idle, "default", "idlepod"),
            target(&elsewhere, "other", "thepod"),
        ),
    )
    .await;

    // 1 running + 3 waiting at concurrency 1: queue_ratio 3, and queue_occupancy 4 once they have
    // been there a whole window. The pod in the other namespace gets 1 and 2, so a query that ignored
    // the namespace would read their avg or sum.
    let _load = Load::start(loaded.url("/expensive-op"), 4);
    let _elsewhere_load = Load::start(elsewhere.url("/expensive-op"), 2);
    let settled = OCCUPANCY_WINDOW + Duration::from_secs(5);
    let gauges = [
        (QUEUE_RATIO_METRIC, 3.0, 1.0),
        (QUEUE_OCCUPANCY_METRIC, 4.0, 2.0),
    ];
    for (metric, at_loaded, at_elsewhere) in gauges {
        loaded.wait_for_metric(metric, at_loaded, settled).await;
        elsewhere
            .wait_for_metric(metric, at_elsewhere, settled)
            .await;
    }

    for (metric, at_loaded, _) in gauges {
        let rule = rule_serving(metric);
        // Discovery: the adapter lists the series of seriesQuery and maps their labels to resources.
        let series_query = text(&rule["seriesQuery"], "seriesQuery");
        let found = prometheus.wait_for_series(&client, series_query, 3).await;
        for series in &found {
            assert_eq!(series["__name__"], metric, "{series:?}");
            for resource in ["namespace", "pod"] {
                assert!(
                    series.contains_key(&label_for(&rule, resource)),
                    "{series:?}"
                );
            }
        }

        // `kubectl get --raw .../namespaces/default/pods/thepod/METRIC`: one pod.
        prometheus
            .wait_for_query(
                &client,
                &adapter_query(&rule, "default", &["thepod"]),
                &[(labels(&[("pod", "thepod")]), at_loaded)],
            )
            .await;
        // `.../namespaces/default/pods/*/METRIC`, as the HPA asks: every pod of the Deployment.
        prometheus
            .wait_for_query(
                &client,
                &adapter_query(&rule, "default", &["thepod", "idlepod"]),
                &[
                    (labels(&[("pod", "idlepod")]), 0.0),
                    (labels(&[("pod", "thepod")]), at_loaded),
                ],
            )
            .await;
    }
}

#[test]
fn adapter_query_fills_the_placeholders_as_the_adapter_does() {
    let rule = rule_serving(QUEUE_RATIO_METRIC);
    let one = adapter_query(&rule, "default", &["thepod"]);
    assert!(
        one.contains(r#"queue_ratio{namespace="default",pod="thepod"}"#),
        "{one}"
    );
    assert!(one.contains("by (pod)"), "{one}");
    let several = adapter_query(&rule, "default", &["a", "b"]);
    assert!(several.contains(r#"pod=~"a|b""#), "{several}");
    assert_eq!(seconds("1m30s"), 90.0);
    assert_eq!(seconds("500ms"), 0.5);
}
