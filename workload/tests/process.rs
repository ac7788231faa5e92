//! The `workload` binary as a user runs it: configuration errors and draining on SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{
    client, free_port, get_status, sample, send_signal, wait_until_listening, workload_command,
};

#[test]
fn bad_configuration_exits_non_zero_with_one_line() {
    let cases = [
        (
            "CONCURRENCY",
            "abc",
            r#"error: CONCURRENCY must be a whole number >= 1, got "abc""#,
        ),
        (
            "CONCURRENCY",
            "0",
            r#"error: CONCURRENCY must be a whole number >= 1, got "0""#,
        ),
        (
            "PORT",
            "65536",
            r#"error: PORT must be a port number from 0 to 65535, got "65536""#,
        ),
        (
            "OPERATION_DURATION_MS",
            "2s",
            r#"error: OPERATION_DURATION_MS must be a whole number >= 0, got "2s""#,
        ),
        (
            "MAX_CONNECTIONS",
            "0",
            r#"error: MAX_CONNECTIONS must be a whole number >= 1, got "0""#,
        ),
        (
            "HEADER_READ_TIMEOUT_MS",
            "5s",
            r#"error: HEADER_READ_TIMEOUT_MS must be a whole number >= 1, got "5s""#,
        ),
        (
            "BREAKER_QUEUE_FACTOR",
            "1",
            r#"error: BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR (2), got "1""#,
        ),
    ];
    for (variable, value, expected) in cases {
        let output = workload_command(&[(variable, value)]).output().unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{variable}={value}");
        assert_eq!(stderr, format!("{expected}\n"), "{variable}={value}");
        assert!(
            output.stdout.is_empty(),
            "nothing may start: {variable}={value}"
        );
    }
}

/// Waits until the service at `base` runs `in_flight` operations with `waiting` queued: a signal
/// sent after a fixed sleep could, on a loaded machine, arrive before the requests were admitted.
async fn wait_queued(base: &str, in_flight: f64, waiting: f64) {
    let metrics = format!("{base}/metrics");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = client()
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let queued = (
            sample(&body, "queue_in_flight_tasks"),
            sample(&body, "queue_waiting_tasks"),
        );
        if queued == (Some(in_flight), Some(waiting)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not queued as expected: {queued:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_accepted_operation() {
    let port = free_port();
    let port_text = port.to_string();
    let mut child = workload_command(&[
        ("HOST", "127.0.0.1"),
        ("PORT", &port_text),
        ("OPERATION_DURATION_MS", "400"),
    ])
    .spawn()
    .unwrap();
    wait_until_listening(port, &mut child).await;
    let base = format!("http://127.0.0.1:{port}");

    // One running and two waiting: 1.2 s of accepted work.
    let accepted: Vec<_> = (0..3)
        .map(|_| {
            let url = format!("{base}/expensive-op");
            tokio::spawn(async move { get_status(&client(), &url).await })
        })
        .collect();
    wait_queued(&base, 1.0, 2.0).await;
    send_signal(&child, "TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;

    let http = client();
    assert_eq!(get_status(&http, &format!("{base}/readiness")).await, 503);
    assert_eq!(get_status(&http, &format!("{base}/liveness")).await, 200);
    assert_eq!(
        get_status(&http, &format!("{base}/expensive-op")).await,
        503
    );
    for request in accepted {
        assert_eq!(request.await.unwrap(), 200, "accepted work must complete");
    }

    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the process did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    let port = free_port();
    let port_text = port.to_string();
    let mut child = workload_command(&[
        ("HOST", "127.0.0.1"),
        ("PORT", &port_text),
        ("OPERATION_DURATION_MS", "60000"),
        ("SHUTDOWN_GRACE_MS", "300"),
    ])
    .spawn()
    .unwrap();
    wait_until_listening(port, &mut child).await;
    let url = format!("http://127.0.0.1:{port}/expensive-op");
    let _stuck = tokio::spawn(async move { get_status(&client(), &url).await });
    wait_queued(&format!("http://127.0.0.1:{port}"), 1.0, 0.0).await;

    let signalled = Instant::now();
    send_signal(&child, "TERM");
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(took >= Duration::from_millis(300), "exited after {took:?}");
    assert_eq!(status.status.code(), Some(1), "operations were cut off");
    let logs = String::from_utf8_lossy(&status.stdout);
    assert!(logs.contains("abandoned=1"), "{logs}");
}
