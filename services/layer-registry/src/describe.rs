//! What an operator needs of each node, from the stored nodes and the published assignment:
//! its state, span and role, whether it has loaded that span, and how far its drain is.
//! Pure: the service reads both and calls [`describe`].
//!
//! A drain hands over the span the node held when it began: a layer of it is done once two
//! *other* live nodes report it loaded (assigned and loaded in the current architecture). Two,
//! so that the swarm keeps its replica floor when the draining node leaves; a swarm that has
//! no two other nodes for a layer never finishes, and the caller's timeout decides.

use neuroshard_proto::common::v1::{LayerSpan, Role};
use neuroshard_proto::registry::v1::{
    AssignmentSnapshot, NodeAssignment, NodeDescription, NodeState,
};

use crate::liveness::LivenessPolicy;
use crate::stored::StoredNode;

/// Other loaded holders a drained layer needs.
pub const DRAIN_HOLDERS: usize = 2;

/// One description per id in `ids` (every stored node when empty), in that order.
pub fn describe(
    nodes: &[StoredNode],
    snapshot: &AssignmentSnapshot,
    liveness: LivenessPolicy,
    ids: &[String],
) -> Vec<NodeDescription> {
    let view = View::new(nodes, snapshot, liveness);
    if ids.is_empty() {
        return nodes.iter().map(|n| view.describe(&n.node_id)).collect();
    }
    ids.iter().map(|id| view.describe(id)).collect()
}

/// Each stored node with its state now and its assignment.
struct View<'a> {
    nodes: Vec<(&'a StoredNode, NodeState, Option<&'a NodeAssignment>)>,
    architecture_version: Option<u64>,
}

impl<'a> View<'a> {
    fn new(
        nodes: &'a [StoredNode],
        snapshot: &'a AssignmentSnapshot,
        liveness: LivenessPolicy,
    ) -> Self {
        Self {
            nodes: nodes
                .iter()
                .map(|n| {
                    (
                        n,
                        liveness.state(n.heartbeat_age_ms, n.draining),
                        snapshot.nodes.iter().find(|a| a.node_id == n.node_id),
                    )
                })
                .collect(),
            architecture_version: snapshot.architecture.as_ref().map(|a| a.version),
        }
    }

    /// Whether `node` reports loaded exactly the span its assignment gives it.
    fn loaded(&self, node: &StoredNode, assigned: Option<&NodeAssignment>) -> bool {
        match (
            assigned.and_then(|a| a.span),
            node.loaded,
            self.architecture_version,
        ) {
            (Some(span), Some(loaded), Some(version)) => {
                loaded.start == span.start
                    && loaded.end == span.end
                    && loaded.architecture_version == version
            }
            _ => false,
        }
    }

    fn describe(&self, id: &str) -> NodeDescription {
        let Some(&(node, state, assigned)) = self.nodes.iter().find(|(n, ..)| n.node_id == id)
        else {
            return NodeDescription {
                node_id: id.to_string(),
                ..NodeDescription::default()
            };
        };
        let role = assigned.map_or(Role::Unspecified as i32, |a| a.role);
        let (pending, progressing) = match (node.draining, node.drain_span) {
            (true, Some((start, end))) => self.drain_progress(id, start, end),
            _ => (Vec::new(), false),
        };
        NodeDescription {
            node_id: id.to_string(),
            registered: true,
            state: state as i32,
            span: assigned.and_then(|a| a.span),
            role,
            heartbeat_age_ms: node.heartbeat_age_ms,
            loaded: self.loaded(node, assigned),
            loaded_span: node.loaded.map(|l| LayerSpan {
                start: l.start,
                end: l.end,
            }),
            preferred_role: node.preferred_role,
            role_note: role_note(node.preferred_role, role, node.draining),
            drain_pending_layers: pending,
            drain_progressing: progressing,
        }
    }

    /// The layers of `[start, end)` without [`DRAIN_HOLDERS`] other live, loaded holders, and
    /// whether another live node assigned one of them is still loading it.
    fn drain_progress(&self, id: &str, start: u32, end: u32) -> (Vec<u32>, bool) {
        let others: Vec<_> = self
            .nodes
            .iter()
            .filter(|(n, state, _)| n.node_id != id && *state == NodeState::Live)
            .filter_map(|&(n, _, assigned)| {
                let span = assigned.and_then(|a| a.span)?;
                Some((span, self.loaded(n, assigned)))
            })
            .collect();
        let holds = |span: &LayerSpan, layer: u32| span.start <= layer && layer < span.end;
        let pending: Vec<u32> = (start..end)
            .filter(|&layer| {
                others
                    .iter()
                    .filter(|(span, loaded)| *loaded && holds(span, layer))
                    .count()
                    < DRAIN_HOLDERS
            })
            .collect();
        let progressing = others
            .iter()
            .any(|(span, loaded)| !loaded && pending.iter().any(|&layer| holds(span, layer)));
        (pending, progressing)
    }
}

/// Why a node does not have the role it prefers (empty when it does or prefers none).
fn role_note(preferred: i32, role: i32, draining: bool) -> String {
    let name = |r: i32| {
        Role::try_from(r)
            .unwrap_or(Role::Unspecified)
            .as_str_name()
            .trim_start_matches("ROLE_")
            .to_lowercase()
    };
    if preferred == Role::Unspecified as i32 || preferred == role {
        return String::new();
    }
    // A full-model node plays every role.
    if role == Role::Full as i32 {
        return String::new();
    }
    if draining {
        return "draining: it holds no layers".into();
    }
    if role == Role::Unspecified as i32 {
        return format!(
            "prefers {}, holds no layers: the model is covered without it",
            name(preferred)
        );
    }
    format!(
        "prefers {}, placed as {}: no {} position with room for its memory was free",
        name(preferred),
        name(role),
        name(preferred)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stored::LoadedSpan;

    const LIVENESS: LivenessPolicy = LivenessPolicy {
        suspect_after_ms: 15_000,
        dead_after_ms: 30_000,
    };

    fn stored(id: &str, loaded: Option<(u32, u32)>) -> StoredNode {
        StoredNode {
            heartbeat_age_ms: 100,
            loaded: loaded.map(|(start, end)| LoadedSpan {
                start,
                end,
                architecture_version: 1,
            }),
            ..StoredNode::for_test(id)
        }
    }

    fn assigned(id: &str, span: Option<(u32, u32)>, role: Role) -> NodeAssignment {
        NodeAssignment {
            node_id: id.into(),
            span: span.map(|(start, end)| LayerSpan { start, end }),
            role: role as i32,
            ..NodeAssignment::default()
        }
    }

    fn snapshot(nodes: Vec<NodeAssignment>) -> AssignmentSnapshot {
        AssignmentSnapshot {
            version: 7,
            architecture: Some(neuroshard_proto::common::v1::Architecture {
                version: 1,
                ..Default::default()
            }),
            nodes,
            ..AssignmentSnapshot::default()
        }
    }

    #[test]
    fn loaded_means_the_assigned_span_of_this_architecture() {
        let nodes = vec![
            stored("a", Some((0, 4))),
            stored("b", Some((0, 2))),
            stored("c", None),
        ];
        let snap = snapshot(vec![
            assigned("a", Some((0, 4)), Role::Full),
            assigned("b", Some((0, 4)), Role::Full),
            assigned("c", Some((0, 4)), Role::Full),
        ]);
        let d = describe(
            &nodes,
            &snap,
            LIVENESS,
            &["a".into(), "b".into(), "c".into(), "z".into()],
        );
        assert!(d[0].registered && d[0].loaded);
        assert!(!d[1].loaded, "a stale span is not loaded");
        assert!(!d[2].loaded);
        assert!(!d[3].registered);
        assert_eq!(d[3].node_id, "z");
        // Another architecture version: nothing it loaded counts.
        let mut newer = snap.clone();
        newer.architecture.as_mut().unwrap().version = 2;
        assert!(!describe(&nodes, &newer, LIVENESS, &["a".into()])[0].loaded);
        // Everything, when no ids are asked for.
        assert_eq!(describe(&nodes, &snap, LIVENESS, &[]).len(), 3);
    }

    #[test]
    fn a_drain_is_done_when_every_layer_has_two_other_loaded_live_holders() {
        let mut draining = stored("d", Some((0, 2)));
        draining.draining = true;
        draining.drain_span = Some((0, 2));
        let mut nodes = vec![
            draining,
            stored("a", Some((0, 2))),
            stored("b", None),
            stored("c", Some((0, 1))),
        ];
        let snap = snapshot(vec![
            assigned("d", None, Role::Unspecified),
            assigned("a", Some((0, 2)), Role::Driver),
            assigned("b", Some((0, 2)), Role::Driver),
            assigned("c", Some((0, 1)), Role::Driver),
        ]);
        let ask = ["d".to_string()];
        let d = &describe(&nodes, &snap, LIVENESS, &ask)[0];
        // Layer 0: a and c loaded. Layer 1: only a; b is assigned and still loading.
        assert_eq!(d.drain_pending_layers, vec![1]);
        assert!(d.drain_progressing);
        assert_eq!(d.state, NodeState::Draining as i32);
        nodes[2].loaded = nodes[1].loaded;
        let d = &describe(&nodes, &snap, LIVENESS, &ask)[0];
        assert!(d.drain_pending_layers.is_empty());
        // A holder whose heartbeats are late does not count: layer 0 keeps b and c.
        nodes[1].heartbeat_age_ms = 20_000;
        let d = &describe(&nodes, &snap, LIVENESS, &ask)[0];
        assert_eq!(d.drain_pending_layers, vec![1]);
        assert!(
            !d.drain_progressing,
            "nobody else is loading: waiting changes nothing"
        );
    }

    #[test]
    fn role_preferences_unmet_are_explained() {
        let mut node = stored("a", Some((1, 2)));
        node.preferred_role = Role::Driver as i32;
        let snap = snapshot(vec![assigned("a", Some((1, 2)), Role::Worker)]);
        let d = &describe(std::slice::from_ref(&node), &snap, LIVENESS, &[])[0];
        assert_eq!(d.preferred_role, Role::Driver as i32);
        assert!(
            d.role_note.contains("prefers driver, placed as worker"),
            "{}",
            d.role_note
        );
        let met = snapshot(vec![assigned("a", Some((0, 2)), Role::Driver)]);
        assert!(
            describe(&[node], &met, LIVENESS, &[])[0]
                .role_note
                .is_empty()
        );
    }
}
