//! The Lease's record and what a candidate makes of it: client-go's rules, as pure functions.

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// What a candidate does with the Lease record it read.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Claim {
    /// Write this record: it renews this replica's hold, or takes a free or expired Lease.
    Write(LeaseSpec),
    /// Another replica holds the Lease, and its hold has not expired.
    HeldBy(String),
}

/// What `identity` writes to hold the Lease for `duration_seconds` from `now`, given the
/// record it read (`None`: there is no Lease yet) and whether that record's hold has run out
/// as this replica has observed it (see [`Observation`]).
///
/// A renewal keeps `acquireTime` and the transition count; a takeover of a free (holder
/// cleared by a release) or expired Lease starts a new hold and counts a transition.
pub(super) fn claim(
    current: Option<&LeaseSpec>,
    identity: &str,
    duration_seconds: i32,
    now: Timestamp,
    hold_expired: bool,
) -> Claim {
    let hold = |acquire_time: Timestamp, lease_transitions: i32| LeaseSpec {
        holder_identity: Some(identity.to_owned()),
        acquire_time: Some(MicroTime(acquire_time)),
        renew_time: Some(MicroTime(now)),
        lease_duration_seconds: Some(duration_seconds),
        lease_transitions: Some(lease_transitions),
        ..LeaseSpec::default()
    };
    let Some(current) = current else {
        return Claim::Write(hold(now, 0));
    };
    let transitions = current.lease_transitions.unwrap_or(0);
    match current.holder_identity.as_deref().filter(|h| !h.is_empty()) {
        Some(holder) if holder == identity => {
            let acquired = current.acquire_time.as_ref().map_or(now, |t| t.0);
            Claim::Write(hold(acquired, transitions))
        }
        Some(holder) if !hold_expired && holds(current) => Claim::HeldBy(holder.to_owned()),
        _ => Claim::Write(hold(now, transitions.saturating_add(1))),
    }
}

/// Whether a record names a hold at all: one without `renewTime` or duration holds nothing.
fn holds(spec: &LeaseSpec) -> bool {
    spec.renew_time.is_some() && spec.lease_duration_seconds.is_some()
}

/// When this replica last saw the Lease's record change, on its own monotonic clock, as
/// client-go times expiry: another replica's hold has run out once its record has stayed the
/// same for its `leaseDurationSeconds`, whatever the clocks that wrote `renewTime` say. So
/// clock skew between replicas cannot make two leaders; a replica that has just started waits
/// one lease duration from its first look before it takes over a Lease it did not see renewed.
#[derive(Debug, Clone, Default)]
pub(super) struct Observation {
    last: Option<(LeaseSpec, Instant)>,
}

impl Observation {
    /// Record the record read at `now`; whether its hold has run out.
    pub(super) fn expired(&mut self, current: Option<&LeaseSpec>, now: Instant) -> bool {
        let Some(current) = current else {
            self.last = None;
            return true;
        };
        let since = match &self.last {
            Some((seen, since)) if seen == current => *since,
            _ => {
                self.last = Some((current.clone(), now));
                now
            }
        };
        let duration = current.lease_duration_seconds.unwrap_or(0).max(0);
        now.duration_since(since) > Duration::from_secs(u64::try_from(duration).unwrap_or(0))
    }
}

/// The record a release leaves: no holder and no hold times; the transition count stays.
pub(super) fn released(current: &LeaseSpec) -> LeaseSpec {
    LeaseSpec {
        lease_transitions: current.lease_transitions,
        ..LeaseSpec::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "operator-0";
    const OTHER: &str = "operator-1";

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    /// A record held by `holder`, acquired at 0 s, renewed at `renewed` s, valid for 15 s.
    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        serde_yaml::from_str(&format!(
            "{{holderIdentity: {holder}, acquireTime: '{}', renewTime: '{}', leaseDurationSeconds: 15, leaseTransitions: 3}}",
            at(0),
            at(renewed)
        ))
        .unwrap()
    }

    fn written(claim: Claim) -> LeaseSpec {
        match claim {
            Claim::Write(spec) => spec,
            Claim::HeldBy(holder) => panic!("held by {holder}, not written"),
        }
    }

    #[test]
    fn a_missing_lease_is_created_held() {
        let spec = written(claim(None, ME, 15, at(7), true));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(7))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(7))));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
    }

    #[test]
    fn a_renewal_moves_renew_time_only() {
        let spec = written(claim(Some(&held_by(ME, 5)), ME, 15, at(10), false));
        assert_eq!(spec.renew_time, Some(MicroTime(at(10))));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.lease_transitions, Some(3));
    }

    #[test]
    fn another_replicas_hold_is_left_until_it_expires() {
        let lease = held_by(OTHER, 5);
        assert_eq!(
            claim(Some(&lease), ME, 15, at(6), false),
            Claim::HeldBy(OTHER.into())
        );
        let spec = written(claim(Some(&lease), ME, 15, at(21), true));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(21))));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let free = released(&held_by(OTHER, 5));
        assert_eq!(free.holder_identity, None);
        assert_eq!(free.renew_time, None);
        assert_eq!(free.lease_transitions, Some(3));
        let spec = written(claim(Some(&free), ME, 15, at(6), false));
        assert_eq!(spec.holder_identity.as_deref(), Some(ME));
        assert_eq!(spec.lease_transitions, Some(4));

        // client-go's release writes an empty holder rather than none.
        let mut emptied = held_by(OTHER, 5);
        emptied.holder_identity = Some(String::new());
        assert!(matches!(
            claim(Some(&emptied), ME, 15, at(6), false),
            Claim::Write(_)
        ));
    }

    #[test]
    fn a_hold_without_renew_time_holds_nothing() {
        let mut lease = held_by(OTHER, 5);
        lease.renew_time = None;
        assert!(matches!(
            claim(Some(&lease), ME, 15, at(6), false),
            Claim::Write(_)
        ));
    }

    #[test]
    fn a_hold_expires_a_lease_duration_after_its_record_last_changed_here() {
        let start = Instant::now();
        let after = |seconds: u64| start + Duration::from_secs(seconds);
        let mut observation = Observation::default();
        // Whatever its renewTime says (written by another clock), it counts from now.
        let old = held_by(OTHER, -3600);
        assert!(!observation.expired(Some(&old), after(0)));
        assert!(!observation.expired(Some(&old), after(15)));
        assert!(observation.expired(Some(&old), after(16)));

        // A renewal starts the count again.
        let renewed = held_by(OTHER, -3590);
        assert!(!observation.expired(Some(&renewed), after(16)));
        assert!(!observation.expired(Some(&renewed), after(30)));
        assert!(observation.expired(Some(&renewed), after(32)));

        // Its own duration counts: 60 s here.
        let mut long = held_by(OTHER, 0);
        long.lease_duration_seconds = Some(60);
        assert!(!observation.expired(Some(&long), after(40)));
        assert!(!observation.expired(Some(&long), after(99)));
        assert!(observation.expired(Some(&long), after(101)));
    }
}
