//! The one way this crate, its binary and its tests get a Kubernetes client.

use kube::client::ClientBuilder;
use kube::{Client, Config};

use crate::error::{Error, Result};
use crate::telemetry::api_calls::ApiRequests;

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster service
/// account, after choosing rustls' crypto provider.
///
/// kube asks for ring, but a build in which another crate enables aws-lc-rs as well (every test
/// build of this crate does, through the dev-dependencies kube-fake-client and jsonschema) leaves
/// rustls without a default, and the first TLS handshake panics. Choosing it here, rather than
/// in `main`, means no caller can forget it.
pub async fn connect() -> Result<Client> {
    client(None).await
}

/// [`connect`], with every request counted into `requests` (see [`crate::telemetry::api_calls`]). `operator
/// run` makes its one client this way, shared by the controller and the leader election.
pub async fn connect_counted(requests: &ApiRequests) -> Result<Client> {
    client(Some(requests)).await
}

/// kube's default stack (`Client::try_default`) without its retries, with the counting layer
/// outermost if asked.
async fn client(requests: Option<&ApiRequests>) -> Result<Client> {
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = Config::infer()
        .await
        .map_err(|e| Error::Config(Box::new(kube::Error::InferConfig(e))))?;
    // kube retries a 429, 503 or 504 inside the client up to 15 times, from 5 ms doubling
    // towards 1000 s: minutes in which a caller sees nothing. Every caller here retries on its
    // own terms (the reconcile's jittered backoff and one Warning per distinct error, the
    // watches' backoff, discovery's, the Lease's timing), each of which needs to see the error.
    config.default_retry = false;
    let builder = ClientBuilder::try_from(config).map_err(|e| Error::Config(Box::new(e)))?;
    Ok(match requests {
        Some(requests) => builder.with_layer(&requests.layer()).build(),
        None => builder.build(),
    })
}
