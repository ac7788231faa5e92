//! Namespaced mode on the real API server: with only namespaced mode's grants (a Role in each
//! watched namespace, cluster-wide nothing but reads and reviews), `operator run --namespace A
//! --namespace B` reconciles the SandboxServices there and leaves every other namespace alone.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use operator::api::SandboxService;
use operator::manifests::rbac::{SERVICE_ACCOUNT, namespaced_rbac_yaml};
use serde_json::json;

use crate::harness::{
    MetricsServer, Operator, admin_client, apply, can_i, cluster, delete_namespace, kubectl_ok,
    kubectl_with_input, namespace, wait_for,
};
use crate::sandbox;

const OPERATOR: &str = "system:serviceaccount:sandbox-system:sandbox-operator";

/// While alive, the operator's ServiceAccount has namespaced mode's grants for some namespaces in
/// place of the shipped ClusterRoleBinding; dropped, the shipped binding is back.
struct NamespacedGrants {
    rbac: String,
}

impl NamespacedGrants {
    fn for_namespaces(namespaces: &[&str]) -> Self {
        let rbac = namespaced_rbac_yaml(namespaces);
        kubectl_with_input(&["apply", "--server-side", "-f", "-"], Some(&rbac))
            .expect("apply namespaced mode's grants");
        kubectl_ok(&["delete", "clusterrolebinding", SERVICE_ACCOUNT]);
        // The authorizer sees the change a moment later.
        wait_until_can("create", "deployments", &["--all-namespaces"], false);
        for namespace in namespaces {
            wait_until_can("create", "deployments", &["-n", namespace], true);
        }
        Self { rbac }
    }
}

impl Drop for NamespacedGrants {
    fn drop(&mut self) {
        let _ = kubectl_with_input(
            &["delete", "--ignore-not-found", "-f", "-"],
            Some(&self.rbac),
        );
        let _ = crate::harness::install();
    }
}

/// Whether the operator may `verb` `resource` in `scope` (see [`can_i`]).
fn can(verb: &str, resource: &str, scope: &[&str]) -> bool {
    can_i(OPERATOR, verb, resource, scope)
}

fn wait_until_can(verb: &str, resource: &str, scope: &[&str], wanted: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while can(verb, resource, scope) != wanted {
        assert!(
            std::time::Instant::now() < deadline,
            "can-i {verb} {resource} {scope:?} never became {wanted}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes the operator may make in `namespace` (`kubectl auth can-i --list`), other than the
/// reviews that store nothing.
fn writes_in(namespace: &str) -> Vec<String> {
    let listed = kubectl_ok(&["auth", "can-i", "--list", "-n", namespace, "--as", OPERATOR]);
    let stores_nothing = [
        "tokenreviews.authentication.k8s.io",
        "subjectaccessreviews.authorization.k8s.io",
        "selfsubjectaccessreviews.authorization.k8s.io",
        "selfsubjectrulesreviews.authorization.k8s.io",
        "selfsubjectreviews.authentication.k8s.io",
    ];
    listed
        .lines()
        .skip(1)
        .filter(|line| {
            // Columns: resources, non-resource URLs, resource names, [verbs] last.
            let verbs = line
                .rsplit_once('[')
                .map_or("", |(_, verbs)| verbs.trim_end_matches(']'));
            let writes = verbs.split_whitespace().any(|verb| {
                [
                    "create",
                    "update",
                    "patch",
                    "delete",
                    "deletecollection",
                    "*",
                ]
                .contains(&verb)
            });
            let resource = line.split_whitespace().next().unwrap_or_default();
            writes && !line.starts_with(' ') && !stores_nothing.contains(&resource)
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn in_namespaced_mode_the_operator_reconciles_its_namespaces_only_with_no_cluster_wide_write()
{
    cluster();
    let client = admin_client().await;
    let watched = [
        namespace(&client, "namespaced-watched-a").await,
        namespace(&client, "namespaced-watched-b").await,
    ];
    let other = namespace(&client, "namespaced-other").await;
    let grants = NamespacedGrants::for_namespaces(&[&watched[0], &watched[1]]);

    // Cluster-wide, and in a namespace it does not watch, it may write nothing; in its own, its
    // children and Events. Its Lease it may renew in its own namespace only.
    assert_eq!(writes_in(&other), Vec::<String>::new());
    for ns in &watched {
        assert!(can("create", "deployments", &["-n", ns]));
        assert!(can(
            "patch",
            "sandboxservices.sandbox.perf.dev/status",
            &["-n", ns]
        ));
    }
    assert!(!can("create", "deployments", &["--all-namespaces"]));
    assert!(!can(
        "patch",
        "sandboxservices.sandbox.perf.dev/status",
        &["-n", &other]
    ));

    let operator = Operator::start_with_args(
        "e2e-namespaced",
        "namespaced-a",
        &["--namespace", &watched[0], "--namespace", &watched[1]],
    );
    operator.wait_leading(&client).await;
    for ns in watched.iter().chain([&other]) {
        let crs: Api<SandboxService> = Api::namespaced(client.clone(), ns);
        apply(&crs, sandbox("scoped", json!({})))
            .await
            .expect("apply the CR");
    }
    // Both watched namespaces, through one cache of each kind.
    for ns in &watched {
        wait_for::<Deployment>(&client, ns, "scoped").await;
    }
    // Its metrics: reconciles of the watched CRs only, and time for the other to have had one.
    operator.wait_idle(Duration::from_secs(3)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &other);
    assert!(
        deployments.get_opt("scoped").await.unwrap().is_none(),
        "the operator reconciled a SandboxService outside its namespaces"
    );
    let unwatched: Api<SandboxService> = Api::namespaced(client.clone(), &other);
    let status = unwatched.get("scoped").await.unwrap().status;
    assert!(
        status.is_none(),
        "status written outside its namespaces: {status:?}"
    );
    // A deleted child in the second namespace is repaired: its cache sees the deletion.
    let second: Api<Deployment> = Api::namespaced(client.clone(), &watched[1]);
    crate::harness::delete_and_see_recreated(&second, "scoped").await;

    // `stop` fails the test on any 403 in its log: the grants were enough.
    operator.stop();
    drop(grants);
    for ns in watched.iter().chain([&other]) {
        delete_namespace(&client, ns).await;
    }
}
