//! A real `prometheus` server (Debian package `prometheus`) for tests: started on a free port with
//! the given scrape configs, queried over its HTTP API, killed and cleaned up on drop. A missing
//! binary fails the test with the install hint.
//!
//! Include it with `#[path = "common/prometheus.rs"] mod prometheus_server;` beside `mod common;`.
#![allow(dead_code)] // each test file uses a different part of the helper

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// A label set from `(name, value)` pairs.
pub fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A running `prometheus`.
pub struct PrometheusServer {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl PrometheusServer {
    /// Start with a 1 s scrape interval and `scrape_configs`, a YAML list, indented as the value of
    /// the top-level `scrape_configs:` key. Returns once Prometheus answers `/-/ready`.
    pub async fn start(client: &reqwest::Client, scrape_configs: &str) -> Self {
        let port = crate::common::free_port();
        let dir = std::env::temp_dir().join(format!("prometheus-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n{scrape_configs}"
            ),
        )
        .unwrap();
        // A file, not a pipe nobody drains: a full pipe would block Prometheus' logging.
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `prometheus` ({e}): run scripts/install-test-deps.sh (Debian package `prometheus`)"
                )
            });
        let mut server = Self { child, dir, port };
        server.wait_until_ready(client).await;
        server
    }

    async fn wait_until_ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let log =
                    std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
                panic!("prometheus exited with {status}:\n{log}");
            }
            let ready = client.get(self.url("/-/ready")).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "prometheus never became ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `data` of an API answer, failing on an error answer (e.g. a PromQL syntax error).
    async fn api(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: &[(&str, &str)],
    ) -> serde_json::Value {
        let response = client
            .get(self.url(path))
            .query(query)
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["status"], "success", "{path} {query:?} failed: {body}");
        body["data"].clone()
    }

    /// The samples an instant query returns.
    pub async fn query(&self, client: &reqwest::Client, promql: &str) -> Vec<Sample> {
        let data = self
            .api(client, "/api/v1/query", &[("query", promql)])
            .await;
        assert_eq!(
            data["resultType"], "vector",
            "{promql} is not an instant vector"
        );
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = serde_json::from_value(sample["metric"].clone()).unwrap();
                let value = sample["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Polls `promql` until it returns `expected` in any order (scrapes lag behind the targets by up to
    /// a scrape interval), failing after 30 s with the last answer.
    pub async fn wait_for_query(
        &self,
        client: &reqwest::Client,
        promql: &str,
        expected: &[Sample],
    ) {
        let mut expected = expected.to_vec();
        expected.sort_by(|a, b| a.0.cmp(&b.0));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut samples = self.query(client, promql).await;
            samples.sort_by(|a, b| a.0.cmp(&b.0));
            if samples == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{promql}\nreturned {samples:?}\nexpected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Polls `/api/v1/series` for `selector` until it lists at least `count` series (targets
    /// appear after their first scrape), failing after 30 s with what it found.
    pub async fn wait_for_series(
        &self,
        client: &reqwest::Client,
        selector: &str,
        count: usize,
    ) -> Vec<BTreeMap<String, String>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let found = self.series(client, selector).await;
            if found.len() >= count {
                return found;
            }
            assert!(Instant::now() < deadline, "{selector} found only {found:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The label sets of the series matching `selector` (`/api/v1/series`, as prometheus-adapter
    /// discovers series).
    pub async fn series(
        &self,
        client: &reqwest::Client,
        selector: &str,
    ) -> Vec<BTreeMap<String, String>> {
        let data = self
            .api(client, "/api/v1/series", &[("match[]", selector)])
            .await;
        serde_json::from_value(data).unwrap()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
