//! `queue_occupancy` through the real router and queue, on tokio's paused clock: operations held for a
//! whole window read as their count, running and waiting, where `queue_ratio` counts only those that
//! wait; one that leaves weighs by the time it was there.

mod common;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{OCCUPANCY_WINDOW, SEED_LIMITS, app_state, sample};
use tower::ServiceExt;
use workload::contract::CONNECTION_CLOSE_DEFAULT;
use workload::routes::app;

/// Longer than the test's windows together, so nothing finishes before the test lets it.
const OPERATION: Duration = Duration::from_secs(60);

async fn get(app: &Router, path: &str) -> axum::response::Response {
    let request = Request::get(path).body(Body::empty()).unwrap();
    app.clone().oneshot(request).await.unwrap()
}

/// `/metrics`, read through the router.
async fn scrape(app: &Router) -> String {
    let body = get(app, "/metrics").await.into_body();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `(queue_occupancy, queue_ratio)` from one scrape.
async fn gauges(app: &Router) -> (Option<f64>, Option<f64>) {
    let body = scrape(app).await;
    (
        sample(&body, "queue_occupancy"),
        sample(&body, "queue_ratio"),
    )
}

#[tokio::test(start_paused = true)]
async fn operations_held_for_a_window_read_as_their_count_and_leave_by_their_time() {
    let app = app(app_state(SEED_LIMITS, OPERATION, CONNECTION_CLOSE_DEFAULT));
    let running = tokio::spawn({
        let app = app.clone();
        async move { get(&app, "/expensive-op").await.status() }
    });
    let waiting = tokio::spawn({
        let app = app.clone();
        async move { get(&app, "/expensive-op").await.status() }
    });
    // Let both be admitted before the clock moves; yielding does not advance a paused clock.
    for _ in 0..100 {
        if sample(&scrape(&app).await, "queue_waiting_tasks") == Some(1.0) {
            break;
        }
        tokio::task::yield_now().await;
    }

    // CONCURRENCY=1: one runs, one waits, for the whole window.
    tokio::time::advance(OCCUPANCY_WINDOW).await;
    assert_eq!(gauges(&app).await, (Some(2.0), Some(1.0)));

    // The waiting client goes away; half a window later, half the window had two and half had one.
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    tokio::time::advance(OCCUPANCY_WINDOW / 2).await;
    assert_eq!(gauges(&app).await, (Some(1.5), Some(0.0)));

    // The running one finishes; a window and more later, nothing of it is left.
    tokio::time::advance(OPERATION).await;
    assert_eq!(running.await.unwrap(), StatusCode::OK);
    tokio::time::advance(2 * OCCUPANCY_WINDOW).await;
    assert_eq!(gauges(&app).await, (Some(0.0), Some(0.0)));
}
