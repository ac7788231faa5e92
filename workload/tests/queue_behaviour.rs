//! The seed's acceptance table and the queue's edge cases, over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Load, SEED_LIMITS, Service};
use tokio::io::AsyncWriteExt;
use workload::admission::QueueLimits;
use workload::server::Shutdown;

/// Short operations keep the suite fast; the table depends on counts, not on the 2 s of the seed.
const OPERATION: Duration = Duration::from_millis(200);

/// Long enough for N closed-loop connections to fill the queue to its steady state.
const SETTLE: Duration = Duration::from_millis(400);

/// Sleeps at least `SETTLE`, then to the middle of an operation of a load that started at `load_start`.
/// Between an answer and that connection's next request the queue holds one task less (as the seed's
/// did), so the checks keep away from the moments when operations finish.
async fn settle(load_start: Instant) {
    let op = OPERATION.as_millis();
    let earliest = load_start.elapsed() + SETTLE;
    let target = (earliest.as_millis() / op) * op + op / 2;
    let target = if target < earliest.as_millis() {
        target + op
    } else {
        target
    };
    tokio::time::sleep_until((load_start + Duration::from_millis(target as u64)).into()).await;
}

struct Row {
    connections: usize,
    readiness: u16,
    manual: u16,
}

/// `autocannon -c N` running; what `/readiness` and one more manual `/expensive-op` answer.
const SEED_TABLE: [Row; 4] = [
    Row {
        connections: 3,
        readiness: 200,
        manual: 200,
    },
    Row {
        connections: 4,
        readiness: 429,
        manual: 200,
    },
    Row {
        connections: 5,
        readiness: 429,
        manual: 503,
    },
    Row {
        connections: 6,
        readiness: 429,
        manual: 503,
    },
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_table_holds() {
    for row in SEED_TABLE {
        let what = format!("-c {}", row.connections);
        common::undisturbed(&what, || seed_row(&row)).await;
    }
}

/// One row of the seed table on a fresh service; `None` if a probe disturbed the load.
async fn seed_row(row: &Row) -> Option<()> {
    let service = Service::start(SEED_LIMITS, OPERATION).await;
    let load_start = Instant::now();
    let load = Load::start(service.url("/expensive-op"), row.connections);
    settle(load_start).await;
    let full_queue = (row.connections - 1).min(SEED_LIMITS.breaker_limit()) as f64;
    let readiness = service.steady_status("/readiness", full_queue).await;
    // An accepted request waits for operations to finish, so it cannot be timed between them; the
    // race can only shorten the queue, which never turns an acceptance into a rejection.
    let manual = if row.manual == 503 {
        service.steady_status("/expensive-op", full_queue).await
    } else {
        Some(service.status("/expensive-op").await)
    };
    let statuses = load.stop().await;
    assert_eq!(service.shutdown().await, Shutdown::Drained);
    let (readiness, manual) = (readiness?, manual?);

    let (ok, rejected) = (
        statuses.get(&200).copied().unwrap_or(0),
        statuses.get(&503).copied().unwrap_or(0),
    );
    let c = row.connections;
    assert_eq!(readiness, row.readiness, "-c {c}: /readiness");
    assert_eq!(manual, row.manual, "-c {c}: manual /expensive-op");
    assert!(ok > 0, "-c {c}: the load must get some 200s: {statuses:?}");
    if c <= 5 {
        assert_eq!(
            rejected, 0,
            "-c {c}: the load must see no 503: {statuses:?}"
        );
    } else {
        assert!(
            rejected > ok,
            "-c {c}: the load must see mostly 503s: {statuses:?}"
        );
    }
    assert_eq!(
        statuses.keys().filter(|s| **s != 200 && **s != 503).count(),
        0,
        "-c {c}: only 200 and 503 are expected: {statuses:?}"
    );
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_scale_with_concurrency() {
    common::undisturbed("concurrency 2", limits_scale_with_concurrency_once).await;
}

async fn limits_scale_with_concurrency_once() -> Option<()> {
    let limits = QueueLimits {
        concurrency: 2,
        ..SEED_LIMITS
    };
    // 2 running, 4 waiting: readiness at its inclusive edge.
    let service = Service::start(limits, OPERATION).await;
    let load_start = Instant::now();
    let load = Load::start(service.url("/expensive-op"), 6);
    settle(load_start).await;
    assert_eq!(service.steady_status("/readiness", 4.0).await, Some(200));
    let scrape = service
        .scrape_where("queue_waiting_tasks", 4.0, Duration::from_secs(2))
        .await;
    assert_eq!(
        common::sample(&scrape, "queue_ratio"),
        Some(2.0),
        "{scrape}"
    );
    // 2 running, 8 waiting: the breaker is at its limit.
    let more = Load::start(service.url("/expensive-op"), 4);
    settle(load_start).await;
    assert_eq!(service.steady_status("/readiness", 8.0).await, Some(429));
    let manual = service.steady_status("/expensive-op", 8.0).await;
    let (a, b) = (load.stop().await, more.stop().await);
    service.shutdown().await;
    assert_eq!(manual?, 503);
    assert!(
        !a.contains_key(&503) && !b.contains_key(&503),
        "{a:?} {b:?}"
    );
    Some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_rejection_is_immediate_with_retry_after() {
    let service = Service::start(SEED_LIMITS, Duration::from_secs(3)).await;
    let load = Load::start(service.url("/expensive-op"), 5);
    service
        .wait_for_metric("queue_waiting_tasks", 4.0, Duration::from_secs(5))
        .await;
    let started = std::time::Instant::now();
    let response = service
        .client
        .get(service.url("/expensive-op"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(response.headers()["retry-after"], "3");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "circuit_open");
    assert_eq!(
        service
            .metric("expensive_operations_rejected_total{reason=\"circuit_open\"}")
            .await,
        1.0
    );
    drop(load); // the workers' requests are cancelled with the runtime
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_the_time_until_the_places_a_client_needs_free_up() {
    // Concurrency 2, 3 s operations: a place frees up every 1.5 s on average.
    let limits = QueueLimits {
        concurrency: 2,
        ..SEED_LIMITS
    };
    let service = Service::start(limits, Duration::from_secs(3)).await;
    // 2 running, 8 waiting: the breaker's limit; readiness fails above 4 waiting.
    let load = Load::start(service.url("/expensive-op"), 10);
    service
        .wait_for_metric("queue_waiting_tasks", 8.0, Duration::from_secs(5))
        .await;
    let get = |path| service.client.get(service.url(path)).send();
    let turned_away = get("/expensive-op").await.unwrap();
    assert_eq!(turned_away.status(), 503);
    // One place: 1.5 s, rounded up.
    assert_eq!(turned_away.headers()["retry-after"], "2");
    let body: serde_json::Value = turned_away.json().await.unwrap();
    assert_eq!(body["retryAfterSeconds"], 2);
    let readiness = get("/readiness").await.unwrap();
    assert_eq!(readiness.status(), 429);
    // 4 over readiness's limit must finish: 6 s.
    assert_eq!(readiness.headers()["retry-after"], "6");
    drop(load);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_waiting_leaves_the_queue() {
    let service = Service::start(SEED_LIMITS, Duration::from_secs(5)).await;
    let running = tokio::spawn({
        let (client, url) = (service.client.clone(), service.url("/expensive-op"));
        async move { common::get_status(&client, &url).await }
    });
    service
        .wait_for_metric("queue_in_flight_tasks", 1.0, Duration::from_secs(2))
        .await;

    let mut impatient = tokio::net::TcpStream::connect(service.addr).await.unwrap();
    impatient
        .write_all(b"GET /expensive-op HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    service
        .wait_for_metric("queue_waiting_tasks", 1.0, Duration::from_secs(2))
        .await;
    drop(impatient);
    service
        .wait_for_metric("queue_waiting_tasks", 0.0, Duration::from_secs(2))
        .await;
    assert_eq!(service.metric("queue_ratio").await, 0.0);
    assert_eq!(service.metric("queue_in_flight_tasks").await, 1.0);
    running.abort();
}

#[tokio::test]
async fn probes_metrics_and_unknown_routes() {
    let service = Service::start(SEED_LIMITS, OPERATION).await;
    assert_eq!(service.status("/liveness").await, 200);
    assert_eq!(service.status("/readiness").await, 200);
    assert_eq!(service.status("/nope").await, 404);
    let post = service
        .client
        .post(service.url("/expensive-op"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);
    let purge = reqwest::Method::from_bytes(b"PURGE").unwrap();
    for path in ["/expensive-op", "/nope"] {
        let invented = service.client.request(purge.clone(), service.url(path));
        assert!(invented.send().await.unwrap().status().is_client_error());
    }
    assert_eq!(service.status("/expensive-op").await, 200);

    let body = service.scrape().await;
    let expect = |name: &str, value: f64| {
        assert_eq!(
            common::sample(&body, name),
            Some(value),
            "{name} in:\n{body}"
        );
    };
    expect("queue_ratio", 0.0);
    expect("queue_concurrency", 1.0);
    expect("expensive_operations_completed_total", 1.0);
    // One request each; invented methods share one label value, unknown paths are timed like routes.
    for (method, route, status) in [
        ("GET", "/expensive-op", 200),
        ("GET", "unmatched", 404),
        ("POST", "/expensive-op", 405),
        ("other", "/expensive-op", 405),
        ("other", "unmatched", 404),
    ] {
        expect(
            &format!(
                r#"http_request_duration_seconds_count{{method="{method}",route="{route}",status_code="{status}"}}"#
            ),
            1.0,
        );
    }
    let not_found_seconds = common::sample(
        &body,
        r#"http_request_duration_seconds_sum{method="GET",route="unmatched",status_code="404"}"#,
    );
    assert!(not_found_seconds.is_some_and(|s| s > 0.0), "{body}");
    assert!(!body.contains("PURGE"), "{body}");
    assert!(body.contains("process_resident_memory_bytes"));
    assert!(
        !body.contains("/nope"),
        "raw paths must never become labels"
    );
    service.shutdown().await;
}
