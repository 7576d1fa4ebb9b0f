//! What the registry says of a node, turned into its status: the `Registered`,
//! `LayersAssigned` and `Ready` Conditions, the phase, span, role and last heartbeat. Pure:
//! the reconciler asks the registry and applies what [`status_from`] returns.
//!
//! `Ready` means serving: registered, live, assigned a span and reporting that span loaded.
//! A pod that is Running (or even passes its readiness probe) but is not registered is not
//! Ready, so a rollout never counts it as done.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use neuroshard_proto::common::v1::Role;
use neuroshard_proto::registry::v1::{NodeDescription, NodeState};

use crate::conditions::{self, Wanted};

/// What the registry's view sets in the status.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub conditions: Vec<Wanted<'static>>,
    pub phase: &'static str,
    pub span: Option<String>,
    pub role: Option<String>,
    pub last_heartbeat: Option<String>,
    /// Serving its span (the `Ready` Condition).
    pub ready: bool,
}

fn wanted(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
) -> Wanted<'static> {
    Wanted {
        type_,
        status,
        reason,
        message,
    }
}

/// `[start, end)` as the status prints a span.
pub fn span_text(start: u32, end: u32) -> String {
    format!("[{start}, {end})")
}

/// A wire role's name as the spec spells roles.
pub fn role_name(role: i32) -> &'static str {
    match Role::try_from(role) {
        Ok(Role::Driver) => "driver",
        Ok(Role::Worker) => "worker",
        Ok(Role::Validator) => "validator",
        Ok(Role::Full) => "full",
        _ => "none",
    }
}

/// The status the registry's description `d` of the node implies at `now`; `None`: the
/// registry could not be asked (`why`), which says nothing about the node and leaves it
/// not Ready.
pub fn status_from(
    d: Option<&NodeDescription>,
    why: &str,
    pod_ready: bool,
    now: &Time,
) -> Observed {
    let Some(d) = d else {
        let message = format!("the registry could not be asked: {why}");
        return Observed {
            conditions: vec![wanted(
                conditions::READY,
                false,
                "RegistryUnreachable",
                message,
            )],
            phase: "Starting",
            span: None,
            role: None,
            last_heartbeat: None,
            ready: false,
        };
    };
    if !d.registered {
        return Observed {
            conditions: vec![
                wanted(
                    conditions::REGISTERED,
                    false,
                    "NotRegistered",
                    "the worker has not registered with the registry yet".into(),
                ),
                wanted(
                    conditions::LAYERS_ASSIGNED,
                    false,
                    "NotRegistered",
                    String::new(),
                ),
                wanted(
                    conditions::READY,
                    false,
                    "NotRegistered",
                    "not registered: it gets no traffic".into(),
                ),
            ],
            phase: "Starting",
            span: None,
            role: None,
            last_heartbeat: None,
            ready: false,
        };
    }
    let state = NodeState::try_from(d.state).unwrap_or(NodeState::Unspecified);
    let heartbeat = heartbeat_time(now, d.heartbeat_age_ms);
    let span = d.span.map(|s| span_text(s.start, s.end));
    let assigned = match &span {
        Some(span) => {
            let mut message = format!("layers {span} as {}", role_name(d.role));
            if !d.role_note.is_empty() {
                message = format!("{message}; {}", d.role_note);
            }
            wanted(conditions::LAYERS_ASSIGNED, true, "Assigned", message)
        }
        None => {
            let message = if d.role_note.is_empty() {
                "the registry assigns it no layers (the model is covered without it)".to_string()
            } else {
                d.role_note.clone()
            };
            wanted(conditions::LAYERS_ASSIGNED, false, "NoLayers", message)
        }
    };
    let (ready, reason, message) = match (state, &span, d.loaded) {
        // The registry still sees the old pod serving while its replacement comes up: a
        // rollout is not done until the new pod is ready too.
        (NodeState::Live, Some(_), true) if !pod_ready => (
            false,
            "PodNotReady",
            "its pod is starting or being replaced".into(),
        ),
        (NodeState::Live, Some(span), true) => (true, "Serving", format!("serving layers {span}")),
        (NodeState::Live, Some(span), false) => {
            (false, "Loading", format!("loading layers {span}"))
        }
        (NodeState::Live, None, _) => (false, "NoLayers", "holds no layers".into()),
        (NodeState::Suspect, ..) => (
            false,
            "HeartbeatLate",
            format!("last heartbeat {} ms ago", d.heartbeat_age_ms),
        ),
        (NodeState::Dead, ..) => (
            false,
            "HeartbeatStopped",
            format!("no heartbeat for {} ms", d.heartbeat_age_ms),
        ),
        (NodeState::Draining, ..) => (false, "Draining", "handing its layers over".into()),
        (NodeState::Unspecified, ..) => (false, "Unknown", "the registry gave no state".into()),
    };
    let phase = match (state, ready) {
        (_, true) => "Ready",
        (NodeState::Draining, _) => "Draining",
        (NodeState::Dead, _) => "Lost",
        _ => "Registered",
    };
    Observed {
        conditions: vec![
            wanted(
                conditions::REGISTERED,
                true,
                "Registered",
                format!("registered as {}", d.node_id),
            ),
            assigned,
            wanted(conditions::READY, ready, reason, message),
        ],
        phase,
        span,
        role: d.span.map(|_| role_name(d.role).to_string()),
        last_heartbeat: heartbeat,
        ready,
    }
}

/// `now` less `age_ms`, RFC 3339 (seconds: the status is not a clock).
fn heartbeat_time(now: &Time, age_ms: u64) -> Option<String> {
    let age = k8s_openapi::jiff::SignedDuration::from_millis(i64::try_from(age_ms).ok()?);
    let at = now.0.checked_sub(age).ok()?;
    Some(at.round(k8s_openapi::jiff::Unit::Second).ok()?.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_proto::common::v1::LayerSpan;

    fn now() -> Time {
        Time("2026-12-03T12:00:00Z".parse().unwrap())
    }

    fn described(state: NodeState, span: Option<(u32, u32)>, loaded: bool) -> NodeDescription {
        NodeDescription {
            node_id: "ab".repeat(20),
            registered: true,
            state: state as i32,
            span: span.map(|(start, end)| LayerSpan { start, end }),
            role: Role::Driver as i32,
            heartbeat_age_ms: 1_500,
            loaded,
            ..NodeDescription::default()
        }
    }

    fn condition<'a>(o: &'a Observed, type_: &str) -> &'a Wanted<'static> {
        o.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn ready_only_when_live_assigned_and_loaded() {
        let o = status_from(
            Some(&described(NodeState::Live, Some((0, 2)), true)),
            "",
            true,
            &now(),
        );
        assert!(o.ready);
        assert_eq!(o.phase, "Ready");
        assert_eq!(o.span.as_deref(), Some("[0, 2)"));
        assert_eq!(o.role.as_deref(), Some("driver"));
        assert_eq!(o.last_heartbeat.as_deref(), Some("2026-12-03T11:59:59Z"));
        assert!(condition(&o, conditions::LAYERS_ASSIGNED).status);

        let loading = status_from(
            Some(&described(NodeState::Live, Some((0, 2)), false)),
            "",
            true,
            &now(),
        );
        assert!(!loading.ready);
        assert_eq!(condition(&loading, conditions::READY).reason, "Loading");
        assert_eq!(loading.phase, "Registered");

        let late = status_from(
            Some(&described(NodeState::Suspect, Some((0, 2)), true)),
            "",
            true,
            &now(),
        );
        assert!(!late.ready);
        assert_eq!(condition(&late, conditions::READY).reason, "HeartbeatLate");
        let spare = status_from(
            Some(&described(NodeState::Live, None, false)),
            "",
            true,
            &now(),
        );
        // Loaded by the registry's view, but the pod is being replaced: not Ready (a rollout
        // is never reported done before the new pod serves).
        let replacing = status_from(
            Some(&described(NodeState::Live, Some((0, 2)), true)),
            "",
            false,
            &now(),
        );
        assert!(!replacing.ready);
        assert_eq!(
            condition(&replacing, conditions::READY).reason,
            "PodNotReady"
        );
        assert!(!condition(&spare, conditions::LAYERS_ASSIGNED).status);
        assert!(!spare.ready);
    }

    #[test]
    fn not_registered_and_unreachable_are_not_ready_and_say_why() {
        let unknown = NodeDescription {
            node_id: "cd".repeat(20),
            ..NodeDescription::default()
        };
        let o = status_from(Some(&unknown), "", true, &now());
        assert!(!o.ready);
        assert!(!condition(&o, conditions::REGISTERED).status);
        assert!(
            condition(&o, conditions::READY)
                .message
                .contains("no traffic")
        );
        let o = status_from(None, "connection refused", true, &now());
        assert!(!o.ready);
        assert!(
            condition(&o, conditions::READY)
                .message
                .contains("connection refused")
        );
    }

    #[test]
    fn an_unmet_role_preference_is_in_the_assigned_condition() {
        let mut d = described(NodeState::Live, Some((1, 3)), true);
        d.role = Role::Worker as i32;
        d.role_note = "prefers driver, placed as worker: no driver position was free".into();
        let o = status_from(Some(&d), "", true, &now());
        assert!(
            condition(&o, conditions::LAYERS_ASSIGNED)
                .message
                .contains("prefers driver")
        );
    }
}
