//! `operator run`: the long-running process around the reconcile pipeline. [`run`] starts the
//! admin server first (so probes answer), then leader election ([`leader`]); the leader runs the
//! [`controller`] until SIGTERM/SIGINT or until it loses the Lease.
//!
//! Every Kubernetes client, the binary's and the tests', comes from [`client::connect`], whose
//! requests [`crate::telemetry`] counts and times; [`admin`] serves those metrics.

pub mod admin;
pub mod client;
pub mod controller;
pub mod discovery;
pub mod leader;
pub mod watch_backoff;

use std::net::SocketAddr;
use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;
use tracing::{info, warn};

use self::admin::AdminState;
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
    /// Listen address of the admin server (/metrics, /healthz, /readyz).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
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
}

/// Run the operator until shutdown.
pub async fn run(config: RunConfig) -> Result<()> {
    let listener = admin::bind(config.admin_addr).await?;
    let admin_addr = listener.local_addr().unwrap_or(config.admin_addr);
    let metrics = Metrics::new();
    // One client, counted, for the controller and the leader election alike.
    let requests = ApiRequests::registered(&metrics.registry);
    let client = client::connect_counted(&requests).await?;
    let admin_state = AdminState::new(metrics.clone());

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

    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let lease = LeaseConfig {
        name: config.lease_name.clone(),
        namespace: config
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        identity: identity.clone(),
    };
    let election = Election::start(client.clone(), &lease);
    info!(lease = %lease.name, namespace = %lease.namespace, %identity, "waiting for leadership");
    admin_state.set_ready(true); // a standby is ready, see `admin`

    let result = tokio::select! {
        acquired = leader::leadership_acquired(election.is_leader.clone()) => {
            if acquired {
                lead(client, metrics, &admin_state, &election, &lease, shutdown.clone()).await
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
        controller::reconcile_all(
            ctx.clone(),
            admin_state.clone(),
            shutdown_requested(shutdown),
        )
        .await
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
