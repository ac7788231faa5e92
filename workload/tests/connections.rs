//! Hostile and broken clients on real sockets: slow heads and idle connections are closed in time,
//! a queued request is not idle, the overflow lane past MAX_CONNECTIONS still answers the probes,
//! and malformed requests get 400/431 or a clean close without leaving anything in the queue.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{SEED_LIMITS, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use workload::connections::{ConnectionLimits, OVERFLOW_HEADER_READ_TIMEOUT};

const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

async fn service(max_connections: usize, operation: Duration) -> Service {
    let limits = ConnectionLimits {
        max_connections,
        header_read_timeout: HEADER_TIMEOUT,
    };
    Service::start_with(SEED_LIMITS, operation, limits).await
}

/// Everything the server sends until it closes the connection, and how long that took;
/// `None` if it is still open after `within`.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Option<(String, Duration)> {
    let start = Instant::now();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Some((
                    String::from_utf8_lossy(&received).into_owned(),
                    start.elapsed(),
                ));
            }
            Ok(Ok(n)) => received.extend_from_slice(&buffer[..n]),
        }
    }
}

/// Sends `bytes` on a new connection and returns what comes back until the server closes it.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // No half-close: hyper takes the end of the client's stream for a client that went away and
    // drops its request. A kept-alive connection ends at the header timeout instead.
    stream.write_all(bytes).await.unwrap();
    read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("the server answers and closes")
        .0
}

/// A connection that has sent half a request head.
async fn slow_head(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /expensive-op HTTP/1.1\r\nHost: sandbox\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

fn status(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_slow_head_is_closed_within_the_header_timeout() {
    let service = service(100, Duration::from_millis(100)).await;
    let mut stream = slow_head(service.addr).await;
    let (_, after) = read_until_closed(&mut stream, HEADER_TIMEOUT + Duration::from_secs(1))
        .await
        .expect("closed within the header timeout + 1 s");
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(100),
        "{after:?}"
    );
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed() {
    let service = service(100, Duration::from_millis(100)).await;
    let mut stream = TcpStream::connect(service.addr).await.unwrap();
    stream
        .write_all(b"GET /liveness HTTP/1.1\r\nHost: sandbox\r\n\r\n")
        .await
        .unwrap();
    let (response, after) = read_until_closed(&mut stream, HEADER_TIMEOUT + Duration::from_secs(1))
        .await
        .expect("an idle connection is closed within the timeout + 1 s");
    assert_eq!(status(&response), Some(200), "{response}");
    assert!(
        after >= HEADER_TIMEOUT - Duration::from_millis(100),
        "{after:?}"
    );
}

#[tokio::test]
async fn a_queued_request_is_not_idle_and_is_answered() {
    // Two 1.5 s operations at concurrency 1: the second waits 1.5 s in the queue and is answered
    // after 3 s, three header timeouts after its head arrived.
    let service = service(100, Duration::from_millis(1500)).await;
    let started = Instant::now();
    let (first, second) = tokio::join!(
        exchange(
            service.addr,
            b"GET /expensive-op HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n"
        ),
        async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            exchange(
                service.addr,
                b"GET /expensive-op HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n",
            )
            .await
        }
    );
    assert_eq!(status(&first), Some(200), "{first}");
    assert_eq!(status(&second), Some(200), "{second}");
    assert!(started.elapsed() >= Duration::from_millis(2900));
}

#[tokio::test]
async fn past_max_connections_probes_are_answered_and_the_rest_refused() {
    let service = service(3, Duration::from_millis(100)).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(slow_head(service.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        service.metric("http_connections_open").await,
        4.0,
        "3 held + the scrape"
    );

    for probe in ["/liveness", "/readiness", "/metrics"] {
        let response = exchange(
            service.addr,
            format!("GET {probe} HTTP/1.1\r\nHost: s\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(status(&response), Some(200), "{probe}: {response}");
    }
    let refused = exchange(
        service.addr,
        b"GET /expensive-op HTTP/1.1\r\nHost: s\r\n\r\n",
    )
    .await;
    assert_eq!(status(&refused), Some(503), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("connection: close"),
        "{refused}"
    );

    // An overflow connection that sends nothing is gone after its short timeout.
    let mut silent = TcpStream::connect(service.addr).await.unwrap();
    read_until_closed(
        &mut silent,
        OVERFLOW_HEADER_READ_TIMEOUT + Duration::from_secs(1),
    )
    .await
    .expect("an overflow connection is closed after its timeout");

    // Once the slow heads time out, full service is back.
    for mut stream in held {
        read_until_closed(&mut stream, HEADER_TIMEOUT + Duration::from_secs(1))
            .await
            .expect("a held connection times out");
    }
    assert_eq!(service.status("/expensive-op").await, 200);
    assert!(service.metric("http_connections_over_limit_total").await >= 5.0);
}

#[tokio::test]
async fn malformed_and_odd_requests_get_an_answer_or_a_clean_close() {
    let service = service(100, Duration::from_millis(100)).await;
    let addr = service.addr;
    let huge = format!(
        "GET /liveness HTTP/1.1\r\nHost: s\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let cases: [(&str, Vec<u8>, Option<u16>); 7] = [
        ("head over the limit", huge.into_bytes(), Some(431)),
        ("bad request line", b"GARBAGE\r\n\r\n".to_vec(), Some(400)),
        (
            "invalid header bytes",
            b"GET /liveness HTTP/1.1\r\nHo\x00st: s\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "bad method",
            b"G@T /liveness HTTP/1.1\r\nHost: s\r\n\r\n".to_vec(),
            Some(400),
        ),
        (
            "HTTP/1.0",
            b"GET /liveness HTTP/1.0\r\n\r\n".to_vec(),
            Some(200),
        ),
        (
            "a body on GET",
            b"GET /liveness HTTP/1.1\r\nHost: s\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            Some(200),
        ),
        (
            "unknown method",
            b"BREW /liveness HTTP/1.1\r\nHost: s\r\n\r\n".to_vec(),
            Some(405),
        ),
    ];
    for (what, bytes, expected) in cases {
        let response = exchange(addr, &bytes).await;
        assert_eq!(status(&response), expected, "{what}: {response}");
    }

    // Two pipelined requests get two answers, in order.
    let both = exchange(
        addr,
        b"GET /liveness HTTP/1.1\r\nHost: s\r\n\r\nGET /nope HTTP/1.1\r\nHost: s\r\n\r\n",
    )
    .await;
    let statuses: Vec<&str> = both
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &both[i + 9..i + 12])
        .collect();
    assert_eq!(statuses, ["200", "404"], "{both}");

    // A client that closes mid-head leaves nothing behind (one that closes while queued:
    // tests/queue_behaviour.rs; thousands of both: tests/fuzz_requests.rs).
    let mut cut = TcpStream::connect(addr).await.unwrap();
    cut.write_all(b"GET /expensive-op HTTP/1.1\r\nHo")
        .await
        .unwrap();
    drop(cut);
    service
        .wait_for_metric("http_connections_open", 1.0, Duration::from_secs(5))
        .await;
    assert_eq!(service.metric("queue_ratio").await, 0.0);
    assert_eq!(service.status("/readiness").await, 200);
}
