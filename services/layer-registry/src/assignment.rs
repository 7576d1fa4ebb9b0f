//! Assignment of decoder layers to nodes for pipeline-parallel training.
//!
//! Every node holds at most one contiguous span of layers. A *pipeline* is a
//! chain of spans covering `[0, L)`; its first stage also holds the token
//! embedding and its last stage the final norm and LM head, so those stages
//! fit fewer layers than the same node would in the middle.
//!
//! Covering every layer `r` times with one interval per node is possible iff
//! the nodes can be split into `r` disjoint pipelines, so the assignment is
//! built pipeline by pipeline:
//!
//! * Up to [`EXACT_NODE_LIMIT`] usable nodes, a subset DP over all node sets
//!   finds the maximum number of disjoint pipelines (cheapest on ties). This is
//!   exact: whenever `r` disjoint pipelines exist, at least `r` are formed.
//! * Beyond that, nodes are bucketed into capacity classes and a knapsack over
//!   `(layers covered, embedding placed, head placed)` picks the cheapest next
//!   pipeline (fewest stages, then least memory); the same pattern is repeated
//!   while its classes last, which keeps 10,000 nodes in tens of milliseconds.
//!   This path is a heuristic: if it misses the replica target, other cost
//!   functions and tie-breaks are tried before settling for the best miss.
//!
//! Nodes left over after no further pipeline can be completed get a partial
//! span over the layers with the fewest holders, so spare memory still adds
//! replicas instead of idling.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

/// Largest supported `num_layers`: the pattern search packs a layer count
/// into 13 bits of its back-pointer table.
pub const MAX_LAYERS: u32 = 4096;

/// Up to this many usable nodes the exact search is used; its cost grows as
/// 3^n, which is about 2.4 million steps at 14 nodes.
pub const EXACT_NODE_LIMIT: usize = 14;

/// Node costs above this are clamped so that per-pipeline sums cannot
/// overflow; such nodes are interchangeable for every purpose here anyway.
const COST_CAP: u64 = 1 << 24;

/// A live node offered for assignment.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeCapacity {
    pub node_id: String,
    pub memory_bytes: u64,
    /// Tokens per second. Only used to order nodes of equal memory.
    pub throughput: f64,
}

/// Memory footprint of the model's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerCosts {
    /// Bytes per decoder layer (weights, optimizer state, activations).
    pub layer_bytes: u64,
    /// Extra bytes for the node whose span starts at layer 0.
    pub embedding_bytes: u64,
    /// Extra bytes for the node whose span ends at the last layer.
    pub head_bytes: u64,
}

impl LayerCosts {
    /// Bytes needed to hold `[start, end)` of a `num_layers`-layer model,
    /// including the embedding or head when the span touches either end.
    pub fn span_bytes(&self, num_layers: u32, start: u32, end: u32) -> u128 {
        let layers = u128::from(end.saturating_sub(start)) * u128::from(self.layer_bytes);
        let embedding = if start == 0 { self.embedding_bytes } else { 0 };
        let head = if end == num_layers {
            self.head_bytes
        } else {
            0
        };
        layers + u128::from(embedding) + u128::from(head)
    }
}

/// What a node does, derived from where its span sits in the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Starts at layer 0 and holds the embedding.
    Driver,
    /// Holds only decoder layers.
    Worker,
    /// Ends at the last layer and holds the final norm and LM head.
    Validator,
    /// Holds the whole model, embedding and head included.
    Full,
}

impl Role {
    /// The role a span `[start, end)` implies; roles never depend on anything
    /// else, so a span's memory check only needs its bounds.
    pub fn for_span(start: u32, end: u32, num_layers: u32) -> Self {
        match (start == 0, end == num_layers) {
            (true, true) => Role::Full,
            (true, false) => Role::Driver,
            (false, true) => Role::Validator,
            (false, false) => Role::Worker,
        }
    }
}

/// Layers `[start, end)` held by one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeSpan {
    pub node_id: String,
    pub start: u32,
    pub end: u32,
    pub role: Role,
}

impl NodeSpan {
    pub fn layer_count(&self) -> u32 {
        self.end - self.start
    }

    pub fn contains(&self, layer: u32) -> bool {
        self.start <= layer && layer < self.end
    }
}

/// Consecutive spans covering `[0, L)` in order: one full copy of the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pipeline {
    pub stages: Vec<NodeSpan>,
}

/// A layer with fewer holders than requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerDeficit {
    pub layer: u32,
    pub holders: u32,
    pub missing: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Health {
    Healthy,
    Degraded {
        deficits: Vec<LayerDeficit>,
        total_missing: u32,
    },
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        matches!(self, Health::Healthy)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// Every assigned node exactly once: pipeline stages first (pipeline by
    /// pipeline), then partial spans.
    pub spans: Vec<NodeSpan>,
    /// Live nodes given nothing, in internal order (memory descending).
    pub unassigned: Vec<String>,
    /// Complete, node-disjoint covers of `[0, L)`.
    pub pipelines: Vec<Pipeline>,
    /// `holders[layer]` = number of spans containing `layer`.
    pub holders: Vec<u32>,
    pub health: Health,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AssignmentError {
    ZeroLayers,
    TooManyLayers { num_layers: u32, max: u32 },
    ZeroLayerBytes,
    DuplicateNodeId(String),
}

impl fmt::Display for AssignmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssignmentError::ZeroLayers => {
                write!(f, "model has zero decoder layers, nothing to assign")
            }
            AssignmentError::TooManyLayers { num_layers, max } => write!(
                f,
                "model has {num_layers} decoder layers, layer assignment supports at most {max}"
            ),
            AssignmentError::ZeroLayerBytes => write!(
                f,
                "layer_bytes is zero, a decoder layer must have a positive memory cost"
            ),
            AssignmentError::DuplicateNodeId(id) => {
                write!(f, "node id {id:?} appears more than once in the node list")
            }
        }
    }
}

impl std::error::Error for AssignmentError {}

/// Assigns layers of a `num_layers`-layer model to `nodes`, aiming for every
/// layer to be held by at least `min_replicas` nodes.
///
/// The result depends only on the set of nodes, not on their order in
/// `nodes`. `min_replicas == 0` is accepted and simply never reports deficits.
pub fn assign(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
    min_replicas: u32,
) -> Result<Assignment, AssignmentError> {
    assign_with_exact_limit(num_layers, costs, nodes, min_replicas, EXACT_NODE_LIMIT)
}

/// Split out so tests can force the large-instance path on small inputs.
fn assign_with_exact_limit(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
    min_replicas: u32,
    exact_limit: usize,
) -> Result<Assignment, AssignmentError> {
    validate(num_layers, costs, nodes)?;
    let l = num_layers;

    let mut order: Vec<&NodeCapacity> = nodes.iter().collect();
    order.sort_by(|a, b| node_order(a, b));
    let caps: Vec<Caps> = order
        .iter()
        .map(|n| Caps::of(n.memory_bytes, l, costs))
        .collect();
    let usable: Vec<usize> = (0..order.len()).filter(|&i| caps[i].worker > 0).collect();

    // The subset DP indexes node sets by bitmask, hence the hard 20-node stop
    // regardless of what a caller asks for.
    if usable.len() <= exact_limit.min(20) {
        let groups = exact_groups(&caps, &usable, l);
        return Ok(build(&order, &caps, &usable, groups, l, min_replicas));
    }
    // Each greedy objective has blind spots (see `Objective`), so the others
    // are tried, with ties broken both ways, until one meets the replica
    // target. That costs little: a degraded run formed fewer than
    // `min_replicas` pipelines, so it solved at most that many knapsacks.
    let mut best: Option<Assignment> = None;
    let variants = Objective::ALL
        .into_iter()
        .flat_map(|objective| [(objective, true), (objective, false)]);
    for (objective, big_first) in variants {
        let groups = greedy_groups(&caps, &usable, l, objective, big_first);
        let candidate = build(&order, &caps, &usable, groups, l, min_replicas);
        if candidate.health.is_healthy() {
            return Ok(candidate);
        }
        if best
            .as_ref()
            .is_none_or(|b| quality(&candidate) > quality(b))
        {
            best = Some(candidate);
        }
    }
    Ok(best.unwrap_or_else(|| build(&order, &caps, &usable, Vec::new(), l, min_replicas)))
}

/// Fewest missing replicas first, then the most complete pipelines.
fn quality(a: &Assignment) -> (std::cmp::Reverse<u32>, usize) {
    let missing = match &a.health {
        Health::Healthy => 0,
        Health::Degraded { total_missing, .. } => *total_missing,
    };
    (std::cmp::Reverse(missing), a.pipelines.len())
}

/// Lays out the chosen pipelines, then hands leftover nodes partial spans.
fn build(
    order: &[&NodeCapacity],
    caps: &[Caps],
    usable: &[usize],
    groups: Vec<Vec<usize>>,
    l: u32,
    min_replicas: u32,
) -> Assignment {
    let mut assigned = vec![false; order.len()];
    let mut spans = Vec::with_capacity(order.len());
    let mut pipelines = Vec::with_capacity(groups.len());
    let mut holders = vec![0u32; l as usize];
    for group in groups {
        let limits = stage_limits(caps, &group, l);
        let parts = split_layers(&limits, l);
        let mut stages = Vec::with_capacity(group.len());
        let mut start = 0;
        for (&node, &len) in group.iter().zip(&parts) {
            let end = start + len;
            stages.push(make_span(order[node], start, end, l));
            add_holder(&mut holders, start, end);
            assigned[node] = true;
            start = end;
        }
        spans.extend(stages.iter().cloned());
        pipelines.push(Pipeline { stages });
    }

    for &node in usable {
        if assigned[node] {
            continue;
        }
        if let Some((start, end)) = best_partial_window(&caps[node], &holders, l, min_replicas) {
            spans.push(make_span(order[node], start, end, l));
            add_holder(&mut holders, start, end);
            assigned[node] = true;
        }
    }

    let unassigned = order
        .iter()
        .zip(&assigned)
        .filter(|(_, done)| !**done)
        .map(|(n, _)| n.node_id.clone())
        .collect();
    // Recounted from the final spans so the reported numbers cannot drift
    // from what was actually assigned.
    let holders = count_holders(&spans, l);
    let health = health_of(&holders, min_replicas);
    Assignment {
        spans,
        unassigned,
        pipelines,
        holders,
        health,
    }
}

fn validate(
    num_layers: u32,
    costs: &LayerCosts,
    nodes: &[NodeCapacity],
) -> Result<(), AssignmentError> {
    if num_layers == 0 {
        return Err(AssignmentError::ZeroLayers);
    }
    if num_layers > MAX_LAYERS {
        return Err(AssignmentError::TooManyLayers {
            num_layers,
            max: MAX_LAYERS,
        });
    }
    if costs.layer_bytes == 0 {
        return Err(AssignmentError::ZeroLayerBytes);
    }
    let mut ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    ids.sort_unstable();
    // Reporting the smallest duplicate keeps the error independent of input order.
    if let Some(pair) = ids.windows(2).find(|pair| pair[0] == pair[1]) {
        return Err(AssignmentError::DuplicateNodeId(pair[0].to_string()));
    }
    Ok(())
}

/// Total order used for every internal tie-break: memory desc, throughput
/// desc, id asc. Ids are unique after validation, so no two nodes compare equal.
fn node_order(a: &NodeCapacity, b: &NodeCapacity) -> Ordering {
    b.memory_bytes
        .cmp(&a.memory_bytes)
        .then_with(|| b.throughput.total_cmp(&a.throughput))
        .then_with(|| a.node_id.cmp(&b.node_id))
}

/// Layer capacities of one node in each position, capped at `L`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Caps {
    /// Memory in whole layers (clamped); what using this node costs.
    cost: u32,
    worker: u32,
    driver: u32,
    validator: u32,
    full: bool,
}

impl Caps {
    fn of(memory: u64, num_layers: u32, costs: &LayerCosts) -> Self {
        let lb = costs.layer_bytes;
        let l = u64::from(num_layers);
        let layers = |bytes: u64| (bytes / lb).min(l) as u32;
        // Any node at least this large can hold the whole model alone, so
        // larger ones are functionally identical and may share one cost.
        let full_size = l
            .saturating_add(costs.embedding_bytes.div_ceil(lb))
            .saturating_add(costs.head_bytes.div_ceil(lb))
            .saturating_add(1)
            .min(COST_CAP);
        Caps {
            cost: (memory / lb).min(full_size) as u32,
            worker: layers(memory),
            driver: memory.checked_sub(costs.embedding_bytes).map_or(0, layers),
            validator: memory.checked_sub(costs.head_bytes).map_or(0, layers),
            full: u128::from(memory) >= costs.span_bytes(num_layers, 0, num_layers),
        }
    }
}

/// Orders `members` (indices in internal order) into pipeline stages if they
/// can cover `[0, L)` together: a full node alone, or driver, workers,
/// validator. Drivers and validators are the members losing the fewest layers
/// to the embedding and head, which maximizes what the group covers.
fn stage_order(caps: &[Caps], members: &[usize], l: u32) -> Option<Vec<usize>> {
    if let Some(&node) = members.iter().find(|&&m| caps[m].full) {
        return Some(vec![node]);
    }
    if l < 2 || members.len() < 2 {
        return None;
    }
    let drivers = two_cheapest(
        members
            .iter()
            .filter(|&&m| caps[m].driver > 0)
            .map(|&m| (caps[m].worker - caps[m].driver, m)),
    );
    let validators = two_cheapest(
        members
            .iter()
            .filter(|&&m| caps[m].validator > 0)
            .map(|&m| (caps[m].worker - caps[m].validator, m)),
    );
    let (driver, validator) = match (drivers, validators) {
        ([Some(d), _], [Some(v), _]) if d.1 != v.1 => (d, v),
        ([Some(d1), d2], [Some(v1), v2]) => {
            let with_second_validator = v2.map(|v| (d1, v));
            let with_second_driver = d2.map(|d| (d, v1));
            match (with_second_validator, with_second_driver) {
                (Some(a), Some(b)) if b.0.0 + b.1.0 < a.0.0 + a.1.0 => b,
                (Some(a), _) => a,
                (None, Some(b)) => b,
                (None, None) => return None,
            }
        }
        _ => return None,
    };
    let total: u64 = members.iter().map(|&m| u64::from(caps[m].worker)).sum();
    let covered = total - u64::from(driver.0) - u64::from(validator.0);
    if covered < u64::from(l) {
        return None;
    }
    let mut stages = Vec::with_capacity(members.len());
    stages.push(driver.1);
    stages.extend(
        members
            .iter()
            .copied()
            .filter(|&m| m != driver.1 && m != validator.1),
    );
    stages.push(validator.1);
    Some(stages)
}

/// The two smallest `(penalty, node)` pairs; earlier nodes win ties.
fn two_cheapest(items: impl Iterator<Item = (u32, usize)>) -> [Option<(u32, usize)>; 2] {
    let mut best: [Option<(u32, usize)>; 2] = [None, None];
    for item in items {
        match best {
            [None, _] => best[0] = Some(item),
            [Some(first), _] if item.0 < first.0 => best = [Some(item), Some(first)],
            [Some(_), None] => best[1] = Some(item),
            [Some(_), Some(second)] if item.0 < second.0 => best[1] = Some(item),
            _ => {}
        }
    }
    best
}

/// Exact maximum number of disjoint pipelines via DP over node subsets.
///
/// `count[mask]` is the most pipelines formable from the nodes in `mask`
/// (`used[mask]` the least memory they take among such choices). Either the mask's lowest node is unused, or it belongs to a
/// minimal covering subset; restricting to minimal subsets loses nothing
/// (any cover shrinks to one) and keeps redundant nodes free for partial spans.
fn exact_groups(caps: &[Caps], usable: &[usize], l: u32) -> Vec<Vec<usize>> {
    let n = usable.len();
    let size = 1usize << n;
    let members_of = |mask: usize| -> Vec<usize> {
        (0..n)
            .filter(|bit| (mask >> bit) & 1 == 1)
            .map(|bit| usable[bit])
            .collect()
    };

    let mut covers = vec![false; size];
    let mut cost = vec![0u64; size];
    for mask in 1..size {
        let low = mask.trailing_zeros() as usize;
        cost[mask] = cost[mask & (mask - 1)] + u64::from(caps[usable[low]].cost);
        covers[mask] = stage_order(caps, &members_of(mask), l).is_some();
    }
    let minimal: Vec<bool> = (0..size)
        .map(|mask| {
            covers[mask] && (0..n).all(|bit| (mask >> bit) & 1 == 0 || !covers[mask ^ (1 << bit)])
        })
        .collect();

    let mut count = vec![0u32; size];
    let mut used = vec![0u64; size];
    let mut choice = vec![0usize; size];
    for mask in 1..size {
        let low = mask & mask.wrapping_neg();
        let rest = mask ^ low;
        let (mut best_count, mut best_used, mut best_choice) = (count[rest], used[rest], 0);
        let mut sub = rest;
        loop {
            let group = sub | low;
            if minimal[group] {
                let other = mask ^ group;
                let c = count[other] + 1;
                let u = used[other] + cost[group];
                if c > best_count || (c == best_count && u < best_used) {
                    (best_count, best_used, best_choice) = (c, u, group);
                }
            }
            if sub == 0 {
                break;
            }
            sub = (sub - 1) & rest;
        }
        count[mask] = best_count;
        used[mask] = best_used;
        choice[mask] = best_choice;
    }

    let mut groups = Vec::new();
    let mut mask = size - 1;
    while mask != 0 {
        let group = choice[mask];
        if group == 0 {
            mask &= mask - 1;
            continue;
        }
        if let Some(stages) = stage_order(caps, &members_of(group), l) {
            groups.push(stages);
        }
        mask ^= group;
    }
    groups
}

/// Nodes with identical capacities, in internal order.
struct Class {
    caps: Caps,
    members: Vec<usize>,
    next: usize,
}

impl Class {
    fn remaining(&self) -> usize {
        self.members.len() - self.next
    }

    fn take(&mut self) -> Option<usize> {
        let node = self.members.get(self.next).copied();
        self.next += usize::from(node.is_some());
        node
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Worker = 1,
    Driver = 2,
    Validator = 3,
    Full = 4,
}

/// What "cheapest pipeline" means for the greedy path.
///
/// Measured on random clusters, `FewestNodes` forms the most pipelines on
/// large inputs (a big node plus the smallest filler that completes it wastes
/// little and keeps small fillers for later), so it goes first. On tight small
/// inputs each objective misses some feasible cases the others catch
/// (0.1% to 0.6% each, 0.007% for all of them together), mostly by spending
/// the few nodes that can hold the embedding or head in the wrong role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Objective {
    /// Fewest stages, then least memory: short pipelines.
    FewestNodes,
    /// Least memory, but charging one extra layer for each end role a node
    /// could take and does not, for the end role with fewer capable nodes
    /// left, since that one caps how many pipelines can still form.
    SpareScarceEnd,
    /// As `SpareScarceEnd`, charging for both end roles.
    SpareEndNodes,
    /// Minimum-waste bin covering.
    LeastMemory,
}

impl Objective {
    const ALL: [Objective; 4] = [
        Objective::FewestNodes,
        Objective::SpareScarceEnd,
        Objective::SpareEndNodes,
        Objective::LeastMemory,
    ];

    /// Lexicographic cost increase of putting a node with `caps` in `mode`.
    fn step(self, caps: &Caps, mode: Mode, scarce: EndScarcity) -> (u64, u64) {
        let memory = u64::from(caps.cost);
        let (charge_driver, charge_validator) = match self {
            Objective::SpareScarceEnd => (scarce.drivers, scarce.validators),
            _ => (true, true),
        };
        match self {
            Objective::LeastMemory => (memory, 1),
            Objective::SpareEndNodes | Objective::SpareScarceEnd => {
                let could_drive = u64::from(charge_driver && caps.driver > 0);
                let could_validate = u64::from(charge_validator && caps.validator > 0);
                let wasted = match mode {
                    Mode::Worker => could_drive + could_validate,
                    Mode::Driver => could_validate,
                    Mode::Validator => could_drive,
                    Mode::Full => 0,
                };
                (memory + wasted, 1)
            }
            Objective::FewestNodes => (1, memory),
        }
    }
}

/// Which end roles have no more capable nodes left than the other one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndScarcity {
    drivers: bool,
    validators: bool,
}

impl EndScarcity {
    fn of(classes: &[Class]) -> Self {
        let capable = |role: fn(&Caps) -> u32| -> usize {
            classes
                .iter()
                .filter(|class| role(&class.caps) > 0)
                .map(Class::remaining)
                .sum()
        };
        let drivers = capable(|caps| caps.driver);
        let validators = capable(|caps| caps.validator);
        EndScarcity {
            drivers: drivers <= validators,
            validators: validators <= drivers,
        }
    }
}

/// Repeatedly forms the cheapest pipeline under `objective`, which avoids the
/// classic failure of filling pipelines biggest-first and wasting their
/// truncated tails. A cheapest pattern stays cheapest while its classes last
/// (up to shifts in `EndScarcity`), so it is reused instead of re-solved; the
/// knapsack runs roughly once per exhausted class. `big_first` picks which of
/// equally cheap patterns wins.
fn greedy_groups(
    caps: &[Caps],
    usable: &[usize],
    l: u32,
    objective: Objective,
    big_first: bool,
) -> Vec<Vec<usize>> {
    let mut by_caps: BTreeMap<Caps, Vec<usize>> = BTreeMap::new();
    for &node in usable {
        by_caps.entry(caps[node]).or_default().push(node);
    }
    let mut classes: Vec<Class> = by_caps
        .into_iter()
        .rev()
        .map(|(caps, members)| Class {
            caps,
            members,
            next: 0,
        })
        .collect();
    if !big_first {
        classes.reverse();
    }

    let mut groups = Vec::new();
    let mut table = Vec::new();
    loop {
        // A cheapest pattern never needs more workers of one class than it
        // takes to span L on their own, plus a driver and a validator.
        let items: Vec<usize> = classes
            .iter()
            .enumerate()
            .flat_map(|(index, class)| {
                let useful = l.div_ceil(class.caps.worker) as usize + 2;
                std::iter::repeat_n(index, class.remaining().min(useful))
            })
            .collect();
        let Some(pattern) = cheapest_pattern(
            &classes,
            &items,
            l,
            objective,
            EndScarcity::of(&classes),
            &mut table,
        ) else {
            break;
        };
        let mut usage = vec![0usize; classes.len()];
        for &(class, _) in &pattern {
            usage[class] += 1;
        }
        let repeats = pattern
            .iter()
            .map(|&(class, _)| classes[class].remaining() / usage[class])
            .min()
            .unwrap_or(0);
        if repeats == 0 {
            break;
        }
        for _ in 0..repeats {
            let mut driver = None;
            let mut validator = None;
            let mut workers = Vec::new();
            for &(class, mode) in &pattern {
                let Some(node) = classes[class].take() else {
                    continue;
                };
                match mode {
                    Mode::Driver => driver = Some(node),
                    Mode::Validator => validator = Some(node),
                    Mode::Worker => workers.push(node),
                    Mode::Full => groups.push(vec![node]),
                }
            }
            if let (Some(driver), Some(validator)) = (driver, validator) {
                workers.sort_unstable();
                let mut stages = Vec::with_capacity(workers.len() + 2);
                stages.push(driver);
                stages.extend(workers);
                stages.push(validator);
                groups.push(stages);
            }
        }
    }
    groups
}

/// Knapsack over `(layers covered capped at L, has driver, has validator)`
/// minimizing `objective`. Returns the chosen `(class, mode)`s.
///
/// Every step strictly increases the cost, so a cheapest solution never
/// contains a removable worker; hence it never has more stages than layers
/// and every stage gets at least one layer.
fn cheapest_pattern(
    classes: &[Class],
    items: &[usize],
    l: u32,
    objective: Objective,
    scarce: EndScarcity,
    table: &mut Vec<u16>,
) -> Option<Vec<(usize, Mode)>> {
    const UNREACHED: (u64, u64) = (u64::MAX, u64::MAX);
    let lu = l as usize;
    let width = (lu + 1) * 4;
    let mut cur = vec![UNREACHED; width];
    cur[0] = (0, 0);
    let mut next = cur.clone();
    table.clear();
    table.resize(items.len() * width, 0);
    // A two-stage pipeline needs two layers to split between its ends.
    let can_split = l >= 2;

    for (i, &class) in items.iter().enumerate() {
        let caps = classes[class].caps;
        next.copy_from_slice(&cur);
        let row = &mut table[i * width..(i + 1) * width];
        // (mode, layers added, flag set, cost added); zero layers = not allowed.
        let moves = [
            (Mode::Worker, caps.worker, 0),
            (Mode::Driver, if can_split { caps.driver } else { 0 }, 1),
            (
                Mode::Validator,
                if can_split { caps.validator } else { 0 },
                2,
            ),
        ]
        .map(|(mode, layers, flag)| {
            let step = objective.step(&caps, mode, scarce);
            (mode, layers as usize, flag, step)
        });
        for (state, &(major, minor)) in cur.iter().enumerate() {
            if major == u64::MAX {
                continue;
            }
            let (s, flags) = (state >> 2, state & 3);
            // Back-pointers store the previous layer count; the previous
            // flags follow from the mode.
            let back = (s as u16) << 3;
            for &(mode, layers, flag, (add_major, add_minor)) in &moves {
                if layers == 0 || flags & flag != 0 {
                    continue;
                }
                let to = (((s + layers).min(lu)) << 2) | flags | flag;
                let candidate = (major + add_major, minor + add_minor);
                if candidate < next[to] {
                    next[to] = candidate;
                    row[to] = back | mode as u16;
                }
            }
        }
        if caps.full && cur[0] != UNREACHED {
            let (add_major, add_minor) = objective.step(&caps, Mode::Full, scarce);
            let candidate = (cur[0].0 + add_major, cur[0].1 + add_minor);
            let to = (lu << 2) | 3;
            if candidate < next[to] {
                next[to] = candidate;
                row[to] = Mode::Full as u16;
            }
        }
        std::mem::swap(&mut cur, &mut next);
    }

    let mut state = lu * 4 + 3;
    if cur[state] == UNREACHED {
        return None;
    }
    let mut pattern = Vec::new();
    for i in (0..items.len()).rev() {
        let entry = table[i * width + state];
        if entry == 0 {
            continue;
        }
        let flags = state % 4;
        let (mode, prev_flags) = match entry & 7 {
            1 => (Mode::Worker, flags),
            2 => (Mode::Driver, flags & !1),
            3 => (Mode::Validator, flags & !2),
            _ => (Mode::Full, 0),
        };
        pattern.push((items[i], mode));
        state = usize::from(entry >> 3) * 4 + prev_flags;
    }
    Some(pattern)
}

/// Per-stage layer limits of a covering group in stage order.
fn stage_limits(caps: &[Caps], stages: &[usize], l: u32) -> Vec<u32> {
    let last = stages.len().saturating_sub(1);
    stages
        .iter()
        .enumerate()
        .map(|(position, &node)| match position {
            _ if last == 0 => l,
            0 => caps[node].driver,
            p if p == last => caps[node].validator,
            _ => caps[node].worker,
        })
        .collect()
}

/// Splits `L` layers over stages with the given limits, trimming the slack
/// from the largest stages first so stage loads end up as even as possible.
/// Callers guarantee the limits sum to at least `L`, every limit is at least
/// one and there are at most `L` stages.
fn split_layers(limits: &[u32], l: u32) -> Vec<u32> {
    let mut parts: Vec<u32> = limits.iter().map(|&c| c.min(l)).collect();
    let total: u64 = parts.iter().map(|&p| u64::from(p)).sum();
    let mut excess = total.saturating_sub(u64::from(l));
    while excess > 0 {
        let Some((index, _)) = parts
            .iter()
            .enumerate()
            .filter(|(_, p)| **p > 1)
            .max_by_key(|(index, p)| (**p, std::cmp::Reverse(*index)))
        else {
            break;
        };
        parts[index] -= 1;
        excess -= 1;
    }
    parts
}

/// The span a leftover node should take: the one covering the most layers at
/// the current minimum holder count, then the most layers below `r`, then the
/// most layers. Only maximal windows are scored since any shorter window is
/// contained in one of them and can never score higher.
fn best_partial_window(caps: &Caps, holders: &[u32], l: u32, r: u32) -> Option<(u32, u32)> {
    let min_level = holders.iter().copied().min().unwrap_or(0);
    let mut at_min = Vec::with_capacity(holders.len() + 1);
    let mut below_r = Vec::with_capacity(holders.len() + 1);
    at_min.push(0u32);
    below_r.push(0u32);
    for &h in holders {
        at_min.push(at_min[at_min.len() - 1] + u32::from(h == min_level));
        below_r.push(below_r[below_r.len() - 1] + u32::from(h < r));
    }
    let score = |start: u32, end: u32| {
        let (a, b) = (start as usize, end as usize);
        (at_min[b] - at_min[a], below_r[b] - below_r[a], end - start)
    };

    let mut windows = Vec::new();
    if caps.full {
        windows.push((0, l));
    }
    if l >= 2 && caps.driver > 0 {
        windows.push((0, caps.driver.min(l - 1)));
    }
    if l >= 3 && caps.worker > 0 {
        let len = caps.worker.min(l - 2);
        windows.extend((1..l - len).map(|start| (start, start + len)));
    }
    if l >= 2 && caps.validator > 0 {
        windows.push((l - caps.validator.min(l - 1), l));
    }
    // `min_by_key` keeps the first of equal keys: ties go to the earliest window.
    windows
        .into_iter()
        .min_by_key(|&(start, end)| std::cmp::Reverse(score(start, end)))
}

fn make_span(node: &NodeCapacity, start: u32, end: u32, l: u32) -> NodeSpan {
    NodeSpan {
        node_id: node.node_id.clone(),
        start,
        end,
        role: Role::for_span(start, end, l),
    }
}

fn add_holder(holders: &mut [u32], start: u32, end: u32) {
    for h in &mut holders[start as usize..end as usize] {
        *h += 1;
    }
}

fn count_holders(spans: &[NodeSpan], l: u32) -> Vec<u32> {
    let mut delta = vec![0i64; l as usize + 1];
    for span in spans {
        delta[span.start as usize] += 1;
        delta[span.end as usize] -= 1;
    }
    let mut running = 0i64;
    delta[..l as usize]
        .iter()
        .map(|d| {
            running += d;
            running as u32
        })
        .collect()
}

fn health_of(holders: &[u32], min_replicas: u32) -> Health {
    let deficits: Vec<LayerDeficit> = holders
        .iter()
        .enumerate()
        .filter(|(_, h)| **h < min_replicas)
        .map(|(layer, &h)| LayerDeficit {
            layer: layer as u32,
            holders: h,
            missing: min_replicas - h,
        })
        .collect();
    if deficits.is_empty() {
        Health::Healthy
    } else {
        let total_missing = deficits.iter().map(|d| d.missing).sum();
        Health::Degraded {
            deficits,
            total_missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Instant;

    fn node(id: &str, memory_bytes: u64) -> NodeCapacity {
        NodeCapacity {
            node_id: id.to_string(),
            memory_bytes,
            throughput: 1.0,
        }
    }

    fn costs(layer_bytes: u64, embedding_bytes: u64, head_bytes: u64) -> LayerCosts {
        LayerCosts {
            layer_bytes,
            embedding_bytes,
            head_bytes,
        }
    }

    fn nodes_from(memories: &[u64]) -> Vec<NodeCapacity> {
        memories
            .iter()
            .enumerate()
            .map(|(i, &m)| NodeCapacity {
                node_id: format!("n{i}"),
                memory_bytes: m,
                throughput: (i % 3) as f64,
            })
            .collect()
    }

    fn span_of<'a>(a: &'a Assignment, id: &str) -> Option<&'a NodeSpan> {
        a.spans.iter().find(|s| s.node_id == id)
    }

    /// Written from the problem statement rather than from `span_bytes`, so
    /// a mistake there cannot hide itself.
    fn fits(l: u32, c: &LayerCosts, memory: u64, start: u32, end: u32) -> bool {
        let mut need = u128::from(end - start) * u128::from(c.layer_bytes);
        if start == 0 {
            need += u128::from(c.embedding_bytes);
        }
        if end == l {
            need += u128::from(c.head_bytes);
        }
        need <= u128::from(memory)
    }

    /// Every structural promise of `Assignment`, checked from scratch.
    fn check_invariants(l: u32, c: &LayerCosts, nodes: &[NodeCapacity], r: u32, a: &Assignment) {
        let memory_of = |id: &str| {
            nodes
                .iter()
                .find(|n| n.node_id == id)
                .map(|n| n.memory_bytes)
        };
        let mut seen: Vec<&str> = Vec::new();
        for span in &a.spans {
            assert!(span.start < span.end && span.end <= l, "bad span {span:?}");
            let memory = memory_of(&span.node_id).expect("span for unknown node");
            assert!(
                fits(l, c, memory, span.start, span.end),
                "overfull {span:?}"
            );
            assert_eq!(span.role, Role::for_span(span.start, span.end, l));
            seen.push(&span.node_id);
        }
        for id in &a.unassigned {
            let memory = memory_of(id).expect("unknown unassigned node");
            // Leaving a node idle is only acceptable if no span fits it at all.
            assert!(
                (0..l).all(|k| !fits(l, c, memory, k, k + 1)),
                "node {id} could hold a layer but was left unassigned"
            );
            seen.push(id);
        }
        seen.sort_unstable();
        let mut all: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
        all.sort_unstable();
        assert_eq!(seen, all, "each node must appear exactly once");

        let truth: Vec<u32> = (0..l)
            .map(|k| a.spans.iter().filter(|s| s.contains(k)).count() as u32)
            .collect();
        assert_eq!(a.holders, truth);

        let mut in_pipeline: Vec<&str> = Vec::new();
        for p in &a.pipelines {
            assert!(!p.stages.is_empty());
            let mut at = 0;
            for stage in &p.stages {
                assert_eq!(stage.start, at, "pipeline not contiguous: {p:?}");
                assert!(a.spans.contains(stage), "stage missing from spans");
                in_pipeline.push(&stage.node_id);
                at = stage.end;
            }
            assert_eq!(at, l, "pipeline does not reach the last layer");
        }
        let before = in_pipeline.len();
        in_pipeline.sort_unstable();
        in_pipeline.dedup();
        assert_eq!(before, in_pipeline.len(), "node in two pipelines");

        let expected: Vec<LayerDeficit> = truth
            .iter()
            .enumerate()
            .filter(|(_, h)| **h < r)
            .map(|(k, &h)| LayerDeficit {
                layer: k as u32,
                holders: h,
                missing: r - h,
            })
            .collect();
        match &a.health {
            Health::Healthy => assert!(expected.is_empty()),
            Health::Degraded {
                deficits,
                total_missing,
            } => {
                assert_eq!(deficits, &expected);
                assert_eq!(
                    *total_missing,
                    expected.iter().map(|d| d.missing).sum::<u32>()
                );
            }
        }
    }

    /// Can these memories form one pipeline? Straight from the definition.
    fn group_covers(l: u32, c: &LayerCosts, group: &[u64]) -> bool {
        if group.iter().any(|&m| fits(l, c, m, 0, l)) {
            return true;
        }
        if l < 2 {
            return false;
        }
        let lb = c.layer_bytes;
        for (d, &md) in group.iter().enumerate() {
            for (v, &mv) in group.iter().enumerate() {
                if d == v || !fits(l, c, md, 0, 1) || !fits(l, c, mv, l - 1, l) {
                    continue;
                }
                let middle: u64 = group
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i != d && *i != v)
                    .map(|(_, &m)| m / lb)
                    .sum();
                let ends = (md - c.embedding_bytes) / lb + (mv - c.head_bytes) / lb;
                if ends + middle >= u64::from(l) {
                    return true;
                }
            }
        }
        false
    }

    /// Brute force: can the nodes be split into `k` groups that each cover?
    /// Adding a node to a group never hurts, so unused nodes need no bucket.
    fn k_covers_possible(l: u32, c: &LayerCosts, memories: &[u64], k: usize) -> bool {
        fn place(
            i: usize,
            opened: usize,
            memories: &[u64],
            groups: &mut Vec<Vec<u64>>,
            l: u32,
            c: &LayerCosts,
        ) -> bool {
            if i == memories.len() {
                return groups.iter().all(|g| group_covers(l, c, g));
            }
            // Groups are interchangeable: only open them in order.
            for g in 0..(opened + 1).min(groups.len()) {
                groups[g].push(memories[i]);
                if place(i + 1, opened.max(g + 1), memories, groups, l, c) {
                    return true;
                }
                groups[g].pop();
            }
            false
        }
        if k == 0 {
            return true;
        }
        let mut groups = vec![Vec::new(); k];
        place(0, 0, memories, &mut groups, l, c)
    }

    fn instance() -> impl Strategy<Value = (u32, LayerCosts, Vec<u64>, u32)> {
        (1u32..=16, 1u64..=4, 0u64..=3, 0u64..=3, 1u32..=3).prop_flat_map(
            |(l, lb_units, emb_units, head_units, r)| {
                let c = costs(lb_units * 10, emb_units * 7, head_units * 7);
                let whole = c.span_bytes(l, 0, l) as u64 + c.layer_bytes;
                let memory = prop_oneof![0..=whole, 0..=whole / 3];
                (
                    Just(l),
                    Just(c),
                    prop::collection::vec(memory, 0..=12),
                    Just(r),
                )
            },
        )
    }

    #[test]
    fn three_three_one_one_forms_two_pipelines() {
        let nodes = vec![node("a", 3), node("b", 3), node("c", 1), node("d", 1)];
        for limit in [EXACT_NODE_LIMIT, 0] {
            let a = assign_with_exact_limit(4, &costs(1, 0, 0), &nodes, 2, limit).unwrap();
            check_invariants(4, &costs(1, 0, 0), &nodes, 2, &a);
            assert_eq!(a.pipelines.len(), 2, "limit {limit}: {a:?}");
            assert_eq!(a.holders, vec![2, 2, 2, 2]);
            assert!(a.health.is_healthy());
        }
    }

    #[test]
    fn single_big_node_is_full() {
        let c = costs(10, 5, 7);
        let nodes = vec![node("big", 4 * 10 + 5 + 7)];
        let a = assign(4, &c, &nodes, 1).unwrap();
        assert_eq!(
            a.spans,
            vec![NodeSpan {
                node_id: "big".into(),
                start: 0,
                end: 4,
                role: Role::Full
            }]
        );
        assert_eq!(a.pipelines.len(), 1);
        assert!(a.health.is_healthy());
    }

    #[test]
    fn one_byte_short_of_full_is_not_full() {
        let c = costs(10, 5, 7);
        let nodes = vec![node("almost", 4 * 10 + 5 + 7 - 1)];
        let a = assign(4, &c, &nodes, 1).unwrap();
        check_invariants(4, &c, &nodes, 1, &a);
        assert!(a.pipelines.is_empty());
        let span = span_of(&a, "almost").unwrap();
        assert_ne!(span.role, Role::Full);
    }

    #[test]
    fn exactly_twice_the_model_gives_two_replicas() {
        let c = costs(10, 5, 5);
        // Each pipeline: driver 3 layers + embedding, worker 2, validator 3 + head.
        let nodes = vec![
            node("d1", 35),
            node("d2", 35),
            node("w1", 20),
            node("w2", 20),
            node("v1", 35),
            node("v2", 35),
        ];
        let a = assign(8, &c, &nodes, 2).unwrap();
        check_invariants(8, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 2);
        assert_eq!(a.holders, vec![2; 8]);
        assert!(a.health.is_healthy());
    }

    #[test]
    fn insufficient_capacity_reports_exact_deficits() {
        let c = costs(1, 0, 0);
        let nodes = vec![node("full", 4), node("half", 2)];
        let a = assign(4, &c, &nodes, 2).unwrap();
        check_invariants(4, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 1);
        assert_eq!(a.holders, vec![2, 2, 1, 1]);
        assert_eq!(
            a.health,
            Health::Degraded {
                deficits: vec![
                    LayerDeficit {
                        layer: 2,
                        holders: 1,
                        missing: 1
                    },
                    LayerDeficit {
                        layer: 3,
                        holders: 1,
                        missing: 1
                    },
                ],
                total_missing: 2,
            }
        );
    }

    #[test]
    fn no_nodes_means_every_layer_is_missing_everything() {
        let a = assign(3, &costs(1, 0, 0), &[], 2).unwrap();
        assert_eq!(a.holders, vec![0, 0, 0]);
        let Health::Degraded {
            deficits,
            total_missing,
        } = a.health
        else {
            panic!("expected degraded");
        };
        assert_eq!(total_missing, 6);
        assert!(deficits.iter().all(|d| d.holders == 0 && d.missing == 2));
        assert_eq!(deficits.len(), 3);
    }

    #[test]
    fn role_extras_shrink_driver_and_validator_spans() {
        let c = costs(10, 5, 5);
        // "small" fits 4 layers as a worker but only 3 beside the embedding or head.
        let nodes = vec![node("small", 40), node("other", 45)];
        let a = assign(7, &c, &nodes, 1).unwrap();
        check_invariants(7, &c, &nodes, 1, &a);
        assert_eq!(a.pipelines.len(), 1);
        let small = span_of(&a, "small").unwrap();
        assert_eq!(small.layer_count(), 3);
        assert!(matches!(small.role, Role::Driver | Role::Validator));
        assert!(a.health.is_healthy());
    }

    #[test]
    fn a_worker_keeps_its_full_layer_count() {
        let c = costs(10, 5, 5);
        let nodes = vec![node("d", 25), node("mid", 40), node("v", 25)];
        let a = assign(8, &c, &nodes, 1).unwrap();
        check_invariants(8, &c, &nodes, 1, &a);
        let mid = span_of(&a, "mid").unwrap();
        assert_eq!((mid.start, mid.end, mid.role), (2, 6, Role::Worker));
    }

    #[test]
    fn zero_memory_node_is_unassigned() {
        let c = costs(10, 0, 0);
        let nodes = vec![node("empty", 0), node("tiny", 9), node("ok", 40)];
        let a = assign(4, &c, &nodes, 1).unwrap();
        check_invariants(4, &c, &nodes, 1, &a);
        assert_eq!(a.unassigned, vec!["tiny".to_string(), "empty".to_string()]);
    }

    #[test]
    fn one_layer_model_needs_full_nodes() {
        let c = costs(10, 3, 3);
        let nodes = vec![node("full", 16), node("no_room", 15)];
        let a = assign(1, &c, &nodes, 1).unwrap();
        check_invariants(1, &c, &nodes, 1, &a);
        assert_eq!(a.pipelines.len(), 1);
        assert_eq!(a.unassigned, vec!["no_room".to_string()]);
    }

    #[test]
    fn spare_capacity_forms_more_pipelines_then_partial_spans() {
        let c = costs(1, 0, 0);
        let mut nodes: Vec<NodeCapacity> = (0..5).map(|i| node(&format!("f{i}"), 4)).collect();
        nodes.push(node("scrap", 1));
        let a = assign(4, &c, &nodes, 2).unwrap();
        check_invariants(4, &c, &nodes, 2, &a);
        assert_eq!(a.pipelines.len(), 5);
        assert!(span_of(&a, "scrap").is_some());
        assert_eq!(a.holders.iter().sum::<u32>(), 21);
    }

    #[test]
    fn invalid_inputs_are_errors() {
        let c = costs(1, 0, 0);
        assert_eq!(assign(0, &c, &[], 1), Err(AssignmentError::ZeroLayers));
        assert_eq!(
            assign(4, &costs(0, 0, 0), &[], 1),
            Err(AssignmentError::ZeroLayerBytes)
        );
        assert!(matches!(
            assign(MAX_LAYERS + 1, &c, &[], 1),
            Err(AssignmentError::TooManyLayers { .. })
        ));
        let nodes = vec![node("b", 1), node("a", 1), node("b", 2), node("a", 3)];
        let err = assign(4, &c, &nodes, 1).unwrap_err();
        assert_eq!(err, AssignmentError::DuplicateNodeId("a".into()));
        assert!(err.to_string().contains("\"a\""));
        assert!(AssignmentError::ZeroLayers.to_string().contains("zero"));
    }

    #[test]
    fn input_order_does_not_matter() {
        let c = costs(7, 3, 5);
        let nodes = nodes_from(&[30, 45, 12, 80, 33, 7, 21, 60, 9, 14, 50, 38]);
        let mut reversed = nodes.clone();
        reversed.reverse();
        let a = assign(10, &c, &nodes, 2).unwrap();
        check_invariants(10, &c, &nodes, 2, &a);
        assert_eq!(a, assign(10, &c, &reversed, 2).unwrap());
    }

    #[test]
    fn large_instance_uses_the_fast_path_soundly() {
        let c = costs(100, 150, 250);
        let mut seed = 7u64;
        let memories: Vec<u64> = (0..400)
            .map(|_| {
                seed = lcg(seed);
                100 + (seed >> 33) % 3000
            })
            .collect();
        let nodes = nodes_from(&memories);
        let a = assign(24, &c, &nodes, 2).unwrap();
        check_invariants(24, &c, &nodes, 2, &a);
        assert!(a.health.is_healthy());
        assert!(a.pipelines.len() > 2);
    }

    proptest! {
        #[test]
        fn exact_path_is_sound_and_meets_replicas((l, c, memories, r) in instance()) {
            let nodes = nodes_from(&memories);
            let a = assign(l, &c, &nodes, r).unwrap();
            check_invariants(l, &c, &nodes, r, &a);
            if memories.len() <= 10 && k_covers_possible(l, &c, &memories, r as usize) {
                prop_assert!(a.health.is_healthy(), "feasible but degraded: {:?}", a);
            }
            if memories.len() <= 8 {
                let more = a.pipelines.len() + 1;
                prop_assert!(!k_covers_possible(l, &c, &memories, more), "{} pipelines possible", more);
            }
        }

        #[test]
        fn fast_path_is_sound((l, c, memories, r) in instance()) {
            let nodes = nodes_from(&memories);
            let a = assign_with_exact_limit(l, &c, &nodes, r, 0).unwrap();
            check_invariants(l, &c, &nodes, r, &a);
        }

        #[test]
        fn shuffled_input_gives_identical_output(
            (l, c, nodes, shuffled, r) in instance().prop_flat_map(|(l, c, memories, r)| {
                let nodes = nodes_from(&memories);
                (Just(l), Just(c), Just(nodes.clone()), Just(nodes).prop_shuffle(), Just(r))
            })
        ) {
            prop_assert_eq!(assign(l, &c, &nodes, r), assign(l, &c, &shuffled, r));
            prop_assert_eq!(
                assign_with_exact_limit(l, &c, &nodes, r, 0),
                assign_with_exact_limit(l, &c, &shuffled, r, 0)
            );
        }
    }

    /// How often the fast path misses a feasible replica target on small
    /// tight inputs, where the brute force knows the answer.
    #[test]
    #[ignore]
    fn fast_path_miss_rate() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let strategy = instance();
        let (mut feasible, mut missed) = (0u32, 0u32);
        for _ in 0..300_000 {
            let (l, c, memories, r) = strategy.new_tree(&mut runner).unwrap().current();
            if memories.len() > 10 || !k_covers_possible(l, &c, &memories, r as usize) {
                continue;
            }
            feasible += 1;
            let nodes = nodes_from(&memories);
            let a = assign_with_exact_limit(l, &c, &nodes, r, 0).unwrap();
            if !a.health.is_healthy() {
                missed += 1;
                println!("missed: L={l} {c:?} memories={memories:?} r={r}");
            }
        }
        println!("fast path missed {missed} of {feasible} feasible instances");
    }

    fn lcg(x: u64) -> u64 {
        x.wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407)
    }

    fn simulated_nodes(count: usize, min: u64, max: u64, seed: u64) -> Vec<NodeCapacity> {
        let mut x = seed;
        (0..count)
            .map(|i| {
                x = lcg(x);
                NodeCapacity {
                    node_id: format!("node-{i:05}"),
                    memory_bytes: min + (x >> 11) % (max - min + 1),
                    throughput: ((x >> 3) % 1000) as f64,
                }
            })
            .collect()
    }

    #[test]
    #[ignore]
    fn bench_assignment_scaling() {
        const GB: u64 = 1_000_000_000;
        let cases = [
            (64, costs(GB, GB / 2, 3 * GB / 2), 2 * GB, 80 * GB),
            (256, costs(GB / 4, GB / 2, 3 * GB / 2), 2 * GB, 80 * GB),
        ];
        // The exact path's worst case: as many usable nodes as it accepts.
        for count in [12, EXACT_NODE_LIMIT] {
            let nodes = simulated_nodes(count, 2 * GB, 40 * GB, 42);
            let c = costs(GB, GB / 2, 3 * GB / 2);
            let started = Instant::now();
            let a = assign(64, &c, &nodes, 2).unwrap();
            println!(
                "exact path: L= 64 nodes={count:>6} time={:>10.3?} pipelines={:>5}",
                started.elapsed(),
                a.pipelines.len()
            );
        }
        for (l, c, min, max) in cases {
            for count in [100, 1_000, 10_000] {
                let nodes = simulated_nodes(count, min, max, 42);
                let mut best = None;
                let mut result = None;
                for _ in 0..3 {
                    let started = Instant::now();
                    let a = assign(l, &c, &nodes, 2).unwrap();
                    let elapsed = started.elapsed();
                    best = Some(best.map_or(elapsed, |b: std::time::Duration| b.min(elapsed)));
                    result = Some(a);
                }
                let a = result.unwrap();
                check_invariants(l, &c, &nodes, 2, &a);
                let total: u64 = nodes.iter().map(|n| n.memory_bytes).sum();
                let bound = total as f64 / c.span_bytes(l, 0, l) as f64;
                println!(
                    "L={l:>3} nodes={count:>6} time={:>10.3?} pipelines={:>5} (memory bound {:>7.1}) \
                     partial={:>3} unassigned={:>3} min_holders={} healthy={}",
                    best.unwrap(),
                    a.pipelines.len(),
                    bound,
                    a.spans.len() - a.pipelines.iter().map(|p| p.stages.len()).sum::<usize>(),
                    a.unassigned.len(),
                    a.holders.iter().min().unwrap(),
                    a.health.is_healthy(),
                );
            }
        }
    }
}
