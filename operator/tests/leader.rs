//! Leader election against an in-memory API server (kube-fake-client) whose Lease requests can
//! be made to fail or to hang, as for a leader cut off from the API server. Short, real-time
//! lease timings: the lease manager compares Lease times with the wall clock.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use kube::Client;
use kube_fake_client::ClientBuilder;
use operator::leader::{Election, LeaseConfig, LeaseTiming};
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

const NAMESPACE: &str = "operators";

/// Valid for 3 s after each renewal, 1 s of clock skew tolerated: the leader renews every
/// second and gives up 2 s after its last successful renewal.
const TIMING: LeaseTiming = LeaseTiming::new(3, 1);

const HEALTHY: u8 = 0;
const FAILING: u8 = 1;
const HANGING: u8 = 2;

/// A client whose Lease requests are answered, refused with a 503, or never answered,
/// according to `mode`.
async fn client(mode: Arc<AtomicU8>) -> Client {
    let fake = ClientBuilder::new().build().await.unwrap();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let fake = fake.clone();
        let mode = mode.load(Ordering::SeqCst);
        let is_lease = request.uri().path().contains("/leases");
        async move {
            match mode {
                FAILING if is_lease => Ok(http::Response::builder()
                    .status(503)
                    .body(kube::client::Body::from(
                        br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is unavailable","reason":"ServiceUnavailable","code":503}"#.to_vec(),
                    ))
                    .unwrap()),
                HANGING if is_lease => futures::future::pending().await,
                _ => fake.send(request).await,
            }
        }
    });
    Client::new(service, NAMESPACE)
}

async fn wait_for(is_leader: &mut watch::Receiver<bool>, wanted: bool, within: Duration) -> bool {
    timeout(within, is_leader.wait_for(|value| *value == wanted))
        .await
        .is_ok_and(|changed| changed.is_ok())
}

/// Become leader, stay leader over several renewals, then lose the API server in `outage`
/// mode: leadership must be given up within the renew deadline of the last renewal.
async fn leader_gives_up_within_the_renew_deadline(outage: u8) {
    let mode = Arc::new(AtomicU8::new(HEALTHY));
    let config = LeaseConfig {
        name: "sandbox-operator".into(),
        namespace: NAMESPACE.into(),
        identity: "operator-0".into(),
    };
    let election = Election::start_with(client(mode.clone()).await, &config, TIMING)
        .await
        .unwrap();
    let mut is_leader = election.is_leader.clone();

    assert!(
        wait_for(&mut is_leader, true, Duration::from_secs(5)).await,
        "the only replica becomes leader"
    );
    assert!(
        !wait_for(&mut is_leader, false, Duration::from_secs(4)).await,
        "renewals keep it leader beyond the lease duration"
    );

    mode.store(outage, Ordering::SeqCst);
    let outage_started = Instant::now();
    let bound = TIMING.renew_deadline();
    assert!(
        wait_for(&mut is_leader, false, bound + Duration::from_millis(500)).await,
        "leadership given up within {bound:?} of the last successful renewal"
    );
    assert!(outage_started.elapsed() <= bound + Duration::from_millis(500));
    assert!(
        !wait_for(&mut is_leader, true, Duration::from_secs(2)).await,
        "and not taken back"
    );

    drop(is_leader);
    // Given up: nothing to release, so this returns without touching the unreachable API.
    timeout(Duration::from_secs(1), election.release())
        .await
        .expect("release returns at once")
        .unwrap();
}

#[tokio::test]
async fn leader_gives_up_when_lease_renewals_fail() {
    leader_gives_up_within_the_renew_deadline(FAILING).await;
}

#[tokio::test]
async fn leader_gives_up_when_lease_renewals_hang() {
    leader_gives_up_within_the_renew_deadline(HANGING).await;
}
