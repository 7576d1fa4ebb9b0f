//! Sticky placement: the current placement repaired after joins and deaths, moving only what
//! it must. A worker whose span changes drops every session it serves (and, with training, its
//! optimizer state), so a healthy holder keeps its span unless taking it away costs no layer
//! its replica target.
//!
//! Every node whose current span is still valid (inside the model, fits its memory) keeps it.
//! Then, one action at a time, best first, until none applies:
//!
//! 1. an *idle* node (new, or holding nothing) takes the window covering the most deficit
//!    layers (a layer with fewer than `r` holders): deficits are filled first;
//! 2. otherwise a *donor* moves to such a window: a node all of whose layers have more than `r`
//!    holders (for `r = 2`, a span with three or more), so leaving costs no layer its target.
//!    The one exception is a layer nobody holds (no route at all): a node may leave layers
//!    that keep at least one other holder to cover it;
//! 3. otherwise an idle node that fits somewhere adds a replica where holders are fewest.
//!
//! Nothing else moves: a layer that drops below `r` with no idle node and no donor able to
//! cover it stays short, reported as a deficit, rather than robbing a span down to one holder.
//! Each action either places an idle node or lowers (zero-holder layers, missing replicas)
//! lexicographically, so the repair ends; when it ends no action applies, so repairing its
//! own result changes nothing (each publish of an unchanged swarm is the same placement).
//!
//! Windows are scored by: layers at the lowest holder count covered, then whether the window
//! adds a pipeline to the most the spans form (training needs whole chains, and a replica
//! that tiles with nothing is a holder no pipeline uses), then how many of the window's two
//! ends meet an existing span boundary (so spans tile into chains the gateway can route
//! through), then deficit layers covered, then length. Windows and fits are judged
//! in whole layers per position ([`Caps`]), so nodes with equal caps are interchangeable and
//! are searched once per class.

use std::collections::BTreeMap;

use super::chains::{OpenEnds, disjoint_pipelines, open_ends};
use super::fit::Caps;
use super::layout::{count_holders, health_of, make_span};
use super::types::{HeldSpan, LayerCosts, NodeCapacity, NodeSpan, Placement};

/// How good a window is for the holders it would join; compared lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Score {
    lowest_covered: u32,
    adds_pipeline: bool,
    aligned_ends: u8,
    deficit_covered: u32,
    length: u32,
}

/// The holder counts one action is judged against, with prefix sums for scoring windows.
struct Levels<'a> {
    at_lowest: Vec<u32>,
    below_target: Vec<u32>,
    zero: Vec<u32>,
    boundary: &'a [bool],
    open: &'a OpenEnds,
}

impl<'a> Levels<'a> {
    fn new(holders: &'a [u32], target: u32, boundary: &'a [bool], open: &'a OpenEnds) -> Self {
        let lowest = holders.iter().copied().min().unwrap_or(0);
        let prefix = |keep: &dyn Fn(u32) -> bool| {
            let mut sums = Vec::with_capacity(holders.len() + 1);
            sums.push(0u32);
            for &h in holders {
                sums.push(sums[sums.len() - 1] + u32::from(keep(h)));
            }
            sums
        };
        Self {
            at_lowest: prefix(&|h| h == lowest),
            below_target: prefix(&|h| h < target),
            zero: prefix(&|h| h == 0),
            boundary,
            open,
        }
    }

    fn count(sums: &[u32], start: u32, end: u32) -> u32 {
        sums[end as usize] - sums[start as usize]
    }

    fn score(&self, start: u32, end: u32) -> Score {
        Score {
            lowest_covered: Self::count(&self.at_lowest, start, end),
            adds_pipeline: self.open.adds_pipeline(start, end),
            aligned_ends: u8::from(self.boundary[start as usize])
                + u8::from(self.boundary[end as usize]),
            deficit_covered: Self::count(&self.below_target, start, end),
            length: end - start,
        }
    }

    fn has_deficit(&self) -> bool {
        self.below_target.last().copied().unwrap_or(0) > 0
    }
}

/// What a window must cover to be worth taking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Anything,
    Deficit,
    Unheld,
}

/// The largest end of a window starting at `start` that a node with `caps` fits, if any.
fn max_end(caps: &Caps, start: u32, l: u32) -> Option<u32> {
    if start == 0 {
        if caps.full {
            return Some(l);
        }
        return (l >= 2 && caps.driver > 0).then(|| caps.driver.min(l - 1));
    }
    if caps.validator >= l - start {
        return Some(l);
    }
    (caps.worker > 0 && start + 1 < l).then(|| (start + caps.worker).min(l - 1))
}

/// The best window for a node with `caps` against `levels`, meeting `need`; ties go to the
/// earliest start, then the earliest end.
fn best_window(caps: &Caps, levels: &Levels<'_>, l: u32, need: Need) -> Option<(Score, u32, u32)> {
    let mut best: Option<(Score, u32, u32)> = None;
    for start in 0..l {
        let Some(last) = max_end(caps, start, l) else {
            continue;
        };
        for end in start + 1..=last {
            // Only aligned ends and the longest window compete: any other end is beaten by
            // the longest one on every key (its coverage can only grow with length, and a
            // pipeline can only continue from a boundary some span has).
            if end != last && !levels.boundary[end as usize] {
                continue;
            }
            let ok = match need {
                Need::Anything => true,
                Need::Deficit => Levels::count(&levels.below_target, start, end) > 0,
                Need::Unheld => Levels::count(&levels.zero, start, end) > 0,
            };
            if !ok {
                continue;
            }
            let score = levels.score(start, end);
            if best.is_none_or(|(b, _, _)| score > b) {
                best = Some((score, start, end));
            }
        }
    }
    best
}

/// The repair in progress: nodes in internal order, their caps and current spans.
struct Repair<'a> {
    l: u32,
    target: u32,
    nodes: Vec<&'a NodeCapacity>,
    caps: Vec<Caps>,
    spans: Vec<Option<(u32, u32)>>,
}

impl Repair<'_> {
    fn holders(&self) -> Vec<u32> {
        let mut holders = vec![0u32; self.l as usize];
        for &(start, end) in self.spans.iter().flatten() {
            for h in &mut holders[start as usize..end as usize] {
                *h += 1;
            }
        }
        holders
    }

    /// Where a span would add a pipeline, with the span of node `moving` (if any) left out.
    fn open_ends(&self, moving: Option<usize>) -> OpenEnds {
        let others = self
            .spans
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != moving)
            .filter_map(|(_, span)| *span);
        open_ends(others, self.l)
    }

    fn boundaries(&self) -> Vec<bool> {
        let mut boundary = vec![false; self.l as usize + 1];
        boundary[0] = true;
        boundary[self.l as usize] = true;
        for &(start, end) in self.spans.iter().flatten() {
            boundary[start as usize] = true;
            boundary[end as usize] = true;
        }
        boundary
    }

    /// Action 1 or 3: the idle node and window to place, best window first, then the
    /// smallest node that achieves it (bigger ones stay free for bigger gaps), then internal
    /// order.
    fn idle_choice(&self, levels: &Levels<'_>, need: Need) -> Option<(usize, u32, u32)> {
        // One search per class of equal caps: the first idle member in internal order.
        let mut classes: BTreeMap<Caps, usize> = BTreeMap::new();
        for (i, span) in self.spans.iter().enumerate() {
            if span.is_none() {
                classes.entry(self.caps[i]).or_insert(i);
            }
        }
        let mut best: Option<(Score, std::cmp::Reverse<u32>, usize, u32, u32)> = None;
        for (caps, node) in classes {
            let Some((score, start, end)) = best_window(&caps, levels, self.l, need) else {
                continue;
            };
            let key = (score, std::cmp::Reverse(caps.cost));
            let better = match &best {
                None => true,
                Some((s, c, n, _, _)) => key > (*s, *c) || (key == (*s, *c) && node < *n),
            };
            if better {
                best = Some((score, std::cmp::Reverse(caps.cost), node, start, end));
            }
        }
        best.map(|(_, _, node, start, end)| (node, start, end))
    }

    /// Action 2: a donor and the deficit window it moves to. A donor leaves layers that all
    /// keep at least `target` holders, or, to cover a layer nobody holds, at least one.
    fn donor_choice(&self, holders: &[u32], boundary: &[bool]) -> Option<(usize, u32, u32)> {
        let any_unheld = holders.contains(&0);
        let mut tried: BTreeMap<(Caps, u32, u32), ()> = BTreeMap::new();
        type Key = (Score, u32, std::cmp::Reverse<u32>, std::cmp::Reverse<usize>);
        let mut best: Option<(Key, usize, u32, u32)> = None;
        for (node, span) in self.spans.iter().enumerate() {
            let Some((start, end)) = *span else {
                continue;
            };
            if tried.insert((self.caps[node], start, end), ()).is_some() {
                continue;
            }
            let fewest = holders[start as usize..end as usize]
                .iter()
                .copied()
                .min()
                .unwrap_or(0);
            let need = if fewest > self.target {
                Need::Deficit
            } else if any_unheld && fewest >= 2 {
                Need::Unheld
            } else {
                continue;
            };
            let mut without = holders.to_vec();
            for h in &mut without[start as usize..end as usize] {
                *h -= 1;
            }
            let open = self.open_ends(Some(node));
            let levels = Levels::new(&without, self.target, boundary, &open);
            let Some((score, to_start, to_end)) =
                best_window(&self.caps[node], &levels, self.l, need)
            else {
                continue;
            };
            if (to_start, to_end) == (start, end) {
                continue;
            }
            let key = (
                score,
                fewest,
                std::cmp::Reverse(self.caps[node].cost),
                std::cmp::Reverse(node),
            );
            if best.as_ref().is_none_or(|(b, ..)| key > *b) {
                best = Some((key, node, to_start, to_end));
            }
        }
        best.map(|(_, node, start, end)| (node, start, end))
    }

    fn run(&mut self) {
        loop {
            let holders = self.holders();
            let boundary = self.boundaries();
            let open = self.open_ends(None);
            let levels = Levels::new(&holders, self.target, &boundary, &open);
            let action = if levels.has_deficit() {
                self.idle_choice(&levels, Need::Deficit)
                    .or_else(|| self.donor_choice(&holders, &boundary))
            } else {
                None
            }
            .or_else(|| self.idle_choice(&levels, Need::Anything));
            let Some((node, start, end)) = action else {
                return;
            };
            self.spans[node] = Some((start, end));
        }
    }
}

/// Repairs `current` (spans nodes hold now) for the live `nodes`, moving only what it must
/// (see the module documentation). `nodes` must be validated and sorted in internal order;
/// spans of nodes not in `nodes`, outside the model or too large for their node are dropped.
pub(super) fn repair(
    l: u32,
    costs: &LayerCosts,
    nodes: &[&NodeCapacity],
    current: &[HeldSpan],
    target: u32,
) -> Placement {
    let held: BTreeMap<&str, (u32, u32)> = current
        .iter()
        .map(|h| (h.node_id.as_str(), (h.start, h.end)))
        .collect();
    let spans = nodes
        .iter()
        .map(|n| {
            held.get(n.node_id.as_str())
                .copied()
                .filter(|&(start, end)| {
                    start < end
                        && end <= l
                        && u128::from(n.memory_bytes) >= costs.span_bytes(l, start, end)
                })
        })
        .collect();
    let mut repair = Repair {
        l,
        target,
        nodes: nodes.to_vec(),
        caps: nodes
            .iter()
            .map(|n| Caps::of(n.memory_bytes, l, costs))
            .collect(),
        spans,
    };
    repair.run();
    finish(&repair.nodes, &repair.spans, l, target)
}

/// The placement for final `spans` (per node in internal order): pipelines are the most
/// node-disjoint chains tiling `[0, L)`, their stages listed first.
fn finish(nodes: &[&NodeCapacity], spans: &[Option<(u32, u32)>], l: u32, target: u32) -> Placement {
    let all: Vec<NodeSpan> = nodes
        .iter()
        .zip(spans)
        .filter_map(|(n, s)| s.map(|(start, end)| make_span(n, start, end, l)))
        .collect();
    let pipelines = disjoint_pipelines(&all, l);
    let mut ordered: Vec<NodeSpan> = pipelines
        .iter()
        .flat_map(|p| p.stages.iter().cloned())
        .collect();
    for span in &all {
        if !ordered.iter().any(|s| s.node_id == span.node_id) {
            ordered.push(span.clone());
        }
    }
    let unassigned = nodes
        .iter()
        .zip(spans)
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| n.node_id.clone())
        .collect();
    let holders = count_holders(&ordered, l);
    let health = health_of(&holders, target);
    Placement {
        spans: ordered,
        unassigned,
        pipelines,
        holders,
        health,
    }
}

#[cfg(test)]
mod tests;
