//! The one way this crate, its binary and its tests get a Kubernetes client.

use kube::Client;

use crate::error::{Error, Result};

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or the in-cluster service
/// account, after choosing rustls' crypto provider.
///
/// kube asks for ring, but a build in which another crate enables aws-lc-rs as well (every test
/// build of this crate does, through the dev-dependencies kube-fake-client and jsonschema) leaves
/// rustls without a default, and the first TLS handshake panics. Choosing it here, rather than
/// in `main`, means no caller can forget it.
pub async fn connect() -> Result<Client> {
    // An Err only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::try_default()
        .await
        .map_err(|e| Error::Config(Box::new(e)))
}
