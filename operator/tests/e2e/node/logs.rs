//! Workload pods' logs, read while they happen: a real pod's log is gone with the pod, so a pod's
//! drain after SIGTERM is only seen by following its log until its container exits.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

use crate::harness::eventually;

/// `kubectl logs -f` of one pod, read as it comes until its container exits.
struct LogFollower {
    child: Child,
    reader: std::thread::JoinHandle<String>,
}

impl LogFollower {
    fn start(ns: &str, pod: &str) -> Self {
        // The test bed's kubectl, first on PATH after `scripts/testbed.sh env`, as the harness uses.
        let mut child = Command::new("kubectl")
            .args(["logs", "-f", "-n", ns, pod])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run kubectl logs -f");
        let mut stdout = child.stdout.take().expect("piped stdout");
        // Read all along: a full pipe would stop kubectl, and its follow would never end.
        let reader = std::thread::spawn(move || {
            let mut log = String::new();
            let _ = stdout.read_to_string(&mut log);
            log
        });
        Self { child, reader }
    }

    /// Whether the follow has ended: the container exited (or the pod is gone).
    fn ended(&self) -> bool {
        self.reader.is_finished()
    }

    /// Stop following a pod that stays.
    fn stop(self) {
        let Self { mut child, reader } = self;
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
    }

    /// The whole log, once the follow has ended.
    fn finish(self) -> String {
        let Self { mut child, reader } = self;
        let _ = child.wait();
        reader.join().expect("the log reader")
    }
}

type Followers = Arc<Mutex<BTreeMap<String, LogFollower>>>;

/// Follows the log of every pod of `selector` in a namespace from the moment its container runs:
/// the pods there at the start and every one that comes later.
pub(super) struct PodLogs {
    pods: Api<Pod>,
    followers: Followers,
    task: tokio::task::JoinHandle<()>,
}

impl PodLogs {
    pub(super) fn follow(client: &kube::Client, ns: &str, selector: &str) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let list = pods.clone();
        let (ns, selector) = (ns.to_string(), selector.to_string());
        let followers = Followers::default();
        let into = followers.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(listed) = list.list(&ListParams::default().labels(&selector)).await {
                    for pod in listed.items.iter().filter(|pod| running(pod)) {
                        let name = pod.metadata.name.clone().unwrap();
                        let mut followers = into.lock().unwrap();
                        followers
                            .entry(name)
                            .or_insert_with_key(|name| LogFollower::start(&ns, name));
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        Self {
            pods,
            followers,
            task,
        }
    }

    /// Every pod that got SIGTERM (its log says `shutdown requested`) must have drained its accepted
    /// operations and exited (`drained, exiting`): their number. Waits until the follow of every
    /// pod that is gone or going has ended with its container.
    pub(super) async fn stopped_pods_drained(self) -> usize {
        self.task.abort();
        let staying = || async {
            let listed = self.pods.list(&ListParams::default()).await.unwrap().items;
            listed
                .into_iter()
                .filter(|pod| pod.metadata.deletion_timestamp.is_none())
                .filter_map(|pod| pod.metadata.name)
                .collect::<Vec<String>>()
        };
        eventually("every stopped pod's container exited", || async {
            let staying = staying().await;
            let followers = self.followers.lock().unwrap();
            followers
                .iter()
                .all(|(pod, follower)| staying.contains(pod) || follower.ended())
        })
        .await;
        let staying = staying().await;
        let followers = std::mem::take(&mut *self.followers.lock().unwrap());
        let mut stopped = 0;
        for (pod, follower) in followers {
            if staying.contains(&pod) {
                follower.stop();
                continue;
            }
            let log = follower.finish();
            if log.contains("shutdown requested") {
                assert!(
                    log.contains("drained, exiting"),
                    "{pod} did not drain: {log}"
                );
                stopped += 1;
            }
        }
        stopped
    }
}

/// Whether the pod's container runs, so that `kubectl logs -f` follows it rather than failing.
fn running(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|statuses| statuses.first())
        .and_then(|status| status.state.as_ref())
        .is_some_and(|state| state.running.is_some())
}
