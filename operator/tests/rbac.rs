//! The install in `deploy/operator` (built with `kubectl kustomize`, as `kubectl apply -k` builds it)
//! grants the operator's ServiceAccount exactly what `operator::manifests::rbac::MANAGED_RESOURCES` lists: no
//! wildcard, no verb missing, none extra. The Deployment runs that ServiceAccount, the image of this
//! version and its probes on the admin port. `kubectl` is required: a missing one fails the test.
//! The RBAC file in `deploy/operator` is what `operator rbac` prints.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use operator::api::crd::DEFAULT_IMAGE;
use operator::manifests::rbac::{
    EDIT_ROLE, EXAMPLE_WATCHED_NAMESPACE, MANAGED_RESOURCES, METRICS_READER_ROLE, ManagedResource,
    SERVICE_ACCOUNT, VIEW_ROLE, namespaced_mode, rbac_yaml,
};
use operator::names::LEASE_NAME;
use serde::Deserialize;
use serde_json::{Value, json};

/// `(apiGroup, resource, resourceNames)` → verbs; no names means every object.
type Grants = BTreeMap<(String, String, Vec<String>), BTreeSet<String>>;

/// A directory of the repository, from its root.
fn repo_dir(dir: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(dir)
}

/// The objects `kubectl apply -k deploy/operator` would apply.
fn built_install() -> Vec<Value> {
    kustomized("deploy/operator")
}

/// The objects `kubectl apply -k DIR` would apply.
fn kustomized(dir: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_dir(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `kubectl kustomize` failed ({e}): install kubectl \
                 (https://kubernetes.io/docs/tasks/tools/; scripts/install-test-deps.sh lists the test tools)"
            )
        });
    assert!(
        output.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = find(objects, kind);
    assert_eq!(found.len(), 1, "expected one {kind} in deploy/operator");
    found[0]
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The verbs each role grants to the operator's ServiceAccount, from the (Cluster)Roles its
/// (Cluster)RoleBindings name. Also reports wildcards and bindings to a role that is not there.
fn granted(
    objects: &[Value],
    namespace: &str,
    account: &str,
    problems: &mut Vec<String>,
) -> Grants {
    let mut grants = Grants::new();
    for binding_kind in ["ClusterRoleBinding", "RoleBinding"] {
        for binding in find(objects, binding_kind) {
            let binds_operator = binding["subjects"].as_array().is_some_and(|subjects| {
                subjects.iter().any(|s| {
                    s["kind"] == "ServiceAccount"
                        && s["name"] == account
                        && s["namespace"] == namespace
                })
            });
            if !binds_operator {
                continue;
            }
            let role_kind = binding["roleRef"]["kind"].as_str().unwrap_or_default();
            let role_name = &binding["roleRef"]["name"];
            let Some(role) = find(objects, role_kind)
                .into_iter()
                .find(|r| &r["metadata"]["name"] == role_name)
            else {
                problems.push(format!(
                    "{binding_kind} binds {role_kind} {role_name}, which is not installed"
                ));
                continue;
            };
            if role_kind == "Role" && role["metadata"]["namespace"] != namespace {
                problems.push(format!(
                    "Role {role_name} is not in the operator's namespace {namespace}"
                ));
            }
            for rule in role["rules"].as_array().into_iter().flatten() {
                let (groups, resources, verbs, names) = (
                    strings(&rule["apiGroups"]),
                    strings(&rule["resources"]),
                    strings(&rule["verbs"]),
                    strings(&rule["resourceNames"]),
                );
                if [&groups, &resources, &verbs]
                    .iter()
                    .any(|l| l.iter().any(|s| s.contains('*')))
                {
                    problems.push(format!("{role_kind} {role_name} has a wildcard: {rule}"));
                }
                for group in &groups {
                    for resource in &resources {
                        grants
                            .entry((group.clone(), resource.clone(), names.clone()))
                            .or_default()
                            .extend(verbs.iter().cloned());
                    }
                }
            }
        }
    }
    grants
}

/// Every difference between what is granted and what the operator needs.
fn compare(grants: &Grants, needed: &[ManagedResource], problems: &mut Vec<String>) {
    let mut needed_by_key = Grants::new();
    for need in needed {
        needed_by_key
            .entry((
                need.api_group.to_string(),
                need.resource.to_string(),
                need.resource_names.iter().map(|n| n.to_string()).collect(),
            ))
            .or_default()
            .extend(need.verbs.iter().map(|v| v.to_string()));
    }
    for (key, verbs) in &needed_by_key {
        let have = grants.get(key).cloned().unwrap_or_default();
        let missing: Vec<_> = verbs.difference(&have).collect();
        if !missing.is_empty() {
            problems.push(format!("{key:?} lacks {missing:?}"));
        }
    }
    for (key, verbs) in grants {
        let need = needed_by_key.get(key).cloned().unwrap_or_default();
        let extra: Vec<_> = verbs.difference(&need).collect();
        if !extra.is_empty() {
            problems.push(format!(
                "{key:?} grants {extra:?}, which the operator does not use"
            ));
        }
    }
}

/// Everything wrong with the RBAC of `objects` for the operator's ServiceAccount.
fn rbac_problems(objects: &[Value]) -> Vec<String> {
    let deployment = one(objects, "Deployment");
    let namespace = deployment["metadata"]["namespace"].as_str().unwrap();
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .expect("the operator Deployment names its ServiceAccount");
    let mut problems = Vec::new();
    let service_account_installed = find(objects, "ServiceAccount")
        .iter()
        .any(|sa| sa["metadata"]["name"] == account && sa["metadata"]["namespace"] == namespace);
    if !service_account_installed {
        problems.push(format!(
            "ServiceAccount {namespace}/{account} is not installed"
        ));
    }
    let grants = granted(objects, namespace, account, &mut problems);
    compare(&grants, MANAGED_RESOURCES, &mut problems);
    problems
}

#[test]
fn install_grants_exactly_the_verbs_the_operator_uses() {
    let objects = built_install();
    assert_eq!(rbac_problems(&objects), Vec::<String>::new());
    // The Lease is the only namespaced grant; everything else is needed in every namespace.
    let cluster_roles: Vec<&Value> = find(&objects, "ClusterRole")
        .into_iter()
        .map(|role| &role["metadata"]["name"])
        .collect();
    // kustomize sorts them by name.
    assert_eq!(
        cluster_roles,
        [EDIT_ROLE, VIEW_ROLE, SERVICE_ACCOUNT, METRICS_READER_ROLE]
    );
    let role = one(&objects, "Role");
    assert_eq!(role["rules"][0]["resources"], json!(["leases"]));
}

#[test]
fn committed_rbac_is_what_operator_rbac_prints() {
    let printed = Command::new(env!("CARGO_BIN_EXE_operator"))
        .arg("rbac")
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert_eq!(printed, rbac_yaml());
    let file = repo_dir("deploy/operator/rbac.yaml");
    let committed = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    assert!(
        committed == printed,
        "deploy/operator/rbac.yaml is stale: run \
         `cargo run -q -p operator -- rbac > deploy/operator/rbac.yaml`"
    );
}

#[test]
fn a_wildcard_a_missing_or_an_extra_verb_is_reported() {
    // Guards the test above: the comparison really fails on each kind of mistake.
    let objects = built_install();
    let edit = |change: &dyn Fn(&mut Value)| {
        let mut changed = objects.clone();
        let role = changed
            .iter_mut()
            .find(|o| o["kind"] == "ClusterRole" && o["metadata"]["name"] == SERVICE_ACCOUNT)
            .unwrap();
        change(role);
        rbac_problems(&changed)
    };
    let wildcard = edit(&|role| role["rules"][0]["verbs"] = json!(["*"]));
    assert!(
        wildcard.iter().any(|p| p.contains("wildcard")),
        "{wildcard:?}"
    );
    let missing = edit(&|role| {
        let rules = role["rules"].as_array_mut().unwrap();
        rules.retain(|r| r["resources"] != json!(["deployments"]));
    });
    assert!(
        missing
            .iter()
            .any(|p| p.contains("deployments") && p.contains("lacks")),
        "{missing:?}"
    );
    let extra = edit(&|role| {
        role["rules"][0]["verbs"]
            .as_array_mut()
            .unwrap()
            .push(json!("delete"));
    });
    assert!(
        extra.iter().any(|p| p.contains("does not use")),
        "{extra:?}"
    );
}

#[test]
fn operator_deployment_runs_this_version_with_probes_on_its_admin_port() {
    let objects = built_install();
    let deployment = one(&objects, "Deployment");
    assert_eq!(deployment["metadata"]["namespace"], "sandbox-system");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];

    // Same registry and version as the workload image the operator deploys by default.
    let expected_image = DEFAULT_IMAGE.replace("/workload:", "/operator:");
    assert_ne!(expected_image, DEFAULT_IMAGE);
    assert_eq!(container["image"], expected_image.as_str());

    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), e))
        .collect();
    // Leader election: the Lease in the pod's own namespace (where the Role grants it), one identity per pod.
    assert_eq!(
        env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The Lease the Role grants by name.
    assert_eq!(env["LEASE_NAME"]["value"], LEASE_NAME);

    let admin_addr: std::net::SocketAddr = env["ADMIN_ADDR"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let metrics_addr: std::net::SocketAddr = env["METRICS_ADDR"]["value"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], admin_addr.port());
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(container[probe]["httpGet"]["path"], path);
        assert_eq!(container[probe]["httpGet"]["port"], port["name"]);
        assert!(
            container[probe]["httpGet"]["scheme"].is_null(),
            "plain HTTP"
        );
    }
    // The Service publishes the metrics server only, not the probes' port.
    let metrics_port = &container["ports"][1];
    assert_eq!(metrics_port["containerPort"], metrics_addr.port());
    let service = one(&objects, "Service");
    let published = service["spec"]["ports"].as_array().unwrap();
    assert_eq!(published.len(), 1, "{published:?}");
    assert_eq!(published[0]["targetPort"], metrics_port["name"]);

    for limit in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][limit][resource].is_string(),
                "no {limit}.{resource}"
            );
        }
    }
    // The restricted Pod Security Standard, which the namespace enforces.
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    let namespace = one(&objects, "Namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
}

/// `value` with every number as a float: kustomize re-emits `1.0` as `1`, which is the same number.
fn numbers_as_floats(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => items.iter().map(numbers_as_floats).collect(),
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), numbers_as_floats(v)))
            .collect(),
        other => other.clone(),
    }
}

#[test]
fn the_operator_install_carries_no_crd_so_deleting_it_keeps_every_sandbox_service() {
    let install = built_install();
    let crds = find(&install, "CustomResourceDefinition");
    assert!(
        crds.is_empty(),
        "deploy/operator installs a CRD: `kubectl delete -k deploy/operator` would delete it and every SandboxService"
    );
}

#[test]
fn the_crd_install_carries_the_committed_crds_and_nothing_else() {
    let objects = kustomized("crds");
    let kinds: Vec<&Value> = objects.iter().map(|o| &o["kind"]).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "CustomResourceDefinition",
            "CustomResourceDefinition"
        ]
    );
    // The committed files, which tests/render.rs keeps equal to `operator crd [KIND]`'s output.
    for (crd, file) in objects.iter().zip([
        "crds/sandboxloadtest.yaml",
        "crds/sandboxpolicy.yaml",
        "crds/sandboxservice.yaml",
    ]) {
        let committed = std::fs::read_to_string(repo_dir(file)).unwrap();
        let committed: Value = serde_yaml::from_str(&committed).unwrap();
        // kustomize adds the part-of label; everything else is the committed CRD.
        assert_eq!(crd["metadata"]["name"], committed["metadata"]["name"]);
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "performance-sandbox"
        );
        assert!(
            numbers_as_floats(&crd["spec"]) == numbers_as_floats(&committed["spec"]),
            "crds/ installs a CRD other than {file}"
        );
    }
}

#[test]
fn committed_namespaced_rbac_is_what_operator_rbac_namespace_prints() {
    let printed = Command::new(env!("CARGO_BIN_EXE_operator"))
        .args(["rbac", "--namespace", EXAMPLE_WATCHED_NAMESPACE])
        .output()
        .unwrap();
    assert!(printed.status.success(), "{printed:?}");
    let printed = String::from_utf8(printed.stdout).unwrap();
    let file = repo_dir("deploy/operator-namespaced/rbac.yaml");
    let committed = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    assert!(
        committed == printed,
        "deploy/operator-namespaced/rbac.yaml is stale: run `cargo run -q -p operator -- rbac \
         --namespace {EXAMPLE_WATCHED_NAMESPACE} > deploy/operator-namespaced/rbac.yaml`"
    );
}

/// Namespaced mode grants in the watched namespace what the ClusterRole grants everywhere, and
/// cluster-wide only reads and the reviews, which store nothing.
#[test]
fn namespaced_mode_writes_nothing_cluster_wide() {
    let grants = namespaced_mode(&["team-a", "team-b"]);
    for rule in grants.cluster_role.rules.unwrap() {
        let resources = rule.resources.unwrap_or_default();
        for verb in &rule.verbs {
            let read = ["get", "list", "watch"].contains(&verb.as_str());
            let review = verb == "create"
                && resources
                    .iter()
                    .all(|r| r == "tokenreviews" || r == "subjectaccessreviews");
            assert!(read || review, "{verb} on {resources:?} cluster-wide");
        }
    }
    let everywhere = cluster_role_rules_of_namespaced_kinds();
    assert_eq!(grants.roles.len(), 2);
    for ((role, role_binding), namespace) in grants.roles.into_iter().zip(["team-a", "team-b"]) {
        assert_eq!(role.metadata.namespace.as_deref(), Some(namespace));
        assert_eq!(role_binding.metadata.namespace.as_deref(), Some(namespace));
        assert_eq!(role.rules.unwrap(), everywhere);
    }
}

/// The shipped ClusterRole's rules on namespaced kinds.
fn cluster_role_rules_of_namespaced_kinds() -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
    let cluster_scoped = [
        "customresourcedefinitions",
        "tokenreviews",
        "subjectaccessreviews",
    ];
    operator::manifests::rbac::cluster_role()
        .rules
        .unwrap()
        .into_iter()
        .filter(|rule| {
            !rule
                .resources
                .iter()
                .flatten()
                .any(|r| cluster_scoped.contains(&r.as_str()))
        })
        .collect()
}
