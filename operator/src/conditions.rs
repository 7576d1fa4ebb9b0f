//! Status Conditions, pure: setting one keeps its `lastTransitionTime` unless its status
//! really changes, so a resync that finds nothing new moves no timestamp (and a watcher of
//! the resource sees no change).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types the operator reports.
pub const READY: &str = "Ready";
pub const REGISTERED: &str = "Registered";
pub const LAYERS_ASSIGNED: &str = "LayersAssigned";
pub const DRAINING: &str = "Draining";
/// The pod runs the current template (False while a rollout replaces it or waits).
pub const UP_TO_DATE: &str = "UpToDate";
pub const SPEC_VALID: &str = "SpecValid";

/// What one condition should say now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted<'a> {
    pub type_: &'a str,
    pub status: bool,
    pub reason: &'a str,
    pub message: String,
}

/// `conditions` with `wanted` set for `generation` at `now`: the transition time moves only
/// when the status changes; reason, message and generation follow what is wanted. Returns
/// whether the status changed (worth an Event).
pub fn set(
    conditions: &mut Vec<Condition>,
    wanted: Wanted<'_>,
    generation: Option<i64>,
    now: &Time,
) -> bool {
    let status = if wanted.status { "True" } else { "False" };
    match conditions.iter_mut().find(|c| c.type_ == wanted.type_) {
        Some(c) => {
            let changed = c.status != status;
            if changed {
                c.last_transition_time = now.clone();
                c.status = status.into();
            }
            c.reason = wanted.reason.into();
            c.message = wanted.message;
            c.observed_generation = generation;
            changed
        }
        None => {
            conditions.push(Condition {
                type_: wanted.type_.into(),
                status: status.into(),
                reason: wanted.reason.into(),
                message: wanted.message,
                last_transition_time: now.clone(),
                observed_generation: generation,
            });
            true
        }
    }
}

/// Whether `conditions` has `type_` True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The reason of `type_`, if it is set.
pub fn reason<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a str> {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.reason.as_str())
}

/// The message of `type_` (empty when absent).
pub fn message(conditions: &[Condition], type_: &str) -> String {
    conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    fn ready(status: bool, message: &str) -> Wanted<'static> {
        Wanted {
            type_: READY,
            status,
            reason: if status { "Loaded" } else { "Starting" },
            message: message.into(),
        }
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let mut c = Vec::new();
        assert!(set(
            &mut c,
            ready(false, "starting"),
            Some(1),
            &at("2026-01-01T00:00:00Z")
        ));
        // Same status, new message and generation: the time stays.
        assert!(!set(
            &mut c,
            ready(false, "measuring"),
            Some(2),
            &at("2026-01-01T00:01:00Z")
        ));
        assert_eq!(c[0].last_transition_time, at("2026-01-01T00:00:00Z"));
        assert_eq!(c[0].message, "measuring");
        assert_eq!(c[0].observed_generation, Some(2));
        assert!(set(
            &mut c,
            ready(true, "loaded"),
            Some(2),
            &at("2026-01-01T00:02:00Z")
        ));
        assert_eq!(c[0].last_transition_time, at("2026-01-01T00:02:00Z"));
        assert!(is_true(&c, READY));
        assert_eq!(c.len(), 1);
    }
}
