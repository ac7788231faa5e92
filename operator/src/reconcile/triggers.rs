//! Which changes of a child trigger a reconcile of its SandboxService.
//!
//! kube-runtime's `owns` reconciles on every write to a child, status writes included: the HPA
//! writes its status at every sync under changing load, and each such write would cost a
//! reconcile (docs/measurements.md has the count). Here a child triggers a reconcile
//! only when it is deleted or when what the operator cares about changed: its generation (a
//! spec edit; any write for a kind without one, the Service), its labels and owner references,
//! and for the Deployment the status fields the SandboxService's status is made of.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use futures::{Stream, StreamExt, future};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::Resource;
use kube::runtime::watcher;

use crate::reconcile::last_applied::Fingerprint;

/// The child's watch events reduced to the objects that may need a reconcile: every deletion,
/// and an applied object whose `significant` hash differs from the last one seen for its uid.
/// A relist (after the watch was down) keeps only the uids it lists, so children deleted
/// meanwhile are not remembered for ever.
pub fn significant_changes<K>(
    events: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    significant: fn(&K) -> u64,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource + Send + 'static,
{
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut relisted: Option<HashSet<String>> = None;
    events.filter_map(move |event| {
        let changed = match event {
            Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                let uid = object.meta().uid.clone().unwrap_or_default();
                let hash = significant(&object);
                if let Some(relisted) = relisted.as_mut() {
                    relisted.insert(uid.clone());
                }
                (seen.insert(uid, hash) != Some(hash)).then_some(Ok(object))
            }
            Ok(watcher::Event::Delete(object)) => {
                if let Some(uid) = &object.meta().uid {
                    seen.remove(uid);
                }
                Some(Ok(object))
            }
            Ok(watcher::Event::Init) => {
                relisted = Some(HashSet::new());
                None
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(relisted) = relisted.take() {
                    seen.retain(|uid, _| relisted.contains(uid));
                }
                None
            }
            Err(error) => Some(Err(error)),
        };
        future::ready(changed)
    })
}

/// The HPA's [`Fingerprint`] plus what `status.autoscaling` is made of: its desired count, its
/// last scale time and its conditions' status and reason; not the metric's value, which moves at
/// every sync under load.
pub fn hpa(hpa: &HorizontalPodAutoscaler) -> u64 {
    let mut hasher = DefaultHasher::new();
    hpa.fingerprint().hash(&mut hasher);
    if let Some(status) = &hpa.status {
        (
            status.desired_replicas,
            status.last_scale_time.as_ref().map(|t| t.0.as_second()),
        )
            .hash(&mut hasher);
        for condition in status.conditions.iter().flatten() {
            (&condition.type_, &condition.status, &condition.reason).hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// The Deployment's [`Fingerprint`] plus the status the SandboxService's status is made of.
pub fn deployment(deployment: &Deployment) -> u64 {
    let mut hasher = DefaultHasher::new();
    deployment.fingerprint().hash(&mut hasher);
    if let Some(status) = &deployment.status {
        (
            status.observed_generation,
            status.replicas,
            status.ready_replicas,
            status.updated_replicas,
            status.available_replicas,
        )
            .hash(&mut hasher);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;

    fn object<K: serde::de::DeserializeOwned>(yaml: &str) -> K {
        serde_yaml::from_str(yaml).unwrap()
    }

    async fn passed<K: Resource + Clone + Send + 'static>(
        events: Vec<watcher::Event<K>>,
        significant: fn(&K) -> u64,
    ) -> Vec<String> {
        let events = futures::stream::iter(events.into_iter().map(Ok));
        significant_changes(events, significant)
            .map(|object| {
                let object = object.unwrap();
                format!(
                    "{}@{}",
                    object.meta().uid.clone().unwrap(),
                    object.meta().resource_version.clone().unwrap()
                )
            })
            .collect()
            .await
    }

    #[tokio::test]
    async fn hpa_status_writes_pass_only_spec_edits_and_deletions() {
        // HPAs have no generation: a spec edit shows only in the spec.
        let hpa = |rv: u32, max: u32, replicas: u32| -> HorizontalPodAutoscaler {
            object(&format!(
                "metadata: {{name: demo, uid: a, resourceVersion: '{rv}'}}\n\
                 spec: {{maxReplicas: {max}, scaleTargetRef: {{kind: Deployment, name: demo}}}}\n\
                 status: {{currentReplicas: {replicas}, desiredReplicas: {replicas}}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Init,
            InitApply(hpa(1, 1, 1)),
            InitDone,
            Apply(hpa(2, 1, 2)), // status write: no reconcile
            Apply(hpa(3, 1, 3)), // status write: no reconcile
            Apply(hpa(4, 2, 3)), // spec edited
            Delete(hpa(5, 2, 3)),
            Apply(hpa(6, 1, 1)), // re-created with the same uid key: seen afresh
        ];
        assert_eq!(
            passed(events, Fingerprint::fingerprint).await,
            ["a@1", "a@4", "a@5", "a@6"]
        );
    }

    #[tokio::test]
    async fn hpa_decisions_and_conditions_pass_metric_moves_do_not() {
        let hpa = |rv: u32, desired: u32, value: &str, reason: &str| -> HorizontalPodAutoscaler {
            object(&format!(
                "metadata: {{name: demo, uid: a, resourceVersion: '{rv}'}}\n\
                 spec: {{maxReplicas: 10, scaleTargetRef: {{kind: Deployment, name: demo}}}}\n\
                 status: {{desiredReplicas: {desired}, currentMetrics: [{{type: Pods, pods: {{metric: {{name: queue_ratio}}, current: {{averageValue: '{value}'}}}}}}], \
                 conditions: [{{type: ScalingActive, status: 'True', reason: {reason}}}]}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Apply(hpa(1, 1, "0", "ValidMetricFound")),
            Apply(hpa(2, 1, "500m", "ValidMetricFound")), // the metric moved: no reconcile
            Apply(hpa(3, 3, "4", "ValidMetricFound")),    // a decision
            Apply(hpa(4, 3, "4", "FailedGetPodsMetric")), // a condition
        ];
        assert_eq!(passed(events, super::hpa).await, ["a@1", "a@3", "a@4"]);
    }

    #[tokio::test]
    async fn a_relist_forgets_children_deleted_while_the_watch_was_down() {
        let hpa = |uid: &str, rv: u32| -> HorizontalPodAutoscaler {
            object(&format!(
                "metadata: {{name: {uid}, uid: {uid}, resourceVersion: '{rv}'}}\n\
                 spec: {{maxReplicas: 1, scaleTargetRef: {{kind: Deployment, name: demo}}}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Apply(hpa("a", 1)),
            Apply(hpa("b", 2)),
            // The watch was down; b was deleted meanwhile, so the relist lists only a.
            Init,
            InitApply(hpa("a", 3)),
            InitDone,
            Apply(hpa("a", 4)), // unchanged: still remembered
            Apply(hpa("b", 5)), // forgotten, so seen afresh (were it still remembered, this would be dropped)
        ];
        assert_eq!(
            passed(events, Fingerprint::fingerprint).await,
            ["a@1", "b@2", "b@5"]
        );
    }

    #[tokio::test]
    async fn deployment_status_passes_when_replica_counts_change() {
        let deployment = |rv: u32, ready: u32, condition_time: &str| -> Deployment {
            object(&format!(
                "metadata: {{name: demo, uid: d, resourceVersion: '{rv}', generation: 1}}\n\
                 status: {{observedGeneration: 1, replicas: 2, readyReplicas: {ready}, \
                 conditions: [{{type: Progressing, status: 'True', lastUpdateTime: '{condition_time}'}}]}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Apply(deployment(1, 1, "2026-01-01T00:00:00Z")),
            Apply(deployment(2, 1, "2026-01-01T00:00:05Z")), // only a condition's time moved
            Apply(deployment(3, 2, "2026-01-01T00:00:05Z")), // a pod became ready
        ];
        assert_eq!(passed(events, super::deployment).await, ["d@1", "d@3"]);
    }

    #[tokio::test]
    async fn a_service_spec_edit_passes_though_services_have_no_generation() {
        let service = |rv: u32, port: u32, ingress: &str| -> k8s_openapi::api::core::v1::Service {
            object(&format!(
                "metadata: {{name: demo, uid: s, resourceVersion: '{rv}'}}\nspec: {{ports: [{{port: {port}}}]}}\n\
                 status: {{loadBalancer: {{ingress: [{{ip: '{ingress}'}}]}}}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Apply(service(1, 80, "10.0.0.1")),
            Apply(service(2, 80, "10.0.0.2")), // status only
            Apply(service(3, 81, "10.0.0.2")),
        ];
        assert_eq!(
            passed(events, Fingerprint::fingerprint).await,
            ["s@1", "s@3"]
        );
    }

    #[tokio::test]
    async fn a_label_or_owner_change_passes() {
        let hpa = |rv: u32, labels: &str, owner: &str| -> HorizontalPodAutoscaler {
            object(&format!(
                "metadata: {{name: demo, uid: h, resourceVersion: '{rv}', generation: 1, labels: {{{labels}}}, \
                 ownerReferences: [{{apiVersion: v1, kind: SandboxService, name: demo, uid: {owner}}}]}}"
            ))
        };
        use watcher::Event::*;
        let events = vec![
            Apply(hpa(1, "a: b", "o1")),
            Apply(hpa(2, "a: c", "o1")),
            Apply(hpa(3, "a: c", "o2")),
            Apply(hpa(4, "a: c", "o2")),
        ];
        assert_eq!(
            passed(events, Fingerprint::fingerprint).await,
            ["h@1", "h@2", "h@3"]
        );
    }
}
