//! kube-runtime's `Controller` for load tests: the load tests over the operator's watch scope,
//! and the Jobs it made (by the `managed-by` label), whose end starts the reconcile that reads
//! the outcome.

use std::future::Future;
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector;
use kube::runtime::watcher;
use tracing::{debug, info, warn};

use super::controller::cached_watch;
use super::scoped_watch::{WatchScope, scoped_watcher};
use super::watch_backoff::NoWait;
use crate::loadtest::reconcile::{LoadTestContext, error_policy, reconcile};

/// Run the load tests' controller until `shutdown`, then let running reconciles finish.
pub async fn run(
    client: Client,
    scope: &WatchScope,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let (tests, tests_writer) = reflector::store();
    let test_events = scoped_watcher(
        scope,
        &client,
        &watcher::Config::default().any_semantic(),
        |_| {},
        &tests,
    )
    .reflect(tests_writer)
    .applied_objects();
    // The Jobs are watched as the SandboxServices' children are (by the managed-by label); their
    // cache is not read, only their changes start reconciles.
    let (_jobs, job_events) = cached_watch::<Job>(scope, &client, |_| {});
    let job_events = job_events.applied_objects();
    let ctx = Arc::new(LoadTestContext {
        client,
        tests: tests.clone(),
    });
    info!("watching SandboxLoadTests");
    Controller::for_stream(test_events, tests)
        .with_config(controller::Config::default().concurrency(4))
        .trigger_backoff(NoWait)
        .owns_stream(job_events)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((test, _)) => debug!(name = %test.name, "load test reconciled"),
                Err(controller::Error::ReconcilerFailed(..)) => {}
                // A missing CRD or RBAC: the watcher retries with backoff.
                Err(error) => warn!(%error, "load test controller watch error"),
            }
        })
        .await;
    info!("load test controller stopped");
}
