//! The lowest Kubernetes version the operator and its install work on, and the check of the API
//! server against it. Below it an apply would fail (or a field be dropped) in a way a user cannot
//! place; instead the operator logs one line at start and every SandboxService says, in its
//! `Degraded` condition, which feature the cluster lacks.

use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::apimachinery::pkg::version::Info;
use kube::Client;
use tracing::{error, info, warn};

/// Something the operator or its install writes, and the Kubernetes minor version (1.x) from
/// which the API server accepts it by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// What it is and who writes it, as a user reads it in a condition.
    pub name: &'static str,
    /// The first 1.x that accepts it without a feature gate.
    pub since_minor: u32,
}

/// Everything whose absence the operator can tell from the server's version, newest last.
pub const FEATURES: [Feature; 4] = [
    Feature {
        name: "server-side apply, with which the operator writes every child",
        since_minor: 22,
    },
    Feature {
        name: "autoscaling/v2 HorizontalPodAutoscalers with behavior",
        since_minor: 23,
    },
    Feature {
        name: "CEL validation rules (x-kubernetes-validations) in the SandboxService CRD",
        since_minor: 29,
    },
    Feature {
        name: "the preStop sleep action of the workload's pods (PodLifecycleSleepAction), and ValidatingAdmissionPolicy v1 for deploy/policies",
        since_minor: 30,
    },
];

/// The lowest Kubernetes minor version (1.x) the operator supports: the newest of [`FEATURES`].
pub const MIN_MINOR: u32 = {
    let mut min = 0;
    let mut i = 0;
    while i < FEATURES.len() {
        if FEATURES[i].since_minor > min {
            min = FEATURES[i].since_minor;
        }
        i += 1;
    }
    min
};

/// The minor version of a Kubernetes 1.x API server, as `/version` reports it. Providers
/// decorate it (`"30+"` on EKS and GKE), so only the leading digits count; `None` for another
/// major version or a minor that has no digits.
pub fn minor_version(info: &Info) -> Option<u32> {
    if info.major.trim_end_matches('+') != "1" {
        return None;
    }
    let digits: String = info
        .minor
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// What a server of Kubernetes 1.`minor` lacks: a message naming each missing feature, or `None`
/// when it has them all.
pub fn unsupported(minor: u32) -> Option<String> {
    let missing: Vec<String> = FEATURES
        .iter()
        .filter(|feature| feature.since_minor > minor)
        .map(|feature| format!("{} (1.{})", feature.name, feature.since_minor))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "the API server runs Kubernetes 1.{minor}; this operator needs 1.{MIN_MINOR} or later for: {}",
            missing.join("; ")
        )
    })
}

/// Whether the API server supports what the operator writes: `None` while it does (or while it
/// could not be asked), else the message of [`unsupported`]. Shared by every reconcile.
#[derive(Debug, Default)]
pub struct ServerSupport {
    unsupported: RwLock<Option<String>>,
    /// Whether a verdict was logged: it is logged once, and again only when it changes.
    logged: AtomicBool,
}

impl ServerSupport {
    /// Ask the API server its version and remember the verdict; logs it. A server that does not
    /// answer keeps the previous verdict: the reconciles' own requests report an outage.
    pub async fn check(&self, client: &Client) {
        let info = match client.apiserver_version().await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "reading the API server's version failed; assuming it is supported");
                return;
            }
        };
        let verdict = match minor_version(&info) {
            Some(minor) => unsupported(minor),
            None => {
                warn!(major = %info.major, minor = %info.minor, git_version = %info.git_version, "the API server's version is not one of Kubernetes 1.x; assuming it is supported");
                None
            }
        };
        let changed = std::mem::replace(&mut *self.write(), verdict.clone()) != verdict;
        if self.logged.swap(true, Ordering::Relaxed) && !changed {
            return;
        }
        match &verdict {
            Some(message) => {
                error!("{message}; SandboxServices are not reconciled until it is upgraded")
            }
            None => info!(git_version = %info.git_version, "API server version supported"),
        }
    }

    /// The message of [`unsupported`] while the server lacks a feature.
    pub fn unsupported(&self) -> Option<String> {
        self.unsupported
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Sets the verdict, as [`ServerSupport::check`] would for a server of Kubernetes 1.`minor`.
    pub fn assume_minor(&self, minor: u32) {
        *self.write() = unsupported(minor);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Option<String>> {
        self.unsupported
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(major: &str, minor: &str) -> Info {
        Info {
            major: major.into(),
            minor: minor.into(),
            ..Info::default()
        }
    }

    #[test]
    fn the_minimum_is_the_newest_feature() {
        assert_eq!(MIN_MINOR, 30);
    }

    #[test]
    fn provider_decorated_versions_parse() {
        assert_eq!(minor_version(&info("1", "34")), Some(34));
        assert_eq!(minor_version(&info("1", "30+")), Some(30));
        assert_eq!(minor_version(&info("1+", "29+")), Some(29));
        assert_eq!(minor_version(&info("2", "0")), None);
        assert_eq!(minor_version(&info("1", "")), None);
    }

    #[test]
    fn an_older_server_is_told_each_missing_feature() {
        assert_eq!(unsupported(30), None);
        assert_eq!(unsupported(34), None);
        let message = unsupported(29).unwrap();
        assert!(
            message.starts_with(
                "the API server runs Kubernetes 1.29; this operator needs 1.30 or later for: the preStop sleep action"
            ),
            "{message}"
        );
        assert!(!message.contains("CEL"), "1.29 has CEL rules: {message}");
        let message = unsupported(21).unwrap();
        for feature in FEATURES {
            assert!(message.contains(feature.name), "{message}");
        }
    }

    #[test]
    fn the_verdict_follows_the_version() {
        let support = ServerSupport::default();
        assert_eq!(support.unsupported(), None);
        support.assume_minor(28);
        assert!(support.unsupported().unwrap().contains("(1.29)"));
        support.assume_minor(31);
        assert_eq!(support.unsupported(), None);
    }
}
