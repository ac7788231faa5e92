//! The election's client: it bounds every Lease request in time and records each renewal of
//! this replica's hold on the Lease, as the API server answered it.

use std::time::{Duration, SystemTime};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

/// A renewal (or the acquisition) of the Lease by this replica, as the API server answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Renewal {
    /// No later than when the renewal was written: the others consider the Lease valid from no
    /// earlier than this.
    pub(super) at: Instant,
    /// The Lease's `renewTime` after the renewal.
    renew_time: Timestamp,
}

/// Wrap `client` for the election:
/// - a Lease request not answered within `request_timeout` fails, so that a hung request
///   cannot stall the lease manager (kube's client has no read timeout);
/// - a successful PATCH of the Lease at `lease_path` whose answer shows `identity` as the
///   holder with a new `renewTime` is published to `renewed`.
///
/// Responses are buffered whole, so the returned client must not be used to watch.
pub(super) fn recording_renewals(
    client: Client,
    lease_path: String,
    identity: String,
    request_timeout: Duration,
    renewed: watch::Sender<Option<Renewal>>,
) -> Client {
    let namespace = client.default_namespace().to_string();
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let client = client.clone();
        let renewed = renewed.clone();
        let identity = identity.clone();
        let is_lease_patch =
            request.method() == http::Method::PATCH && request.uri().path() == lease_path;
        let sent = Instant::now();
        async move {
            let exchange = async {
                let (parts, body) = client.send(request).await?.into_parts();
                Ok::<_, kube::Error>((parts, body.collect_bytes().await?))
            };
            let (parts, body) = timeout(request_timeout, exchange)
                .await
                .map_err(|_| timed_out(request_timeout))??;
            if is_lease_patch
                && parts.status.is_success()
                && let Some(renewal) = renewal(&body, &identity, sent)
            {
                renewed.send_if_modified(|last| record(last, renewal));
            }
            Ok::<_, kube::Error>(http::Response::from_parts(parts, Body::from(body)))
        }
    });
    Client::new(service, namespace)
}

fn timed_out(after: Duration) -> kube::Error {
    kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer to a Lease request within {after:?}"),
    )))
}

/// The renewal that a PATCH sent at `sent` made, if its answer (the patched Lease) shows
/// `identity` as the holder.
//
// The lease manager renews with a patch of `renewTime` alone, without precondition, from its
// cached belief that it holds the Lease: such a patch also succeeds on a Lease that another
// replica has taken over meanwhile, so success alone proves nothing.
fn renewal(body: &[u8], identity: &str, sent: Instant) -> Option<Renewal> {
    let spec = serde_json::from_slice::<Lease>(body).ok()?.spec?;
    if spec.holder_identity.as_deref() != Some(identity) {
        return None;
    }
    let renew_time = spec.renew_time?.0;
    // The lease manager writes its wall-clock time as `renewTime`, just before sending: map it
    // onto the monotonic clock so a renewal is never counted from later than written. A
    // `renewTime` in the future (another clock, or ours stepped back) only bounds from above.
    let written = SystemTime::now()
        .duration_since(SystemTime::from(renew_time))
        .ok()
        .and_then(|age| Instant::now().checked_sub(age));
    let at = written.map_or(sent, |written| written.min(sent));
    Some(Renewal { at, renew_time })
}

/// Record `renewal` unless it shows the `renewTime` already recorded; whether it did.
//
// At acquisition the lease manager sends two PATCHes: the first sets `renewTime`, the second
// only `leaseTransitions`. Counting the second would start the deadline later than the Lease's
// `renewTime`, i.e. later than the others start counting its expiry.
fn record(last: &mut Option<Renewal>, renewal: Renewal) -> bool {
    if last.is_some_and(|last| last.renew_time == renewal.renew_time) {
        return false;
    }
    *last = Some(renewal);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "operator-0";

    fn lease(holder: Option<&str>, renew_time: Option<Timestamp>) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": "sandbox-operator", "namespace": "operators" },
            "spec": {
                "holderIdentity": holder,
                "renewTime": renew_time.map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()),
                "leaseDurationSeconds": 15,
            },
        }))
        .unwrap()
    }

    #[test]
    fn a_patch_of_a_lease_held_by_another_replica_is_no_renewal() {
        let body = lease(Some("operator-1"), Some(Timestamp::now()));
        assert_eq!(renewal(&body, ME, Instant::now()), None);
    }

    #[test]
    fn a_patch_leaving_the_lease_unheld_or_unrenewed_is_no_renewal() {
        let now = Instant::now();
        assert_eq!(renewal(&lease(None, Some(Timestamp::now())), ME, now), None);
        assert_eq!(renewal(&lease(Some(ME), None), ME, now), None);
        assert_eq!(renewal(b"not a Lease", ME, now), None);
    }

    #[test]
    fn a_renewal_counts_from_the_earlier_of_sending_and_its_renew_time() {
        let sent = Instant::now();
        let renewed = renewal(&lease(Some(ME), Some(Timestamp::now())), ME, sent).unwrap();
        assert!(renewed.at <= sent);
        assert!(sent - renewed.at < Duration::from_millis(100));

        // Written 3 s before the request was sent (e.g. the answer to a retried request).
        let old = Timestamp::now() - Duration::from_secs(3);
        let renewed = renewal(&lease(Some(ME), Some(old)), ME, sent).unwrap();
        let age = sent - renewed.at;
        assert!(
            age >= Duration::from_secs(3) - Duration::from_millis(100)
                && age <= Duration::from_secs(3) + Duration::from_millis(100),
            "counted from {age:?} before sending"
        );

        // A `renewTime` ahead of this clock does not count the renewal later than sent.
        let ahead = Timestamp::now() + Duration::from_secs(3);
        let renewed = renewal(&lease(Some(ME), Some(ahead)), ME, sent).unwrap();
        assert_eq!(renewed.at, sent);
    }

    #[test]
    fn only_a_new_renew_time_is_recorded() {
        let renew_time = Timestamp::now();
        let first = Renewal {
            at: Instant::now(),
            renew_time,
        };
        let mut last = None;
        assert!(record(&mut last, first));
        // The acquisition's second PATCH, sent later, shows the same `renewTime`.
        let second = Renewal {
            at: first.at + Duration::from_secs(1),
            renew_time,
        };
        assert!(!record(&mut last, second));
        assert_eq!(last, Some(first));

        let next = Renewal {
            at: first.at + Duration::from_secs(5),
            renew_time: renew_time + Duration::from_secs(5),
        };
        assert!(record(&mut last, next));
        assert_eq!(last, Some(next));
    }
}
