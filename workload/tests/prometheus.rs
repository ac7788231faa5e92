//! `/metrics` as Prometheus itself sees it: linted by `promtool` and scraped by a real `prometheus` server.
//! Both come from Debian's `prometheus` package (`scripts/install-test-deps.sh`); these tests fail, not
//! skip, when it is missing.

mod common;
#[path = "common/prometheus.rs"]
mod prometheus_server;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Load, SEED_LIMITS, Service};
use prometheus_server::{PrometheusServer, Sample, labels};

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
    let body = service.scrape().await;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_queue_ratio_while_the_queue_is_loaded() {
    let service = Service::start(SEED_LIMITS, Duration::from_secs(30)).await;
    let client = common::client();
    let prometheus = PrometheusServer::start(
        &client,
        &format!(
            "  - job_name: workload\n    static_configs:\n      - targets: ['{}']\n",
            service.addr
        ),
    )
    .await;
    // 1 running + 3 waiting at concurrency 1: queue_ratio 3.
    let _load = Load::start(service.url("/expensive-op"), 4);
    service
        .wait_for_metric("queue_ratio", 3.0, Duration::from_secs(5))
        .await;

    let instance = service.addr.to_string();
    let series = |name: &str| -> Sample {
        let target = [
            ("__name__", name),
            ("instance", &instance),
            ("job", "workload"),
        ];
        (labels(&target), 3.0)
    };
    for name in ["queue_ratio", "queue_waiting_tasks"] {
        prometheus
            .wait_for_query(
                &client,
                &format!(r#"{name}{{job="workload"}}"#),
                &[series(name)],
            )
            .await;
    }
}
