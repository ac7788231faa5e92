//! End-to-end against a real, disposable cluster (kind, k3d, minikube). Ignored by default;
//! runs only when `KUBECONFIG` is set:
//!
//! ```sh
//! kind create cluster --name sandbox
//! KUBECONFIG=$HOME/.kube/config cargo test -p operator --test e2e -- --ignored --nocapture
//! ```
//!
//! It installs the CRD (server-side apply), runs the controller in this process, applies a
//! `SandboxService` in a fresh namespace, waits for the Deployment, Service and HPA (and the
//! ServiceMonitor, or the `ServiceMonitorCrdMissing` condition when the Prometheus Operator CRDs
//! are absent), deletes the Service to check it is repaired, and deletes the namespace. The CRD
//! is left installed.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Resource, ResourceExt};
use operator::admin::AdminState;
use operator::apply::FIELD_MANAGER;
use operator::build::ServiceMonitor;
use operator::controller::{self, Context};
use operator::crd::{self, SandboxService};
use operator::metrics::Metrics;
use tokio::sync::watch;

const TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
#[ignore = "needs a disposable cluster: KUBECONFIG=... cargo test -p operator --test e2e -- --ignored"]
async fn sandbox_service_gets_its_children_in_a_real_cluster() {
    // Asked for explicitly (--ignored) but without a cluster: say so loudly rather than pass.
    assert!(
        std::env::var_os("KUBECONFIG").is_some(),
        "KUBECONFIG is not set: this test needs a disposable cluster (kind or k3d)"
    );
    let client = Client::try_default()
        .await
        .expect("cluster from KUBECONFIG");
    install_crd(&client).await;

    let namespace = format!("sbx-e2e-{}", std::process::id());
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            &namespace,
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Apply(serde_json::json!({
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}
            })),
        )
        .await
        .expect("create the test namespace");

    let (stop_tx, stop) = watch::channel(false);
    let own_service_monitors = controller::service_monitor_crd_installed(&client).await;
    let ctx = Arc::new(Context::new(
        client.clone(),
        Metrics::new(),
        Some("e2e".into()),
    ));
    let controller = tokio::spawn(controller::run(
        ctx,
        own_service_monitors,
        AdminState::new(Metrics::new()),
        async move {
            let mut stop = stop;
            let _ = stop.wait_for(|s| *s).await;
        },
    ));

    let outcome = tokio::time::timeout(
        TIMEOUT,
        exercise(client.clone(), &namespace, own_service_monitors),
    )
    .await;

    let _ = stop_tx.send(true);
    let _ = controller.await;
    namespaces
        .delete(&namespace, &DeleteParams::background())
        .await
        .expect("delete the test namespace");
    outcome.expect("children appeared within the timeout");
}

async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crd::crd();
    let name = crd.name_any();
    crds.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("apply the CRD");
    tokio::time::timeout(
        Duration::from_secs(30),
        await_condition(crds, &name, conditions::is_crd_established()),
    )
    .await
    .expect("CRD established in time")
    .expect("watching the CRD");
}

async fn exercise(client: Client, namespace: &str, service_monitor_crd: bool) {
    let crs: Api<SandboxService> = Api::namespaced(client.clone(), namespace);
    let cr: SandboxService = serde_yaml::from_str(
        "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {name: e2e}\nspec: {concurrency: 2, autoscaling: {maxReplicas: 3}}",
    )
    .unwrap();
    crs.patch("e2e", &PatchParams::apply("e2e-test"), &Patch::Apply(&cr))
        .await
        .expect("apply the SandboxService (CRD schema and CEL rules accept it)");
    let uid = crs.get("e2e").await.unwrap().uid().unwrap();

    let deployment: Deployment = wait_for(&client, namespace, "e2e").await;
    assert_eq!(deployment.owner_references()[0].uid, uid);
    let service: Service = wait_for(&client, namespace, "e2e").await;
    let _: HorizontalPodAutoscaler = wait_for(&client, namespace, "e2e").await;
    if service_monitor_crd {
        let _: ServiceMonitor = wait_for(&client, namespace, "e2e").await;
    }

    // Status: observed generation, and the ServiceMonitor condition if its CRD is absent.
    loop {
        let status = crs.get("e2e").await.unwrap().status.unwrap_or_default();
        let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded");
        let expected_reason = if service_monitor_crd {
            "AsExpected"
        } else {
            "ServiceMonitorCrdMissing"
        };
        if status.observed_generation == Some(1)
            && degraded.is_some_and(|c| c.reason == expected_reason)
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // Drift: a deleted child comes back through the owned-object watch.
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    services
        .delete("e2e", &DeleteParams::default())
        .await
        .unwrap();
    loop {
        if let Some(recreated) = services.get_opt("e2e").await.unwrap()
            && recreated.uid() != service.uid()
        {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    // The CRD's CEL rule refuses minReplicas > maxReplicas at admission.
    let invalid = serde_json::json!({
        "apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxService",
        "metadata": {"name": "invalid"},
        "spec": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}
    });
    let refused = crs
        .patch(
            "invalid",
            &PatchParams::apply("e2e-test"),
            &Patch::Apply(&invalid),
        )
        .await
        .expect_err("the API server rejects minReplicas > maxReplicas");
    assert!(refused.to_string().contains("maxReplicas"), "{refused}");
}

async fn wait_for<K>(client: &Client, namespace: &str, name: &str) -> K
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    loop {
        if let Some(object) = api.get_opt(name).await.expect("reading a child") {
            return object;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
