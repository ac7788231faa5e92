//! The benchmark's baseline: the smallest axum service, one route answering "OK", built with the same
//! crates and profile as `workload`. `scripts/bench.sh` reports the workload's figures as ratios to it.
//! `/close` answers the same and closes the connection: the baseline for answers that close theirs.

use axum::http::header;
use axum::{Router, routing::get};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(3001);
    let app = Router::new().route("/", get(|| async { "OK" })).route(
        "/close",
        get(|| async { ([(header::CONNECTION, "close")], "OK") }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
