//! The operator when its connection to the API server hangs: a TCP proxy between them that stops
//! forwarding without closing anything, the failure a timeout must catch (a half-open connection, a
//! stuck load balancer). The API server itself stays healthy for everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kube::{Api, Resource};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use operator::api::SandboxService;
use operator::process::leader::LEASE_DURATION_SECONDS;

use crate::harness::{
    Operator, admin_client, api_server_address, apply, delete_namespace, eventually, kubectl_ok,
    lease_holder, namespace, operator_kubeconfig_via,
};
use crate::{ready_and_current, sandbox, wait_cr};

/// A TCP proxy to `upstream` that can be made to hang: from then on it forwards nothing, on the
/// connections it has and on the ones it accepts, and closes none of them.
struct HangingProxy {
    address: SocketAddr,
    hung: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl HangingProxy {
    async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().unwrap();
        let hung = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let hung = hung.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let hung = hung.clone();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(upstream).await else {
                            return;
                        };
                        let (client_read, client_write) = client.into_split();
                        let (server_read, server_write) = server.into_split();
                        tokio::join!(
                            forward(client_read, server_write, hung.clone()),
                            forward(server_read, client_write, hung),
                        );
                    });
                }
            }
        });
        Self {
            address,
            hung,
            task,
        }
    }

    fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }
}

impl Drop for HangingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy `from` to `to` until either closes, holding every byte while `hung` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hung: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let Ok(read) = from.read(&mut buffer).await else {
            return;
        };
        if read == 0 {
            return;
        }
        while hung.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// SIGTERM to a leader whose connections hang must end it within its bounds (no reconcile or Lease
/// request waits for ever), and a standby must take over within the Lease duration and reconcile.
// Two threads: the proxy keeps forwarding while the test blocks on kubectl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a cluster"]
async fn a_leader_whose_connections_hang_stops_on_sigterm_and_a_standby_takes_over() {
    let client = admin_client().await;
    let ns = namespace(&client, "e2e-hung").await;
    let lease = "e2e-hung";
    let proxy = HangingProxy::start(api_server_address()).await;
    let mut cut_off = Operator::start_via(lease, "hung-a", &operator_kubeconfig_via(proxy.address));
    cut_off.wait_leading(&client).await;
    let standby = Operator::start(lease, "hung-b");
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), &ns);
    apply(
        &crs,
        sandbox("cut-off", json!({"monitoring": {"serviceMonitor": false}})),
    )
    .await
    .unwrap();
    wait_cr(&crs, "cut-off", "is Ready", ready_and_current).await;

    proxy.hang();
    let hung = Instant::now();
    // A change the cut-off leader cannot see; the standby must apply it once it leads.
    kubectl_ok(&[
        "patch",
        "sbx",
        "cut-off",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"concurrency":2}}"#,
    ]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cut_off.signal("TERM");
    let terminated = Instant::now();
    while cut_off.exited().is_none() {
        assert!(
            terminated.elapsed() < Duration::from_secs(25),
            "SIGTERM did not end a leader whose connections hang within 25 s:\n{}",
            cut_off.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stopped_in = terminated.elapsed();

    eventually("the standby takes the Lease over", || async {
        lease_holder(&client, lease).await.as_deref() == Some("hung-b")
    })
    .await;
    let takeover = hung.elapsed();
    wait_cr(
        &crs,
        "cut-off",
        "observes the change made while cut off",
        |cr| cr.meta().generation == Some(2) && ready_and_current(cr),
    )
    .await;
    let reconciled = hung.elapsed();
    eprintln!(
        "connections hung: SIGTERM ended the leader in {:.1} s; the standby led {:.1} s and had the \
         change applied {:.1} s after the hang (Lease duration {LEASE_DURATION_SECONDS} s)",
        stopped_in.as_secs_f64(),
        takeover.as_secs_f64(),
        reconciled.as_secs_f64()
    );
    let limit = Duration::from_secs(LEASE_DURATION_SECONDS + 5);
    assert!(
        takeover <= limit,
        "took over after {takeover:?}, more than {limit:?}"
    );

    delete_namespace(&client, &ns).await;
    standby.stop();
}
