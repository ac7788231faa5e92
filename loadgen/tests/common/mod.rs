//! The workload in this process, as its binary runs, and a one-step load against it.
#![allow(dead_code)] // each test file uses a part of it

use std::net::SocketAddr;
use std::time::Duration;

use loadgen::config::{RetryAfter, Step, Target};
use loadgen::connection::LoopConfig;
use loadgen::stats::Stats;
use tokio::net::TcpListener;
use workload::config::Config;

/// The workload with the seed's limits, operations of `operation_ms` and `CONNECTION_CLOSE`
/// `connection_close`, configured as its binary is, on 127.0.0.1 until the test ends.
pub async fn workload(operation_ms: u64, connection_close: &str) -> SocketAddr {
    let operation_ms = operation_ms.to_string();
    let config = Config::try_load_from([
        "workload",
        "--shutdown-leave-ms",
        "0",
        "--operation-duration-ms",
        &operation_ms,
        "--connection-close",
        connection_close,
    ])
    .expect("a valid workload configuration");
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = workload::server::state_for(&config).unwrap();
    tokio::spawn(workload::server::serve(
        listener,
        state,
        std::future::pending(),
        config.shutdown_timing(),
        config.connection_limits(),
    ));
    addr
}

/// `connections` on `/expensive-op` for `seconds`, and what they saw.
pub async fn load(addr: SocketAddr, connections: u32, seconds: u64, mode: RetryAfter) -> Stats {
    let config = LoopConfig {
        target: Target {
            addr,
            host: addr.to_string(),
            path: "/expensive-op".into(),
        },
        timeout: Duration::from_secs(60),
        retry_after: mode,
    };
    let step = Step {
        connections,
        duration: Duration::from_secs(seconds),
    };
    loadgen::run::run(&config, &[step]).await.remove(0).stats
}

/// The workload's own `http_request_duration_seconds` of 200s on /expensive-op: (count, mean s).
pub async fn workloads_own_timing(addr: SocketAddr) -> (f64, f64) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: workload\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    let value = |name: &str| {
        body.lines()
            .find(|line| {
                line.starts_with(name)
                    && line.contains(r#"route="/expensive-op""#)
                    && line.contains(r#"status_code="200""#)
            })
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{name} of 200s in {body}"))
    };
    let count = value("http_request_duration_seconds_count");
    (count, value("http_request_duration_seconds_sum") / count)
}
