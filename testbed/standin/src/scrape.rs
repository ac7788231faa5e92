//! The Prometheus Operator's part: each ServiceMonitor endpoint becomes a scrape job whose targets
//! are the running pods behind the Services it selects, with the labels the Prometheus Operator's
//! relabelling gives. Not-ready pods stay targets (Prometheus scrapes not-ready endpoints too), so
//! an overloaded pod's `queue_ratio` keeps reaching the HPA.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;
use kube::core::{DynamicObject, Selector, SelectorExt};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{info, warn};

use crate::labels::{Labels, selects};
use crate::probe::HttpClient;
use crate::state::PodProcess;

/// One ServiceMonitor endpoint as a Prometheus scrape job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// `serviceMonitor/NAMESPACE/NAME/INDEX`, the Prometheus Operator's job name.
    pub name: String,
    pub interval: Option<String>,
    pub path: String,
    pub targets: Vec<TargetGroup>,
}

/// A `file_sd` target group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetGroup {
    pub targets: Vec<String>,
    pub labels: Labels,
}

/// The scrape jobs of `monitors`, over `services` and the running `pods`.
pub fn jobs(
    monitors: &[Arc<DynamicObject>],
    services: &[Arc<Service>],
    pods: &[Arc<PodProcess>],
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for monitor in monitors {
        let namespace = monitor.namespace().unwrap_or_default();
        let spec = &monitor.data["spec"];
        let Some(selector) = selector(&spec["selector"]) else {
            warn!(monitor = %monitor.name_any(), "selector is not a valid label selector; skipped");
            continue;
        };
        let selected: Vec<&Service> = services
            .iter()
            .map(AsRef::as_ref)
            .filter(|service| service.namespace().as_deref() == Some(namespace.as_str()))
            .filter(|service| selector.matches(service.labels()))
            .collect();
        let endpoints = spec["endpoints"].as_array().cloned().unwrap_or_default();
        for (index, endpoint) in endpoints.iter().enumerate() {
            let port = endpoint["port"].as_str().unwrap_or_default();
            let mut targets = Vec::new();
            for service in &selected {
                let has_port = service
                    .spec
                    .as_ref()
                    .and_then(|spec| spec.ports.as_ref())
                    .is_some_and(|ports| ports.iter().any(|p| p.name.as_deref() == Some(port)));
                let Some(pod_selector) = service.spec.as_ref().and_then(|s| s.selector.clone())
                else {
                    continue;
                };
                if !has_port {
                    continue;
                }
                let service_name = service.name_any();
                for pod in pods {
                    if pod.namespace != namespace
                        || pod.is_terminating()
                        || !selects(&pod_selector, &pod.labels)
                    {
                        continue;
                    }
                    targets.push(TargetGroup {
                        targets: vec![pod.address.to_string()],
                        labels: Labels::from([
                            ("namespace".into(), namespace.clone()),
                            ("service".into(), service_name.clone()),
                            ("job".into(), service_name.clone()),
                            ("pod".into(), pod.name.clone()),
                            ("container".into(), pod.container.clone()),
                            ("endpoint".into(), port.to_string()),
                        ]),
                    });
                }
            }
            jobs.push(Job {
                name: format!("serviceMonitor/{namespace}/{}/{index}", monitor.name_any()),
                interval: endpoint["interval"].as_str().map(str::to_string),
                path: endpoint["path"].as_str().unwrap_or("/metrics").to_string(),
                targets,
            });
        }
    }
    jobs
}

/// A ServiceMonitor's `selector` (`matchLabels` and `matchExpressions`); absent selects all.
fn selector(selector: &Value) -> Option<Selector> {
    if selector.is_null() {
        return Some(Selector::default());
    }
    let selector: LabelSelector = serde_json::from_value(selector.clone()).ok()?;
    Selector::try_from(selector).ok()
}

/// The Prometheus configuration for `jobs`, each reading its targets from a file in `targets_dir`.
pub fn config(jobs: &[Job], targets_dir: &std::path::Path) -> Value {
    let scrape_configs: Vec<Value> = jobs
        .iter()
        .map(|job| {
            let mut config = json!({
                "job_name": job.name,
                "metrics_path": job.path,
                "file_sd_configs": [{"files": [targets_dir.join(target_file(job))]}],
            });
            if let Some(interval) = &job.interval {
                config["scrape_interval"] = json!(interval);
            }
            config
        })
        .collect();
    // The Prometheus Operator's default interval for endpoints that set none.
    json!({ "global": {"scrape_interval": "30s"}, "scrape_configs": scrape_configs })
}

fn target_file(job: &Job) -> String {
    format!("{}.json", job.name.replace('/', "_"))
}

/// Writes Prometheus' configuration and target files, and reloads Prometheus when the jobs change.
pub struct Writer {
    pub config_path: PathBuf,
    pub targets_dir: PathBuf,
    pub prometheus_url: String,
    pub client: HttpClient,
    written: BTreeMap<PathBuf, String>,
}

impl Writer {
    pub fn new(
        config_path: PathBuf,
        targets_dir: PathBuf,
        prometheus_url: String,
        client: HttpClient,
    ) -> Self {
        Self {
            config_path,
            targets_dir,
            prometheus_url,
            client,
            written: BTreeMap::new(),
        }
    }

    /// Writes what changed; Prometheus re-reads `file_sd` files by itself, the configuration on reload.
    pub async fn write(&mut self, jobs: &[Job]) {
        for job in jobs {
            let json = serde_json::to_string_pretty(&job.targets).unwrap_or_default();
            self.write_file(self.targets_dir.join(target_file(job)), json)
                .await;
        }
        let config = serde_yaml::to_string(&config(jobs, &self.targets_dir)).unwrap_or_default();
        if self.write_file(self.config_path.clone(), config).await {
            self.reload().await;
        }
    }

    /// Writes `content` unless the file already has it; whether it wrote.
    async fn write_file(&mut self, path: PathBuf, content: String) -> bool {
        if self.written.get(&path) == Some(&content) {
            return false;
        }
        // Write and rename, so Prometheus never reads half a file.
        let partial = path.with_extension("partial");
        let result = async {
            tokio::fs::write(&partial, &content).await?;
            tokio::fs::rename(&partial, &path).await
        }
        .await;
        match result {
            Ok(()) => {
                self.written.insert(path, content);
                true
            }
            Err(err) => {
                warn!(path = %path.display(), %err, "cannot write");
                false
            }
        }
    }

    async fn reload(&self) {
        let request =
            http::Request::post(format!("{}/-/reload", self.prometheus_url)).body(Body::empty());
        match request.map(|request| self.client.request(request)) {
            Ok(response) => match response.await {
                Ok(response) if response.status().is_success() => info!("Prometheus reloaded"),
                Ok(response) => warn!(status = %response.status(), "Prometheus refused the reload"),
                Err(err) => warn!(%err, "cannot reach Prometheus to reload"),
            },
            Err(err) => warn!(%err, "bad Prometheus URL"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn object<T: serde::de::DeserializeOwned>(yaml: &str) -> Arc<T> {
        Arc::new(serde_yaml::from_str(yaml).unwrap())
    }

    fn pod(namespace: &str, name: &str, app: &str, port: u16) -> Arc<PodProcess> {
        Arc::new(PodProcess::new(
            namespace.into(),
            name.into(),
            name.into(),
            Labels::from([("app".into(), app.into())]),
            "workload".into(),
            SocketAddr::from(([127, 0, 0, 1], port)),
        ))
    }

    const MONITOR: &str = r#"
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: demo, namespace: ns}
spec:
  selector: {matchLabels: {instance: demo}}
  endpoints: [{port: http, path: /metrics, interval: 5s}]
"#;
    const SERVICE: &str = r#"
metadata: {name: demo, namespace: ns, labels: {instance: demo}}
spec: {selector: {app: a}, ports: [{name: http, port: 80}]}
"#;

    #[test]
    fn targets_carry_the_prometheus_operator_labels() {
        let pods = [
            pod("ns", "demo-1", "a", 4001),
            pod("ns", "other", "b", 4002),
            pod("elsewhere", "x", "a", 4003),
        ];
        let jobs = jobs(&[object(MONITOR)], &[object(SERVICE)], &pods);
        assert_eq!(jobs.len(), 1);
        let job = &jobs[0];
        assert_eq!(job.name, "serviceMonitor/ns/demo/0");
        assert_eq!(
            (job.interval.as_deref(), job.path.as_str()),
            (Some("5s"), "/metrics")
        );
        assert_eq!(job.targets.len(), 1);
        assert_eq!(job.targets[0].targets, ["127.0.0.1:4001"]);
        let labels: Vec<(&str, &str)> = job.targets[0]
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            labels,
            [
                ("container", "workload"),
                ("endpoint", "http"),
                ("job", "demo"),
                ("namespace", "ns"),
                ("pod", "demo-1"),
                ("service", "demo")
            ]
        );
    }

    #[test]
    fn not_ready_pods_stay_targets_terminating_ones_leave() {
        let (starting, leaving) = (pod("ns", "starting", "a", 1), pod("ns", "leaving", "a", 2));
        leaving.start_terminating();
        let jobs = jobs(&[object(MONITOR)], &[object(SERVICE)], &[starting, leaving]);
        assert_eq!(jobs[0].targets.len(), 1);
        assert_eq!(jobs[0].targets[0].labels["pod"], "starting");
    }

    #[test]
    fn match_expressions_select_too() {
        let by_expression = MONITOR.replace(
            "selector: {matchLabels: {instance: demo}}",
            "selector: {matchExpressions: [{key: instance, operator: In, values: [demo]}]}",
        );
        let by_other = by_expression.replace("values: [demo]", "values: [other]");
        let pods = [pod("ns", "p", "a", 1)];
        assert_eq!(
            jobs(&[object(&by_expression)], &[object(SERVICE)], &pods)[0]
                .targets
                .len(),
            1
        );
        assert!(
            jobs(&[object(&by_other)], &[object(SERVICE)], &pods)[0]
                .targets
                .is_empty()
        );
    }

    #[test]
    fn an_endpoint_naming_no_port_of_the_service_has_no_targets() {
        let monitor = MONITOR.replace("port: http", "port: metrics");
        let jobs = jobs(
            &[object(&monitor)],
            &[object(SERVICE)],
            &[pod("ns", "p", "a", 1)],
        );
        assert!(jobs[0].targets.is_empty());
    }

    #[test]
    fn the_config_has_one_job_per_endpoint_reading_its_file() {
        let jobs = jobs(&[object(MONITOR)], &[object(SERVICE)], &[]);
        let config = config(&jobs, std::path::Path::new("/t"));
        let job = &config["scrape_configs"][0];
        assert_eq!(job["job_name"], "serviceMonitor/ns/demo/0");
        assert_eq!(job["scrape_interval"], "5s");
        assert_eq!(
            job["file_sd_configs"][0]["files"][0],
            "/t/serviceMonitor_ns_demo_0.json"
        );
    }
}
