//! The test bed's audit log (`$TESTBED_DIR/audit.log`, see `scripts/testbed.sh`): every request of
//! the operator's ServiceAccount as the API server saw it, once it completed. The fault tests count
//! writes, retries and concurrency from it rather than from the operator's own account.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use serde::Deserialize;

/// The audit log from a point on: [`AuditLog::from_now`], then [`AuditLog::requests`].
pub struct AuditLog {
    path: PathBuf,
    from: u64,
}

/// One completed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// Plural resource, e.g. `deployments`; empty for a non-resource URL (discovery).
    pub resource: String,
    /// e.g. `status`; empty for the object itself.
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// The path and query, e.g. `/apis/apps/v1/deployments?limit=100`.
    pub uri: String,
    /// The answer's status code; 0 where the API server recorded none.
    pub code: u16,
    pub received: Timestamp,
    pub completed: Timestamp,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    stage: String,
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    #[serde(default)]
    object_ref: ObjectRef,
    #[serde(default)]
    response_status: ResponseStatus,
    request_received_timestamp: String,
    stage_timestamp: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ObjectRef {
    resource: String,
    subresource: String,
    namespace: String,
    name: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ResponseStatus {
    code: u16,
}

impl AuditLog {
    /// The requests completed from now on.
    pub fn from_now() -> Self {
        let dir = std::env::var_os("TESTBED_DIR")
            .expect("TESTBED_DIR is not set: eval \"$(scripts/testbed.sh env)\"");
        let path = PathBuf::from(dir).join("audit.log");
        let from = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (a test bed from before the audit log: run scripts/testbed.sh down, then up)", path.display()))
            .len();
        Self { path, from }
    }

    /// Every request completed since [`AuditLog::from_now`], in the order they completed.
    pub fn requests(&self) -> Vec<Request> {
        let bytes = std::fs::read(&self.path).expect("read the audit log");
        let since = bytes.get(self.from as usize..).unwrap_or_default();
        String::from_utf8_lossy(since)
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<Event>(line)
                    .unwrap_or_else(|e| panic!("an audit event that does not parse ({e}): {line}"))
            })
            .filter(|event| event.stage == "ResponseComplete")
            .map(|event| Request {
                verb: event.verb,
                resource: event.object_ref.resource,
                subresource: event.object_ref.subresource,
                namespace: event.object_ref.namespace,
                name: event.object_ref.name,
                uri: event.request_uri,
                code: event.response_status.code,
                received: timestamp(&event.request_received_timestamp),
                completed: timestamp(&event.stage_timestamp),
            })
            .collect()
    }
}

fn timestamp(text: &str) -> Timestamp {
    text.parse()
        .unwrap_or_else(|e| panic!("an audit timestamp that does not parse ({e}): {text}"))
}

impl Request {
    /// A request that changes something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    /// A write to one of a CR's children or to its status: what a reconcile writes, without the
    /// Events it publishes and the Lease renewals beside it.
    pub fn is_reconcile_write(&self) -> bool {
        self.is_write() && !matches!(self.resource.as_str(), "events" | "leases")
    }

    /// `resource[/subresource] namespace/name`, e.g. `deployments default/web`.
    pub fn target(&self) -> String {
        let sub = if self.subresource.is_empty() {
            String::new()
        } else {
            format!("/{}", self.subresource)
        };
        format!("{}{sub} {}/{}", self.resource, self.namespace, self.name)
    }

    /// A LIST that starts a watch's cache over: not a next page (`continue=`), not a one-item
    /// probe (`limit=1`, the operator asking whether any SandboxService exists).
    pub fn is_relist(&self) -> bool {
        let query = self.uri.split_once('?').map_or("", |(_, query)| query);
        let params: Vec<&str> = query.split('&').collect();
        self.verb == "list"
            && !params.iter().any(|p| p.starts_with("continue="))
            && !params.contains(&"limit=1")
    }

    /// Whether the API server answered it with success.
    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Seconds from `origin` to when the API server received it (negative if before).
    pub fn received_after(&self, origin: Timestamp) -> f64 {
        self.received.duration_since(origin).as_secs_f64()
    }
}

/// The most requests of `requests` the API server was serving at one time.
pub fn max_in_flight<'a>(requests: impl IntoIterator<Item = &'a Request>) -> usize {
    // Ends sort before starts at the same instant: back-to-back requests do not overlap.
    let mut edges: Vec<(Timestamp, i32)> = requests
        .into_iter()
        .flat_map(|r| [(r.received, 1), (r.completed, -1)])
        .collect();
    edges.sort();
    let mut in_flight = 0;
    let mut most = 0;
    for (_, step) in edges {
        in_flight += step;
        most = most.max(in_flight);
    }
    most as usize
}

/// `values` (seconds) counted into buckets `width` wide, from the first bucket holding one to the
/// last: e.g. `0-1 s: 12, 1-2 s: 30`.
pub fn histogram(values: &[f64], width: Duration) -> String {
    let width = width.as_secs_f64();
    let bucket = |v: f64| (v / width).floor() as i64;
    let (Some(low), Some(high)) = (
        values.iter().map(|&v| bucket(v)).min(),
        values.iter().map(|&v| bucket(v)).max(),
    ) else {
        return "none".to_string();
    };
    (low..=high)
        .map(|b| {
            let count = values.iter().filter(|&&v| bucket(v) == b).count();
            format!(
                "{:.0}-{:.0} s: {count}",
                b as f64 * width,
                (b + 1) as f64 * width
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(from: i64, to: i64) -> Request {
        let at = |s: i64| Timestamp::from_second(1_700_000_000 + s).unwrap();
        Request {
            verb: "patch".into(),
            resource: "deployments".into(),
            subresource: String::new(),
            namespace: "ns".into(),
            name: "a".into(),
            uri: String::new(),
            code: 200,
            received: at(from),
            completed: at(to),
        }
    }

    #[test]
    fn overlapping_requests_count_and_back_to_back_ones_do_not() {
        let requests = [request(0, 2), request(1, 3), request(2, 4), request(4, 5)];
        assert_eq!(max_in_flight(&requests), 2);
        assert_eq!(max_in_flight(&requests[..1]), 1);
        assert_eq!(max_in_flight(&[]), 0);
    }

    #[test]
    fn histogram_names_every_bucket_between_the_first_and_the_last() {
        let text = histogram(&[0.2, 0.9, 2.5], Duration::from_secs(1));
        assert_eq!(text, "0-1 s: 2, 1-2 s: 0, 2-3 s: 1");
        assert_eq!(histogram(&[], Duration::from_secs(1)), "none");
    }
}
