//! SandboxLoadTests on the real node: the load generator's image in a Job, behind the real
//! kube-proxy, judged by the operator. The seed's table as `deploy/examples/load-tests/` has it,
//! each row's verdict the seed's expectation (and each row failing, naming its threshold, when the
//! expectation is wrong); a step load's scale-out and its 200s against the pods' own counters; bad
//! input refused by the API server or failed with a message, nothing left running.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Value, json};

use super::relief::{completed_over, look};
use super::{OnTheNode, install_operator, ready_pods};
use crate::harness::{
    admin_client, apply, delete_namespace, eventually, namespace, repo_file,
    wait_no_namespace_terminating, wait_until_within,
};
use crate::load::seed_sample;
use operator::api::SandboxService;
use operator::loadtest::SandboxLoadTest;
use operator::loadtest::crd::LoadTestPhase;

/// The documents of a file of `deploy/examples/load-tests/`, moved to namespace `ns`.
fn example(file: &str, ns: &str) -> Vec<Value> {
    let text =
        std::fs::read_to_string(repo_file(&format!("deploy/examples/load-tests/{file}"))).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let mut object: Value = serde::Deserialize::deserialize(document).unwrap();
            object["metadata"]["namespace"] = json!(ns);
            object
        })
        .collect()
}

/// Wait until every load test named in `names` has finished, for at most `limit`.
async fn finished(
    tests: &Api<SandboxLoadTest>,
    names: &[String],
    limit: Duration,
) -> Vec<SandboxLoadTest> {
    wait_until_within(limit, &format!("load tests {names:?} finished"), || async {
        let mut done = Vec::new();
        for name in names {
            let test = tests.get(name).await.unwrap();
            let phase = test.status.as_ref().and_then(|status| status.phase);
            if !phase.is_some_and(LoadTestPhase::is_finished) {
                return None;
            }
            done.push(test);
        }
        Some(done)
    })
    .await
}

/// The `Passed` condition's status and reason.
fn verdict(test: &SandboxLoadTest) -> (String, String) {
    let status = test.status.as_ref().unwrap();
    let passed = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Passed")
        .expect("a Passed condition");
    (passed.status.clone(), passed.reason.clone())
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn the_seed_table_as_load_tests_passes_and_each_wrong_expectation_fails_naming_it() {
    let client = admin_client().await;
    install_operator();
    super::super::install_service_monitor_crd();
    wait_no_namespace_terminating(&client).await;
    let ns = namespace(&client, "node-load-tests").await;
    let documents = example("seed-table.yaml", &ns);
    let (sandbox, rows) = documents.split_first().unwrap();
    apply(
        &Api::<SandboxService>::namespaced(client.clone(), &ns),
        sandbox.clone(),
    )
    .await
    .unwrap();
    let tests: Api<SandboxLoadTest> = Api::namespaced(client.clone(), &ns);
    // Applied before the sandbox is Ready, as `kubectl apply -f` of the file does: they wait.
    let started = Instant::now();
    for row in rows {
        apply(&tests, row.clone()).await.unwrap();
    }
    let names: Vec<String> = rows
        .iter()
        .map(|row| row["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let done = finished(&tests, &names, Duration::from_secs(240)).await;
    eprintln!(
        "the seed table as 4 load tests: {:.0} s from apply",
        started.elapsed().as_secs_f64()
    );
    let mut windows = Vec::new();
    for test in &done {
        let status = test.status.as_ref().unwrap();
        let total = status.total.as_ref().expect("a total");
        eprintln!(
            "{}: {:?} {:?}; 200s {} ({}/s), 503s {} ({} %), refused {}, p99 {:?} ms, peak {:?}",
            test.metadata.name.as_deref().unwrap(),
            status.phase,
            verdict(test),
            total.ok,
            total.ok_per_second,
            total.service_unavailable,
            total.service_unavailable_percent,
            total.refused,
            total.ok_latency_ms.as_ref().map(|l| l.p99),
            status.peak_replicas
        );
        assert_eq!(status.phase, Some(LoadTestPhase::Succeeded), "{status:?}");
        assert_eq!(
            verdict(test),
            ("True".into(), "ThresholdsMet".into()),
            "{status:?}"
        );
        assert!(total.ok >= 3, "{status:?}");
        assert_eq!(
            (total.timeouts, total.resets, total.errors),
            (0, 0, 0),
            "{status:?}"
        );
        assert_eq!(status.peak_replicas, Some(1));
        windows.push((
            status.start_time.clone().unwrap().0,
            status.completion_time.clone().unwrap().0,
        ));
    }
    // One at a time, in the order applied.
    for pair in windows.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "runs overlapped: {windows:?}");
    }

    // Each row's expectation turned wrong, in 4 s runs: each fails naming that threshold.
    let wrong = [
        (
            "seed-c3",
            json!({"minServiceUnavailablePercent": 50}),
            "MinServiceUnavailablePercent",
        ),
        ("seed-c4", json!({"maxP99Ms": 1000}), "MaxP99"),
        ("seed-c5", json!({"minOkPerSecond": 5}), "MinOkPerSecond"),
        (
            "seed-c6",
            json!({"maxServiceUnavailablePercent": 0}),
            "MaxServiceUnavailablePercent",
        ),
    ];
    let mut wrong_names = Vec::new();
    for (row, thresholds, _) in &wrong {
        let mut test = rows
            .iter()
            .find(|r| r["metadata"]["name"] == *row)
            .unwrap()
            .clone();
        let name = format!("{row}-wrong");
        test["metadata"]["name"] = json!(name);
        test["spec"]["steps"][0]["durationSeconds"] = json!(4);
        test["spec"]["thresholds"] = thresholds.clone();
        apply(&tests, test).await.unwrap();
        wrong_names.push(name);
    }
    let done = finished(&tests, &wrong_names, Duration::from_secs(180)).await;
    for (test, (_, _, reason)) in done.iter().zip(&wrong) {
        let status = test.status.as_ref().unwrap();
        assert_eq!(status.phase, Some(LoadTestPhase::Succeeded), "{status:?}");
        assert_eq!(
            verdict(test),
            ("False".into(), reason.to_string()),
            "{status:?}"
        );
        eprintln!(
            "{}: {}",
            test.metadata.name.as_deref().unwrap(),
            status.conditions[0].message
        );
    }

    // A finished test edited does not run again; a new `run` does.
    let first = done[0].status.clone().unwrap();
    let name = &wrong_names[0];
    apply(&tests, json!({"apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxLoadTest",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"target": "seed-table", "steps": [{"connections": 3, "durationSeconds": 4}], "timeoutSeconds": 60,
                 "thresholds": {"maxServiceUnavailablePercent": 0}}}))
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        tests.get(name).await.unwrap().status.unwrap().job,
        first.job,
        "an edit reran it"
    );
    apply(&tests, json!({"apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxLoadTest",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"target": "seed-table", "steps": [{"connections": 3, "durationSeconds": 4}], "timeoutSeconds": 60,
                 "thresholds": {"maxServiceUnavailablePercent": 0}, "run": "2"}}))
    .await
    .unwrap();
    let rerun = &wait_until_within(Duration::from_secs(60), "the rerun finished", || async {
        let test = tests.get(name).await.unwrap();
        let status = test.status.as_ref()?;
        (status.run.as_deref() == Some("2") && status.phase.is_some_and(LoadTestPhase::is_finished))
            .then_some(test)
    })
    .await;
    let status = rerun.status.as_ref().unwrap();
    assert_ne!(status.job, first.job);
    assert_eq!(status.run.as_deref(), Some("2"));
    assert_eq!(
        verdict(rerun),
        ("True".into(), "ThresholdsMet".into()),
        "{status:?}"
    );

    // Each run's Job: one pod that ran as the restricted standard wants, owned by its test.
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), names.len() + wrong_names.len() + 1);
    for job in &jobs.items {
        let owner = &job.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("SandboxLoadTest", Some(true))
        );
    }
    // Deleting a test deletes its Jobs and their pods.
    tests
        .delete(name, &DeleteParams::foreground())
        .await
        .unwrap();
    let job_pods = format!("app.kubernetes.io/instance={name},app.kubernetes.io/name=loadgen");
    eventually("the deleted test's Jobs and pods are gone", || async {
        let pods = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&job_pods))
            .await
            .unwrap();
        let jobs = Api::<Job>::namespaced(client.clone(), &ns)
            .list(&ListParams::default().labels(&job_pods))
            .await
            .unwrap();
        pods.items.is_empty() && jobs.items.is_empty()
    })
    .await;
    delete_namespace(&client, &ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn a_step_load_reports_its_scale_out_and_its_200s_are_the_pods_own() {
    let run = OnTheNode::start("node-step-load", |ns| seed_sample(ns, json!({})), 1).await;
    let OnTheNode {
        client,
        ns,
        selector,
        ..
    } = &run;
    let tests: Api<SandboxLoadTest> = Api::namespaced(client.clone(), ns);
    let mut test = example("step-load.yaml", ns).remove(0);
    // The example's load, shorter: the test bed's HPA scales out within a minute.
    test["spec"]["steps"] = json!([{"connections": 3, "durationSeconds": 10}, {"connections": 6, "durationSeconds": 45}]);
    let name = test["metadata"]["name"].as_str().unwrap().to_string();
    apply(&tests, test).await.unwrap();
    // The pods' own counters from the Job's start to its end, sampled every second.
    wait_until_within(Duration::from_secs(60), "the load test running", || async {
        let status = tests.get(&name).await.unwrap().status?;
        (status.phase == Some(LoadTestPhase::Running)).then_some(())
    })
    .await;
    let mut rounds = vec![look(client, ns, selector).await];
    let outcome = loop {
        let test = tests.get(&name).await.unwrap();
        if test
            .status
            .as_ref()
            .and_then(|s| s.phase)
            .is_some_and(LoadTestPhase::is_finished)
        {
            break test;
        }
        rounds.push(look(client, ns, selector).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    rounds.push(look(client, ns, selector).await);
    let status = outcome.status.as_ref().unwrap();
    let total = status.total.as_ref().expect("a total");
    let served = completed_over(&rounds.iter().collect::<Vec<_>>());
    eprintln!(
        "step load: {:?}; 200s {} (the pods completed {served}), 503s {}, refused {}, peak {:?}; steps {:?}; scale events {:?}",
        verdict(&outcome),
        total.ok,
        total.service_unavailable,
        total.refused,
        status.peak_replicas,
        status
            .steps
            .iter()
            .map(|s| (s.connections, s.ok, s.service_unavailable, s.ok_per_second))
            .collect::<Vec<_>>(),
        status.scale_events
    );
    assert_eq!(status.phase, Some(LoadTestPhase::Succeeded), "{status:?}");
    // A scale-out the HPA decided before any pod went over its readiness limit has no reaction to
    // time (no backpressure came first); at least one of the run's must have one.
    assert!(
        status
            .scale_events
            .iter()
            .any(|e| e.is_scale_out() && e.reaction_seconds.is_some()),
        "no timed scale-out during the run: {:?}",
        status.scale_events
    );
    assert!(status.peak_replicas.unwrap() > 1, "{status:?}");
    assert!(
        (total.ok as f64 - served).abs() <= 0.05 * served,
        "{} 200s counted by the load test, {served} completed by the pods",
        total.ok
    );
    assert_eq!(verdict(&outcome).0, "True", "{status:?}");
    assert!(ready_pods(client, ns, selector).await.len() > 1);
    delete_namespace(client, ns).await;
}

#[tokio::test]
#[ignore = "needs the test bed's real node"]
async fn bad_load_tests_are_refused_or_failed_with_a_message_and_run_nothing() {
    let client = admin_client().await;
    install_operator();
    wait_no_namespace_terminating(&client).await;
    let ns = namespace(&client, "node-bad-load-tests").await;
    let tests: Api<SandboxLoadTest> = Api::namespaced(client.clone(), &ns);
    let test = |name: &str, spec: Value| {
        json!({"apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxLoadTest",
               "metadata": {"name": name, "namespace": ns}, "spec": spec})
    };
    // The API server refuses what the schema and its rules can tell.
    for (spec, says) in [
        (
            json!({"target": "seed", "steps": [{"connections": 0, "durationSeconds": 5}]}),
            "connections",
        ),
        (
            json!({"target": "other/seed", "steps": [{"connections": 1, "durationSeconds": 5}]}),
            "target",
        ),
        (
            json!({"target": "seed", "steps": [{"connections": 1, "durationSeconds": 3000}, {"connections": 1, "durationSeconds": 601}]}),
            "at most 3600 s together",
        ),
        (json!({"target": "seed", "steps": []}), "steps"),
    ] {
        let error = apply(&tests, test("refused", spec.clone()))
            .await
            .expect_err(&format!("{spec} refused"));
        assert!(error.to_string().contains(says), "{spec}: {error}");
    }
    // A target that does not exist: Failed at once, with a message naming it.
    apply(
        &tests,
        test(
            "no-target",
            json!({"target": "absent", "steps": [{"connections": 1, "durationSeconds": 5}]}),
        ),
    )
    .await
    .unwrap();
    let failed = &finished(&tests, &["no-target".to_string()], Duration::from_secs(30)).await[0];
    let status = failed.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(LoadTestPhase::Failed));
    assert!(
        status
            .message
            .as_deref()
            .unwrap()
            .contains("no SandboxService \"absent\""),
        "{status:?}"
    );
    assert_eq!(verdict(failed), ("False".into(), "RunFailed".into()));
    let jobs = Api::<Job>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "a Job ran for a failed test");
    tests
        .delete("no-target", &DeleteParams::default())
        .await
        .unwrap();
    delete_namespace(&client, &ns).await;
}
