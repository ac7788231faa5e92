//! The admission policy of deploy/policies, as the test bed's real API server enforces it: a
//! SandboxService with an image outside the allowed prefixes or a Service type not allowed is refused
//! with the policy's message, an allowed one is accepted, an edit of its SandboxPolicy takes effect,
//! updates that leave the spec alone pass whatever the lists say, and without its SandboxPolicy
//! the policy refuses everything.

use serde_json::json;

use crate::harness::{
    admin_client, delete_namespace, eventually, kubectl, kubectl_ok, kubectl_with_input, namespace,
};

/// Installs deploy/policies as the docs do; removes it on drop, pass or fail, since it binds
/// cluster-wide and later tests create NodePort SandboxServices.
struct InstalledPolicy;

impl InstalledPolicy {
    fn install() -> Self {
        kubectl_ok(&["apply", "--server-side", "-k", "deploy/policies"]);
        InstalledPolicy
    }
}

impl Drop for InstalledPolicy {
    fn drop(&mut self) {
        // The binding first: a binding whose SandboxPolicy is gone refuses everything until the
        // API server's informers drop it too.
        let _ = kubectl(&[
            "delete",
            "validatingadmissionpolicybinding",
            "sandboxservice-policy",
            "--ignore-not-found",
        ]);
        let _ = kubectl(&[
            "delete",
            "-k",
            "deploy/policies",
            "--ignore-not-found",
            "--wait=true",
        ]);
        // Gone once the API server admits what the policy refused (a server-side dry run goes
        // through admission and stores nothing).
        let exposed = manifest(
            "default",
            "after-the-policy",
            json!({"service": {"type": "NodePort"}}),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while kubectl_with_input(&["create", "--dry-run=server", "-f", "-"], Some(&exposed))
            .is_err()
        {
            if std::time::Instant::now() > deadline {
                eprintln!("the admission policy still applies 30 s after its removal");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

/// A SandboxService manifest named `name` in `ns` with `spec`.
fn manifest(ns: &str, name: &str, spec: serde_json::Value) -> String {
    json!({
        "apiVersion": "sandbox.perf.dev/v1alpha1", "kind": "SandboxService",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    })
    .to_string()
}

/// `kubectl create -f -` of `manifest`: Ok, or the API server's refusal.
fn create(manifest: &str) -> Result<String, String> {
    kubectl_with_input(&["create", "-f", "-"], Some(manifest))
}

#[tokio::test]
#[ignore = "needs a cluster"]
async fn the_admission_policy_refuses_foreign_images_and_service_types_with_its_message() {
    let client = admin_client().await;
    let ns = namespace(&client, "admission-policy").await;
    let _policy = InstalledPolicy::install();

    // The API server type-checks the policy's expressions against the CRD's schema.
    let policy = kubectl_ok(&[
        "get",
        "validatingadmissionpolicy",
        "sandboxservice-policy",
        "-o",
        "json",
    ]);
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(
        policy["status"]["typeChecking"]["expressionWarnings"],
        serde_json::Value::Null,
        "the API server found type errors in the policy: {:#}",
        policy["status"]
    );

    // A new binding takes effect once the API server's informers have it, and its parameter once
    // they have that too (until then the refusal is "no params found"): wait for the policy's own
    // message.
    let foreign = manifest(&ns, "foreign", json!({"image": "docker.io/evil/miner:1"}));
    let refused = std::cell::RefCell::new(String::new());
    eventually(
        "the policy refuses a foreign image with its message",
        || async {
            match create(&foreign) {
                Ok(_) => {
                    kubectl_ok(&["delete", "sbx", "foreign", "-n", &ns, "--wait=true"]);
                    false
                }
                Err(error) => {
                    let judged = error.contains("spec.image");
                    *refused.borrow_mut() = error;
                    judged
                }
            }
        },
    )
    .await;
    let refused = refused.into_inner();
    assert!(
        refused.contains("ValidatingAdmissionPolicy 'sandboxservice-policy'")
            && refused.contains(
                "spec.image docker.io/evil/miner:1 is not allowed on this cluster: it must start with one of [ghcr.io/performance-sandbox/] (SandboxPolicy default, allowedImagePrefixes)"
            ),
        "{refused}"
    );

    let node_port = manifest(&ns, "exposed", json!({"service": {"type": "NodePort"}}));
    let refused = create(&node_port).expect_err("a NodePort Service is refused");
    assert!(
        refused.contains(
            "spec.service.type NodePort is not allowed on this cluster: allowed are [ClusterIP] (SandboxPolicy default, allowedServiceTypes)"
        ),
        "{refused}"
    );

    // Allowed: the operator's default image (none set), an image under an allowed prefix.
    create(&manifest(&ns, "default-image", json!({}))).expect("no image set is allowed");
    let pinned = json!({"image": "ghcr.io/performance-sandbox/workload:0.1.0"});
    create(&manifest(&ns, "pinned", pinned)).expect("an allowed prefix is allowed");

    // Changing an accepted CR's spec is checked too.
    let patch = r#"{"spec":{"service":{"type":"LoadBalancer"}}}"#;
    let refused = kubectl(&[
        "patch",
        "sbx",
        "pinned",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        patch,
    ])
    .expect_err("a spec change to LoadBalancer is refused");
    assert!(
        refused.contains("spec.service.type LoadBalancer is not allowed"),
        "{refused}"
    );

    // A cluster admin's edit of the SandboxPolicy takes effect; its schema refuses a type that
    // does not exist.
    let set_types = |types: &str| {
        let patch = format!(r#"{{"spec":{{"allowedServiceTypes":{types}}}}}"#);
        kubectl(&[
            "patch",
            "sandboxpolicy",
            "default",
            "--type=merge",
            "-p",
            &patch,
        ])
    };
    let refused = set_types(r#"["ClusterIP","ExternalName"]"#).expect_err("no such type");
    assert!(
        refused.contains("Unsupported value: \"ExternalName\""),
        "{refused}"
    );
    set_types(r#"["ClusterIP","NodePort"]"#).unwrap();
    eventually("the edited SandboxPolicy allows NodePort", || async {
        create(&node_port).is_ok()
    })
    .await;

    // Tightened again, the NodePort CR created under the looser list can still be labelled and
    // deleted: only spec changes are judged.
    set_types(r#"["ClusterIP"]"#).unwrap();
    let second = manifest(
        &ns,
        "exposed-again",
        json!({"service": {"type": "NodePort"}}),
    );
    eventually("the tightened parameter refuses NodePort again", || async {
        create(&second).is_err()
    })
    .await;
    kubectl_ok(&["label", "sbx", "exposed", "-n", &ns, "team=demo"]);
    kubectl_ok(&["delete", "sbx", "exposed", "-n", &ns, "--wait=true"]);

    // Without its SandboxPolicy the policy fails closed.
    kubectl_ok(&["delete", "sandboxpolicy", "default"]);
    let unconfigured = manifest(&ns, "unconfigured", json!({}));
    eventually("a missing parameter refuses every create", || async {
        create(&unconfigured).is_err()
    })
    .await;
    let refused = create(&unconfigured).unwrap_err();
    assert!(refused.contains("no params found"), "{refused}");
    delete_namespace(&client, &ns).await;
}
