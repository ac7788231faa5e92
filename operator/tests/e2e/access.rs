//! Who may use SandboxServices, as the API server's own RBAC decides: the install's aggregated
//! ClusterRoles give a namespace's `view`, `edit` and `admin` users SandboxServices there and
//! nowhere else, and nobody but the operator writes their status.

use crate::harness::{
    admin_client, can_i, cluster, delete_namespace, eventually, kubectl, namespace,
};

const SBX: &str = "sandboxservices.sandbox.perf.dev";

/// Whether `user` may `verb` `resource` in namespace `ns` (see [`can_i`]).
fn can(user: &str, verb: &str, resource: &str, ns: &str) -> bool {
    can_i(user, verb, resource, &["-n", ns])
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn a_namespaces_view_edit_and_admin_users_get_sandbox_services_there_only() {
    cluster();
    let client = admin_client().await;
    let ns = namespace(&client, "user-roles").await;
    for (user, role) in [("viewer", "view"), ("editor", "edit"), ("owner", "admin")] {
        let binding = format!("--clusterrole={role}");
        let subject = format!("--user={user}");
        kubectl(&["create", "rolebinding", user, &binding, &subject, "-n", &ns]).unwrap();
    }
    // The ClusterRole aggregation controller copies the rules into the built-in roles.
    eventually("edit includes SandboxServices", || async {
        can("editor", "create", SBX, &ns)
    })
    .await;

    let (sbx, status) = (SBX, format!("{SBX}/status"));
    for user in ["editor", "owner"] {
        for verb in ["get", "list", "watch", "create", "patch", "delete"] {
            assert!(
                can(user, verb, sbx, &ns),
                "{user} may {verb} SandboxServices"
            );
        }
        assert!(
            !can(user, "patch", &status, &ns),
            "{user} may not write the status"
        );
    }
    for verb in ["get", "list", "watch"] {
        assert!(can("viewer", verb, sbx, &ns), "viewer may {verb}");
        assert!(
            can("viewer", verb, &status, &ns),
            "viewer may {verb} the status"
        );
    }
    for verb in ["create", "patch", "delete"] {
        assert!(!can("viewer", verb, sbx, &ns), "viewer may not {verb}");
    }
    // Bound in one namespace: nothing in another.
    assert!(!can("editor", "get", sbx, "default"));

    // As a user does it: an editor applies the seed's sample, a viewer reads it, an admin deletes it.
    let seed = std::fs::read_to_string(crate::harness::repo_file("deploy/examples/seed.yaml"))
        .unwrap()
        .replace("namespace: default", &format!("namespace: {ns}"));
    crate::harness::kubectl_with_input(&["apply", "--as=editor", "-f", "-"], Some(&seed))
        .expect("an editor creates a SandboxService");
    let sbx_name = "sandboxservice/performance-sandbox";
    kubectl(&["get", sbx_name, "-n", &ns, "--as=viewer"]).expect("a viewer reads it");
    let refused = kubectl(&["delete", sbx_name, "-n", &ns, "--as=viewer"])
        .expect_err("a viewer may not delete it");
    assert!(refused.contains("forbidden"), "{refused}");
    kubectl(&["delete", sbx_name, "-n", &ns, "--as=owner"]).expect("an admin deletes it");
    delete_namespace(&client, &ns).await;
}
