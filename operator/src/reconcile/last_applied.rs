//! Apply only what changed: a child is applied when what the operator wants of it differs from
//! what it last applied, or when the child itself changed since (as the watch caches show it).
//!
//! Without this, every reconcile made one server-side apply per child, even when triggered by
//! a Deployment status change or the periodic resync: writes the API server must process,
//! admit and compare, only to change nothing. Kept per child: a hash of the object last applied
//! and a fingerprint of the child right after that apply. The fingerprint is what a change by
//! someone else moves, and a status write does not: labels, owner references, and
//! `metadata.generation` (every spec edit) or, for the kinds that have none (Service and
//! HorizontalPodAutoscaler) and for the Deployment (whose generation the HPA's scaling moves),
//! the spec itself, the Deployment's without its replica count. Nothing is remembered across
//! restarts, so a new operator process applies everything once.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard, RwLock};

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use serde::Serialize;

use crate::children::ServiceMonitor;

/// The watch caches of the children, as the Controller's child watches fill them.
#[derive(Clone)]
pub struct ChildCaches {
    /// Whole Deployments: their status is the CR's.
    pub deployments: Store<Deployment>,
    /// Services: without a generation, only their spec shows an edit.
    pub services: Store<Service>,
    /// HPAs: without a generation, only their spec shows an edit.
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// The children's pods (metadata and status only), for what the status says of them.
    pub pods: Store<Pod>,
    /// ServiceMonitors, metadata only; `None` while their CRD is not installed.
    pub service_monitors: Option<Store<PartialObjectMeta<ServiceMonitor>>>,
    /// True once the HPA and pod caches hold their first full list.
    pub status_caches_synced: tokio::sync::watch::Receiver<bool>,
}

/// What someone else's change to an object moves and its status writes do not; see the
/// module documentation.
pub trait Fingerprint {
    /// The fingerprint of this object.
    fn fingerprint(&self) -> u64;
}

/// A child kind whose cached fingerprint can be looked up.
pub trait CachedChild: Resource<DynamicType = ()> + Fingerprint + Sized {
    /// The fingerprint of the cached child `namespace/name`, if the cache holds it.
    fn cached(caches: &ChildCaches, namespace: &str, name: &str) -> Option<u64>;
}

fn lookup<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<u64>
where
    K: Resource<DynamicType = ()> + Fingerprint + Clone + 'static,
{
    store
        .get(&ObjectRef::new(name).within(namespace))
        .map(|object| object.fingerprint())
}

impl Fingerprint for Deployment {
    /// By its spec without `replicas`, not its generation: the HPA's writes to `/scale` move
    /// the generation, and each would otherwise cost an apply that changes nothing.
    fn fingerprint(&self) -> u64 {
        let spec = self.spec.as_ref().map(|spec| DeploymentSpec {
            replicas: None,
            ..spec.clone()
        });
        by_spec(&self.metadata, &spec)
    }
}

impl Fingerprint for ServiceMonitor {
    fn fingerprint(&self) -> u64 {
        by_generation(&self.metadata)
    }
}

impl Fingerprint for PartialObjectMeta<ServiceMonitor> {
    fn fingerprint(&self) -> u64 {
        by_generation(&self.metadata)
    }
}

impl Fingerprint for Service {
    fn fingerprint(&self) -> u64 {
        by_spec(&self.metadata, &self.spec)
    }
}

impl Fingerprint for HorizontalPodAutoscaler {
    fn fingerprint(&self) -> u64 {
        by_spec(&self.metadata, &self.spec)
    }
}

impl CachedChild for Deployment {
    fn cached(caches: &ChildCaches, namespace: &str, name: &str) -> Option<u64> {
        lookup(&caches.deployments, namespace, name)
    }
}

impl CachedChild for Service {
    fn cached(caches: &ChildCaches, namespace: &str, name: &str) -> Option<u64> {
        lookup(&caches.services, namespace, name)
    }
}

impl CachedChild for HorizontalPodAutoscaler {
    fn cached(caches: &ChildCaches, namespace: &str, name: &str) -> Option<u64> {
        lookup(&caches.hpas, namespace, name)
    }
}

impl CachedChild for ServiceMonitor {
    fn cached(caches: &ChildCaches, namespace: &str, name: &str) -> Option<u64> {
        lookup(caches.service_monitors.as_ref()?, namespace, name)
    }
}

/// Identifies a child: kind, namespace, name.
type ChildKey = (String, String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    desired: u64,
    fingerprint: u64,
}

/// What was last applied of each child, and the caches to compare it with.
#[derive(Default)]
pub struct LastApplied {
    caches: RwLock<Option<ChildCaches>>,
    last: Mutex<HashMap<ChildKey, Record>>,
}

impl LastApplied {
    /// Use `caches` from now on (`None`: apply everything, e.g. between two controller runs).
    pub fn set_caches(&self, caches: Option<ChildCaches>) {
        *self.caches.write().unwrap_or_else(|e| e.into_inner()) = caches;
    }

    /// The cached Deployment `namespace/name`, whole.
    pub fn cached_deployment(&self, namespace: &str, name: &str) -> Option<Deployment> {
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        let deployment = caches
            .as_ref()?
            .deployments
            .get(&ObjectRef::new(name).within(namespace))?;
        Some((*deployment).clone())
    }

    /// Wait until the HPA and pod caches hold their first full list, at most `limit`; whether they
    /// do. The status is made of them: one built from caches still empty after a (re)start would
    /// differ from the one last written, for a write that changes nothing real.
    pub async fn wait_status_caches(&self, limit: std::time::Duration) -> bool {
        let synced = self
            .caches
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|caches| caches.status_caches_synced.clone());
        let Some(mut synced) = synced else {
            return false;
        };
        tokio::time::timeout(limit, synced.wait_for(|synced| *synced))
            .await
            .is_ok_and(|waited| waited.is_ok())
    }

    /// The HPA `name` in `namespace` as the watch cache has it, status included.
    pub fn cached_hpa(&self, namespace: &str, name: &str) -> Option<HorizontalPodAutoscaler> {
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        let hpa = caches
            .as_ref()?
            .hpas
            .get(&ObjectRef::new(name).within(namespace))?;
        Some((*hpa).clone())
    }

    /// The pods of the SandboxService `name` in `namespace`, from the watch cache.
    pub fn pods_of(&self, namespace: &str, name: &str) -> Vec<std::sync::Arc<Pod>> {
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        let Some(caches) = caches.as_ref() else {
            return Vec::new();
        };
        let selector = crate::names::selector_labels(name);
        caches
            .pods
            .state()
            .into_iter()
            .filter(|pod| {
                pod.metadata.namespace.as_deref() == Some(namespace)
                    && pod.metadata.labels.as_ref().is_some_and(|labels| {
                        selector
                            .iter()
                            .all(|(key, value)| labels.get(key) == Some(value))
                    })
            })
            .collect()
    }

    /// Whether `desired` is what was last applied to the child and the child has not changed
    /// since, so applying it again would change nothing.
    pub fn unchanged<K: CachedChild + Serialize>(&self, namespace: &str, desired: &K) -> bool {
        let key = key::<K>(namespace, desired);
        let Some(last) = self.lock().get(&key).copied() else {
            return false;
        };
        let caches = self.caches.read().unwrap_or_else(|e| e.into_inner());
        let Some(current) = caches
            .as_ref()
            .and_then(|caches| K::cached(caches, namespace, &key.2))
        else {
            return false;
        };
        last == (Record {
            desired: hash_of(desired),
            fingerprint: current,
        })
    }

    /// `desired` was just applied and the API server answered with `applied`.
    pub fn record<K: Resource<DynamicType = ()> + Fingerprint + Serialize>(
        &self,
        namespace: &str,
        desired: &K,
        applied: &K,
    ) {
        let last = Record {
            desired: hash_of(desired),
            fingerprint: applied.fingerprint(),
        };
        self.lock().insert(key::<K>(namespace, desired), last);
    }

    /// Forget the child: it was deleted, or its apply failed.
    pub fn forget<K: Resource<DynamicType = ()>>(&self, namespace: &str, object: &K) {
        self.lock().remove(&key::<K>(namespace, object));
    }

    /// Keep only the children of namespaces/names for which `keep` is true.
    pub fn retain(&self, keep: impl Fn(&str, &str) -> bool) {
        self.lock()
            .retain(|(_, namespace, name), _| keep(namespace, name));
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ChildKey, Record>> {
        self.last.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key<K: Resource<DynamicType = ()>>(namespace: &str, object: &K) -> ChildKey {
    (
        K::kind(&()).into_owned(),
        namespace.to_string(),
        object.meta().name.clone().unwrap_or_default(),
    )
}

/// A hash of the object as it is sent (or as it is stored, for a spec).
fn hash_of<K: Serialize>(object: &K) -> u64 {
    let mut hasher = DefaultHasher::new();
    // Serializing a built child cannot fail; an empty hash only means "apply again".
    serde_json::to_vec(object)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

/// Labels and owner references: the metadata the operator sets.
fn hash_metadata(meta: &ObjectMeta, hasher: &mut DefaultHasher) {
    meta.labels.hash(hasher);
    for owner in meta.owner_references.iter().flatten() {
        (&owner.uid, owner.controller).hash(hasher);
    }
}

/// The fingerprint of a kind whose generation moves with every spec edit.
pub fn by_generation(meta: &ObjectMeta) -> u64 {
    let mut hasher = DefaultHasher::new();
    hash_metadata(meta, &mut hasher);
    meta.generation.hash(&mut hasher);
    hasher.finish()
}

/// The fingerprint of a kind without a generation: its spec as stored.
fn by_spec<S: Serialize>(meta: &ObjectMeta, spec: &S) -> u64 {
    let mut hasher = DefaultHasher::new();
    hash_metadata(meta, &mut hasher);
    hash_of(spec).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    fn hpa(yaml: &str) -> HorizontalPodAutoscaler {
        serde_yaml::from_str(yaml).unwrap()
    }

    /// A `LastApplied` whose HPA cache holds `cached`.
    fn with_cached(cached: Option<&HorizontalPodAutoscaler>) -> LastApplied {
        let mut hpas = Writer::default();
        if let Some(cached) = cached {
            hpas.apply_watcher_event(&watcher::Event::Apply(cached.clone()));
        }
        let applied = LastApplied::default();
        applied.set_caches(Some(ChildCaches {
            deployments: Writer::default().as_reader(),
            services: Writer::default().as_reader(),
            hpas: hpas.as_reader(),
            pods: Writer::default().as_reader(),
            service_monitors: None,
            status_caches_synced: tokio::sync::watch::channel(true).1,
        }));
        applied
    }

    const DESIRED: &str = "metadata: {name: demo, namespace: apps}\nspec: {maxReplicas: 3, scaleTargetRef: {kind: Deployment, name: demo}}";
    // As the API server stores it: defaults filled in, no generation (HPAs have none).
    const STORED: &str = "metadata: {name: demo, namespace: apps, resourceVersion: '10'}\nspec: {maxReplicas: 3, minReplicas: 1, scaleTargetRef: {kind: Deployment, name: demo}}";

    #[test]
    fn unchanged_only_after_an_apply_that_the_cache_has_seen() {
        let desired = hpa(DESIRED);
        let stored = hpa(STORED);
        let applied = with_cached(Some(&stored));
        assert!(!applied.unchanged("apps", &desired), "never applied");
        applied.record("apps", &desired, &stored);
        assert!(applied.unchanged("apps", &desired));

        let mut wanted = desired.clone();
        wanted.spec.as_mut().unwrap().max_replicas = 4;
        assert!(!applied.unchanged("apps", &wanted), "the CR wants more");
    }

    #[test]
    fn a_status_write_keeps_it_unchanged_but_an_edit_does_not() {
        let desired = hpa(DESIRED);
        let stored = hpa(STORED);
        let mut status_written = stored.clone();
        status_written.metadata.resource_version = Some("11".into());
        status_written.status =
            Some(serde_yaml::from_str("{currentReplicas: 2, desiredReplicas: 3}").unwrap());
        let applied = with_cached(Some(&status_written));
        applied.record("apps", &desired, &stored);
        assert!(applied.unchanged("apps", &desired));

        let mut edited = status_written.clone();
        edited.spec.as_mut().unwrap().max_replicas = 5;
        let applied = with_cached(Some(&edited));
        applied.record("apps", &desired, &stored);
        assert!(!applied.unchanged("apps", &desired), "a spec edit");

        let mut relabelled = status_written;
        relabelled.metadata.labels = Some([("x".to_string(), "y".to_string())].into());
        let applied = with_cached(Some(&relabelled));
        applied.record("apps", &desired, &stored);
        assert!(!applied.unchanged("apps", &desired), "a label edit");
    }

    #[test]
    fn a_child_missing_from_the_cache_or_forgotten_is_applied() {
        let desired = hpa(DESIRED);
        let stored = hpa(STORED);
        let applied = with_cached(None);
        applied.record("apps", &desired, &stored);
        assert!(!applied.unchanged("apps", &desired), "deleted");

        let applied = with_cached(Some(&stored));
        applied.record("apps", &desired, &stored);
        applied.forget("apps", &desired);
        assert!(!applied.unchanged("apps", &desired));
        applied.record("apps", &desired, &stored);
        applied.retain(|_, name| name != "demo");
        assert!(!applied.unchanged("apps", &desired), "its CR is gone");
    }

    #[test]
    fn a_deployment_scaled_by_the_hpa_is_unchanged_but_an_edited_one_is_not() {
        let deployment = |generation: i64, replicas: i32, image: &str| -> Deployment {
            serde_yaml::from_str(&format!(
                "metadata: {{name: demo, generation: {generation}}}\n\
                 spec: {{replicas: {replicas}, selector: {{}}, template: {{spec: {{containers: [{{name: w, image: {image}}}]}}}}}}"
            ))
            .unwrap()
        };
        let applied = deployment(1, 1, "w:1");
        assert_eq!(
            applied.fingerprint(),
            deployment(2, 4, "w:1").fingerprint(),
            "/scale"
        );
        assert_ne!(
            applied.fingerprint(),
            deployment(2, 1, "w:2").fingerprint(),
            "an edit"
        );
    }

    #[test]
    fn with_a_generation_only_the_generation_and_metadata_count() {
        let meta = |generation: i64, rv: &str| -> ObjectMeta {
            serde_yaml::from_str(&format!(
                "{{name: demo, generation: {generation}, resourceVersion: '{rv}'}}"
            ))
            .unwrap()
        };
        let status_written = meta(1, "6");
        assert_eq!(by_generation(&meta(1, "5")), by_generation(&status_written));
        assert_ne!(by_generation(&meta(1, "5")), by_generation(&meta(2, "7")));
    }
}
