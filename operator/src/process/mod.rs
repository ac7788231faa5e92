//! `operator run`: the long-running process around the reconcile pipeline. [`run`] starts the
//! admin server first (so probes answer) and the metrics server, then leader election
//! ([`leader`]); the leader runs the [`controller`] until SIGTERM/SIGINT or until it loses the
//! Lease.
//!
//! Every Kubernetes client, the binary's and the tests', comes from [`client::connect`], whose
//! requests [`crate::telemetry`] counts and times; [`metrics`] serves those metrics.

pub mod admin;
pub mod client;
pub mod controller;
pub mod discovery;
pub mod leader;
pub mod load_test_controller;
pub mod metrics;
pub mod scoped_watch;
pub mod watch_backoff;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use self::admin::AdminState;
use self::controller::WatchScope;
use self::leader::{Election, LeaseConfig};
use crate::error::{Error, Result};
use crate::names::FIELD_MANAGER;
use crate::reconcile::Context;
use crate::telemetry::api_calls::ApiRequests;
use crate::telemetry::metrics::Metrics;

/// Settings of `operator run`, from its flags or environment variables (the doc comments below
/// are the `--help` texts).
#[derive(Debug, Clone, clap::Args)]
pub struct RunConfig {
    /// Listen address of the admin server, plain HTTP for the probes (/healthz, /readyz).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Listen address of the metrics server: /metrics over HTTPS, for bearer tokens whose user
    /// may `get` the non-resource URL /metrics (the metrics-reader ClusterRole).
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:8443")]
    pub metrics_addr: SocketAddr,
    /// Directory holding the metrics server's certificate and key as `tls.crt` and `tls.key`
    /// (a `kubernetes.io/tls` Secret's layout); without it a self-signed one is made at start.
    #[arg(long, env = "METRICS_CERT_DIR")]
    pub metrics_cert_dir: Option<PathBuf>,
    /// Name of the leader-election Lease.
    #[arg(long, env = "LEASE_NAME", default_value = crate::names::LEASE_NAME)]
    pub lease_name: String,
    /// Namespace of the Lease; defaults to the operator's own namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,
    /// Identity in the leader election, unique per replica; defaults to the host name and the
    /// process id.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Watch SandboxServices in this namespace only, for an install granted a Role there
    /// (deploy/operator-namespaced) rather than the ClusterRole; repeat it for several (the
    /// variable takes them comma-separated). By default every namespace.
    #[arg(long = "namespace", env = "WATCH_NAMESPACE", value_parser = non_empty, value_delimiter = ',')]
    pub namespaces: Vec<String>,
}

fn non_empty(value: &str) -> std::result::Result<String, String> {
    if value.trim().is_empty() {
        Err("must name a namespace (leave it unset to watch every namespace)".to_owned())
    } else {
        Ok(value.to_owned())
    }
}

/// Run the operator until shutdown.
pub async fn run(config: RunConfig) -> Result<()> {
    let listener = admin::bind(config.admin_addr).await?;
    let admin_addr = listener.local_addr().unwrap_or(config.admin_addr);
    let metrics_listener = metrics::bind(config.metrics_addr).await?;
    let metrics_addr = metrics_listener.local_addr().unwrap_or(config.metrics_addr);
    let metrics_tls = metrics::tls::server_config(config.metrics_cert_dir.as_deref())?;
    let metrics = Metrics::new();
    // One client, counted, for the controller and the leader election alike.
    let requests = ApiRequests::registered(&metrics.registry);
    let client = client::connect_counted(&requests).await?;
    let admin_state = AdminState::new();

    let (shutdown_tx, shutdown) = watch::channel(false);
    tokio::spawn(async move {
        wait_for_signal().await;
        info!("shutdown signal received");
        let _ = shutdown_tx.send(true);
    });
    let admin_server = tokio::spawn(admin::serve(
        listener,
        admin_state.clone(),
        shutdown_requested(shutdown.clone()),
    ));
    info!(addr = %admin_addr, "admin server listening");
    let metrics_server = tokio::spawn(metrics::serve(
        metrics_listener,
        metrics_tls,
        metrics::app(
            metrics.clone(),
            metrics::auth::MetricsAuth::new(client.clone()),
        ),
        shutdown_requested(shutdown.clone()),
    ));
    info!(addr = %metrics_addr, "metrics server listening (HTTPS, bearer token)");

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        namespace: config
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        identity: identity.clone(),
    };
    let scope = WatchScope::of(&config.namespaces);
    info!(?scope, "watching SandboxServices");
    let election = Election::start(client.clone(), &lease);
    info!(lease = %lease.name, namespace = %lease.namespace, %identity, "waiting for leadership");
    admin_state.set_ready(true); // a standby is ready, see `admin`

    let result = tokio::select! {
        acquired = leader::leadership_acquired(election.is_leader.clone()) => {
            if acquired {
                lead(client, metrics, &admin_state, &election, &lease, scope, shutdown.clone()).await
            } else {
                // Without a running election the Lease is not renewed: never lead then.
                Err(Error::ElectionStopped(lease.name.clone()))
            }
        }
        _ = shutdown_requested(shutdown.clone()) => Ok(()),
    };

    let released = election.release().await;
    let shutdown_requested = *shutdown.borrow();
    if !shutdown_requested {
        // Leadership was lost; stop serving before returning the error.
        admin_state.set_ready(false);
    }
    admin_server.abort();
    metrics_server.abort();
    // Why leadership ended (e.g. lost) matters more than a failed release of the Lease.
    result.and(released)
}

/// Run the controller as the leader until shutdown, which lets running reconciles finish, or
/// until loss of the Lease, which stops it at once.
async fn lead(
    client: Client,
    metrics: Metrics,
    admin_state: &AdminState,
    election: &Election,
    lease: &LeaseConfig,
    scope: WatchScope,
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    info!("acquired leadership; starting the controller");
    admin_state.set_ready(false); // until the controller's cache is synced
    let ctx = Arc::new(Context::new(client, metrics, Some(lease.identity.clone())));
    let controller = async {
        // Inside `while_leading` and bounded: a version request that hangs must neither outlast
        // the leadership nor keep the controller from starting.
        let check = ctx.server_support.check(&ctx.client);
        if tokio::time::timeout(VERSION_CHECK_TIMEOUT, check)
            .await
            .is_err()
        {
            warn!("the API server did not tell its version in time; assuming it is supported");
        }
        let load_tests = load_test_controller::run(
            ctx.client.clone(),
            &scope,
            shutdown_requested(shutdown.clone()),
        );
        let sandboxes = controller::reconcile_all(
            ctx.clone(),
            admin_state.clone(),
            scope.clone(),
            shutdown_requested(shutdown),
        );
        futures::join!(sandboxes, load_tests);
    };
    // On loss of the Lease the controller is dropped, not shut down gracefully: a running
    // reconcile may hang (kube's client has no read timeout) or write after a standby took
    // over.
    match leader::while_leading(election.is_leader.clone(), controller).await {
        Some(()) => Ok(()),
        None => {
            warn!("lost leadership; controller stopped");
            Err(Error::LostLeadership(lease.name.clone()))
        }
    }
}

/// How long the leader waits for the API server's version before it starts the controller.
const VERSION_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// This process's identity in the election when none is given (no `POD_NAME`): the host name
/// and the process id, so that two processes on one host never both believe they hold the
/// Lease.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| FIELD_MANAGER.to_string());
    format!("{host}-{}", std::process::id())
}

/// Completes once shutdown is requested (the channel holds `true`), or once its sender is gone.
/// Leadership has its own: [`leader::leadership_acquired`] and [`leader::while_leading`].
async fn shutdown_requested(mut shutdown: watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|requested| *requested).await;
}

/// SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut sigterm) => {
                tokio::select! {
                    _ = sigterm.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(error) => {
                warn!(%error, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunConfig,
    }

    fn scope_of(args: &[&str]) -> std::result::Result<WatchScope, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("operator").chain(args.iter().copied()))?;
        Ok(WatchScope::of(&cli.run.namespaces))
    }

    #[test]
    fn namespace_repeats_or_takes_a_comma_separated_list_and_refuses_an_empty_name() {
        let both = WatchScope::Namespaces(vec!["team-a".into(), "team-b".into()]);
        assert_eq!(
            scope_of(&["--namespace", "team-b", "--namespace", "team-a"]).unwrap(),
            both
        );
        assert_eq!(scope_of(&["--namespace", "team-a,team-b"]).unwrap(), both);
        let error = scope_of(&["--namespace", "team-a,"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("must name a namespace"), "{error}");
    }
}
