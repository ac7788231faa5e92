//! The `workload` binary as a user runs it: configuration from flags and the environment, its errors,
//! and draining on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

use common::{
    client, free_port, get_status, sample, send_signal, wait_until_listening, workload_command,
};

/// Runs the binary to its end (it must not start) and checks the exit code 2 and the one line on stderr.
fn assert_rejected(env: &[(&str, &str)], args: &[&str], expected: &str) {
    let output = workload_command(env).args(args).output().unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{env:?} {args:?}: {stderr}");
    assert_eq!(stderr, format!("error: {expected}\n"), "{env:?} {args:?}");
    assert!(
        output.stdout.is_empty(),
        "nothing may start: {env:?} {args:?}"
    );
}

#[test]
fn bad_variables_exit_2_with_one_line_naming_variable_and_value() {
    let cases = [
        (
            "CONCURRENCY",
            "abc",
            r#"CONCURRENCY (--concurrency) must be a whole number >= 1, got "abc""#,
        ),
        (
            "CONCURRENCY",
            "0",
            r#"CONCURRENCY (--concurrency) must be a whole number >= 1, got "0""#,
        ),
        (
            "PORT",
            "65536",
            r#"PORT (--port) must be a port number from 0 to 65535, got "65536""#,
        ),
        (
            "HOST",
            "not-an-ip",
            r#"HOST (--host) must be an IPv4 or IPv6 address, got "not-an-ip""#,
        ),
        (
            "OPERATION_DURATION_MS",
            "2s",
            r#"OPERATION_DURATION_MS (--operation-duration-ms) must be a whole number >= 0, got "2s""#,
        ),
        (
            "MAX_CONNECTIONS",
            "0",
            r#"MAX_CONNECTIONS (--max-connections) must be a whole number >= 1, got "0""#,
        ),
        (
            "HEADER_READ_TIMEOUT_MS",
            "5s",
            r#"HEADER_READ_TIMEOUT_MS (--header-read-timeout-ms) must be a whole number >= 1, got "5s""#,
        ),
        (
            "OCCUPANCY_WINDOW_MS",
            "0",
            r#"OCCUPANCY_WINDOW_MS (--occupancy-window-ms) must be a whole number >= 1, got "0""#,
        ),
        (
            "BREAKER_QUEUE_FACTOR",
            "1",
            r#"BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR (2), got "1""#,
        ),
    ];
    for (variable, value, expected) in cases {
        assert_rejected(&[(variable, value)], &[], expected);
    }
}

#[test]
fn bad_flags_exit_2_with_the_same_line() {
    assert_rejected(
        &[],
        &["--concurrency", "abc"],
        r#"CONCURRENCY (--concurrency) must be a whole number >= 1, got "abc""#,
    );
    // The flag's bad value is reported, not the variable's good one.
    assert_rejected(
        &[("PORT", "8080")],
        &["--port=65536"],
        r#"PORT (--port) must be a port number from 0 to 65535, got "65536""#,
    );
    // The rule across two values holds wherever each one comes from.
    assert_rejected(
        &[("READINESS_QUEUE_FACTOR", "3")],
        &["--breaker-queue-factor", "2"],
        r#"BREAKER_QUEUE_FACTOR must be >= READINESS_QUEUE_FACTOR (3), got "2""#,
    );
}

#[test]
fn an_unknown_flag_exits_2_with_clap_s_message_on_one_line() {
    assert_rejected(&[], &["--nope"], "unexpected argument '--nope' found");
}

#[test]
fn help_and_version_go_to_stdout_with_exit_0() {
    for (flag, expected) in [
        ("--help", "[env: CONCURRENCY=] [default: 1]"),
        ("--version", env!("CARGO_PKG_VERSION")),
    ] {
        let output = workload_command(&[]).arg(flag).output().unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(0), "{flag}");
        assert!(stdout.contains(expected), "{flag}: {stdout}");
        assert!(output.stderr.is_empty(), "{flag}");
    }
}

/// The start-up log line ("listening" with the settings in use) of the binary run with `env` and
/// `args`, on 127.0.0.1 and a port of its choosing; the process is killed once it has been read.
fn listening_line(env: &[(&str, &str)], args: &[&str]) -> String {
    let local = [("HOST", "127.0.0.1"), ("PORT", "0")];
    let mut child = workload_command(&[&local, env].concat())
        .args(args)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let line = stdout
        .lines()
        .map(Result::unwrap)
        .find(|line| line.contains("listening"));
    child.kill().unwrap();
    let output = child.wait_with_output().unwrap();
    line.unwrap_or_else(|| {
        panic!(
            "{env:?} {args:?}: exited without listening: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// `name`'s value in a log line of `name=value` fields.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix(name)?.strip_prefix('='))
}

#[test]
fn a_flag_wins_over_its_variable_which_wins_over_the_default() {
    let concurrency = |env: &[(&str, &str)], args: &[&str]| {
        let line = listening_line(env, args);
        field(&line, "concurrency").map(str::to_owned)
    };
    let variable = [("CONCURRENCY", "5")];
    assert_eq!(concurrency(&[], &[]).as_deref(), Some("1"), "default");
    assert_eq!(
        concurrency(&variable, &[]).as_deref(),
        Some("5"),
        "variable"
    );
    assert_eq!(
        concurrency(&variable, &["--concurrency", "3"]).as_deref(),
        Some("3"),
        "flag"
    );
    // The variable is not even read when the flag is given.
    assert_eq!(
        concurrency(&[("CONCURRENCY", "abc")], &["--concurrency=2"]).as_deref(),
        Some("2"),
        "flag over a bad variable"
    );
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

/// The binary serving on 127.0.0.1 and a free port with `env` added: the process and its port, once it
/// listens.
async fn start_listening(env: &[(&str, &str)]) -> (std::process::Child, u16) {
    let port = free_port();
    let port_text = port.to_string();
    let mut all = vec![("HOST", "127.0.0.1"), ("PORT", port_text.as_str())];
    all.extend_from_slice(env);
    let mut child = workload_command(&all).spawn().unwrap();
    wait_until_listening(port, &mut child).await;
    (child, port)
}

/// Its exit status, which must come within 5 s.
async fn exit_status(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the process did not exit {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_every_accepted_operation() {
    let (mut child, port) = start_listening(&[("OPERATION_DURATION_MS", "400")]).await;
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

    let status = exit_status(&mut child, "after draining").await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grace_period_bounds_the_drain() {
    let (child, port) = start_listening(&[
        ("OPERATION_DURATION_MS", "60000"),
        ("SHUTDOWN_GRACE_MS", "300"),
    ])
    .await;
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

/// One request on a kept-alive connection (HTTP/1.1, written by hand so the connection is the test's):
/// the status and whether the answer closes the connection.
fn request_on(stream: &mut std::net::TcpStream, path: &str) -> (u16, bool) {
    use std::io::{Read, Write};
    write!(stream, "GET {path} HTTP/1.1\r\nHost: workload\r\n\r\n").unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut status_line = String::new();
    reader.read_line(&mut status_line).unwrap();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let (mut close, mut length) = (false, 0);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim().to_ascii_lowercase();
        if line.is_empty() {
            break;
        }
        close |= line == "connection: close";
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, close)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_first_sends_kept_alive_clients_away_while_still_serving() {
    let (child, port) = start_listening(&[
        ("OPERATION_DURATION_MS", "20"),
        ("SHUTDOWN_LEAVE_MS", "1500"),
    ])
    .await;
    let base = format!("http://127.0.0.1:{port}");
    let checks = tokio::task::spawn_blocking(move || {
        let mut kept_alive = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let before = request_on(&mut kept_alive, "/expensive-op");
        send_signal(&child, "TERM");
        std::thread::sleep(Duration::from_millis(300));
        // Leaving: the kept-alive client is still served, and told to go.
        let leaving = request_on(&mut kept_alive, "/expensive-op");
        let mut rest = Vec::new();
        use std::io::Read;
        let closed = kept_alive.read_to_end(&mut rest).map(|n| n == 0);
        (before, leaving, closed.unwrap_or(true), child)
    });
    let (before, leaving, closed, mut child) = checks.await.unwrap();
    assert_eq!(before, (200, false), "before SIGTERM: served, kept alive");
    assert_eq!(
        leaving,
        (200, true),
        "leaving: served, and the connection closes"
    );
    assert!(
        closed,
        "the workload closed the connection after that answer"
    );
    let http = client();
    assert_eq!(get_status(&http, &format!("{base}/readiness")).await, 503);

    // After the leave the process drains (nothing is left) and exits.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = exit_status(&mut child, "after leaving and draining").await;
    assert_eq!(status.code(), Some(0));
}
