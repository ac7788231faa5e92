//! `testbed-standin`: the parts of a cluster that the test bed has no real binary for, so that the
//! workload's autoscaling loop runs end to end on kwok's fake Nodes, where no container runs. The test
//! bed's real node needs none of it: its kubelet, kube-proxy and Prometheus Operator are the real ones.
//!
//! - kubelet ([`kubelet`]): kwok marks pods Running and Ready but runs no container. For each running
//!   pod selected by `--pod-selector`, this runs one `workload` process on 127.0.0.1 with the pod's
//!   container environment, probes it as the pod's probes say, and on deletion runs `preStop`, sends
//!   SIGTERM and, after the grace period, SIGKILL.
//! - Service ([`proxy`]): there is no kube-proxy, so each selected Service gets a listener on
//!   127.0.0.1 that spreads requests round-robin over the pods whose readiness probe passes.
//! - Prometheus Operator ([`scrape`]): each ServiceMonitor becomes a Prometheus scrape job with
//!   `file_sd` targets carrying the labels the Prometheus Operator gives (`namespace`, `pod`,
//!   `service`, `endpoint`, `job`, `container`), and Prometheus is reloaded when the jobs change.
//!
//! `GET /state` on `--listen` reports the Services (address, responses by status) and the pods
//! (address, ready, terminating, restarts) as JSON, for the tests and `scripts/autoscale-bench.sh`.

mod cluster;
mod kubelet;
mod labels;
mod probe;
mod proxy;
mod scrape;
mod state;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Command-line settings.
#[derive(Debug, Parser)]
#[command(name = "testbed-standin", version, about)]
pub struct Args {
    /// The workload binary, standing in for the container image.
    #[arg(long)]
    pub workload: PathBuf,
    /// Pods and Services this stands in for (a label selector).
    #[arg(long, default_value = "app.kubernetes.io/name=workload")]
    pub pod_selector: String,
    /// Directory for the pods' logs and the Prometheus targets.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The Prometheus configuration file this process writes (one scrape job per ServiceMonitor
    /// endpoint).
    #[arg(long)]
    pub prometheus_config: PathBuf,
    /// Prometheus' base URL, for `POST /-/reload` after the configuration changed.
    #[arg(long)]
    pub prometheus_url: String,
    /// How long a Service keeps routing to a pod after its deletion, as kube-proxy does until
    /// the endpoint change reaches it (a preStop sleep exists to cover this).
    #[arg(long, default_value_t = 2000)]
    pub endpoint_lag_ms: u64,
    /// Address of the `/state` endpoint; the bound address is written to `STATE_DIR/standin.addr`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// What can stop the stand-in.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to the API server: {0}")]
    Connect(#[source] kube::Error),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state endpoint on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    match cluster::run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("testbed-standin: {err}");
            ExitCode::FAILURE
        }
    }
}
