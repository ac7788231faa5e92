//! The kubelet's HTTP probes: what a probe spec says, and counting results against its thresholds.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

/// The HTTP client of the spreaders, the probes and the Prometheus reload.
pub type HttpClient = Client<HttpConnector, Body>;

/// A plain-HTTP client with a short connect timeout (everything is on 127.0.0.1).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(1)));
    connector.set_nodelay(true);
    Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector)
}

/// An `httpGet` probe with the kubelet's defaults for the fields the pod leaves out.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub path: String,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

impl Probe {
    /// The probe of a container spec; `None` for exec, TCP and gRPC probes, which the stand-in
    /// does not run (the workload's are `httpGet`).
    pub fn from_spec(spec: &k8s_openapi::api::core::v1::Probe) -> Option<Self> {
        let http = spec.http_get.as_ref()?;
        let seconds = |value: Option<i32>, default: i32| {
            Duration::from_secs(u64::try_from(value.unwrap_or(default)).unwrap_or(0))
        };
        let count = |value: Option<i32>, default: i32| {
            u32::try_from(value.unwrap_or(default)).unwrap_or(1).max(1)
        };
        Some(Self {
            path: http.path.clone().unwrap_or_else(|| "/".to_string()),
            initial_delay: seconds(spec.initial_delay_seconds, 0),
            period: seconds(spec.period_seconds, 10).max(Duration::from_secs(1)),
            timeout: seconds(spec.timeout_seconds, 1).max(Duration::from_secs(1)),
            success_threshold: count(spec.success_threshold, 1),
            failure_threshold: count(spec.failure_threshold, 3),
        })
    }

    /// One probe: a status in 200..400 within the timeout passes, as for the kubelet.
    pub async fn check(&self, client: &HttpClient, address: SocketAddr) -> bool {
        let Ok(request) = http::Request::get(format!("http://{address}{}", self.path))
            .header(http::header::USER_AGENT, "kube-probe/testbed-standin")
            .body(Body::empty())
        else {
            return false;
        };
        match tokio::time::timeout(self.timeout, client.request(request)).await {
            Ok(Ok(response)) => (200..400).contains(&response.status().as_u16()),
            _ => false,
        }
    }
}

/// Consecutive results of one probe, turned into passing or failing by its thresholds.
#[derive(Debug)]
pub struct Tracker {
    success_threshold: u32,
    failure_threshold: u32,
    streak: u32,
    streak_passes: bool,
    passing: bool,
}

impl Tracker {
    /// Starts `passing` or not: readiness starts failing, liveness passing.
    pub fn new(probe: &Probe, passing: bool) -> Self {
        Self {
            success_threshold: probe.success_threshold,
            failure_threshold: probe.failure_threshold,
            streak: 0,
            streak_passes: passing,
            passing,
        }
    }

    /// Records one result and returns whether the probe now passes.
    pub fn record(&mut self, passed: bool) -> bool {
        if passed == self.streak_passes {
            self.streak = self.streak.saturating_add(1);
        } else {
            self.streak_passes = passed;
            self.streak = 1;
        }
        let threshold = if passed {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        if self.streak >= threshold {
            self.passing = passed;
        }
        self.passing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(yaml: &str) -> Option<Probe> {
        Probe::from_spec(&serde_yaml::from_str(yaml).unwrap())
    }

    #[test]
    fn kubelet_defaults_fill_what_the_spec_leaves_out() {
        let probe = probe("httpGet: {path: /readiness, port: http}").unwrap();
        assert_eq!(probe.path, "/readiness");
        assert_eq!(probe.period, Duration::from_secs(10));
        assert_eq!(probe.timeout, Duration::from_secs(1));
        assert_eq!((probe.success_threshold, probe.failure_threshold), (1, 3));
    }

    #[test]
    fn spec_values_are_kept_and_non_http_probes_are_not_run() {
        let p = probe(
            "{httpGet: {path: /liveness, port: 3000}, periodSeconds: 3, timeoutSeconds: 2, failureThreshold: 1, successThreshold: 2, initialDelaySeconds: 4}",
        )
        .unwrap();
        assert_eq!(p.period, Duration::from_secs(3));
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.initial_delay, Duration::from_secs(4));
        assert_eq!((p.success_threshold, p.failure_threshold), (2, 1));
        assert_eq!(probe("tcpSocket: {port: 3000}"), None);
    }

    #[test]
    fn thresholds_count_consecutive_results() {
        let p = probe("{httpGet: {path: /}, failureThreshold: 3, successThreshold: 2}").unwrap();
        let mut readiness = Tracker::new(&p, false);
        assert!(!readiness.record(true), "one success of two");
        assert!(readiness.record(true));
        assert!(readiness.record(false), "one failure of three");
        assert!(readiness.record(false));
        assert!(readiness.record(true), "a success resets the failures");
        assert!(readiness.record(false));
        assert!(readiness.record(false));
        assert!(!readiness.record(false), "three failures in a row");
    }
}
