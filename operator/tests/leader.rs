//! Leader election against an in-memory API server (kube-fake-client) whose Lease requests can
//! be made to fail, to hang, or to race with another replica. Short, real-time lease timings:
//! the election compares Lease times with the wall clock.

use std::future::pending;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use kube::client::Body;
use kube_fake_client::ClientBuilder;
use operator::process::leader::{
    Election, LeaseConfig, LeaseTiming, leadership_acquired, while_leading,
};
use tokio::sync::watch;
use tokio::time::{Instant, sleep, timeout};

const NAMESPACE: &str = "operators";
const LEASE: &str = "sandbox-operator";
const ME: &str = "operator-0";
const OTHER: &str = "operator-1";

/// Valid for 3 s after each renewal, a 1 s margin: the leader renews every
/// second and gives up 2 s after its last successful renewal.
const TIMING: LeaseTiming = LeaseTiming::new(3, 1);

/// Valid for 5 s after each renewal, a 2 s margin: Lease requests time out
/// after 1 s, so an answer can be delayed by most of a second.
const SLOW_TIMING: LeaseTiming = LeaseTiming::new(5, 2);

/// How late [`SLOW_ACQUISITION`] answers the acquiring write, within [`SLOW_TIMING`]'s request
/// timeout.
const ACQUISITION_DELAY: Duration = Duration::from_millis(900);

/// Slack for scheduling when comparing measured instants with the renew deadline.
const SLACK: Duration = Duration::from_millis(450);

/// Lease requests are answered.
const HEALTHY: u8 = 0;
/// Lease requests are refused with a 503.
const FAILING: u8 = 1;
/// Lease requests are never answered.
const HANGING: u8 = 2;
/// The next Lease write lands just after another replica took the Lease over; from then on
/// Lease requests are never answered.
const STOLEN_BEFORE_WRITE: u8 = 3;
/// The first Lease write (the acquisition) is answered [`ACQUISITION_DELAY`] late, and later
/// writes never.
const SLOW_ACQUISITION: u8 = 4;
/// The release's write (the only one that leaves the Lease without a holder) lands just after
/// another replica took the Lease over.
const STOLEN_BEFORE_RELEASE: u8 = 5;

/// What the in-memory API server does with Lease requests, and what it saw.
#[derive(Default)]
struct Server {
    mode: AtomicU8,
    /// Lease requests of any kind.
    requests: AtomicUsize,
    /// Lease writes: creates, updates and patches.
    writes: AtomicUsize,
    /// When the first Lease write arrived.
    first_write: Mutex<Option<Instant>>,
    /// When the last successfully answered Lease write arrived.
    last_write_ok: Mutex<Option<Instant>>,
}

impl Server {
    fn new(mode: u8) -> Arc<Self> {
        let server = Self::default();
        server.mode.store(mode, Ordering::SeqCst);
        Arc::new(server)
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn first_write(&self) -> Instant {
        self.first_write.lock().unwrap().expect("a Lease write")
    }

    fn last_write_ok(&self) -> Instant {
        self.last_write_ok
            .lock()
            .unwrap()
            .expect("a successful Lease write")
    }

    async fn answer(
        &self,
        fake: Client,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, kube::Error> {
        if !request.uri().path().contains("/leases") {
            return fake.send(request).await;
        }
        let arrived = Instant::now();
        self.requests.fetch_add(1, Ordering::SeqCst);
        let is_write = request.method() != http::Method::GET;
        if is_write && self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
            *self.first_write.lock().unwrap() = Some(arrived);
        }
        let (parts, body) = request.into_parts();
        let body = body.collect_bytes().await?;
        match self.mode.load(Ordering::SeqCst) {
            FAILING => return Ok(unavailable()),
            HANGING => return pending().await,
            STOLEN_BEFORE_WRITE if is_write => {
                give_lease_to(fake.clone(), OTHER).await;
                self.set_mode(HANGING);
            }
            STOLEN_BEFORE_RELEASE if is_write && leaves_no_holder(&body) => {
                give_lease_to(fake.clone(), OTHER).await;
            }
            SLOW_ACQUISITION if is_write => match self.writes.load(Ordering::SeqCst) {
                1 => sleep(ACQUISITION_DELAY).await,
                _ => return pending().await,
            },
            _ => {}
        }
        let request = http::Request::from_parts(parts, Body::from(body.to_vec()));
        let response = fake.send(request).await?;
        if is_write && response.status().is_success() {
            *self.last_write_ok.lock().unwrap() = Some(arrived);
        }
        Ok(response)
    }
}

/// Whether a Lease write leaves the Lease without a holder, as only a release does.
fn leaves_no_holder(body: &[u8]) -> bool {
    serde_json::from_slice::<Lease>(body)
        .is_ok_and(|lease| lease.spec.is_none_or(|spec| spec.holder_identity.is_none()))
}

fn unavailable() -> http::Response<Body> {
    http::Response::builder()
        .status(503)
        .body(Body::from(
            br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"etcd is unavailable","reason":"ServiceUnavailable","code":503}"#.to_vec(),
        ))
        .unwrap()
}

/// Another replica takes the Lease over (directly on the in-memory API server).
async fn give_lease_to(fake: Client, holder: &str) {
    let now = MicroTime(Timestamp::now());
    let patch = serde_json::json!({
        "spec": { "holderIdentity": holder, "acquireTime": now, "renewTime": now },
    });
    Api::<Lease>::namespaced(fake, NAMESPACE)
        .patch(LEASE, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// A client of an in-memory API server holding `objects`, whose Lease requests `server`
/// answers; and a client of that API server that bypasses `server`.
async fn client(server: Arc<Server>, objects: Vec<Lease>) -> (Client, Client) {
    let fake = ClientBuilder::new()
        .with_objects(objects)
        .build()
        .await
        .unwrap();
    (answered_by(server, fake.clone()), fake)
}

/// A client of the in-memory API server `fake` whose Lease requests `server` answers.
fn answered_by(server: Arc<Server>, fake: Client) -> Client {
    let service = tower::service_fn(move |request: http::Request<Body>| {
        let fake = fake.clone();
        let server = server.clone();
        async move { server.answer(fake, request).await }
    });
    Client::new(service, NAMESPACE)
}

async fn start(client: Client, timing: LeaseTiming) -> Election {
    let config = LeaseConfig {
        name: LEASE.into(),
        namespace: NAMESPACE.into(),
        identity: ME.into(),
    };
    Election::start_with(client, &config, timing)
}

/// The only replica, on an empty in-memory API server answered by `server`, once it leads.
async fn sole_leader(
    server: Arc<Server>,
    timing: LeaseTiming,
) -> (Election, watch::Receiver<bool>, Client) {
    let (client, fake) = client(server, vec![]).await;
    let election = start(client, timing).await;
    let mut is_leader = election.is_leader.clone();
    assert!(
        wait_for(&mut is_leader, true, Duration::from_secs(5)).await,
        "the only replica becomes leader"
    );
    (election, is_leader, fake)
}

async fn wait_for(is_leader: &mut watch::Receiver<bool>, wanted: bool, within: Duration) -> bool {
    timeout(within, is_leader.wait_for(|value| *value == wanted))
        .await
        .is_ok_and(|changed| changed.is_ok())
}

/// The Lease as `holder` has just renewed it, valid for `duration_seconds`.
fn lease_held_by(holder: &str, duration_seconds: i32) -> Lease {
    let now = MicroTime(Timestamp::now());
    Lease {
        metadata: ObjectMeta {
            name: Some(LEASE.into()),
            namespace: Some(NAMESPACE.into()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.into()),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_duration_seconds: Some(duration_seconds),
            lease_transitions: Some(1),
            ..LeaseSpec::default()
        }),
    }
}

/// Ends the election (its result aside: Lease requests may be failing) and checks that it returns.
async fn release_returns(election: Election, is_leader: watch::Receiver<bool>) {
    drop(is_leader);
    let _ = timeout(Duration::from_secs(2), election.release())
        .await
        .expect("release returns");
}

async fn holder(fake: Client) -> Option<String> {
    let lease = Api::<Lease>::namespaced(fake, NAMESPACE)
        .get(LEASE)
        .await
        .unwrap();
    lease.spec.and_then(|spec| spec.holder_identity)
}

/// Become leader, stay leader over several renewals, then lose the API server in `outage`
/// mode: leadership must be given up within the renew deadline of the last successful
/// renewal, and not taken back once the API server is back.
async fn leader_gives_up_within_the_renew_deadline(outage: u8) {
    let server = Server::new(HEALTHY);
    let (election, mut is_leader, fake) = sole_leader(server.clone(), TIMING).await;
    assert!(
        !wait_for(&mut is_leader, false, Duration::from_secs(4)).await,
        "renewals keep it leader beyond the lease duration"
    );

    server.set_mode(outage);
    let bound = TIMING.renew_deadline();
    assert!(
        wait_for(&mut is_leader, false, bound + Duration::from_secs(1)).await,
        "leadership given up"
    );
    let since_renewal = server.last_write_ok().elapsed();
    assert!(
        since_renewal <= bound + SLACK && since_renewal + SLACK >= bound,
        "leadership given up {since_renewal:?} after the last successful renewal arrived at the \
         API server, not within {SLACK:?} of the renew deadline {bound:?}"
    );

    // Once given up, leadership stays given up even when the API server answers again.
    server.set_mode(HEALTHY);
    assert!(
        !wait_for(&mut is_leader, true, Duration::from_secs(3)).await,
        "leadership taken back after giving it up"
    );

    drop(is_leader);
    timeout(Duration::from_secs(1), election.release())
        .await
        .expect("release returns at once")
        .unwrap();
    // Not released either: by now a standby may hold the Lease, and a release would free it.
    assert_eq!(holder(fake).await.as_deref(), Some(ME));
}

#[tokio::test]
async fn leader_gives_up_when_lease_renewals_fail() {
    leader_gives_up_within_the_renew_deadline(FAILING).await;
}

#[tokio::test]
async fn leader_gives_up_when_lease_renewals_hang() {
    leader_gives_up_within_the_renew_deadline(HANGING).await;
}

/// A replica that restarts with its old identity reads the Lease as its own, but another
/// replica takes it over before its renewal lands. That renewal must fail on the Lease it did
/// not read, and must not make it leader.
#[tokio::test]
async fn a_renewal_of_a_lease_taken_over_since_it_was_read_does_not_make_it_leader() {
    let lease = lease_held_by(ME, 3);
    let server = Server::new(STOLEN_BEFORE_WRITE);
    let (client, fake) = client(server.clone(), vec![lease]).await;
    let election = start(client, TIMING).await;
    let mut is_leader = election.is_leader.clone();

    assert!(
        !wait_for(&mut is_leader, true, Duration::from_secs(3)).await,
        "leader on the strength of a renewal of another replica's Lease"
    );
    assert!(
        server.writes.load(Ordering::SeqCst) >= 1,
        "the replica renewed the Lease"
    );
    assert_eq!(holder(fake).await.as_deref(), Some(OTHER));

    // The Lease requests hang, so releasing fails; it only has to return.
    release_returns(election, is_leader).await;
}

/// The acquiring write is answered late, and no renewal is answered: the renew deadline counts
/// from when the acquiring write was sent, as its `renewTime` says, not from its answer.
#[tokio::test]
async fn the_renew_deadline_counts_from_the_sending_of_the_acquiring_write() {
    let server = Server::new(SLOW_ACQUISITION);
    let (election, mut is_leader, _fake) = sole_leader(server.clone(), SLOW_TIMING).await;
    let bound = SLOW_TIMING.renew_deadline();
    assert!(
        wait_for(&mut is_leader, false, bound + Duration::from_secs(2)).await,
        "leadership given up without renewals"
    );
    let since_acquisition = server.first_write().elapsed();
    assert!(
        since_acquisition <= bound + SLACK,
        "leadership given up {since_acquisition:?} after the acquiring write arrived at the \
         API server, more than {bound:?} (+{SLACK:?})"
    );
    assert!(server.writes.load(Ordering::SeqCst) >= 2, "renewals tried");

    release_returns(election, is_leader).await;
}

/// A candidate whose API server cannot be reached waits and retries instead of failing (under
/// a kubelet, a failing candidate is a crash loop whose delay adds to every recovery).
#[tokio::test]
async fn a_candidate_waits_out_an_unreachable_api_server_and_then_leads() {
    let server = Server::new(FAILING);
    let (client, fake) = client(server.clone(), vec![]).await;
    let election = start(client, TIMING).await;
    let mut is_leader = election.is_leader.clone();
    assert!(
        !wait_for(&mut is_leader, true, Duration::from_secs(2)).await,
        "no leader without the API server"
    );
    assert!(is_leader.has_changed().is_ok(), "the election still runs");

    server.set_mode(HEALTHY);
    assert!(
        wait_for(&mut is_leader, true, Duration::from_secs(8)).await,
        "leads once the API server answers"
    );
    assert_eq!(holder(fake).await.as_deref(), Some(ME));
    release_returns(election, is_leader).await;
}

/// A standby that shuts down leaves the Lease alone, not even reading it: from a standby a
/// release could clear the Lease another replica has just taken.
#[tokio::test]
async fn a_standby_leaves_the_lease_to_its_holder_on_shutdown() {
    let lease = lease_held_by(OTHER, 30);
    let server = Server::new(HEALTHY);
    let (client, fake) = client(server.clone(), vec![lease]).await;
    let election = start(client, TIMING).await;
    let mut is_leader = election.is_leader.clone();
    assert!(!wait_for(&mut is_leader, true, Duration::from_millis(500)).await);

    drop(is_leader);
    let requests = server.requests.load(Ordering::SeqCst);
    timeout(Duration::from_secs(2), election.release())
        .await
        .expect("release returns")
        .unwrap();
    assert_eq!(
        server.requests.load(Ordering::SeqCst),
        requests,
        "no Lease request on shutdown"
    );
    assert_eq!(holder(fake).await.as_deref(), Some(OTHER));
}

#[tokio::test]
async fn leadership_is_acquired_once_leading() {
    let (sender, is_leader) = watch::channel(false);
    let acquired = tokio::spawn(leadership_acquired(is_leader));
    sleep(Duration::from_millis(50)).await;
    sender.send_replace(true);
    assert!(
        timeout(Duration::from_secs(1), acquired)
            .await
            .unwrap()
            .unwrap()
    );
}

#[tokio::test]
async fn leadership_is_not_acquired_from_an_ended_election() {
    let (sender, is_leader) = watch::channel(false);
    let acquired = tokio::spawn(leadership_acquired(is_leader));
    sleep(Duration::from_millis(50)).await;
    drop(sender);
    assert!(
        !timeout(Duration::from_secs(1), acquired)
            .await
            .unwrap()
            .unwrap()
    );
}

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Work that never ends on its own, like a controller waiting for a hung reconcile; whether it
/// was dropped.
fn endless_work() -> (impl Future<Output = ()>, Arc<AtomicBool>) {
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(dropped.clone());
    let work = async move {
        let _flag = flag;
        pending::<()>().await;
    };
    (work, dropped)
}

/// Runs endless work while leading, ends leadership with `end` after 50 ms, and checks that the
/// work was dropped at once.
async fn work_is_dropped_at_once_when(end: impl FnOnce(watch::Sender<bool>)) {
    let (sender, is_leader) = watch::channel(true);
    let (work, dropped) = endless_work();
    let leading = tokio::spawn(while_leading(is_leader, work));
    sleep(Duration::from_millis(50)).await;
    assert!(!dropped.load(Ordering::SeqCst), "work runs while leading");

    end(sender);
    let output = timeout(Duration::from_secs(1), leading)
        .await
        .expect("returns at once")
        .unwrap();
    assert_eq!(output, None);
    assert!(dropped.load(Ordering::SeqCst));
}

#[tokio::test]
async fn work_is_dropped_at_once_when_leadership_is_lost() {
    work_is_dropped_at_once_when(|sender| {
        sender.send_replace(false);
    })
    .await;
}

#[tokio::test]
async fn work_is_dropped_at_once_when_the_election_ends() {
    work_is_dropped_at_once_when(drop).await;
}

#[tokio::test]
async fn work_that_ends_while_leading_gives_its_output() {
    let (_sender, is_leader) = watch::channel(true);
    assert_eq!(while_leading(is_leader, async { 42 }).await, Some(42));
}

/// A leader that shuts down clears its Lease, so a standby need not wait for it to expire.
#[tokio::test]
async fn a_leader_releases_its_lease_on_shutdown() {
    let (election, is_leader, fake) = sole_leader(Server::new(HEALTHY), TIMING).await;
    drop(is_leader);
    timeout(Duration::from_secs(2), election.release())
        .await
        .expect("release returns")
        .unwrap();
    assert_eq!(holder(fake).await, None);
}

/// The release writes with the `resourceVersion` it read as a precondition: a Lease another
/// replica took between the read and the write is left to it.
#[tokio::test]
async fn a_release_leaves_a_lease_another_replica_took_meanwhile() {
    let server = Server::new(HEALTHY);
    let (election, is_leader, fake) = sole_leader(server.clone(), TIMING).await;
    server.set_mode(STOLEN_BEFORE_RELEASE);
    drop(is_leader);
    timeout(Duration::from_secs(2), election.release())
        .await
        .expect("release returns")
        .unwrap();
    assert_eq!(holder(fake).await.as_deref(), Some(OTHER));
}

/// Two replicas on one Lease: one leads, the other waits; once the leader releases, the other
/// takes over within a standby's polling period.
#[tokio::test]
async fn of_two_replicas_one_leads_and_the_other_takes_over_after_its_release() {
    let server = Server::new(HEALTHY);
    let (first_client, fake) = client(server.clone(), vec![]).await;
    let first = start(first_client, TIMING).await;
    let mut first_leads = first.is_leader.clone();
    assert!(wait_for(&mut first_leads, true, Duration::from_secs(5)).await);

    let other = LeaseConfig {
        name: LEASE.into(),
        namespace: NAMESPACE.into(),
        identity: OTHER.into(),
    };
    let second = Election::start_with(answered_by(server, fake.clone()), &other, TIMING);
    let mut second_leads = second.is_leader.clone();
    assert!(
        !wait_for(&mut second_leads, true, Duration::from_secs(4)).await,
        "a second leader while the first renews"
    );
    assert!(*first_leads.borrow(), "the first leads throughout");

    drop(first_leads);
    first.release().await.unwrap();
    let released = Instant::now();
    assert!(
        wait_for(&mut second_leads, true, Duration::from_secs(2)).await,
        "the standby takes the released Lease"
    );
    assert!(released.elapsed() < Duration::from_millis(1500));
    assert_eq!(holder(fake).await.as_deref(), Some(OTHER));
    drop(second_leads);
    second.release().await.unwrap();
}
