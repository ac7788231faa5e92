//! `/metrics` as Prometheus itself sees it: linted by `promtool` and scraped by a real `prometheus` server.
//! Both come from Debian's `prometheus` package (`scripts/install-test-deps.sh`); these tests fail, not
//! skip, when it is missing.

mod common;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Load, SEED_LIMITS, Service, free_port};

fn tool(name: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|out| out.status.success());
    assert!(
        found,
        "{name} is not installed: run scripts/install-test-deps.sh (Debian package `prometheus`)"
    );
    Command::new(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_under_load() {
    let service = Service::start(SEED_LIMITS, Duration::from_secs(5)).await;
    let _load = Load::start(service.url("/expensive-op"), 4);
    service
        .wait_for_metric("queue_ratio", 3.0, Duration::from_secs(5))
        .await;
    assert_eq!(service.status("/nope").await, 404);
    let body = service
        .client
        .get(service.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let mut promtool = tool("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}\n--- metrics ---\n{body}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A `prometheus` server with its own data directory, killed and cleaned up on drop.
struct PrometheusServer {
    child: Child,
    dir: std::path::PathBuf,
    port: u16,
}

impl PrometheusServer {
    fn start(target: std::net::SocketAddr) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "workload-prom-{}-{}",
            std::process::id(),
            target.port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n\
                 scrape_configs:\n  - job_name: workload\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = tool("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Self { child, dir, port }
    }

    /// The value of an instant query that returns one series, or `None` while it returns nothing.
    async fn query_one(&self, client: &reqwest::Client, query: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let response = client
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let value = body["data"]["result"].get(0)?["value"][1].as_str()?;
        value.parse().ok()
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_queue_ratio_while_the_queue_is_loaded() {
    let service = Service::start(SEED_LIMITS, Duration::from_secs(30)).await;
    let prometheus = PrometheusServer::start(service.addr);
    // 1 running + 3 waiting at concurrency 1: queue_ratio 3.
    let _load = Load::start(service.url("/expensive-op"), 4);
    service
        .wait_for_metric("queue_ratio", 3.0, Duration::from_secs(5))
        .await;

    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = prometheus
            .query_one(&client, r#"queue_ratio{job="workload"}"#)
            .await;
        if last == Some(3.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(last, Some(3.0), "Prometheus never read queue_ratio 3");
    let waiting = prometheus
        .query_one(&client, r#"queue_waiting_tasks{job="workload"}"#)
        .await;
    assert_eq!(waiting, Some(3.0));
}
