//! `CONNECTION_CLOSE` on real sockets: which answers end their kept-alive connection, so that a client
//! behind a Service reconnects and lands on a pod picked anew.

mod common;

use std::time::Duration;

use common::{SEED_LIMITS, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use workload::contract::ConnectionClose;

const OPERATION: Duration = Duration::from_millis(300);
const REQUEST: &[u8] = b"GET /expensive-op HTTP/1.1\r\nHost: sandbox\r\n\r\n";

/// A kept-alive client connection, read one response at a time.
struct Client {
    stream: TcpStream,
    buffered: Vec<u8>,
}

/// One response: its status, whether it said `Connection: close`, and whether the server then closed.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    says_close: bool,
    closed: bool,
}

impl Client {
    async fn send(service: &Service) -> Self {
        let mut stream = TcpStream::connect(service.addr).await.unwrap();
        stream.write_all(REQUEST).await.unwrap();
        Self {
            stream,
            buffered: Vec::new(),
        }
    }

    async fn send_again(&mut self) {
        self.stream.write_all(REQUEST).await.unwrap();
    }

    /// Reads the next response, then looks for the server's close for 200 ms.
    async fn answer(&mut self) -> Answer {
        let head = loop {
            if let Some(end) = find(&self.buffered, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buffered[..end]).to_lowercase();
                let body_len: usize = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map(|len| len.trim().parse().unwrap())
                    .unwrap_or(0);
                if self.buffered.len() >= end + 4 + body_len {
                    self.buffered.drain(..end + 4 + body_len);
                    break head;
                }
            }
            self.read_some(Duration::from_secs(10))
                .await
                .expect("a response before the server closes");
        };
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let says_close = head.lines().any(|line| line == "connection: close");
        let closed = self.read_some(Duration::from_millis(200)).await == Some(0);
        Answer {
            status,
            says_close,
            closed,
        }
    }

    /// Reads what is there within `within`: `Some(0)` when the server has closed, `None` on timeout.
    async fn read_some(&mut self, within: Duration) -> Option<usize> {
        let mut buffer = [0u8; 4096];
        match tokio::time::timeout(within, self.stream.read(&mut buffer)).await {
            Err(_) => None,
            Ok(Err(_)) => Some(0),
            Ok(Ok(n)) => {
                self.buffered.extend_from_slice(&buffer[..n]);
                Some(n)
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `queued` clients whose requests are in the queue, the first running, sent in order.
async fn fill(service: &Service, queued: usize) -> Vec<Client> {
    let mut clients = Vec::new();
    for admitted in 1..=queued {
        clients.push(Client::send(service).await);
        service
            .wait_for_metric("queue_in_flight_tasks", 1.0, Duration::from_secs(5))
            .await;
        service
            .wait_for_metric(
                "queue_waiting_tasks",
                (admitted - 1) as f64,
                Duration::from_secs(5),
            )
            .await;
    }
    clients
}

const KEPT: Answer = Answer {
    status: 200,
    says_close: false,
    closed: false,
};
const CLOSED: Answer = Answer {
    status: 200,
    says_close: true,
    closed: true,
};

#[tokio::test]
async fn when_queued_closes_while_a_task_waits_behind_the_answer() {
    let service = Service::start_closing(SEED_LIMITS, OPERATION, ConnectionClose::WhenQueued).await;
    let mut clients = fill(&service, 2).await;
    assert_eq!(clients[0].answer().await, CLOSED, "one waits behind it");
    // The last one had nobody behind it: it stays, and serves its next request.
    assert_eq!(clients[1].answer().await, KEPT);
    clients[1].send_again().await;
    assert_eq!(clients[1].answer().await, KEPT);
    assert_eq!(
        service
            .metric("http_connections_closed_after_answer_total")
            .await,
        1.0
    );
}

#[tokio::test]
async fn when_overloaded_closes_only_while_readiness_fails() {
    let service =
        Service::start_closing(SEED_LIMITS, OPERATION, ConnectionClose::WhenOverloaded).await;
    // 1 running + 3 waiting: readiness fails until the first answer leaves.
    let mut clients = fill(&service, 4).await;
    assert_eq!(clients[0].answer().await, CLOSED);
    for client in &mut clients[1..] {
        assert_eq!(client.answer().await, KEPT);
    }
}

#[tokio::test]
async fn every_mode_but_never_closes_after_a_503() {
    for (mode, closes) in [
        (ConnectionClose::WhenQueued, true),
        (ConnectionClose::WhenOverloaded, true),
        (ConnectionClose::Never, false),
    ] {
        let service = Service::start_closing(SEED_LIMITS, OPERATION, mode).await;
        // 1 running + 4 waiting: the breaker is open.
        let _queued = fill(&service, 5).await;
        let answer = Client::send(&service).await.answer().await;
        let expected = Answer {
            status: 503,
            says_close: closes,
            closed: closes,
        };
        assert_eq!(answer, expected, "{mode:?}");
    }
}

#[tokio::test]
async fn never_keeps_every_connection() {
    let service = Service::start_closing(SEED_LIMITS, OPERATION, ConnectionClose::Never).await;
    let mut clients = fill(&service, 4).await;
    for client in &mut clients {
        assert_eq!(client.answer().await, KEPT);
    }
    clients[0].send_again().await;
    assert_eq!(clients[0].answer().await, KEPT);
}
