//! Labels and the equality selectors of Services, shared by the spreaders, the registry and the
//! scrape targets.

use std::collections::BTreeMap;

/// Labels as Kubernetes stores them.
pub type Labels = BTreeMap<String, String>;

/// Whether every label of `selector` is in `labels`: a Service's `spec.selector`, which has only
/// equality. The spreader asks for every request, so no `kube::core::Selector` is built per call.
pub fn selects(selector: &Labels, labels: &Labels) -> bool {
    selector
        .iter()
        .all(|(key, value)| labels.get(key) == Some(value))
}
