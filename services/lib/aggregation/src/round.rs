//! One outer round over a model's named parameters (or a span's): every contributor's Δ per
//! parameter, grouped by layer, combined by a robust rule per layer, and the outer step taken
//! from θ_start. Grouping by layer lets Krum-style rules keep or drop a replica's whole layer,
//! not single tensors of it; the embedding, the final norm and the head are groups of their
//! own. Pure: flat `f32` vectors by Hugging Face name in, the same out.

use std::collections::BTreeMap;

use neuroshard_common::{Error, Result};
use serde::Serialize;

use crate::outer::{OuterConfig, OuterState};
use crate::presteps::{bucketing, nearest_neighbour_mixing};
use crate::rules::{Rule, RuleReport, aggregate};

/// Parameters by name, each flattened.
pub type Named = BTreeMap<String, Vec<f32>>;

/// How a round combines its contributions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RoundPlan {
    pub rule: Rule,
    /// Byzantine contributors to tolerate.
    pub byzantine: usize,
    pub mixing: bool,
    /// Bucket size (none: no bucketing).
    pub bucket: Option<usize>,
    /// Seeds bucketing (the round's seed).
    pub seed: u64,
    pub outer: OuterConfig,
}

impl RoundPlan {
    /// Plain DiLoCo: the mean of every contribution, nothing tolerated, neither mixing nor
    /// bucketing, then the outer step `outer`.
    pub fn mean(outer: OuterConfig) -> Self {
        Self {
            rule: Rule::Mean,
            byzantine: 0,
            mixing: false,
            bucket: None,
            seed: 0,
            outer,
        }
    }
}

/// What the round made.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundOutcome {
    pub theta_next: Named,
    /// The aggregated Δ (centered clipping's reference next round).
    pub aggregated: Named,
    /// Per group (`layer.3`, `embed`, `norm`, `head`): what the rule did.
    pub reports: BTreeMap<String, RuleReport>,
}

/// The group a parameter belongs to: `layer.<i>` for `model.layers.<i>.…`, `embed`, `norm`,
/// `head`, or the name itself.
pub fn group_of(name: &str) -> String {
    if let Some(rest) = name.strip_prefix("model.layers.")
        && let Some((index, _)) = rest.split_once('.')
    {
        return format!("layer.{index}");
    }
    match name {
        "model.embed_tokens.weight" => "embed".into(),
        "model.norm.weight" => "norm".into(),
        "lm_head.weight" => "head".into(),
        other => other.into(),
    }
}

/// θ_next from `theta_start` and the contributors' `deltas` (each naming every parameter of
/// θ_start with the same lengths), updating `momentum` (one buffer per parameter). `reference`
/// is the last aggregated Δ, for centered clipping.
pub fn outer_round(
    theta_start: &Named,
    deltas: &[&Named],
    plan: &RoundPlan,
    reference: Option<&Named>,
    momentum: &mut BTreeMap<String, OuterState>,
) -> Result<RoundOutcome> {
    if deltas.is_empty() {
        return Err(Error::failed_precondition(
            "a round needs at least one contribution",
        ));
    }
    for (k, delta) in deltas.iter().enumerate() {
        if let Some(name) = theta_start.keys().find(|n| !delta.contains_key(*n)) {
            return Err(Error::invalid_argument(format!(
                "contribution {k} has no {name}"
            )));
        }
        if let Some(name) = delta.keys().find(|n| !theta_start.contains_key(*n)) {
            return Err(Error::invalid_argument(format!(
                "contribution {k} names {name}, which the model does not have"
            )));
        }
        for (name, theta) in theta_start {
            if delta[name].len() != theta.len() {
                return Err(Error::invalid_argument(format!(
                    "contribution {k}: {name} has {} values, the model {}",
                    delta[name].len(),
                    theta.len()
                )));
            }
        }
    }
    let mut groups: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for name in theta_start.keys() {
        groups.entry(group_of(name)).or_default().push(name);
    }
    let mut aggregated = Named::new();
    let mut reports = BTreeMap::new();
    for (group, names) in &groups {
        // Each contributor's group as one vector: its parameters end to end, in name order.
        let join = |source: &Named| -> Vec<f32> {
            names
                .iter()
                .flat_map(|n| source[*n].iter().copied())
                .collect()
        };
        let mut vectors: Vec<Vec<f32>> = deltas.iter().map(|d| join(d)).collect();
        if plan.mixing {
            let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            vectors = nearest_neighbour_mixing(&views, plan.byzantine)?;
        }
        if let Some(size) = plan.bucket {
            let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
            vectors = bucketing(&views, size, plan.seed)?;
        }
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let centre = reference.map(join);
        let combined = aggregate(plan.rule, &views, plan.byzantine, centre.as_deref())
            .map_err(|e| Error::new(e.kind, format!("{group}: {}", e.message)))?;
        let mut offset = 0;
        for name in names {
            let len = theta_start[*name].len();
            aggregated.insert(
                (*name).clone(),
                combined.vector[offset..offset + len].to_vec(),
            );
            offset += len;
        }
        reports.insert(group.clone(), combined.report);
    }
    let mut theta_next = Named::new();
    for (name, theta) in theta_start {
        let state = momentum.entry(name.clone()).or_default();
        theta_next.insert(
            name.clone(),
            state.step(&plan.outer, theta, &aggregated[name])?,
        );
    }
    Ok(RoundOutcome {
        theta_next,
        aggregated,
        reports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(pairs: &[(&str, &[f32])]) -> Named {
        pairs
            .iter()
            .map(|(n, v)| ((*n).to_string(), v.to_vec()))
            .collect()
    }

    fn plan(rule: Rule, byzantine: usize) -> RoundPlan {
        RoundPlan {
            rule,
            byzantine,
            mixing: false,
            bucket: None,
            seed: 0,
            outer: OuterConfig {
                lr: 1.0,
                momentum: 0.0,
                nesterov: true,
            },
        }
    }

    #[test]
    fn parameters_group_by_layer() {
        assert_eq!(group_of("model.layers.12.mlp.down_proj.weight"), "layer.12");
        assert_eq!(group_of("model.embed_tokens.weight"), "embed");
        assert_eq!(group_of("model.norm.weight"), "norm");
        assert_eq!(group_of("lm_head.weight"), "head");
    }

    /// Four replicas, one of them sending a huge Δ for layer 0: Krum keeps an honest replica's
    /// whole layer, and the step (lr 1, no momentum) lands on θ_start minus that Δ.
    #[test]
    fn a_byzantine_replica_is_dropped_layer_by_layer() {
        let theta = named(&[
            ("model.layers.0.mlp.up_proj.weight", &[1.0, 1.0]),
            ("model.layers.0.input_layernorm.weight", &[1.0]),
            ("lm_head.weight", &[0.0, 0.0]),
        ]);
        let honest = |x: f32| {
            named(&[
                ("model.layers.0.mlp.up_proj.weight", &[x, x]),
                ("model.layers.0.input_layernorm.weight", &[x]),
                ("lm_head.weight", &[x, -x]),
            ])
        };
        let (a, b, c, d) = (honest(0.1), honest(0.11), honest(0.09), honest(0.1));
        let mut evil = honest(0.1);
        evil.insert("model.layers.0.mlp.up_proj.weight".into(), vec![1e6, -1e6]);
        let deltas = [&a, &b, &c, &d, &evil];
        let mut momentum = BTreeMap::new();
        let out = outer_round(&theta, &deltas, &plan(Rule::Krum, 1), None, &mut momentum).unwrap();
        assert!(!out.reports["layer.0"].selected.contains(&4));
        let w = &out.theta_next["model.layers.0.mlp.up_proj.weight"];
        assert!(w.iter().all(|x| (x - 0.9).abs() < 0.02), "{w:?}");
        assert_eq!(out.reports.len(), 2, "layer.0 and head");
        // The mean lets the attacker through.
        let mean = outer_round(
            &theta,
            &deltas,
            &plan(Rule::Mean, 0),
            None,
            &mut BTreeMap::new(),
        )
        .unwrap();
        assert!(mean.theta_next["model.layers.0.mlp.up_proj.weight"][0] < -1e4);
    }

    #[test]
    fn mismatched_contributions_are_named() {
        let theta = named(&[("lm_head.weight", &[0.0, 0.0])]);
        let short = named(&[("lm_head.weight", &[0.0])]);
        let other = named(&[("lm_head.weight", &[0.0, 0.0]), ("extra", &[1.0])]);
        let empty = Named::new();
        let mut m = BTreeMap::new();
        let p = plan(Rule::Mean, 0);
        let err = |deltas: &[&Named], m: &mut BTreeMap<String, OuterState>| {
            outer_round(&theta, deltas, &p, None, m)
                .unwrap_err()
                .message
        };
        assert!(err(&[&short], &mut m).contains("has 1 values, the model 2"));
        assert!(err(&[&other], &mut m).contains("names extra"));
        assert!(err(&[&empty], &mut m).contains("has no lm_head.weight"));
        assert!(err(&[], &mut m).contains("at least one"));
        let krum = outer_round(
            &theta,
            &[&theta, &theta],
            &plan(Rule::Krum, 1),
            None,
            &mut m,
        )
        .unwrap_err()
        .message;
        assert!(krum.starts_with("head: krum cannot tolerate 1"), "{krum}");
    }
}
