//! The Kubernetes API this operator uses, as data: the single list the install's RBAC is
//! generated from. `operator rbac` prints [`rbac_yaml`] (a ClusterRole for what the operator does
//! in every namespace, a Role for its leader-election Lease, and their bindings; and the
//! ClusterRoles that give a namespace's `view`, `edit` and `admin` users SandboxServices), and
//! `deploy/operator/rbac.yaml` is that output, checked by a test and by CI.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use serde::Serialize;

use crate::api::SandboxService;
use crate::names::{LEASE_NAME, SERVICE_MONITOR_CRD};

/// Where a grant applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Namespaced objects in every namespace the operator watches: the ClusterRole, or in
    /// namespaced mode a Role in the watched namespace.
    Cluster,
    /// Cluster-scoped objects (a CRD, reviews): a ClusterRole in either mode.
    ClusterObjects,
    /// Only the operator's own namespace (`POD_NAMESPACE`): the leader-election Role.
    OperatorNamespace,
}

/// One resource the operator calls, with the verbs it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManagedResource {
    /// API group (`""` for the core group).
    pub api_group: &'static str,
    /// Plural resource name, with `/subresource` when it is one.
    pub resource: &'static str,
    /// RBAC verbs.
    pub verbs: &'static [&'static str],
    /// The only objects the grant covers (`resourceNames`); empty for all of them.
    pub resource_names: &'static [&'static str],
    /// Which of the two roles grants it.
    pub scope: Scope,
}

// Children are watched for drift and written by server-side apply; the apply of an object that
// does not exist yet is authorized as `create`, otherwise as `patch`. `delete` is what the
// OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) asks of
// whoever changes an object's `ownerReferences`: adopting an existing child, or taking over the
// children of a re-created CR before the garbage collector removed them.
const CHILD_VERBS: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Namespace `deploy/operator` installs the operator in (its kustomization's `namespace`).
pub const INSTALL_NAMESPACE: &str = "sandbox-system";

/// The operator's ServiceAccount in `deploy/operator`, also the name of its ClusterRole and
/// ClusterRoleBinding.
pub const SERVICE_ACCOUNT: &str = "sandbox-operator";

/// Name of the Role and RoleBinding for the leader-election Lease.
pub const LEADER_ELECTION_ROLE: &str = "sandbox-operator-leader-election";

/// Every resource and verb the operator uses.
pub const MANAGED_RESOURCES: &[ManagedResource] = &[
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices/status",
        verbs: &["get", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // The owner references of the children block the CR's deletion until they are gone
    // (`blockOwnerDeletion`), which OwnerReferencesPermissionEnforcement allows only to those
    // who may update the owner's finalizers.
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxservices/finalizers",
        verbs: &["update"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxloadtests",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxloadtests/status",
        verbs: &["get", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // As for SandboxServices: a Job's owner reference blocks its load test's deletion.
    ManagedResource {
        api_group: "sandbox.perf.dev",
        resource: "sandboxloadtests/finalizers",
        verbs: &["update"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // A load test's run; its pod is read (below) for the summary it leaves as termination message.
    ManagedResource {
        api_group: "batch",
        resource: "jobs",
        verbs: CHILD_VERBS,
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "apps",
        resource: "deployments",
        verbs: CHILD_VERBS,
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "",
        resource: "services",
        verbs: CHILD_VERBS,
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "autoscaling",
        resource: "horizontalpodautoscalers",
        verbs: CHILD_VERBS,
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // Watched so that installing the Prometheus Operator later starts ServiceMonitors at once.
    ManagedResource {
        api_group: "apiextensions.k8s.io",
        resource: "customresourcedefinitions",
        verbs: &["get", "list", "watch"],
        resource_names: &[SERVICE_MONITOR_CRD],
        scope: Scope::ClusterObjects,
    },
    // Read only: the status tells overloaded pods from broken ones (image pulls, crash loops).
    ManagedResource {
        api_group: "",
        resource: "pods",
        verbs: &["get", "list", "watch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // Also deleted when a SandboxService switches `monitoring.serviceMonitor` off.
    ManagedResource {
        api_group: "monitoring.coreos.com",
        resource: "servicemonitors",
        verbs: CHILD_VERBS,
        resource_names: &[],
        scope: Scope::Cluster,
    },
    ManagedResource {
        api_group: "events.k8s.io",
        resource: "events",
        verbs: &["create", "patch"],
        resource_names: &[],
        scope: Scope::Cluster,
    },
    // The metrics server asks the API server who a bearer token belongs to and whether that
    // user may read /metrics (see `process::metrics::auth`).
    ManagedResource {
        api_group: "authentication.k8s.io",
        resource: "tokenreviews",
        verbs: &["create"],
        resource_names: &[],
        scope: Scope::ClusterObjects,
    },
    ManagedResource {
        api_group: "authorization.k8s.io",
        resource: "subjectaccessreviews",
        verbs: &["create"],
        resource_names: &[],
        scope: Scope::ClusterObjects,
    },
    // The leader-election Lease, in the operator's own namespace: only its own Lease, except
    // for `create`, which RBAC cannot hold to a name (none is known when it is authorized).
    ManagedResource {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["get", "update"],
        resource_names: &[LEASE_NAME],
        scope: Scope::OperatorNamespace,
    },
    ManagedResource {
        api_group: "coordination.k8s.io",
        resource: "leases",
        verbs: &["create"],
        resource_names: &[],
        scope: Scope::OperatorNamespace,
    },
];

/// The ClusterRole that the built-in `view` role (and through it `edit` and `admin`) aggregates:
/// reading SandboxServices and their status.
pub const VIEW_ROLE: &str = "performance-sandbox-view";

/// The ClusterRole that the built-in `edit` role (and through it `admin`) aggregates: writing
/// SandboxServices; reading them comes with `view`, which `edit` includes.
pub const EDIT_ROLE: &str = "performance-sandbox-edit";

/// The ClusterRole whose holders may read the operator's metrics (`get` on the non-resource URL
/// `/metrics`); `deploy/monitoring/operator-metrics-reader.yaml` binds it to Prometheus.
pub const METRICS_READER_ROLE: &str = "sandbox-operator-metrics-reader";

/// What `deploy/operator/rbac.yaml` starts with: serialized objects carry no comments.
const HEADER: &str = "\
# Generated by `operator rbac` from MANAGED_RESOURCES in operator/src/manifests/rbac.rs: do not edit, regenerate with
#   cargo run -q -p operator -- rbac > deploy/operator/rbac.yaml
# (operator/tests/rbac.rs and CI fail when this file is stale).
# The ClusterRole is what the operator does in every namespace; the leader-election Lease lives in the
# operator's own namespace (POD_NAMESPACE), so its grant is a Role there.
# SandboxLoadTests are read and their status written like SandboxServices'; each run is a Job the operator
# applies, whose pod's termination message (read through the pods grant) is the run's summary.
# Children (Deployments, Services, HPAs, ServiceMonitors, Jobs) are watched for drift and written by server-side
# apply (create when absent, patch otherwise). `delete` is what the OwnerReferencesPermissionEnforcement
# admission plugin asks of whoever changes ownerReferences: adopting an existing object, or taking over the
# children of a CR deleted and re-created; a ServiceMonitor is also deleted when a SandboxService switches
# `monitoring.serviceMonitor` off. The children's owner references block the CR's deletion
# (blockOwnerDeletion), which with that plugin needs update on sandboxservices/finalizers.
# The one CRD read is the ServiceMonitor's, watched so that a Prometheus Operator installed later gets
# ServiceMonitors without a restart. The Lease grant names the operator's own Lease (LEASE_NAME), except
# for create, which RBAC cannot restrict by name.
# The metrics server checks each scrape's bearer token with a TokenReview and a SubjectAccessReview; the
# metrics-reader ClusterRole is what a scraper's identity needs (deploy/monitoring binds it to Prometheus).
# The last two ClusterRoles are for people, not the operator: the built-in view, edit and admin roles
# aggregate them, so whoever has one of those in a namespace can read (view) or also write (edit, admin)
# SandboxServices and SandboxLoadTests there. The operator writes their status, so nobody else is granted that.
";

fn metadata(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        labels: Some(BTreeMap::from([(
            "app.kubernetes.io/name".to_string(),
            SERVICE_ACCOUNT.to_string(),
        )])),
        ..ObjectMeta::default()
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// One rule per managed resource of `scopes`, in the order of [`MANAGED_RESOURCES`].
fn rules(scopes: &[Scope]) -> Vec<PolicyRule> {
    MANAGED_RESOURCES
        .iter()
        .filter(|managed| scopes.contains(&managed.scope))
        .map(|managed| PolicyRule {
            api_groups: Some(strings(&[managed.api_group])),
            resources: Some(strings(&[managed.resource])),
            resource_names: (!managed.resource_names.is_empty())
                .then(|| strings(managed.resource_names)),
            verbs: strings(managed.verbs),
            non_resource_urls: None,
        })
        .collect()
}

/// The grants of [`Scope::Cluster`] and [`Scope::ClusterObjects`].
pub fn cluster_role() -> ClusterRole {
    ClusterRole {
        metadata: metadata(SERVICE_ACCOUNT),
        rules: Some(rules(&[Scope::Cluster, Scope::ClusterObjects])),
        aggregation_rule: None,
    }
}

/// The grants of [`Scope::OperatorNamespace`]; the Role takes the install's namespace from the
/// kustomization, like the operator's other namespaced objects.
pub fn leader_election_role() -> Role {
    Role {
        metadata: metadata(LEADER_ELECTION_ROLE),
        rules: Some(rules(&[Scope::OperatorNamespace])),
    }
}

/// A ClusterRole on SandboxServices that the built-in role `aggregated_into` picks up (its
/// `rbac.authorization.k8s.io/aggregate-to-…` label).
fn user_role(name: &str, aggregated_into: &str, resources: &[&str], verbs: &[&str]) -> ClusterRole {
    let mut metadata = metadata(name);
    metadata.labels.get_or_insert_default().insert(
        format!("rbac.authorization.k8s.io/aggregate-to-{aggregated_into}"),
        "true".to_string(),
    );
    let group = SandboxService::group(&());
    ClusterRole {
        metadata,
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![group.into_owned()]),
            resources: Some(strings(resources)),
            verbs: strings(verbs),
            resource_names: None,
            non_resource_urls: None,
        }]),
        aggregation_rule: None,
    }
}

/// [`VIEW_ROLE`] and [`EDIT_ROLE`]. The built-in roles chain (`view` ⊂ `edit` ⊂ `admin`), so
/// the two cover all three.
pub fn user_roles() -> [ClusterRole; 2] {
    [
        user_role(
            VIEW_ROLE,
            "view",
            &[
                "sandboxservices",
                "sandboxservices/status",
                "sandboxloadtests",
                "sandboxloadtests/status",
            ],
            &["get", "list", "watch"],
        ),
        user_role(
            EDIT_ROLE,
            "edit",
            &["sandboxservices", "sandboxloadtests"],
            &["create", "update", "patch", "delete", "deletecollection"],
        ),
    ]
}

/// [`METRICS_READER_ROLE`], as kubebuilder's `metrics-reader` role.
pub fn metrics_reader_role() -> ClusterRole {
    ClusterRole {
        metadata: metadata(METRICS_READER_ROLE),
        rules: Some(vec![PolicyRule {
            non_resource_urls: Some(strings(&[crate::process::metrics::auth::METRICS_PATH])),
            verbs: strings(&["get"]),
            ..PolicyRule::default()
        }]),
        aggregation_rule: None,
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: "rbac.authorization.k8s.io".to_string(),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

fn service_account(namespace: Option<&str>) -> Subject {
    Subject {
        kind: "ServiceAccount".to_string(),
        name: SERVICE_ACCOUNT.to_string(),
        namespace: namespace.map(str::to_string),
        api_group: None,
    }
}

/// Grants [`cluster_role`] to the operator's ServiceAccount, named with its namespace (a
/// cluster-scoped binding has none of its own).
pub fn cluster_role_binding() -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: metadata(SERVICE_ACCOUNT),
        role_ref: role_ref("ClusterRole", SERVICE_ACCOUNT),
        subjects: Some(vec![service_account(Some(INSTALL_NAMESPACE))]),
    }
}

/// Grants [`leader_election_role`] to the operator's ServiceAccount of the binding's namespace.
pub fn leader_election_role_binding() -> RoleBinding {
    RoleBinding {
        metadata: metadata(LEADER_ELECTION_ROLE),
        role_ref: role_ref("Role", LEADER_ELECTION_ROLE),
        subjects: Some(vec![service_account(None)]),
    }
}

/// Name of the namespaced mode's ClusterRole (cluster-scoped objects only) and its binding.
pub const NAMESPACED_CLUSTER_ROLE: &str = "sandbox-operator-namespaced";

/// Namespace `deploy/operator-namespaced` watches, as an example to change.
pub const EXAMPLE_WATCHED_NAMESPACE: &str = "sandbox-team";

/// What namespaced mode grants in place of [`cluster_role`] and its binding.
#[derive(Debug, Clone)]
pub struct NamespacedGrants {
    /// [`Scope::ClusterObjects`] (reading the ServiceMonitor CRD, reviews for the metrics): the
    /// only cluster-wide grant, with no write to any stored object.
    pub cluster_role: ClusterRole,
    /// Binds [`NamespacedGrants::cluster_role`] to the operator's ServiceAccount.
    pub cluster_role_binding: ClusterRoleBinding,
    /// [`Scope::Cluster`] as a Role in each watched namespace, with its binding.
    pub roles: Vec<(Role, RoleBinding)>,
}

/// Namespaced mode's grants for `operator run --namespace N1 [--namespace N2 …]`.
pub fn namespaced_mode(namespaces: &[&str]) -> NamespacedGrants {
    let subjects = Some(vec![service_account(Some(INSTALL_NAMESPACE))]);
    let roles = namespaces
        .iter()
        .map(|namespace| {
            let in_namespace = ObjectMeta {
                namespace: Some((*namespace).to_string()),
                ..metadata(SERVICE_ACCOUNT)
            };
            (
                Role {
                    metadata: in_namespace.clone(),
                    rules: Some(rules(&[Scope::Cluster])),
                },
                RoleBinding {
                    metadata: in_namespace,
                    role_ref: role_ref("Role", SERVICE_ACCOUNT),
                    subjects: subjects.clone(),
                },
            )
        })
        .collect();
    NamespacedGrants {
        cluster_role: ClusterRole {
            metadata: metadata(NAMESPACED_CLUSTER_ROLE),
            rules: Some(rules(&[Scope::ClusterObjects])),
            aggregation_rule: None,
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: metadata(NAMESPACED_CLUSTER_ROLE),
            role_ref: role_ref("ClusterRole", NAMESPACED_CLUSTER_ROLE),
            subjects,
        },
        roles,
    }
}

/// What `deploy/operator-namespaced/rbac.yaml` starts with.
const NAMESPACED_HEADER: &str = "\
# Generated by `operator rbac --namespace NAMESPACE` from MANAGED_RESOURCES in operator/src/manifests/rbac.rs:
# do not edit, regenerate with
#   cargo run -q -p operator -- rbac --namespace sandbox-team > deploy/operator-namespaced/rbac.yaml
# (one --namespace per namespace the operator watches).
# Namespaced mode's grants, in place of deploy/operator's ClusterRole and its binding: what the operator does
# to SandboxServices, SandboxLoadTests and their children, only in the namespaces it watches (a Role in each); and, cluster-wide,
# reading the ServiceMonitor CRD and creating the TokenReviews and SubjectAccessReviews that check who reads
# its metrics, which store nothing.
";

/// Namespaced mode's RBAC for `namespaces` as multi-document YAML, what `operator rbac
/// --namespace N1 [--namespace N2 …]` prints.
pub fn namespaced_rbac_yaml(namespaces: &[&str]) -> String {
    let grants = namespaced_mode(namespaces);
    let mut documents = vec![
        document(&grants.cluster_role),
        document(&grants.cluster_role_binding),
    ];
    for (role, binding) in &grants.roles {
        documents.push(document(role));
        documents.push(document(binding));
    }
    format!("{NAMESPACED_HEADER}{}", documents.join("---\n"))
}

fn document(object: &impl Serialize) -> String {
    // Serializing k8s-openapi objects built here cannot fail; a failure is a programming error.
    serde_yaml::to_string(object).expect("RBAC objects serialize to YAML")
}

/// The install's RBAC as multi-document YAML, exactly what `operator rbac` prints and
/// `deploy/operator/rbac.yaml` holds.
pub fn rbac_yaml() -> String {
    let [view, edit] = user_roles();
    let documents = [
        document(&cluster_role()),
        document(&cluster_role_binding()),
        document(&leader_election_role()),
        document(&leader_election_role_binding()),
        document(&metrics_reader_role()),
        document(&view),
        document(&edit),
    ];
    format!("{HEADER}{}", documents.join("---\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SandboxService;
    use crate::children::ServiceMonitor;
    use crate::loadtest::SandboxLoadTest;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::authentication::v1::TokenReview;
    use k8s_openapi::api::authorization::v1::SubjectAccessReview;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::coordination::v1::Lease;
    use k8s_openapi::api::core::v1::{Pod, Service};
    use k8s_openapi::api::events::v1::Event;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::Resource;

    fn entry<K: Resource<DynamicType = ()>>() -> (String, String) {
        (K::group(&()).into_owned(), K::plural(&()).into_owned())
    }

    #[test]
    fn list_matches_the_types_the_operator_uses() {
        let mut listed: Vec<(String, String)> = MANAGED_RESOURCES
            .iter()
            .filter(|r| !r.resource.contains('/'))
            .map(|r| (r.api_group.to_string(), r.resource.to_string()))
            .collect();
        listed.dedup();
        let used = [
            entry::<SandboxService>(),
            entry::<SandboxLoadTest>(),
            entry::<Job>(),
            entry::<Deployment>(),
            entry::<Service>(),
            entry::<HorizontalPodAutoscaler>(),
            entry::<CustomResourceDefinition>(),
            entry::<Pod>(),
            entry::<ServiceMonitor>(),
            entry::<Event>(),
            entry::<TokenReview>(),
            entry::<SubjectAccessReview>(),
            entry::<Lease>(),
        ];
        assert_eq!(listed, used);
    }

    #[test]
    fn the_lease_is_granted_in_the_operators_namespace_only() {
        let resources = |rules: Option<Vec<PolicyRule>>| -> Vec<String> {
            rules
                .into_iter()
                .flatten()
                .flat_map(|rule| rule.resources.unwrap_or_default())
                .collect()
        };
        assert_eq!(
            resources(leader_election_role().rules),
            ["leases", "leases"]
        );
        let cluster_wide = resources(cluster_role().rules);
        assert!(
            !cluster_wide.contains(&"leases".to_string()),
            "{cluster_wide:?}"
        );
        assert_eq!(cluster_wide.len(), MANAGED_RESOURCES.len() - 2);
    }

    #[test]
    fn only_the_lease_create_is_not_held_to_the_operators_lease() {
        let rules = leader_election_role().rules.unwrap();
        for rule in rules {
            let names = rule.resource_names.unwrap_or_default();
            if rule.verbs == ["create"] {
                assert!(names.is_empty(), "create cannot be restricted by name");
            } else {
                assert_eq!(names, [LEASE_NAME], "{:?}", rule.verbs);
            }
        }
    }

    #[test]
    fn people_get_sandbox_services_and_load_tests_through_the_built_in_roles_but_never_their_status_writes()
     {
        let [view, edit] = user_roles();
        let label = |role: &ClusterRole, to: &str| {
            role.metadata.labels.as_ref().unwrap()
                [&format!("rbac.authorization.k8s.io/aggregate-to-{to}")]
                .clone()
        };
        assert_eq!(label(&view, "view"), "true");
        assert_eq!(label(&edit, "edit"), "true");
        let rule = &edit.rules.as_ref().unwrap()[0];
        assert_eq!(
            rule.resources.as_deref(),
            Some(
                &[
                    "sandboxservices".to_string(),
                    "sandboxloadtests".to_string()
                ][..]
            )
        );
        assert!(!rule.verbs.iter().any(|verb| verb == "*"));
        let view_rule = &view.rules.as_ref().unwrap()[0];
        assert!(
            view_rule
                .verbs
                .iter()
                .all(|verb| ["get", "list", "watch"].contains(&verb.as_str()))
        );
    }

    #[test]
    fn every_watched_kind_can_be_listed_and_watched() {
        for resource in MANAGED_RESOURCES
            .iter()
            // Events, the Lease and the reviews are written, not watched.
            .filter(|r| {
                !["events", "leases", "tokenreviews", "subjectaccessreviews"].contains(&r.resource)
                    && !r.resource.contains('/')
            })
        {
            for verb in ["get", "list", "watch"] {
                assert!(resource.verbs.contains(&verb), "{resource:?} lacks {verb}");
            }
        }
    }
}
