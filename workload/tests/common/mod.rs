//! Test harness: the service on a real socket, a closed-loop load like autocannon's, and a spawned binary.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use workload::admission::QueueLimits;
use workload::config::DEFAULT_MAX_CONNECTIONS;
use workload::config::ShutdownTiming;
use workload::connections::ConnectionLimits;
use workload::contract::{CONNECTION_CLOSE_DEFAULT, ConnectionClose, OCCUPANCY_WINDOW_MS};
use workload::metrics::Metrics;
use workload::routes::AppState;
use workload::server::{self, Shutdown};

/// The seed's limits: concurrency 1, readiness above 2 waiting, breaker at 4 waiting.
pub const SEED_LIMITS: QueueLimits = QueueLimits {
    concurrency: 1,
    readiness_factor: 2,
    breaker_factor: 4,
};

/// The span `queue_occupancy` averages over in every [`Service`]: the workload's default.
pub const OCCUPANCY_WINDOW: Duration = Duration::from_millis(OCCUPANCY_WINDOW_MS.default);

/// The service running in this process on 127.0.0.1 with a random port.
pub struct Service {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<Shutdown>>,
}

impl Service {
    /// The service with the default `CONNECTION_CLOSE`.
    pub async fn start(limits: QueueLimits, operation: Duration) -> Self {
        Self::start_closing(limits, operation, CONNECTION_CLOSE_DEFAULT).await
    }

    /// [`Service::start`] with the `CONNECTION_CLOSE` mode of the test's choosing.
    pub async fn start_closing(
        limits: QueueLimits,
        operation: Duration,
        connection_close: ConnectionClose,
    ) -> Self {
        let connections = ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(5),
        };
        Self::spawn(limits, operation, connections, connection_close).await
    }

    /// [`Service::start`] with connection limits of the test's choosing.
    pub async fn start_with(
        limits: QueueLimits,
        operation: Duration,
        connections: ConnectionLimits,
    ) -> Self {
        Self::spawn(limits, operation, connections, CONNECTION_CLOSE_DEFAULT).await
    }

    async fn spawn(
        limits: QueueLimits,
        operation: Duration,
        connections: ConnectionLimits,
        connection_close: ConnectionClose,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = app_state(limits, operation, connection_close);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listener,
            state,
            async move {
                let _ = stopped.await;
            },
            ShutdownTiming {
                leave: Duration::ZERO,
                grace: Duration::from_secs(30),
            },
            connections,
        ));
        Self {
            addr,
            client: client(),
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn status(&self, path: &str) -> u16 {
        get_status(&self.client, &self.url(path)).await
    }

    /// One `/metrics` body: every sample in it was read at the same scrape.
    pub async fn scrape(&self) -> String {
        let response = self.client.get(self.url("/metrics")).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Reads one sample from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.scrape().await;
        sample(&body, name).unwrap_or_else(|| panic!("{name} missing from /metrics:\n{body}"))
    }

    /// The answer of `path` (a probe, or an `/expensive-op` expected to be rejected) while a closed-loop
    /// load keeps `waiting` tasks queued; `None` if the load was disturbed and the check must start over.
    ///
    /// Between an operation's end and its connection's next request the queue holds one task less; a
    /// probe that overlaps that moment does not see the steady state. So a probe counts only if the
    /// completed counter, read in a scrape before the one that shows `waiting` tasks, has not moved when
    /// the probe is answered (the counter moves before the finished task leaves the queue). A discarded
    /// `/expensive-op` probe answered 200 was admitted into that moment: it took a place in the queue,
    /// which turns one of the load's requests away, hence `None`. Fails after 10 s of retries.
    pub async fn steady_status(&self, path: &str, waiting: f64) -> Option<u16> {
        const COMPLETED: &str = "expensive_operations_completed_total";
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = None;
        loop {
            let baseline = self.metric(COMPLETED).await;
            let before = self.scrape().await;
            let full = sample(&before, "queue_waiting_tasks") == Some(waiting);
            if full && sample(&before, COMPLETED) == Some(baseline) {
                let status = self.status(path).await;
                if self.metric(COMPLETED).await == baseline {
                    return Some(status);
                }
                if path == "/expensive-op" && status == 200 {
                    return None;
                }
                last = Some(status);
            }
            assert!(
                Instant::now() < deadline,
                "no answer of {path} came with {waiting} tasks waiting and no operation completing \
                 (last answer: {last:?}; /metrics before it:\n{before})"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until `name` reads `value`, failing after `within`.
    pub async fn wait_for_metric(&self, name: &str, value: f64, within: Duration) {
        self.scrape_where(name, value, within).await;
    }

    /// The first `/metrics` body in which `name` reads `value`, failing after `within`.
    pub async fn scrape_where(&self, name: &str, value: f64, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let body = self.scrape().await;
            let now = sample(&body, name);
            if now == Some(value) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "{name} stayed at {now:?}, expected {value}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn shutdown(mut self) -> Shutdown {
        drop(self.stop.take());
        self.task.await.unwrap().unwrap()
    }
}

/// The state of a fresh service, for [`Service`] or for driving `workload::routes::app` without a
/// socket: fresh metrics and [`OCCUPANCY_WINDOW`].
pub fn app_state(
    limits: QueueLimits,
    operation: Duration,
    connection_close: ConnectionClose,
) -> AppState {
    AppState::new(
        limits,
        Metrics::new().unwrap(),
        operation,
        connection_close,
        OCCUPANCY_WINDOW,
    )
}

/// Runs `check` (which starts its own service) until a run is not disturbed by an admitted probe (see
/// [`Service::steady_status`]), at most 3 times.
pub async fn undisturbed<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<()>>,
{
    for _ in 0..3 {
        if check().await.is_some() {
            return;
        }
    }
    panic!(
        "{what}: in three runs a probe that should have been rejected was admitted while an operation \
         completed; is the breaker letting one more in?"
    );
}

/// A client that opens a fresh connection per request, as a probe or a manual `curl` does.
pub fn client() -> reqwest::Client {
    client_builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// reqwest's builder, with a TLS crypto provider chosen: in a whole-workspace build, reqwest's rustls
/// gets two backends (from the operator's dev-dependencies) and refuses to build a client without one.
pub fn client_builder() -> reqwest::ClientBuilder {
    // An Err only means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
}

pub async fn get_status(client: &reqwest::Client, url: &str) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

/// The value of the first sample of `name` (with or without labels) in a Prometheus text body.
pub fn sample(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

/// A closed-loop load like `autocannon -c N`: N connections, each sending the next request as soon as the
/// previous one is answered.
pub struct Load {
    running: Arc<AtomicBool>,
    statuses: Arc<Mutex<BTreeMap<u16, u64>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Load {
    pub fn start(url: String, connections: usize) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let statuses = Arc::new(Mutex::new(BTreeMap::new()));
        let workers = (0..connections)
            .map(|_| {
                let (url, running, statuses) = (url.clone(), running.clone(), statuses.clone());
                tokio::spawn(async move {
                    // One keep-alive connection per worker, like autocannon's.
                    let client = client_builder().pool_max_idle_per_host(1).build().unwrap();
                    while running.load(Ordering::Relaxed) {
                        let status = get_status(&client, &url).await;
                        *statuses.lock().await.entry(status).or_default() += 1;
                        if status != 200 {
                            // A 503 comes back at once; yield so the loop does not starve the runtime.
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        Self {
            running,
            statuses,
            workers,
        }
    }

    /// Counts so far, by status code.
    pub async fn statuses(&self) -> BTreeMap<u16, u64> {
        self.statuses.lock().await.clone()
    }

    /// Stops sending and waits for every outstanding request to be answered.
    pub async fn stop(self) -> BTreeMap<u16, u64> {
        self.running.store(false, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.statuses.lock().await.clone()
    }
}

/// A free TCP port on 127.0.0.1 (released before returning, so a child process can bind it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `workload` binary with the given environment, stdout and stderr captured.
pub fn workload_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_workload"));
    command
        .env_clear()
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Waits until something accepts connections on `port`.
pub async fn wait_until_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process exited before listening"
        );
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a signal to a child process with the `kill` command.
pub fn send_signal(child: &Child, signal: &str) {
    let status = Command::new("kill")
        .args([format!("-{signal}"), child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}
