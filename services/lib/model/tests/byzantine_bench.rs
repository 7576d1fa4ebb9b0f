//! Benchmark: the Byzantine table. 8 DiLoCo replicas, 2 of them attacking (sign flip ×10,
//! Gaussian noise, "A Little Is Enough", inner-product manipulation, and the history attack
//! against centered clipping), every robust rule tolerating f = 2, with and without
//! nearest-neighbour mixing; the final held-out loss of each, against the clean run (no
//! attacker, same rule). Δ travels int8 as on the wire. A narrow model and short rounds keep
//! the 84 runs to minutes; the table is what chooses the aggregator's default rule.
//!
//! Run: NEUROSHARD_BENCH_DATA=<dataset dir> scripts/cargo.sh test --release -p neuroshard-model --test byzantine_bench -- --ignored --nocapture
//! (NEUROSHARD_BENCH_RULES="median,trimmed_mean" limits the rules; `make bench` runs it.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use neuroshard_aggregation::attacks::{ATTACKS, Attack};
use neuroshard_aggregation::outer::OuterConfig;
use neuroshard_aggregation::round::RoundPlan;
use neuroshard_aggregation::rules::{RULES, Rule};
use neuroshard_model::data::TokenShards;
use neuroshard_model::diloco::{DilocoOptions, simulate};
use neuroshard_model::tch::{Device, Kind};
use neuroshard_model::training::TrainOptions;
use neuroshard_model::{ModelConfig, Shard, ShardSpec, init};

const REPLICAS: usize = 8;
const ATTACKERS: usize = 2;
const H: u64 = 20;
const ROUNDS: u64 = 5;

fn config(vocab: i64) -> ModelConfig {
    ModelConfig {
        hidden_size: 96,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 192,
        max_seq_len: 64,
        ..ModelConfig::small(vocab)
    }
}

fn model(config: &ModelConfig) -> Shard {
    let mut m = Shard::new(
        config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut m, 11).unwrap();
    m
}

fn held_out(
    data: &TokenShards,
    config: &ModelConfig,
    rule: Rule,
    mixing: bool,
    attack: Option<Attack>,
) -> f64 {
    let options = DilocoOptions {
        replicas: REPLICAS,
        attackers: if attack.is_some() { ATTACKERS } else { 0 },
        attack,
        inner_steps: H,
        rounds: ROUNDS,
        train: TrainOptions {
            batch_size: 8,
            seq_len: 32,
            lr: 3e-3,
            warmup_steps: 10,
            ..TrainOptions::default()
        },
        plan: RoundPlan {
            rule,
            byzantine: if rule == Rule::Mean { 0 } else { ATTACKERS },
            mixing,
            bucket: None,
            seed: 0,
            outer: OuterConfig::default(),
        },
        shards_per_round: 2,
        eval_windows: 64,
        wire_int8: true,
    };
    let (_, records) = simulate(model(config), data, &options).unwrap();
    records.last().unwrap().held_out
}

#[test]
#[ignore = "benchmark: 84 DiLoCo runs"]
fn bench_byzantine_table() {
    neuroshard_model::tch::set_num_threads(2);
    let dir = std::env::var("NEUROSHARD_BENCH_DATA")
        .expect("NEUROSHARD_BENCH_DATA: a dataset directory from `neuroshard data build`");
    let data = TokenShards::open(std::path::Path::new(&dir)).unwrap();
    let config = config(i64::from(data.manifest.vocab_size));
    let rules: Vec<Rule> = match std::env::var("NEUROSHARD_BENCH_RULES") {
        Ok(list) => list
            .split(',')
            .map(|r| Rule::parse(r.trim()).unwrap())
            .collect(),
        Err(_) => RULES.to_vec(),
    };
    let started = std::time::Instant::now();
    println!(
        "| rule | mixing | clean | {} |",
        ATTACKS.map(Attack::name).join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(ATTACKS.len()));
    for rule in rules {
        for mixing in [false, true] {
            let clean = held_out(&data, &config, rule, mixing, None);
            let attacked: Vec<f64> = ATTACKS
                .iter()
                .map(|a| held_out(&data, &config, rule, mixing, Some(*a)))
                .collect();
            println!(
                "| {} | {} | {clean:.3} | {} |",
                rule.name(),
                if mixing { "yes" } else { "no" },
                attacked
                    .iter()
                    .map(|l| {
                        let worse = (l / clean - 1.0) * 100.0;
                        if l.is_finite() {
                            format!("{l:.3} ({worse:+.1}%)")
                        } else {
                            "diverged".to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            println!(
                "{{\"bench\":\"byzantine\",\"rule\":\"{}\",\"mixing\":{mixing},\"clean\":{clean},\"attacked\":{:?}}}",
                rule.name(),
                attacked
            );
        }
    }
    eprintln!(
        "byzantine table in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
