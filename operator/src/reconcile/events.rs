//! Events on a `SandboxService`: what [`crate::reconcile::status`] decides to tell the user,
//! published best effort.

use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Resource, ResourceExt};
use tracing::warn;

use crate::api::SandboxService;

/// An Event to publish on the CR: a bounded reason and a human note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub type_: EventType,
    /// PascalCase reason, bounded.
    pub reason: &'static str,
    /// Human-readable details.
    pub note: String,
}

/// The API server refuses an Event whose note is longer.
const MAX_NOTE_BYTES: usize = 1024;

/// Publish `notice` on `cr`. Best effort: a lost Event must not fail the reconcile.
pub async fn publish(recorder: &Recorder, cr: &SandboxService, notice: Notice) {
    let event = Event {
        type_: notice.type_,
        reason: notice.reason.to_string(),
        note: Some(truncate(notice.note, MAX_NOTE_BYTES)),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &cr.object_ref(&())).await {
        warn!(%error, name = %cr.name_any(), "publishing an Event failed");
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("äbc".to_string(), 1), "");
        assert_eq!(truncate("abc".to_string(), 2), "ab");
        assert_eq!(truncate("abc".to_string(), 5), "abc");
    }
}
