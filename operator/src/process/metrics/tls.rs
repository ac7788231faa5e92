//! The metrics server's TLS: the certificate and key in a directory (`tls.crt`, `tls.key`, as
//! cert-manager and `kubernetes.io/tls` Secrets lay them out), or else a self-signed one made at
//! start, as controller-runtime does. Scrapers that cannot verify a self-signed certificate skip
//! verification; the bearer token, not the certificate, is what protects the metrics.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::error::{Error, Result};

/// The server's TLS settings: HTTP/1.1 only, TLS 1.2 and 1.3 with ring's safe defaults.
pub fn server_config(cert_dir: Option<&Path>) -> Result<Arc<ServerConfig>> {
    let (chain, key) = match cert_dir {
        Some(dir) => from_dir(dir)?,
        None => self_signed()?,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::MetricsCertificate(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| {
                Error::MetricsCertificate(format!("the certificate and key do not fit: {e}"))
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn from_dir(dir: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let cert_file = dir.join("tls.crt");
    let key_file = dir.join("tls.key");
    let unreadable = |file: &Path, e: &dyn std::fmt::Display| {
        Error::MetricsCertificate(format!("{}: {e}", file.display()))
    };
    let chain = CertificateDer::pem_file_iter(&cert_file)
        .and_then(Iterator::collect::<std::result::Result<Vec<_>, _>>)
        .map_err(|e| unreadable(&cert_file, &e))?;
    if chain.is_empty() {
        return Err(unreadable(&cert_file, &"no certificate in it"));
    }
    let key = PrivateKeyDer::from_pem_file(&key_file).map_err(|e| unreadable(&key_file, &e))?;
    Ok((chain, key))
}

/// A certificate for `localhost` and the pod's name, signed by its own key.
fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let mut names = vec!["localhost".to_owned()];
    names.extend(
        std::env::var("POD_NAME")
            .ok()
            .filter(|name| !name.is_empty()),
    );
    let certified = rcgen::generate_simple_self_signed(names)
        .map_err(|e| Error::MetricsCertificate(format!("making a self-signed certificate: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok((vec![certified.cert.der().clone()], key.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_made_without_a_directory() {
        assert!(server_config(None).is_ok());
    }

    #[test]
    fn a_certificate_directory_is_read_and_its_faults_named() {
        let dir = std::env::temp_dir().join(format!("metrics-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = server_config(Some(&dir)).unwrap_err().to_string();
        assert!(missing.contains("tls.crt"), "{missing}");

        let certified =
            rcgen::generate_simple_self_signed(vec!["sandbox-operator".into()]).unwrap();
        std::fs::write(dir.join("tls.crt"), certified.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), certified.signing_key.serialize_pem()).unwrap();
        assert!(server_config(Some(&dir)).is_ok());

        let other = rcgen::generate_simple_self_signed(vec!["other".into()]).unwrap();
        std::fs::write(dir.join("tls.key"), other.signing_key.serialize_pem()).unwrap();
        let mismatch = server_config(Some(&dir)).unwrap_err().to_string();
        assert!(mismatch.contains("do not fit"), "{mismatch}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
