//! A load test's pipeline: validate → wait for its turn and its target → apply its Job → read the
//! outcome into the status. Each reconcile moves it at most one phase on and writes the status
//! only when it changed (server-side apply of the status, one field manager, so a rerun's status
//! drops the last run's fields).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::Store;
use kube::{Client, Resource, ResourceExt};
use tracing::{info, warn};

use super::crd::{LoadTestPhase, SandboxLoadTest, SandboxLoadTestStatus, Thresholds};
use super::job::{JobInputs, job_name};
use super::outcome::{
    RUN_FAILED, THRESHOLDS_MET, parse_summary, peak_replicas, scale_events_between, step_outcome,
    verdict,
};
use super::validate::validate;
use crate::api::SandboxService;
use crate::api::autoscaling_status::ScaleEvent;
use crate::error::{Error, Result};
use crate::names::FIELD_MANAGER;
use crate::reconcile::{RECONCILE_TIMEOUT, apply::apply, backoff};

/// How often a waiting load test looks again at its turn and its target.
pub const WAIT_RECHECK: Duration = Duration::from_secs(5);

/// How long after its load ended a test waits for the timings of the scale-outs during it
/// (`readyAt` comes when the new pods are Ready), when a threshold needs them.
pub const SCALE_TIMING_WAIT: Duration = Duration::from_secs(120);

/// What the load tests' reconciles share: the client and the load tests' cache (to find the
/// others on the same target).
pub struct LoadTestContext {
    /// Kubernetes client.
    pub client: Client,
    /// Every load test the controller watches.
    pub tests: Store<SandboxLoadTest>,
}

/// Reconcile one load test, within [`RECONCILE_TIMEOUT`] (a hung request must not stall it).
pub async fn reconcile(test: Arc<SandboxLoadTest>, ctx: Arc<LoadTestContext>) -> Result<Action> {
    tokio::time::timeout(RECONCILE_TIMEOUT, reconcile_steps(test, ctx))
        .await
        .unwrap_or(Err(Error::ReconcileTimeout(RECONCILE_TIMEOUT)))
}

async fn reconcile_steps(test: Arc<SandboxLoadTest>, ctx: Arc<LoadTestContext>) -> Result<Action> {
    let (Some(namespace), Some(uid)) = (test.namespace(), test.uid()) else {
        return Err(Error::MissingObjectKey(
            "metadata.namespace or metadata.uid",
        ));
    };
    let current = test.status.clone().unwrap_or_default();
    let same_run = current.run == test.spec.run;
    if test.meta().deletion_timestamp.is_some()
        || (same_run && current.phase.is_some_and(LoadTestPhase::is_finished))
    {
        // Deleting stops the Job (the garbage collector follows its owner reference); a finished
        // run stays as it is until `spec.run` changes.
        return Ok(Action::await_change());
    }
    // A new `spec.run` while a Job runs waits for that Job: two loads never overlap.
    let running = current.phase == Some(LoadTestPhase::Running);
    let (next, action) = if current.job.is_some() && (same_run || running) {
        follow_job(&test, &ctx, &namespace, current.clone()).await?
    } else {
        start(&test, &ctx, &namespace, &uid).await?
    };
    if next != current {
        let api: Api<SandboxLoadTest> = Api::namespaced(ctx.client.clone(), &namespace);
        let body = serde_json::json!({
            "apiVersion": SandboxLoadTest::api_version(&()),
            "kind": SandboxLoadTest::kind(&()),
            "status": next,
        });
        api.patch_status(
            &test.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(api_error(&test, "writing the status"))?;
        info!(name = %test.name_any(), %namespace, phase = ?next.phase, message = next.message.as_deref().unwrap_or(""), "load test status");
    }
    Ok(action)
}

/// Retry a failed reconcile with the operator's backoff.
pub fn error_policy(
    test: Arc<SandboxLoadTest>,
    error: &Error,
    _ctx: Arc<LoadTestContext>,
) -> Action {
    warn!(name = %test.name_any(), namespace = test.namespace().unwrap_or_default(), %error, "load test reconcile failed");
    Action::requeue(backoff(2))
}

/// A run that has no Job yet: refused, waiting, or started.
async fn start(
    test: &SandboxLoadTest,
    ctx: &LoadTestContext,
    namespace: &str,
    uid: &str,
) -> Result<(SandboxLoadTestStatus, Action)> {
    let spec = &test.spec;
    let run = spec.run.clone();
    if let Err(invalid) = validate(&test.name_any(), spec) {
        return Ok((
            failed(run, format!("invalid SandboxLoadTest: {invalid}")),
            Action::await_change(),
        ));
    }
    let services: Api<SandboxService> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(target) = services
        .get_opt(&spec.target)
        .await
        .map_err(api_error(test, "reading the target SandboxService"))?
    else {
        return Ok((
            failed(
                run,
                format!(
                    "no SandboxService {:?} in namespace {namespace}: a load test loads one in its own namespace",
                    spec.target
                ),
            ),
            Action::await_change(),
        ));
    };
    let pending = |message: String| {
        let status = SandboxLoadTestStatus {
            phase: Some(LoadTestPhase::Pending),
            message: Some(message),
            run: run.clone(),
            ..Default::default()
        };
        Ok((status, Action::requeue(WAIT_RECHECK)))
    };
    if let Some(ahead) = test_ahead(test, &ctx.tests) {
        return pending(format!(
            "waiting for SandboxLoadTest {ahead}, which loads {} first",
            spec.target
        ));
    }
    let ready = target
        .status
        .as_ref()
        .map_or(0, |status| status.ready_replicas);
    if ready == 0 {
        return pending(format!(
            "waiting for a ready pod of SandboxService {}",
            spec.target
        ));
    }
    let service = Api::<Service>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&spec.target)
        .await
        .map_err(api_error(test, "reading the target's Service"))?;
    let Some(address) = service.as_ref().and_then(cluster_address) else {
        return pending(format!(
            "waiting for the cluster IP of Service {}",
            spec.target
        ));
    };
    let url = format!("http://{address}{}", spec.path);
    let generation = test.meta().generation.unwrap_or(0);
    let job = job_name(&test.name_any(), uid, run.as_deref(), generation);
    let owner = test
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let built = super::job::build(&JobInputs {
        test: &test.name_any(),
        namespace,
        owner,
        job: &job,
        url: &url,
        spec,
    });
    apply(&ctx.client, namespace, &built).await?;
    let status = SandboxLoadTestStatus {
        phase: Some(LoadTestPhase::Running),
        message: Some(format!("Job {job} loads {url}")),
        run,
        job: Some(job),
        url: Some(url),
        start_time: Some(Time(Timestamp::now())),
        replicas_at_start: target.status.as_ref().map(|status| status.replicas),
        ..Default::default()
    };
    Ok((status, Action::await_change()))
}

/// A run whose Job exists: still running, or finished and read.
async fn follow_job(
    test: &SandboxLoadTest,
    ctx: &LoadTestContext,
    namespace: &str,
    mut status: SandboxLoadTestStatus,
) -> Result<(SandboxLoadTestStatus, Action)> {
    let job_name = status.job.clone().unwrap_or_default();
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
    let Some(job) = jobs
        .get_opt(&job_name)
        .await
        .map_err(api_error(test, "reading its Job"))?
    else {
        return Ok((
            failed(
                status.run,
                format!("Job {job_name} was deleted before it finished"),
            ),
            Action::await_change(),
        ));
    };
    let finished = job_condition(&job, "Complete").or_else(|| job_condition(&job, "Failed"));
    let Some((outcome, condition)) = finished else {
        // The Job's watch reconciles again when it ends; this is the fallback.
        return Ok((status, Action::requeue(Duration::from_secs(60))));
    };
    let message = termination_message(ctx, namespace, &job_name)
        .await
        .map_err(api_error(test, "reading its pod"))?;
    if outcome == "Failed" {
        let why = condition
            .message
            .unwrap_or(condition.reason.unwrap_or_default());
        let log = message
            .map(|message| format!("; the load generator said: {}", message.trim()))
            .unwrap_or_default();
        return Ok((
            failed(status.run, format!("Job {job_name} failed: {why}{log}")),
            Action::await_change(),
        ));
    }
    let summary = match message.as_deref().map(parse_summary) {
        Some(Ok(summary)) => summary,
        Some(Err(why)) => return Ok((failed(status.run, why), Action::await_change())),
        None => {
            return Ok((
                failed(
                    status.run,
                    format!("Job {job_name} completed without a summary"),
                ),
                Action::await_change(),
            ));
        }
    };
    let now = Time(Timestamp::now());
    let target = Api::<SandboxService>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&test.spec.target)
        .await
        .map_err(api_error(test, "reading the target SandboxService"))?;
    let events = target
        .and_then(|target| target.status)
        .and_then(|status| status.autoscaling)
        .map(|autoscaling| autoscaling.scale_events)
        .unwrap_or_default();
    let start = status.start_time.clone().unwrap_or_else(|| now.clone());
    // The load ended when the Job completed: later scale decisions are not the run's.
    let ended = job
        .status
        .as_ref()
        .and_then(|job| job.completion_time.clone())
        .unwrap_or_else(|| now.clone());
    let events = scale_events_between(&events, &start, &ended);
    let waited = now.0.duration_since(ended.0).as_secs();
    if waited < SCALE_TIMING_WAIT.as_secs() as i64
        && needs_scale_timing(&test.spec.thresholds, &events)
    {
        status.message = Some(format!(
            "the load ended; waiting up to {} s for its scale-outs' new pods to be Ready, to time them",
            SCALE_TIMING_WAIT.as_secs()
        ));
        return Ok((status, Action::requeue(WAIT_RECHECK)));
    }
    status.scale_events = events;
    status.peak_replicas = peak_replicas(status.replicas_at_start, &status.scale_events);
    status.steps = summary.steps.iter().map(step_outcome).collect();
    let total = step_outcome(&summary.total);
    let (passed, reason, message) =
        match verdict(&test.spec.thresholds, &total, &status.scale_events) {
            Ok(message) => ("True", THRESHOLDS_MET, message),
            Err((reason, message)) => ("False", reason, message),
        };
    status.total = Some(total);
    status.phase = Some(LoadTestPhase::Succeeded);
    status.message = Some(format!(
        "the load ran; {}",
        if passed == "True" {
            "passed"
        } else {
            "failed a threshold"
        }
    ));
    status.completion_time = Some(now.clone());
    status.conditions = vec![passed_condition(
        test.meta().generation,
        passed,
        reason,
        message,
        now,
    )];
    Ok((status, Action::await_change()))
}

/// The error of a failed API call, saying which load test made it and for what.
fn api_error(test: &SandboxLoadTest, action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    let (namespace, name) = (test.namespace().unwrap_or_default(), test.name_any());
    move |source| Error::LoadTest {
        namespace,
        name,
        action,
        source: Box::new(source),
    }
}

/// Whether a threshold on scale-outs is set and the newest decision in `events`, a scale-out,
/// lacks the timing it needs.
/// Only the newest decision can still be timed: one a later decision overtook never is.
fn needs_scale_timing(thresholds: &Thresholds, events: &[ScaleEvent]) -> bool {
    let Some(newest) = events.last().filter(|event| event.is_scale_out()) else {
        return false;
    };
    (thresholds.max_scale_out_reaction_seconds.is_some() && newest.reaction_seconds.is_none())
        || (thresholds.max_time_to_capacity_seconds.is_some()
            && newest.time_to_capacity_seconds.is_none())
}

/// A status that says the run could not happen, with `Passed=False` (`RunFailed`).
fn failed(run: Option<String>, message: String) -> SandboxLoadTestStatus {
    let now = Time(Timestamp::now());
    SandboxLoadTestStatus {
        phase: Some(LoadTestPhase::Failed),
        conditions: vec![passed_condition(
            None,
            "False",
            RUN_FAILED,
            message.clone(),
            now.clone(),
        )],
        message: Some(message),
        run,
        completion_time: Some(now),
        ..Default::default()
    }
}

/// The `Passed` condition, of the spec at `generation` where it was judged.
fn passed_condition(
    generation: Option<i64>,
    status: &str,
    reason: &str,
    message: String,
    now: Time,
) -> Condition {
    Condition {
        type_: "Passed".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: now,
        observed_generation: generation,
    }
}

/// The first other load test of the same target that goes before this one: one running, or one
/// not yet finished that was created earlier (by name among equals), so tests of one target run
/// one at a time in the order they were applied.
fn test_ahead(test: &SandboxLoadTest, tests: &Store<SandboxLoadTest>) -> Option<String> {
    let key = |t: &SandboxLoadTest| (t.creation_timestamp().map(|time| time.0), t.name_any());
    tests
        .state()
        .into_iter()
        .filter(|other| {
            other.namespace() == test.namespace()
                && other.name_any() != test.name_any()
                && other.spec.target == test.spec.target
                && other.meta().deletion_timestamp.is_none()
        })
        .filter(|other| {
            let status = other.status.clone().unwrap_or_default();
            let phase = status.phase.filter(|_| status.run == other.spec.run);
            match phase {
                Some(LoadTestPhase::Running) => true,
                Some(LoadTestPhase::Succeeded | LoadTestPhase::Failed) => false,
                Some(LoadTestPhase::Pending) | None => key(other) < key(test),
            }
        })
        .map(|other| other.name_any())
        .min()
}

/// `clusterIP:port` of a Service that has one.
fn cluster_address(service: &Service) -> Option<String> {
    let spec = service.spec.as_ref()?;
    let ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")?;
    let port = spec.ports.as_ref()?.first()?.port;
    Some(if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    })
}

/// The Job's condition of `type_` when it is true.
fn job_condition(
    job: &Job,
    type_: &str,
) -> Option<(&'static str, k8s_openapi::api::batch::v1::JobCondition)> {
    let condition = job
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|condition| condition.type_ == type_ && condition.status == "True")?;
    Some((
        if type_ == "Complete" {
            "Complete"
        } else {
            "Failed"
        },
        condition.clone(),
    ))
}

/// The load generator container's termination message, from the Job's pod.
async fn termination_message(
    ctx: &LoadTestContext,
    namespace: &str,
    job: &str,
) -> std::result::Result<Option<String>, kube::Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let list = pods
        .list(&ListParams::default().labels(&format!("batch.kubernetes.io/job-name={job}")))
        .await?;
    Ok(list.items.iter().find_map(|pod| {
        pod.status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .iter()
            .find_map(|container| {
                container
                    .state
                    .as_ref()?
                    .terminated
                    .as_ref()?
                    .message
                    .clone()
            })
    }))
}

#[cfg(test)]
mod tests {
    use kube::runtime::watcher::Event;

    use super::*;

    fn test(name: &str, created: &str, target: &str, phase: Option<&str>) -> SandboxLoadTest {
        let mut object: SandboxLoadTest = serde_json::from_value(serde_json::json!({
            "apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxLoadTest",
            "metadata": {"name": name, "namespace": "demo", "creationTimestamp": created},
            "spec": {"target": target, "steps": [{"connections": 3, "durationSeconds": 10}]},
        }))
        .unwrap();
        object.status =
            phase.map(|phase| serde_json::from_value(serde_json::json!({"phase": phase})).unwrap());
        object
    }

    fn store(tests: &[SandboxLoadTest]) -> Store<SandboxLoadTest> {
        let (store, mut writer) = kube::runtime::reflector::store();
        writer.apply_watcher_event(&Event::Init);
        for test in tests {
            writer.apply_watcher_event(&Event::InitApply(test.clone()));
        }
        writer.apply_watcher_event(&Event::InitDone);
        store
    }

    #[test]
    fn tests_of_one_target_take_turns_in_the_order_applied() {
        let (early, late) = ("2026-12-07T10:00:00Z", "2026-12-07T10:00:05Z");
        let c3 = test("seed-c3", early, "seed", None);
        let c4 = test("seed-c4", early, "seed", None);
        let other = test("other", early, "elsewhere", Some("Running"));
        let all = store(&[c3.clone(), c4.clone(), other]);
        // Created in the same second: by name. Another target's running test is no obstacle.
        assert_eq!(test_ahead(&c3, &all), None);
        assert_eq!(test_ahead(&c4, &all).as_deref(), Some("seed-c3"));
        // A running test goes first whenever it was made; a finished one never holds anyone up.
        let running = test("seed-late", late, "seed", Some("Running"));
        assert_eq!(
            test_ahead(&c3, &store(&[c3.clone(), running])).as_deref(),
            Some("seed-late")
        );
        let finished = test("seed-c0", early, "seed", Some("Succeeded"));
        assert_eq!(test_ahead(&c3, &store(&[c3.clone(), finished])), None);
    }

    #[test]
    fn the_target_address_is_its_cluster_ip_and_first_port() {
        let service = |ip: &str| -> Service {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "seed"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
            }))
            .unwrap()
        };
        assert_eq!(
            cluster_address(&service("10.96.0.10")).as_deref(),
            Some("10.96.0.10:80")
        );
        assert_eq!(
            cluster_address(&service("fd00::a")).as_deref(),
            Some("[fd00::a]:80")
        );
        assert_eq!(cluster_address(&service("None")), None);
    }
}
