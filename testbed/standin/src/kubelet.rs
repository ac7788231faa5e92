//! The kubelet's part: one workload process per running pod, probed and stopped as the pod says.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Pod};
use kube::ResourceExt;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep, timeout};
use tracing::{info, warn};

use crate::probe::{HttpClient, Probe, Tracker};
use crate::state::{PodProcess, Registry};

/// The kubelet's default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Wait before restarting a process that exited (the kubelet's back-off starts at 10 s; the test
/// bed has no image to pull and wants a crash to show fast).
const RESTART_DELAY: Duration = Duration::from_secs(1);

/// What the stand-in needs from the pod's container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    /// `env` entries with a literal `value`, in order.
    pub env: Vec<(String, String)>,
    pub readiness: Option<Probe>,
    pub liveness: Option<Probe>,
    /// `lifecycle.preStop.sleep`; exec and httpGet hooks are not run (the workload's image has no
    /// shell, and the operator uses only `sleep`).
    pub pre_stop_sleep: Option<Duration>,
    pub grace: Duration,
}

impl ContainerSpec {
    /// The first container of `pod` (the workload's pods have one).
    pub fn of(pod: &Pod) -> Option<Self> {
        let spec = pod.spec.as_ref()?;
        let container: &Container = spec.containers.first()?;
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            match &var.value {
                Some(value) => env.push((var.name.clone(), value.clone())),
                None if var.value_from.is_some() => warn!(
                    pod = %pod.name_any(), variable = %var.name,
                    "env valueFrom is not supported by the stand-in; left unset"
                ),
                None => env.push((var.name.clone(), String::new())),
            }
        }
        let pre_stop_sleep = container
            .lifecycle
            .as_ref()
            .and_then(|lifecycle| lifecycle.pre_stop.as_ref())
            .and_then(|hook| hook.sleep.as_ref())
            .map(|sleep| Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0)));
        Some(Self {
            name: container.name.clone(),
            env,
            readiness: container
                .readiness_probe
                .as_ref()
                .and_then(Probe::from_spec),
            liveness: container.liveness_probe.as_ref().and_then(Probe::from_spec),
            pre_stop_sleep,
            grace: spec
                .termination_grace_period_seconds
                .and_then(|seconds| u64::try_from(seconds).ok())
                .map_or(DEFAULT_GRACE, Duration::from_secs),
        })
    }
}

/// Whether the kubelet would run `pod`'s containers now: bound to a Node, Running, not deleted.
pub fn runs(pod: &Pod) -> bool {
    let bound = pod
        .spec
        .as_ref()
        .is_some_and(|spec| spec.node_name.is_some());
    let running = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref())
        == Some("Running");
    bound && running && pod.metadata.deletion_timestamp.is_none()
}

/// Settings every pod's process shares.
pub struct Runtime {
    pub workload: PathBuf,
    pub log_dir: PathBuf,
    pub client: HttpClient,
    pub registry: Arc<Registry>,
}

/// A started pod; dropping it leaves the process running, [`PodHandle::terminate`] stops it.
pub struct PodHandle {
    process: Arc<PodProcess>,
    stop: watch::Sender<bool>,
}

impl PodHandle {
    /// Starts `pod`'s process in the background; `None` when the pod has no container or no port
    /// is free.
    pub fn start(pod: &Pod, runtime: &Arc<Runtime>) -> Option<Self> {
        let container = ContainerSpec::of(pod)?;
        let address = match free_port() {
            Ok(address) => address,
            Err(err) => {
                warn!(pod = %pod.name_any(), %err, "no free port for the pod's process");
                return None;
            }
        };
        let process = Arc::new(PodProcess::new(
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            pod.uid().unwrap_or_default(),
            pod.labels().clone(),
            container.name.clone(),
            address,
        ));
        runtime.registry.insert_pod(process.clone());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(run(process.clone(), container, runtime.clone(), stopped));
        Some(Self { process, stop })
    }

    /// The pod is being deleted: out of the endpoints once the endpoint lag has passed, and
    /// meanwhile preStop, SIGTERM, and SIGKILL after the grace period.
    pub fn terminate(&self) {
        self.process.start_terminating();
        let _ = self.stop.send(true);
    }
}

/// An unused port on 127.0.0.1, standing in for the pod's IP and container port.
fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Why supervising a process ended.
enum Outcome {
    Stop,
    Exited(std::io::Result<ExitStatus>),
    LivenessFailed,
}

/// The pod's life: start, supervise, restart on exit or failed liveness, terminate on request.
async fn run(
    process: Arc<PodProcess>,
    container: ContainerSpec,
    runtime: Arc<Runtime>,
    mut stop: watch::Receiver<bool>,
) {
    let log = runtime
        .log_dir
        .join(format!("{}_{}.log", process.namespace, process.name));
    while !*stop.borrow() {
        let mut child = match spawn(&runtime.workload, &container, process.address, &log) {
            Ok(child) => child,
            Err(err) => {
                warn!(pod = %process.name, %err, "cannot start the workload process");
                let _ = timeout(RESTART_DELAY, stop.changed()).await;
                continue;
            }
        };
        info!(namespace = %process.namespace, pod = %process.name, address = %process.address, "started");
        let outcome = supervise(&process, &container, &runtime.client, &mut child, &mut stop).await;
        match outcome {
            // Readiness as last probed: the endpoint leaves with the lag, see `PodProcess::serves`.
            Outcome::Stop => terminate(&process, &container, &mut child).await,
            Outcome::Exited(status) => {
                process.set_ready(false);
                warn!(pod = %process.name, ?status, "the workload process exited; restarting");
                process.count_restart();
                let _ = timeout(RESTART_DELAY, stop.changed()).await;
            }
            Outcome::LivenessFailed => {
                process.set_ready(false);
                warn!(pod = %process.name, "liveness probe failed; restarting");
                let _ = child.kill().await;
                process.count_restart();
            }
        }
    }
    // kube-proxy keeps sending to the pod's address for the endpoint lag, whether or not the
    // process still listens: only then is it gone from the Service.
    tokio::time::sleep(runtime.registry.lag_left(&process)).await;
    runtime.registry.remove_pod(&process.uid);
}

fn spawn(
    workload: &Path,
    container: &ContainerSpec,
    address: SocketAddr,
    log: &Path,
) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)?;
    Command::new(workload)
        .env_clear()
        .envs(container.env.iter().map(|(k, v)| (k, v)))
        // The pod's IP and container port, as the process sees them here.
        .env("HOST", address.ip().to_string())
        .env("PORT", address.port().to_string())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
}

/// Probes until the process exits, liveness fails, or the pod is to stop.
async fn supervise(
    process: &PodProcess,
    container: &ContainerSpec,
    client: &HttpClient,
    child: &mut Child,
    stop: &mut watch::Receiver<bool>,
) -> Outcome {
    // Without a readiness probe a running container is ready.
    process.set_ready(container.readiness.is_none());
    let mut readiness = container
        .readiness
        .as_ref()
        .map(|p| (p, Tracker::new(p, false), ticks(p)));
    let mut liveness = container
        .liveness
        .as_ref()
        .map(|p| (p, Tracker::new(p, true), ticks(p)));
    loop {
        tokio::select! {
            status = child.wait() => return Outcome::Exited(status),
            _ = stop.changed() => return Outcome::Stop,
            Some(()) = tick(readiness.as_mut().map(|(_, _, ticks)| ticks)) => {
                let (probe, tracker, _) = readiness.as_mut().expect("ticked");
                let passed = probe.check(client, process.address).await;
                process.set_ready(tracker.record(passed));
            }
            Some(()) = tick(liveness.as_mut().map(|(_, _, ticks)| ticks)) => {
                let (probe, tracker, _) = liveness.as_mut().expect("ticked");
                let passed = probe.check(client, process.address).await;
                if !tracker.record(passed) {
                    return Outcome::LivenessFailed;
                }
            }
        }
    }
}

fn ticks(probe: &Probe) -> Interval {
    let mut ticks = interval_at(Instant::now() + probe.initial_delay, probe.period);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    ticks
}

/// The next tick, or `None` (a disabled `select!` branch) for a probe the container does not have.
async fn tick(ticks: Option<&mut Interval>) -> Option<()> {
    ticks?.tick().await;
    Some(())
}

/// preStop, SIGTERM, and SIGKILL when the process outlives the grace period (which includes
/// preStop, as for the kubelet).
async fn terminate(process: &PodProcess, container: &ContainerSpec, child: &mut Child) {
    let deadline = Instant::now() + container.grace;
    if let Some(pre_stop) = container.pre_stop_sleep {
        sleep(pre_stop.min(container.grace)).await;
    }
    if let Some(pid) = child.id() {
        // tokio's Child can only SIGKILL; `kill` sends SIGTERM without unsafe code.
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await;
    }
    match tokio::time::timeout_at(deadline, child.wait()).await {
        Ok(status) => {
            info!(namespace = %process.namespace, pod = %process.name, ?status, "stopped")
        }
        Err(_) => {
            warn!(pod = %process.name, grace = ?container.grace, "still running after the grace period; SIGKILL");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn container_spec_from_the_pod() {
        let pod = pod(r#"
metadata: {name: p}
spec:
  terminationGracePeriodSeconds: 45
  containers:
    - name: workload
      env:
        - {name: CONCURRENCY, value: "2"}
        - {name: PORT, value: "3000"}
        - {name: FROM_FIELD, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
      readinessProbe: {httpGet: {path: /readiness, port: http}, periodSeconds: 1}
      livenessProbe: {httpGet: {path: /liveness, port: http}}
      lifecycle: {preStop: {sleep: {seconds: 5}}}
"#);
        let spec = ContainerSpec::of(&pod).unwrap();
        assert_eq!(spec.name, "workload");
        assert_eq!(
            spec.env,
            [
                ("CONCURRENCY".into(), "2".into()),
                ("PORT".into(), "3000".into())
            ]
        );
        assert_eq!(spec.readiness.unwrap().path, "/readiness");
        assert_eq!(spec.liveness.unwrap().path, "/liveness");
        assert_eq!(spec.pre_stop_sleep, Some(Duration::from_secs(5)));
        assert_eq!(spec.grace, Duration::from_secs(45));
    }

    #[test]
    fn the_kubelet_defaults_apply() {
        let spec = ContainerSpec::of(&pod("spec: {containers: [{name: c}]}")).unwrap();
        assert_eq!(spec.grace, DEFAULT_GRACE);
        assert_eq!((spec.readiness, spec.pre_stop_sleep), (None, None));
    }

    #[test]
    fn only_bound_running_pods_not_deleted_run() {
        let base =
            "spec: {nodeName: kwok-node-1, containers: [{name: c}]}\nstatus: {phase: Running}";
        assert!(runs(&pod(base)));
        assert!(!runs(&pod(
            "spec: {containers: [{name: c}]}\nstatus: {phase: Running}"
        )));
        assert!(!runs(&pod(&base.replace("Running", "Pending"))));
        assert!(!runs(&pod(&format!(
            "metadata: {{deletionTimestamp: '2026-01-01T00:00:00Z'}}\n{base}"
        ))));
    }
}
