//! Closing a round (pure): screen each layer group's submissions, weigh the held-out scores
//! the caller measured, and per group combine the accepted Δ with the robust rule and take
//! the outer step from θ_start — or keep θ_start, saying why (no quorum). The Byzantine
//! bound a rule is asked for is what it can tolerate with the contributors present, and the
//! group's note says when that is less than configured, rather than averaging in silence.

use std::collections::BTreeMap;

use neuroshard_aggregation::Rule;
use neuroshard_aggregation::outer::{OuterConfig, OuterState};
use neuroshard_aggregation::round::{Named, RoundPlan, group_of, outer_round};
use neuroshard_aggregation::screening::{Flag, ScreeningConfig, screen};
use neuroshard_common::Result;

use crate::rounds::Submission;

/// How a round combines its submissions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub rule: Rule,
    pub byzantine: usize,
    pub mixing: bool,
    pub bucket: Option<usize>,
    pub outer: OuterConfig,
    pub quorum: u32,
    pub screening: ScreeningConfig,
    pub score_tolerance: f64,
    pub exclude_flagged: bool,
}

/// Held-out loss of θ_start with a submission's pipeline Δ applied, and without.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub with: f64,
    pub without: f64,
}

impl Score {
    /// Positive when the work lowered the loss.
    pub fn gain(&self) -> f64 {
        self.without - self.with
    }
}

/// What closing decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub theta_next: Named,
    /// Per submission, in order: its flags, and whether it went into the aggregate.
    pub flags: Vec<Vec<String>>,
    pub accepted: Vec<bool>,
    /// Per layer group: what the rule did, or why the group kept θ_start.
    pub notes: BTreeMap<String, String>,
}

fn describe(flag: &Flag, submissions: &[&Submission]) -> String {
    match flag {
        Flag::Zero => "zero".into(),
        Flag::Copy { of, cosine } => format!(
            "copy of node {}'s Δ (cosine {cosine:.4})",
            submissions.get(*of).map_or("?", |s| s.node_id.as_str())
        ),
        Flag::Scaled { ratio } => format!("scaled ({ratio:.2}× the round's median norm)"),
        Flag::Outlier { ratio } => format!("outlier ({ratio:.2}× the median distance)"),
        Flag::Unaligned { cosine, round } => {
            format!("unaligned (cosine {cosine:.3} with the round's direction, median {round:.3})")
        }
    }
}

/// Closes a round over the owned parameters `theta_start`. `scores[i]` is submission i's
/// score when one was measured. `momentum` and `reference` (the last aggregate per
/// parameter) are updated for the groups that moved.
pub fn close(
    theta_start: &Named,
    submissions: &[Submission],
    scores: &[Option<Score>],
    settings: &Settings,
    seed: u64,
    momentum: &mut BTreeMap<String, OuterState>,
    reference: &mut Named,
) -> Result<Closed> {
    let mut groups: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for name in theta_start.keys() {
        groups.entry(group_of(name)).or_default().push(name);
    }
    let covers =
        |s: &Submission, names: &[&String]| names.iter().all(|n| s.deltas.contains_key(*n));
    let mut flags: Vec<Vec<String>> = vec![Vec::new(); submissions.len()];

    // Screening, group by group, among the submissions that cover the group.
    for (group, names) in &groups {
        let members: Vec<usize> = (0..submissions.len())
            .filter(|&i| covers(&submissions[i], names))
            .collect();
        if members.len() < 2 {
            continue;
        }
        let vectors: Vec<Vec<f32>> = members
            .iter()
            .map(|&i| {
                names
                    .iter()
                    .flat_map(|n| submissions[i].deltas[*n].iter().copied())
                    .collect()
            })
            .collect();
        let views: Vec<&[f32]> = vectors.iter().map(Vec::as_slice).collect();
        let order: Vec<&Submission> = members.iter().map(|&i| &submissions[i]).collect();
        for (k, found) in screen(&views, &settings.screening)?.into_iter().enumerate() {
            for flag in found {
                flags[members[k]].push(format!("{} in {group}", describe(&flag, &order)));
            }
        }
    }
    for (i, score) in scores.iter().enumerate() {
        if let Some(score) = score
            && score.gain() < -settings.score_tolerance
        {
            flags[i].push(format!(
                "no_improvement (held-out loss {:.4} with its pipeline's Δ, {:.4} without)",
                score.with, score.without
            ));
        }
    }
    let accepted: Vec<bool> = flags
        .iter()
        .map(|f| f.is_empty() || !settings.exclude_flagged)
        .collect();

    let mut theta_next = theta_start.clone();
    let mut notes = BTreeMap::new();
    for (group, names) in &groups {
        let contributors: Vec<Named> = (0..submissions.len())
            .filter(|&i| accepted[i] && covers(&submissions[i], names))
            .map(|i| {
                names
                    .iter()
                    .map(|n| ((*n).clone(), submissions[i].deltas[*n].clone()))
                    .collect()
            })
            .collect();
        let n = contributors.len();
        if n < settings.quorum as usize {
            notes.insert(
                group.clone(),
                format!(
                    "kept θ_start: {n} accepted contribution(s), quorum {}",
                    settings.quorum
                ),
            );
            continue;
        }
        let tolerated = settings.rule.tolerates(n).min(settings.byzantine);
        let theta: Named = names
            .iter()
            .map(|n| ((*n).clone(), theta_start[*n].clone()))
            .collect();
        let centre: Option<Named> = names
            .iter()
            .map(|n| reference.get(*n).map(|r| ((*n).clone(), r.clone())))
            .collect();
        let plan = RoundPlan {
            rule: settings.rule,
            byzantine: tolerated,
            mixing: settings.mixing,
            bucket: settings.bucket,
            seed,
            outer: settings.outer,
        };
        let views: Vec<&Named> = contributors.iter().collect();
        let outcome = outer_round(&theta, &views, &plan, centre.as_ref(), momentum)?;
        let mut note = Vec::new();
        if tolerated < settings.byzantine {
            note.push(format!(
                "{} tolerates {tolerated} Byzantine of {n} contributors, not the {} configured",
                settings.rule.name(),
                settings.byzantine
            ));
        }
        if let Some(said) = outcome.reports.get(group).and_then(|r| r.note.clone()) {
            note.push(said);
        }
        if !note.is_empty() {
            notes.insert(group.clone(), note.join("; "));
        }
        theta_next.extend(outcome.theta_next);
        reference.extend(outcome.aggregated);
    }
    Ok(Closed {
        theta_next,
        flags,
        accepted,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rule: Rule, byzantine: usize, quorum: u32) -> Settings {
        Settings {
            rule,
            byzantine,
            mixing: false,
            bucket: None,
            outer: OuterConfig {
                lr: 1.0,
                momentum: 0.0,
                nesterov: true,
            },
            quorum,
            screening: ScreeningConfig::default(),
            score_tolerance: 0.05,
            exclude_flagged: true,
        }
    }

    fn submission(node: &str, pairs: &[(&str, &[f32])]) -> Submission {
        Submission {
            node_id: node.into(),
            span: (0, 1),
            pipeline: "p0".into(),
            tokens: 8,
            commitment: [0; 32],
            deltas: pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect(),
            bytes: 4,
            capacity_tokens_per_second: 0.0,
            elapsed_ms: 0,
        }
    }

    const A: &str = "model.layers.0.mlp.up_proj.weight";
    const B: &str = "model.layers.1.mlp.up_proj.weight";

    fn theta() -> Named {
        [
            (A.to_string(), vec![1.0, 1.0]),
            (B.to_string(), vec![2.0, 2.0]),
        ]
        .into()
    }

    /// Layer 1 has one contribution and quorum 2: it keeps θ_start, and says so; layer 0
    /// moves by the mean of two, and the clamped bound is named.
    #[test]
    fn a_group_without_quorum_keeps_theta_start() {
        let subs = [
            submission("a", &[(A, &[0.1, 0.2])]),
            submission("b", &[(A, &[0.3, 0.4]), (B, &[0.5, 0.5])]),
        ];
        let (mut momentum, mut reference) = (BTreeMap::new(), Named::new());
        let closed = close(
            &theta(),
            &subs,
            &[None, None],
            &settings(Rule::TrimmedMean, 1, 2),
            1,
            &mut momentum,
            &mut reference,
        )
        .unwrap();
        assert_eq!(closed.theta_next[B], vec![2.0, 2.0]);
        assert!(closed.notes["layer.1"].contains("quorum 2"));
        let moved = &closed.theta_next[A];
        assert!(
            (moved[0] - 0.8).abs() < 1e-6 && (moved[1] - 0.7).abs() < 1e-6,
            "{moved:?}"
        );
        assert!(closed.notes["layer.0"].contains("tolerates 0 Byzantine of 2"));
        assert!(reference.contains_key(A) && !reference.contains_key(B));
    }

    /// A submission whose pipeline made the held-out loss worse is flagged and left out.
    #[test]
    fn work_that_raises_the_held_out_loss_is_flagged_and_left_out() {
        let subs = [
            submission("a", &[(A, &[0.1, 0.05])]),
            submission("b", &[(A, &[0.05, 0.12])]),
        ];
        let scores = [
            Some(Score {
                with: 3.0,
                without: 3.5,
            }),
            Some(Score {
                with: 4.0,
                without: 3.5,
            }),
        ];
        let (mut momentum, mut reference) = (BTreeMap::new(), Named::new());
        let closed = close(
            &[(A.to_string(), vec![1.0, 1.0])].into(),
            &subs,
            &scores,
            &settings(Rule::Mean, 0, 1),
            1,
            &mut momentum,
            &mut reference,
        )
        .unwrap();
        assert_eq!(closed.accepted, vec![true, false]);
        assert_eq!(closed.flags[0], Vec::<String>::new());
        assert!(
            closed.flags[1]
                .iter()
                .any(|f| f.starts_with("no_improvement")),
            "{:?}",
            closed.flags
        );
        assert!((closed.theta_next[A][0] - 0.9).abs() < 1e-6);
        assert!((closed.theta_next[A][1] - 0.95).abs() < 1e-6);
    }
}
