//! Pipeline step 3, **apply** (needs a client): server-side apply of every child with the one
//! field manager [`FIELD_MANAGER`], and removal of a ServiceMonitor the spec no longer wants.
//!
//! At most one SSA patch per child and nothing else: none for a child that is as last applied
//! (see [`crate::reconcile::last_applied`]), and no GET before a patch, because the patch response already
//! carries the object (and the Deployment's status for the CR's status).
//! Only a child the API server refuses the patch for (422) costs more: a merge patch of its
//! spec, the apply again, and the removal of the merge patch's managedFields entry.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use tracing::warn;

use crate::children::{Children, ServiceMonitor};
use crate::error::{Error, Result, is_conflict, is_not_found};
use crate::names::FIELD_MANAGER;
use crate::reconcile::last_applied::{CachedChild, Fingerprint, LastApplied};
use crate::reconcile::scaling::{PodHealth, pod_health};

/// What happened to the ServiceMonitor in this reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MonitoringOutcome {
    /// Applied.
    Applied,
    /// Not wanted and none owned by this CR exists.
    Disabled,
    /// Not wanted; the one this CR owned was deleted.
    Deleted,
    /// Wanted, but the `monitoring.coreos.com/v1` ServiceMonitor CRD is not installed.
    CrdMissing,
}

/// The result of applying all children.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// The Deployment as the API server returned it, status included.
    pub deployment: Deployment,
    /// The ServiceMonitor's fate.
    pub monitoring: MonitoringOutcome,
    /// The HPA as its watch cache has it, status included; `None` before its first watch event.
    pub hpa: Option<HorizontalPodAutoscaler>,
    /// How the pods fare, from their watch cache.
    pub pods: PodHealth,
}

/// Apply every child into `namespace` that is not as last applied: Deployment, Service, HPA,
/// then the ServiceMonitor last, so a missing ServiceMonitor CRD leaves the rest applied.
/// `owner_uid` identifies the ServiceMonitor to delete when monitoring is switched off.
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    children: &Children,
    owner_uid: &str,
    last: &LastApplied,
) -> Result<ApplyOutcome> {
    let cached = last
        .unchanged(namespace, &children.deployment)
        .then(|| last.cached_deployment(namespace, &children.deployment.name_any()))
        .flatten();
    let deployment = match cached {
        Some(deployment) => deployment,
        None => apply_and_record(client, namespace, &children.deployment, last).await?,
    };
    apply_if_changed(client, namespace, &children.service, last).await?;
    apply_if_changed(client, namespace, &children.hpa, last).await?;

    let monitoring = match &children.service_monitor {
        Some(service_monitor) => {
            match apply_if_changed(client, namespace, service_monitor, last).await {
                Ok(()) => MonitoringOutcome::Applied,
                Err(Error::Apply { source, .. }) if is_not_found(&source) => {
                    MonitoringOutcome::CrdMissing
                }
                Err(error) => return Err(error),
            }
        }
        None => {
            let name = children.deployment.name_any();
            delete_owned_service_monitor(client, namespace, &name, owner_uid).await?
        }
    };
    let name = children.deployment.name_any();
    if !last.wait_status_caches(STATUS_CACHES_WAIT).await {
        warn!(
            namespace,
            name, "the HPA and pod caches are not filled yet; the status may lag behind them"
        );
    }
    Ok(ApplyOutcome {
        deployment,
        monitoring,
        hpa: last.cached_hpa(namespace, &name),
        pods: pod_health(&last.pods_of(namespace, &name)),
    })
}

/// How long a reconcile waits for the HPA and pod caches' first list (after a (re)start) before
/// it builds the status from what they hold.
const STATUS_CACHES_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// A namespaced child kind, as server-side apply sends and decodes it.
pub trait Child:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Child for K where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// Apply `object` unless it is as last applied.
async fn apply_if_changed<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    last: &LastApplied,
) -> Result<()>
where
    K: Child + CachedChild,
{
    if !last.unchanged(namespace, object) {
        apply_and_record(client, namespace, object, last).await?;
    }
    Ok(())
}

/// [`apply`], remembering what was applied and how the API server stored it.
async fn apply_and_record<K>(
    client: &Client,
    namespace: &str,
    object: &K,
    last: &LastApplied,
) -> Result<K>
where
    K: Child + Fingerprint,
{
    // Boxed: the future of an apply of a whole Deployment is large, and four of them inline
    // made the reconcile future overflow a test thread's stack in debug builds.
    match Box::pin(apply(client, namespace, object)).await {
        Ok(applied) => {
            last.record(namespace, object, &applied);
            Ok(applied)
        }
        Err(error) => {
            last.forget(namespace, object);
            Err(error)
        }
    }
}

/// Server-side apply one object with [`FIELD_MANAGER`], forcing ownership of the fields it
/// sets: the operator is the authority for them, so a `kubectl edit` of a child is reverted.
pub async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Child,
{
    let name = object.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let applied = match api.patch(&name, &params, &Patch::Apply(object)).await {
        Err(kube::Error::Api(status)) if status.code == 422 => {
            if replace_lists(&api, &name, object).await {
                api.patch(&name, &params, &Patch::Apply(object)).await
            } else {
                Err(kube::Error::Api(status))
            }
        }
        result => result,
    };
    // After every apply, not only a repair's: should the apply after a repair fail, the next
    // successful one still removes the entry the repair left.
    let applied = match applied {
        Ok(applied) => drop_repair_entry(&api, &name, applied).await,
        Err(error) => Err(error),
    };
    applied.map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        namespace: namespace.to_string(),
        name,
        source: Box::new(source),
    })
}

/// Repair what server-side apply cannot: an item of a keyed list whose key someone else
/// changed (a Service port edited from 80 to 81, a container renamed) is a new item that this
/// manager does not own, so force-applying ours puts both side by side and the API server
/// refuses the result (422, e.g. a duplicate port name). A JSON merge patch of our `spec`
/// replaces such lists whole, as [`FIELD_MANAGER`]; the apply that follows then owns them again.
/// Returns whether the merge patch was accepted; when it was not (an immutable field such as
/// another selector), the original apply's error stands.
async fn replace_lists<K>(api: &Api<K>, name: &str, object: &K) -> bool
where
    K: Clone + Debug + Serialize + DeserializeOwned,
{
    let Some(spec) = serde_json::to_value(object)
        .ok()
        .and_then(|value| value.get("spec").cloned())
    else {
        return false;
    };
    let params = update_params();
    api.patch(
        name,
        &params,
        &Patch::Merge(serde_json::json!({ "spec": spec })),
    )
    .await
    .is_ok()
}

/// A plain (non-apply) patch, still as [`FIELD_MANAGER`].
fn update_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    }
}

/// Remove the `Update` entry the merge patch of [`replace_lists`] left in managedFields: while
/// it stays, [`FIELD_MANAGER`] co-owns every field it wrote under two operations, and a field
/// later dropped from the spec would never be removed from the child.
///
/// The patch carries the resourceVersion it was computed from, so it cannot drop an entry
/// another writer added meanwhile; on such a conflict it reads the child again and retries.
async fn drop_repair_entry<K>(api: &Api<K>, name: &str, applied: K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let is_repair = |entry: &ManagedFieldsEntry| {
        entry.manager.as_deref() == Some(FIELD_MANAGER)
            && entry.operation.as_deref() == Some("Update")
    };
    let params = update_params();
    let mut current = applied;
    for _ in 0..REPAIR_ENTRY_ATTEMPTS {
        let entries = current.meta().managed_fields.as_deref().unwrap_or_default();
        if !entries.iter().any(is_repair) {
            return Ok(current);
        }
        let kept: Vec<&ManagedFieldsEntry> =
            entries.iter().filter(|entry| !is_repair(entry)).collect();
        let patch = serde_json::json!({ "metadata": {
            "resourceVersion": current.meta().resource_version,
            "managedFields": kept,
        } });
        match api.patch(name, &params, &Patch::Merge(patch)).await {
            Err(error) if is_conflict(&error) => current = api.get(name).await?,
            result => return result,
        }
    }
    Ok(current)
}

/// Reads and patches tried before leaving a repair's entry to the next apply.
const REPAIR_ENTRY_ATTEMPTS: usize = 3;

/// Delete the ServiceMonitor `name` if, and only if, this CR owns it: one GET, plus the DELETE
/// when there is something to remove. A missing object or a missing CRD both mean nothing to do.
async fn delete_owned_service_monitor(
    client: &Client,
    namespace: &str,
    name: &str,
    owner_uid: &str,
) -> Result<MonitoringOutcome> {
    let api: Api<ServiceMonitor> = Api::namespaced(client.clone(), namespace);
    let cleanup_error = |source| Error::Cleanup {
        namespace: namespace.to_string(),
        name: name.to_string(),
        source: Box::new(source),
    };
    let existing = match api.get(name).await {
        Ok(existing) => existing,
        Err(source) if is_not_found(&source) => return Ok(MonitoringOutcome::Disabled),
        Err(source) => return Err(cleanup_error(source)),
    };
    let owned = existing
        .owner_references()
        .iter()
        .any(|reference| reference.uid == owner_uid);
    if !owned {
        return Ok(MonitoringOutcome::Disabled);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(MonitoringOutcome::Deleted),
        Err(source) if is_not_found(&source) => Ok(MonitoringOutcome::Disabled),
        Err(source) => Err(cleanup_error(source)),
    }
}
