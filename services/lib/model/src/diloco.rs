//! DiLoCo in one process: K replicas of the full model, each an inner trainer whose AdamW
//! state lives across rounds, train H steps from the round's global weights on the data
//! their replica index selects; their pseudo-gradients Δ_k = θ_start − θ_k go through the
//! same outer round the aggregator runs (`neuroshard_aggregation::round`: a robust rule per
//! layer, Nesterov from θ_start); Byzantine replicas, when asked for, send what an attack
//! crafts from the honest ones instead of training. This is the reference the distributed
//! rounds are checked against, and what the convergence and robustness tables run.

use std::collections::BTreeMap;

use neuroshard_aggregation::attacks::{self, Attack};
use neuroshard_aggregation::outer::OuterState;
use neuroshard_aggregation::round::{Named, RoundPlan, outer_round};
use neuroshard_common::tensor::{dequantize_int8, quantize_int8};
use tch::{Kind, Tensor};

use crate::data::batches::eval_windows;
use crate::data::{BatchSampler, Split, TokenShards, shards_for_replica};
use crate::error::{ModelError, Result};
use crate::shard::{Shard, ShardSpec};
use crate::training::{TrainOptions, Trainer, evaluate};

pub use neuroshard_aggregation::DELTA_BLOCK;

#[derive(Debug, Clone, PartialEq)]
pub struct DilocoOptions {
    /// Replicas K, of which the last `attackers` are Byzantine (they send `attack`'s vectors).
    pub replicas: usize,
    pub attackers: usize,
    pub attack: Option<Attack>,
    /// Inner steps per round (H) and rounds.
    pub inner_steps: u64,
    pub rounds: u64,
    /// Each replica's inner training (batch, sequence, AdamW, clipping); its schedule spans
    /// `inner_steps × rounds` steps.
    pub train: TrainOptions,
    pub plan: RoundPlan,
    /// Training shards each replica draws a round's batches from.
    pub shards_per_round: usize,
    /// Held-out windows scored after each round.
    pub eval_windows: usize,
    /// Δ goes through int8 block quantisation (`DELTA_BLOCK`) before the outer round, as
    /// it does on the wire: what the aggregator combines is what nodes can send.
    pub wire_int8: bool,
}

/// One round's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundRecord {
    pub round: u64,
    /// Held-out loss of the new global weights (nats).
    pub held_out: f64,
    /// Mean over honest replicas of their last inner step's loss.
    pub train_loss: f64,
    /// Bytes every replica sent for its Δ, int8 block-quantised, summed over replicas.
    pub bytes: u64,
    /// The rule's notes per layer group, when it made any.
    pub notes: BTreeMap<String, String>,
}

/// Every parameter of `shard` flattened to f32, by name.
pub fn named(shard: &Shard) -> Result<Named> {
    shard
        .var_store()
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let flat = t.detach().to_kind(Kind::Float).flatten(0, -1);
            Ok((name, Vec::<f32>::try_from(&flat)?))
        })
        .collect()
}

/// Copies `weights` into `shard`'s parameters (same names and sizes).
pub fn load_named(shard: &Shard, weights: &Named) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in shard.var_store().variables() {
        let values = weights
            .get(&name)
            .ok_or_else(|| ModelError::InvalidInput(format!("weights have no {name}")))?;
        let source = Tensor::from_slice(values)
            .view(var.size().as_slice())
            .to_kind(var.kind())
            .to_device(var.device());
        var.f_copy_(&source)?;
    }
    Ok(())
}

/// What replica `replica` trains on in `round`: the ids of the shards `shards_for_replica`
/// picks, and their tokens (each shard read, and checked against its SHA-256, once, in order).
pub fn replica_tokens(
    data: &TokenShards,
    round: u64,
    replica: u64,
    shards_per_round: usize,
) -> Result<(Vec<String>, Vec<u32>)> {
    let manifest = &data.manifest;
    let mut tokens = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let ids = shards_for_replica(manifest, round, replica, shards_per_round)?;
    for id in &ids {
        if !seen.insert(id.as_str()) {
            continue;
        }
        let entry = manifest
            .shards
            .iter()
            .find(|s| &s.id == id)
            .ok_or_else(|| ModelError::Data(format!("shard `{id}` is not in the manifest")))?;
        tokens.extend(data.load(entry)?);
    }
    Ok((ids, tokens))
}

/// `values` as the aggregator receives them: int8 blocks of `DELTA_BLOCK`, dequantised.
pub fn through_int8(values: &[f32]) -> Result<Vec<f32>> {
    let invalid = |e: neuroshard_common::Error| ModelError::InvalidInput(e.to_string());
    let q = quantize_int8(&[values.len() as i64], values, DELTA_BLOCK).map_err(invalid)?;
    dequantize_int8(
        &q,
        "delta",
        &neuroshard_common::tensor::Limits {
            max_bytes: usize::MAX,
            ..Default::default()
        },
    )
    .map_err(invalid)
}

fn subtract(a: &Named, b: &Named) -> Named {
    a.iter()
        .map(|(name, x)| {
            let y = &b[name];
            (name.clone(), x.iter().zip(y).map(|(x, y)| x - y).collect())
        })
        .collect()
}

/// Runs `options.rounds` rounds from `global` (the whole model at θ_0) on `data`; returns the
/// final global model and a record per round.
pub fn simulate(
    global: Shard,
    data: &TokenShards,
    options: &DilocoOptions,
) -> Result<(Shard, Vec<RoundRecord>)> {
    let honest_count = options
        .replicas
        .saturating_sub(if options.attack.is_some() {
            options.attackers
        } else {
            0
        });
    if honest_count == 0 {
        return Err(ModelError::InvalidInput(
            "DiLoCo needs at least one honest replica".into(),
        ));
    }
    let config = global.config().clone();
    let spec = ShardSpec::full(config.num_layers);
    let train = TrainOptions {
        steps: options.inner_steps * options.rounds,
        ..options.train.clone()
    };
    let mut replicas = Vec::with_capacity(honest_count);
    for _ in 0..honest_count {
        let shard = Shard::new(&config, spec, global.device(), global.kind())?;
        replicas.push(Trainer::new(shard, &train)?);
    }
    let held_out = eval_windows(
        &data.load_split(Split::Validation)?,
        train.seq_len,
        options.eval_windows,
    );
    let manifest = &data.manifest;
    let mut momentum: BTreeMap<String, OuterState> = BTreeMap::new();
    let mut reference: Option<Named> = None;
    let mut theta = named(&global)?;
    let mut records = Vec::new();
    for round in 1..=options.rounds {
        let mut deltas = Vec::with_capacity(options.replicas);
        let mut last_losses = Vec::new();
        for (k, replica) in replicas.iter_mut().enumerate() {
            load_named(replica.model(), &theta)?;
            let (_, tokens) = replica_tokens(data, round, k as u64, options.shards_per_round)?;
            let sampler =
                BatchSampler::new(tokens, manifest, train.seq_len, train.batch_size, k as u64)?;
            let mut loss = f64::NAN;
            for step in 0..options.inner_steps {
                let batch = Tensor::from_slice(&sampler.batch(round, step))
                    .view([train.batch_size as i64, train.seq_len as i64 + 1]);
                loss = replica.step(&batch)?.0;
            }
            last_losses.push(loss);
            deltas.push(subtract(&theta, &named(replica.model())?));
        }
        if let Some(attack) = options.attack {
            let names: Vec<String> = theta.keys().cloned().collect();
            let mut crafted: Vec<Named> = vec![Named::new(); options.attackers];
            for name in &names {
                let honest: Vec<&[f32]> = deltas.iter().map(|d| d[name].as_slice()).collect();
                let last = reference.as_ref().map(|r| r[name].as_slice());
                let sent = attacks::craft(
                    attack,
                    attacks::Round {
                        honest: &honest,
                        attackers: options.attackers,
                        last_aggregate: last,
                        seed: round,
                    },
                )
                .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
                for (bad, vector) in crafted.iter_mut().zip(sent) {
                    bad.insert(name.clone(), vector);
                }
            }
            deltas.extend(crafted);
        }
        if options.wire_int8 {
            for delta in &mut deltas {
                for values in delta.values_mut() {
                    *values = through_int8(values)?;
                }
            }
        }
        let bytes = deltas
            .iter()
            .flat_map(|d| d.values())
            .map(|v| {
                quantize_int8(&[v.len() as i64], v, DELTA_BLOCK)
                    .map(|q| (q.values.len() + 4 * q.scales.len()) as u64)
            })
            .sum::<std::result::Result<u64, _>>()
            .map_err(|e| ModelError::InvalidInput(e.to_string()))?;
        let views: Vec<&Named> = deltas.iter().collect();
        let outcome = outer_round(
            &theta,
            &views,
            &options.plan,
            reference.as_ref(),
            &mut momentum,
        )
        .map_err(|e| ModelError::Training(format!("round {round}: {e}")))?;
        theta = outcome.theta_next;
        reference = Some(outcome.aggregated);
        load_named(&global, &theta)?;
        records.push(RoundRecord {
            round,
            held_out: evaluate(&global, &held_out, train.batch_size)?,
            train_loss: last_losses.iter().sum::<f64>() / last_losses.len() as f64,
            bytes,
            notes: outcome
                .reports
                .into_iter()
                .filter_map(|(group, r)| r.note.map(|n| (group, n)))
                .collect(),
        });
    }
    Ok((global, records))
}
