//! Span-aware rollouts, pure: whether a node whose pod template changed may restart now.
//!
//! A restart takes the node's layers out of service until the new pod has registered and
//! loaded them, so it may begin only if every layer it holds keeps at least one other holder
//! that is serving (live, loaded, not itself restarting), and two where the swarm has two
//! other serving-capable holders. The reconciler decides one node at a time (under one lock)
//! and a node counts as restarting from the moment its new template is applied until its
//! StatefulSet reports the new pod ready, so two holders of the same layers never restart
//! together however many templates change at once. A node that serves nothing (not
//! registered, not loaded, no layers) may always restart: nothing depends on it.

use k8s_openapi::api::apps::v1::StatefulSet;

/// One node as the rollout sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    pub node_id: String,
    /// The layers it is assigned, `[start, end)`.
    pub span: Option<(u32, u32)>,
    /// Live, and has loaded its span (the registry's view).
    pub loaded: bool,
    /// Its pod is being replaced (see [`restarting`]).
    pub restarting: bool,
}

impl NodeView {
    fn holds(&self, layer: u32) -> bool {
        self.span.is_some_and(|(s, e)| s <= layer && layer < e)
    }

    fn serving(&self) -> bool {
        self.loaded && !self.restarting
    }
}

/// What to do with a node's pod template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The running template is the desired one.
    Current,
    /// Apply the new template: the pod restarts.
    Update,
    /// Keep the running template for now: these layers would be left short.
    Wait { layers: Vec<u32>, message: String },
}

/// Whether `me` (whose template differs from the desired one when `changed`) may restart,
/// given every node of the swarm in `views` (`me` included).
pub fn decide(me: &str, changed: bool, views: &[NodeView]) -> Decision {
    if !changed {
        return Decision::Current;
    }
    let Some(mine) = views.iter().find(|v| v.node_id == me) else {
        // Unknown to the registry: it serves nothing yet.
        return Decision::Update;
    };
    let Some((start, end)) = mine.span.filter(|_| mine.serving()) else {
        return Decision::Update;
    };
    let others: Vec<&NodeView> = views.iter().filter(|v| v.node_id != me).collect();
    let short: Vec<u32> = (start..end)
        .filter(|&layer| {
            // Holders that serve, or will once their own restart is done (a dead one is
            // not waited for: the registry moves its layers).
            let capable = others
                .iter()
                .filter(|v| (v.loaded || v.restarting) && v.holds(layer))
                .count();
            let serving = others
                .iter()
                .filter(|v| v.serving() && v.holds(layer))
                .count();
            serving < capable.clamp(1, 2)
        })
        .collect();
    if short.is_empty() {
        return Decision::Update;
    }
    let message = format!(
        "waiting to restart: layers {short:?} would be left without enough serving holders (another holder is restarting, or this node is their only one)"
    );
    Decision::Wait {
        layers: short,
        message,
    }
}

/// Whether `sts`'s pod is being replaced: the controller has not seen its newest spec yet,
/// or has not finished moving its pod to the newest revision, or the pod is not ready.
pub fn restarting(sts: &StatefulSet) -> bool {
    let generation = sts.metadata.generation.unwrap_or(0);
    let wanted = sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &sts.status else {
        return true;
    };
    status.observed_generation.unwrap_or(0) < generation
        || status.update_revision != status.current_revision
        || status.updated_replicas.unwrap_or(0) < wanted
        || status.ready_replicas.unwrap_or(0) < wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, span: (u32, u32)) -> NodeView {
        NodeView {
            node_id: id.into(),
            span: Some(span),
            loaded: true,
            restarting: false,
        }
    }

    /// Replays a rollout the way the reconciler runs it: one decision at a time over every
    /// node whose template changed; a node told to update is restarting until `settle` says
    /// its new pod serves. Returns, per step, the nodes restarting together.
    fn roll(views: &mut [NodeView], changed: &mut Vec<String>) -> Vec<Vec<String>> {
        let mut steps = Vec::new();
        while !changed.is_empty() {
            let mut started = Vec::new();
            for id in changed.clone() {
                if decide(&id, true, views) == Decision::Update {
                    let v = views.iter_mut().find(|v| v.node_id == id).unwrap();
                    v.restarting = true;
                    v.loaded = false;
                    started.push(id.clone());
                    changed.retain(|c| *c != id);
                }
            }
            assert!(!started.is_empty(), "the rollout is stuck: {views:?}");
            // Every layer keeps a serving holder while these restart.
            for layer in 0..4 {
                assert!(
                    views.iter().any(|v| v.serving() && v.holds(layer)),
                    "layer {layer} lost every serving holder: {views:?}"
                );
            }
            // The new pods register and load.
            for v in views.iter_mut().filter(|v| v.restarting) {
                v.restarting = false;
                v.loaded = true;
            }
            steps.push(started);
        }
        steps
    }

    #[test]
    fn rapid_spec_changes_never_restart_two_holders_of_a_layer_at_once() {
        // Two pipelines of two stages: every layer has two holders.
        let mut views = vec![
            view("a", (0, 2)),
            view("b", (0, 2)),
            view("c", (2, 4)),
            view("d", (2, 4)),
        ];
        let mut changed: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
        let steps = roll(&mut views, &mut changed);
        // One holder of each half per step: two steps, never both holders of a half.
        assert_eq!(
            steps,
            vec![
                vec!["a".to_string(), "c".into()],
                vec!["b".into(), "d".into()]
            ]
        );
    }

    #[test]
    fn three_holders_keep_two_serving() {
        let mut views = vec![view("a", (0, 4)), view("b", (0, 4)), view("c", (0, 4))];
        let mut changed: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let steps = roll(&mut views, &mut changed);
        assert!(steps.iter().all(|s| s.len() == 1), "{steps:?}");
    }

    #[test]
    fn a_sole_holder_waits_and_says_which_layers() {
        let views = vec![view("a", (0, 2)), view("c", (2, 4)), view("d", (2, 4))];
        match decide("a", true, &views) {
            Decision::Wait { layers, message } => {
                assert_eq!(layers, vec![0, 1]);
                assert!(message.contains("[0, 1]"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(decide("c", true, &views), Decision::Update);
    }

    #[test]
    fn nodes_that_serve_nothing_restart_at_once_and_unchanged_ones_never() {
        let mut views = vec![view("a", (0, 4))];
        views.push(NodeView {
            loaded: false,
            ..view("loading", (0, 4))
        });
        views.push(NodeView {
            span: None,
            ..view("spare", (0, 0))
        });
        assert_eq!(decide("loading", true, &views), Decision::Update);
        assert_eq!(decide("spare", true, &views), Decision::Update);
        assert_eq!(decide("unregistered", true, &views), Decision::Update);
        assert_eq!(decide("a", false, &views), Decision::Current);
    }

    #[test]
    fn a_revert_mid_rollout_leaves_nodes_running_the_reverted_template_alone() {
        // v1 → v2 on all four; a and c restart first. Then the spec goes back to v1: b and d
        // never left v1, so their templates equal the desired one and nothing touches them,
        // however a and c are doing; a and c move back to v1 by the same rule as any change.
        let mut views = vec![
            view("a", (0, 2)),
            view("b", (0, 2)),
            view("c", (2, 4)),
            view("d", (2, 4)),
        ];
        for restarting in [0, 2] {
            views[restarting].restarting = true;
            views[restarting].loaded = false;
        }
        assert_eq!(decide("b", false, &views), Decision::Current);
        assert_eq!(decide("d", false, &views), Decision::Current);
        // a is being replaced anyway: applying v1 to it now costs nothing more.
        assert_eq!(decide("a", true, &views), Decision::Update);
    }

    #[test]
    fn a_statefulset_is_restarting_until_its_new_pod_is_ready() {
        use k8s_openapi::api::apps::v1::{StatefulSetSpec, StatefulSetStatus};
        let mut sts = StatefulSet {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(StatefulSetSpec {
                replicas: Some(1),
                ..Default::default()
            }),
            status: None,
        };
        assert!(restarting(&sts));
        let done = StatefulSetStatus {
            observed_generation: Some(2),
            current_revision: Some("r2".into()),
            update_revision: Some("r2".into()),
            updated_replicas: Some(1),
            ready_replicas: Some(1),
            replicas: 1,
            ..Default::default()
        };
        sts.status = Some(done.clone());
        assert!(!restarting(&sts));
        // The controller has not seen the newest template yet.
        sts.metadata.generation = Some(3);
        assert!(restarting(&sts));
        sts.metadata.generation = Some(2);
        // Moving to the new revision.
        sts.status = Some(StatefulSetStatus {
            current_revision: Some("r1".into()),
            ..done.clone()
        });
        assert!(restarting(&sts));
        // New pod there but not ready (the worker reports NOT_SERVING until loaded).
        sts.status = Some(StatefulSetStatus {
            ready_replicas: Some(0),
            ..done
        });
        assert!(restarting(&sts));
    }
}
