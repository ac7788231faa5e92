//! What the operator keeps about each `SandboxService` between reconciles: its consecutive
//! failures (for the backoff) and the last status it wrote.
//!
//! The status is remembered because the Controller hands `reconcile` the CR from its watch
//! cache, which may not have seen the operator's own previous status patch yet. Comparing with
//! that stale copy would write the same status again, repeat its Events and move
//! `lastTransitionTime`; [`CrHistory::known_status`] gives the newer of the two instead.
//!
//! Entries are keyed by namespace/name and carry the CR's uid, so a CR deleted and created
//! again under the same name starts afresh. They are forgotten when the CR is being deleted
//! ([`CrHistory::forget`]) or has left the cache ([`CrHistory::forget_missing`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::api::{SandboxService, SandboxServiceStatus};

/// Per-CR failures and last written status; see the module documentation.
#[derive(Debug, Default)]
pub struct CrHistory {
    entries: Mutex<HashMap<ObjectRef<SandboxService>, Entry>>,
}

#[derive(Debug, Default)]
struct Entry {
    uid: String,
    failures: u32,
    written: Option<SandboxServiceStatus>,
    /// The note of the last Warning published for a failure, until a reconcile succeeds.
    warned: Option<String>,
}

impl CrHistory {
    /// Record one more failure of `cr`; returns how many in a row.
    pub fn record_failure(&self, cr: &SandboxService) -> u32 {
        let mut entries = self.lock();
        let entry = entry(&mut entries, cr);
        entry.failures = entry.failures.saturating_add(1);
        entry.failures
    }

    /// `cr` reconciled successfully: its next failure backs off from the start again, and is
    /// warned about again.
    pub fn reset_failures(&self, cr: &SandboxService) {
        if let Some(entry) = self.lock().get_mut(&ObjectRef::from_obj(cr)) {
            entry.failures = 0;
            entry.warned = None;
        }
    }

    /// Whether a failure of `cr` with `note` deserves a Warning: not when the last one
    /// published since the last success said the same. Remembers `note` as published.
    pub fn warning_is_new(&self, cr: &SandboxService, note: &str) -> bool {
        let mut entries = self.lock();
        let entry = entry(&mut entries, cr);
        if entry.warned.as_deref() == Some(note) {
            return false;
        }
        entry.warned = Some(note.to_string());
        true
    }

    /// How many CRs are remembered.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no CR is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The operator has just written `status` to `cr`.
    pub fn remember_written(&self, cr: &SandboxService, status: &SandboxServiceStatus) {
        entry(&mut self.lock(), cr).written = Some(status.clone());
    }

    /// The newer of the cached CR's status and the status last written to it.
    ///
    /// The operator is the only writer of the status, so the last written one is current
    /// unless the cache shows a later `observedGeneration` (only possible if another operator
    /// process wrote it since). A status edited by hand for the same generation is therefore
    /// corrected at the next change, not at once: the price of never trusting a stale cache.
    pub fn known_status(&self, cr: &SandboxService) -> Option<SandboxServiceStatus> {
        let entries = self.lock();
        let written = entries
            .get(&ObjectRef::from_obj(cr))
            .filter(|entry| Some(entry.uid.as_str()) == cr.uid().as_deref())
            .and_then(|entry| entry.written.as_ref());
        match (cr.status.as_ref(), written) {
            (Some(cached), Some(written))
                if cached.observed_generation > written.observed_generation =>
            {
                Some(cached.clone())
            }
            (cached, written) => written.or(cached).cloned(),
        }
    }

    /// Forget `cr` entirely, e.g. because it is being deleted.
    pub fn forget(&self, cr: &SandboxService) {
        self.lock().remove(&ObjectRef::from_obj(cr));
    }

    /// Forget every CR that is no longer in the Controller's `cache`, i.e. was deleted.
    pub fn forget_missing(&self, cache: &Store<SandboxService>) {
        self.lock().retain(|key, entry| {
            cache
                .get(key)
                .is_some_and(|cr| cr.uid().as_deref() == Some(entry.uid.as_str()))
        });
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<ObjectRef<SandboxService>, Entry>> {
        // A panic while holding the lock cannot leave an entry half-updated: recover the map.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The entry of `cr`, replaced by a fresh one if it belonged to an earlier CR of that name.
fn entry<'a>(
    entries: &'a mut HashMap<ObjectRef<SandboxService>, Entry>,
    cr: &SandboxService,
) -> &'a mut Entry {
    let uid = cr.uid().unwrap_or_default();
    let entry = entries.entry(ObjectRef::from_obj(cr)).or_default();
    if entry.uid != uid {
        *entry = Entry {
            uid,
            ..Entry::default()
        };
    }
    entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    fn cr(uid: &str, observed_generation: Option<i64>) -> SandboxService {
        let mut cr: SandboxService = serde_yaml::from_str(&format!(
            "apiVersion: sandbox.perf.dev/v1alpha1\nkind: SandboxService\nmetadata: {{name: demo, namespace: apps, uid: {uid}, generation: 2}}\nspec: {{}}"
        ))
        .unwrap();
        cr.status = observed_generation.map(|generation| SandboxServiceStatus {
            observed_generation: Some(generation),
            ..Default::default()
        });
        cr
    }

    fn written(generation: i64, replicas: i32) -> SandboxServiceStatus {
        SandboxServiceStatus {
            observed_generation: Some(generation),
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn the_last_written_status_wins_over_a_stale_cache() {
        let history = CrHistory::default();
        let stale = cr("u1", None);
        assert_eq!(history.known_status(&stale), None);
        history.remember_written(&stale, &written(2, 1));
        assert_eq!(history.known_status(&stale), Some(written(2, 1)));
        // The cache caught up with an older generation only: still the written one.
        assert_eq!(
            history.known_status(&cr("u1", Some(1))),
            Some(written(2, 1))
        );
        // Someone wrote a later generation: the cache wins.
        let later = cr("u1", Some(3));
        assert_eq!(history.known_status(&later), later.status);
        // A new CR under the same name knows nothing of the old one's status.
        assert_eq!(history.known_status(&cr("u2", None)), None);
    }

    #[test]
    fn failures_count_per_uid_and_reset() {
        let history = CrHistory::default();
        let first = cr("u1", None);
        assert_eq!(history.record_failure(&first), 1);
        assert_eq!(history.record_failure(&first), 2);
        history.reset_failures(&first);
        assert_eq!(history.record_failure(&first), 1);
        assert_eq!(history.record_failure(&cr("u2", None)), 1, "recreated CR");
    }

    #[test]
    fn a_warning_is_new_once_per_error_until_a_success() {
        let history = CrHistory::default();
        let cr = cr("u1", None);
        assert!(history.warning_is_new(&cr, "apply failed: 503"));
        assert!(!history.warning_is_new(&cr, "apply failed: 503"), "a retry");
        assert!(
            history.warning_is_new(&cr, "status failed: 500"),
            "another error"
        );
        history.reset_failures(&cr);
        assert!(
            history.warning_is_new(&cr, "status failed: 500"),
            "after a success"
        );
    }

    #[test]
    fn deleted_crs_are_forgotten() {
        // Forgotten: the failure count starts over and the written status is no longer
        // preferred over the cache's.
        let history = CrHistory::default();
        let cr = cr("u1", None);
        history.record_failure(&cr);
        history.remember_written(&cr, &written(2, 1));
        history.forget(&cr);
        assert_eq!(history.known_status(&cr), None);
        assert_eq!(history.record_failure(&cr), 1);

        let mut writer = Writer::<SandboxService>::default();
        let cache = writer.as_reader();
        writer.apply_watcher_event(&watcher::Event::Apply(cr.clone()));
        history.remember_written(&cr, &written(2, 1));
        history.forget_missing(&cache);
        assert_eq!(
            history.known_status(&cr),
            Some(written(2, 1)),
            "still in the cache"
        );
        assert_eq!(history.record_failure(&cr), 2, "still in the cache");
        writer.apply_watcher_event(&watcher::Event::Delete(cr.clone()));
        history.forget_missing(&cache);
        assert_eq!(history.known_status(&cr), None);
        assert_eq!(history.record_failure(&cr), 1);
    }
}
