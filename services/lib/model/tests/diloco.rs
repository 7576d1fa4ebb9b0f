//! DiLoCo in one process on a tiny dataset. One replica with an outer step of lr 1 and no
//! momentum is exactly the inner trainer run straight through (θ_start − Δ is the replica's
//! own weights): the rounds add nothing and lose nothing. Four replicas lower the held-out
//! loss; with one of five replicas flipping its sign ×10, the mean is dragged up and the
//! median is not.
//!
//! Run: scripts/cargo.sh test --release -p neuroshard-model --test diloco -- --nocapture

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use neuroshard_aggregation::attacks::Attack;
use neuroshard_aggregation::outer::OuterConfig;
use neuroshard_aggregation::round::RoundPlan;
use neuroshard_aggregation::rules::Rule;
use neuroshard_model::data::{BatchSampler, BuildOptions, TokenShards, build_dataset};
use neuroshard_model::diloco::{DilocoOptions, named, replica_tokens, simulate};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_model::{ModelConfig, Shard, ShardSpec, init};

fn setup(dir: &std::path::Path) -> (TokenShards, ModelConfig) {
    let text: String = (0..600)
        .map(|i| {
            [
                "the king speaks. ",
                "a fair lady sings. ",
                "the night is long. ",
            ][i % 3]
        })
        .collect();
    std::fs::write(dir.join("corpus.txt"), text).unwrap();
    let data = dir.join("data");
    let options = BuildOptions {
        vocab_size: 300,
        shard_tokens: 400,
        validation_fraction: 0.1,
        ..BuildOptions::default()
    };
    let manifest = build_dataset(&[dir.join("corpus.txt")], &data, &options).unwrap();
    let config = ModelConfig {
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 64,
        max_seq_len: 32,
        ..ModelConfig::small(i64::from(manifest.vocab_size))
    };
    (TokenShards::open(&data).unwrap(), config)
}

fn model(config: &ModelConfig) -> Shard {
    let mut m = Shard::new(
        config,
        ShardSpec::full(config.num_layers),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    init::initialize(&mut m, 7).unwrap();
    m
}

fn options(replicas: usize, plan: RoundPlan) -> DilocoOptions {
    DilocoOptions {
        replicas,
        attackers: 0,
        attack: None,
        inner_steps: 4,
        rounds: 3,
        train: TrainOptions {
            batch_size: 4,
            seq_len: 16,
            lr: 3e-3,
            warmup_steps: 2,
            ..TrainOptions::default()
        },
        plan,
        shards_per_round: 2,
        eval_windows: 8,
        wire_int8: false,
    }
}

fn plan(rule: Rule, byzantine: usize, outer: OuterConfig) -> RoundPlan {
    RoundPlan {
        rule,
        byzantine,
        mixing: false,
        bucket: None,
        seed: 1,
        outer,
    }
}

#[test]
fn one_replica_with_a_plain_outer_step_is_the_inner_trainer() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path());
    let identity = OuterConfig {
        lr: 1.0,
        momentum: 0.0,
        nesterov: false,
    };
    let opts = options(1, plan(Rule::Mean, 0, identity));
    let (global, records) = simulate(model(&config), &data, &opts).unwrap();
    assert_eq!(records.len(), 3);

    // The same batches through one trainer, straight through.
    let train = TrainOptions {
        steps: 12,
        ..opts.train.clone()
    };
    let mut single = Trainer::new(model(&config), &train).unwrap();
    for round in 1..=3u64 {
        let (_, tokens) = replica_tokens(&data, round, 0, 2).unwrap();
        let sampler = BatchSampler::new(tokens, &data.manifest, 16, 4, 0).unwrap();
        for step in 0..4 {
            let batch = Tensor::from_slice(&sampler.batch(round, step)).view([4, 17]);
            single.step(&batch).unwrap();
        }
    }
    let (a, b) = (named(&global).unwrap(), named(single.model()).unwrap());
    let worst = a
        .iter()
        .flat_map(|(name, x)| x.iter().zip(&b[name]).map(|(x, y)| (x - y).abs()))
        .fold(0f32, f32::max);
    assert!(worst <= 1e-6, "max abs diff {worst}");
}

#[test]
fn replicas_lower_the_held_out_loss_and_the_median_withstands_a_sign_flip() {
    let dir = tempfile::tempdir().unwrap();
    let (data, config) = setup(dir.path());
    let start = {
        let m = model(&config);
        let windows = neuroshard_model::data::batches::eval_windows(
            &data
                .load_split(neuroshard_model::data::Split::Validation)
                .unwrap(),
            16,
            8,
        );
        neuroshard_model::training::evaluate(&m, &windows, 4).unwrap()
    };
    let (_, clean) = simulate(
        model(&config),
        &data,
        &options(4, plan(Rule::Mean, 0, OuterConfig::default())),
    )
    .unwrap();
    let last = clean.last().unwrap();
    eprintln!(
        "held-out: start {start:.3}, after 3 rounds of 4 replicas {:.3}",
        last.held_out
    );
    assert!(last.held_out < start - 0.3, "{start} → {}", last.held_out);
    assert!(last.bytes > 0);

    let attacked = |rule: Rule, byzantine: usize| {
        let opts = DilocoOptions {
            attackers: 1,
            attack: Some(Attack::SignFlip),
            ..options(5, plan(rule, byzantine, OuterConfig::default()))
        };
        simulate(model(&config), &data, &opts)
            .unwrap()
            .1
            .last()
            .unwrap()
            .held_out
    };
    let (mean, median) = (attacked(Rule::Mean, 0), attacked(Rule::Median, 1));
    eprintln!("sign flip ×10, 1 of 5: mean {mean:.3}, median {median:.3}");
    assert!(median < start - 0.3, "{median}");
    assert!(mean > median + 0.3, "mean {mean}, median {median}");
}
