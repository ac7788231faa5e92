//! The generator beside autocannon on the same workload: the same counts where autocannon is right
//! (kept-alive connections: both count what the workload served them), and the workload's own
//! latencies where autocannon's are wrong (a workload that closes connections while others wait).
//! Needs `autocannon` on PATH (`scripts/install-test-deps.sh`).

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::{load, workload, workloads_own_timing};
use loadgen::config::RetryAfter;

/// autocannon's JSON result of `-c connections -d seconds` (in a blocking thread, so the
/// workload in this process keeps serving).
async fn autocannon(addr: SocketAddr, connections: u32, seconds: u64) -> serde_json::Value {
    let output = tokio::task::spawn_blocking(move || {
        Command::new("autocannon")
            .args([
                "-t",
                "60",
                "-c",
                &connections.to_string(),
                "-d",
                &seconds.to_string(),
            ])
            .args(["--json", &format!("http://{addr}/expensive-op")])
            .output()
            .expect("autocannon on PATH (scripts/install-test-deps.sh)")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).expect("autocannon's JSON")
}

fn autocannon_200s(result: &serde_json::Value) -> u64 {
    result["statusCodeStats"]["200"]["count"]
        .as_u64()
        .unwrap_or(0)
}

/// The workload's count of 200s on /expensive-op once the `connections` requests a run may
/// leave in flight have finished.
async fn workloads_200s_after(addr: SocketAddr, operation: Duration, connections: u32) -> u64 {
    tokio::time::sleep(operation * (connections + 1)).await;
    workloads_own_timing(addr).await.0 as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_alive_its_counts_and_latencies_are_autocannons() {
    // 10 ms operations, three connections, one at a time: the workload sets the pace. The two
    // runs take turns, so on shared cores their totals differ by what each got of the CPU; each
    // is checked against what the workload itself served during it.
    let (operation, connections) = (Duration::from_millis(10), 3);
    let addr = workload(10, "never").await;
    let ours = load(addr, connections, 5, RetryAfter::Ignore).await;
    let served_to_ours = workloads_200s_after(addr, operation, connections).await;
    let theirs = autocannon(addr, connections, 5).await;
    let served_to_theirs =
        workloads_200s_after(addr, operation, connections).await - served_to_ours;
    let (ours_ok, theirs_ok) = (ours.answers(200), autocannon_200s(&theirs));
    let ours_mean = ours.latencies(200).unwrap().mean() / 1e3;
    let theirs_mean = theirs["latency"]["average"].as_f64().unwrap();
    eprintln!(
        "kept alive: {ours_ok} 200s here of {served_to_ours} served, {theirs_ok} by autocannon of {served_to_theirs}; mean latency {ours_mean:.2} ms here, {theirs_mean:.2} ms by autocannon"
    );
    assert_eq!(ours.all_answers(), ours_ok, "{ours:?}");
    // Both count every answer the workload served them, but for those still in flight at the
    // end (one per connection at most, which neither counts).
    let counts_what_was_served =
        |counted: u64, served: u64| counted <= served && served <= counted + u64::from(connections);
    assert!(
        counts_what_was_served(ours_ok, served_to_ours),
        "{ours_ok} 200s here, the workload served {served_to_ours}"
    );
    assert!(
        counts_what_was_served(theirs_ok, served_to_theirs),
        "{theirs_ok} 200s by autocannon, the workload served {served_to_theirs}"
    );
    // Each connection always has a request out, so by Little's law each run's mean latency is
    // its connections x duration / answers: the true latency, whatever CPU the run was given.
    let littles_mean = |served: u64| f64::from(connections) * 5e3 / served as f64;
    for (who, mean, served) in [
        ("here", ours_mean, served_to_ours),
        ("by autocannon", theirs_mean, served_to_theirs),
    ] {
        let expected = littles_mean(served);
        assert!(
            (mean - expected).abs() <= 0.1 * expected,
            "mean {mean:.2} ms {who}, {expected:.2} ms by Little's law over what was served"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_workload_closes_connections_its_latencies_stay_true() {
    // 200 ms operations, three connections: each answer waits for the two ahead, so every
    // latency is close to 600 ms in the steady state; the workload closes a connection after
    // each answer that had another waiting.
    let operation = 200.0;
    let addr = workload(200, "when-queued").await;
    let ours = load(addr, 3, 5, RetryAfter::Ignore).await;
    let theirs = autocannon(addr, 3, 5).await;
    let ours_latency = ours.latencies(200).unwrap();
    let ours_p50 = ours_latency.value_at_quantile(0.5) as f64 / 1e3;
    let theirs_p50 = theirs["latency"]["p50"].as_f64().unwrap();
    eprintln!(
        "when-queued: {} 200s here, {} by autocannon; p50 {ours_p50:.1} ms here, {theirs_p50:.1} ms by autocannon; min {:.1} ms here, {} ms by autocannon",
        ours.answers(200),
        autocannon_200s(&theirs),
        ours_latency.min() as f64 / 1e3,
        theirs["latency"]["min"]
    );
    // No answer comes sooner than its own operation; the queue ahead adds two more.
    assert!(ours_latency.min() as f64 / 1e3 >= operation);
    assert!(
        (ours_p50 - 3.0 * operation).abs() < 0.1 * 3.0 * operation,
        "p50 {ours_p50} ms, three operations are {} ms",
        3.0 * operation
    );
}
