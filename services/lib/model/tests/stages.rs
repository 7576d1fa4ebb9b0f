//! Pipelined training in one process: the model cut into 2 and 3 stages, each a
//! [`StageTrainer`] on its span, micro-batches passed forward as hidden states and back as
//! gradients, clipping from the sum of every stage's squared norms. Five steps give the
//! weights and the AdamW moments of the single-process trainer on the same batches in the
//! same micro-batches (gradient accumulation). Also: the
//! optimizer equals libtorch's AdamW, and bad input is refused with the weights unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failure report

use std::collections::BTreeMap;

use neuroshard_model::adamw::{AdamW, clip_coefficient};
use neuroshard_model::init::initialize;
use neuroshard_model::norm::NO_DECAY_GROUP;
use neuroshard_model::schedule::LrSchedule;
use neuroshard_model::stage::{StageOutput, StageTrainer};
use neuroshard_model::tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};
use neuroshard_model::training::{TrainOptions, Trainer};
use neuroshard_model::{ModelConfig, Shard, ShardInput, ShardSpec};

const SEED: u64 = 11;
const STEPS: u64 = 5;
const MICRO_BATCHES: i64 = 4;

fn config() -> ModelConfig {
    ModelConfig {
        hidden_size: 48,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        intermediate_size: 96,
        max_seq_len: 32,
        ..ModelConfig::small(97)
    }
}

fn shard(spec: ShardSpec) -> Shard {
    let mut shard = Shard::new(&config(), spec, Device::Cpu, Kind::Float).unwrap();
    initialize(&mut shard, SEED).unwrap();
    shard
}

/// Step `step`'s batch: tokens [8, 17] (inputs and targets of 16 positions), fixed.
fn batch(step: u64) -> Tensor {
    let ids: Vec<i64> = (0..8 * 17u64)
        .map(|i| ((i * 31 + step * 17 + i * i) % 97) as i64)
        .collect();
    Tensor::from_slice(&ids).reshape([8, 17])
}

/// A learning rate high enough that clipping at 1.0 triggers on these batches.
fn options() -> TrainOptions {
    TrainOptions {
        steps: STEPS,
        batch_size: 8,
        seq_len: 16,
        lr: 3e-2,
        warmup_steps: 2,
        grad_clip: 1.0,
        micro_batches: MICRO_BATCHES as usize,
        ..TrainOptions::default()
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

/// One pipelined step: GPipe order (every forward, then every backward, in micro-batch
/// order, as gradient accumulation adds them up), global clipping, then each stage steps. Returns the mean loss and the clip
/// coefficient.
fn pipelined_step(stages: &mut [StageTrainer], tokens: &Tensor, lr: f64) -> (f64, f64) {
    let seq = tokens.size()[1] - 1;
    let rows = tokens.size()[0] / MICRO_BATCHES;
    let last = stages.len() - 1;
    let mut loss = 0.0;
    for mb in 0..MICRO_BATCHES {
        let window = tokens.narrow(0, mb * rows, rows);
        let inputs = window.narrow(1, 0, seq);
        let targets = window.narrow(1, 1, seq);
        let mut hidden = None;
        for (i, stage) in stages.iter_mut().enumerate() {
            let input = match &hidden {
                None => ShardInput::Tokens(&inputs),
                Some(h) => ShardInput::Hidden(h),
            };
            let target = (i == last).then_some(&targets);
            match stage
                .forward(mb as u64, input, target, 1.0 / MICRO_BATCHES as f64)
                .unwrap()
            {
                StageOutput::Hidden(h) => hidden = Some(h),
                StageOutput::Loss(l) => loss += l / MICRO_BATCHES as f64,
            }
        }
    }
    for mb in 0..MICRO_BATCHES {
        let mut grad: Option<Tensor> = None;
        for stage in stages.iter_mut().rev() {
            grad = stage.backward(mb as u64, grad.as_ref()).unwrap();
        }
        assert!(grad.is_none(), "the first stage has no hidden input");
    }
    let total: f64 = stages.iter().map(StageTrainer::squared_grad_norm).sum();
    let clip = clip_coefficient(total, options().grad_clip);
    for stage in stages.iter_mut() {
        stage.step(lr, clip).unwrap();
    }
    (loss, clip)
}

fn stages(cuts: &[(i64, i64)]) -> Vec<StageTrainer> {
    let layers = config().num_layers;
    cuts.iter()
        .map(|&(start, end)| {
            let spec = ShardSpec::span(start, end, layers).unwrap();
            StageTrainer::new(shard(spec), options().adamw())
        })
        .collect()
}

fn assert_pipeline_equals_single_process(cuts: &[(i64, i64)]) {
    let options = options();
    let mut single = Trainer::new(shard(ShardSpec::full(config().num_layers)), &options).unwrap();
    let mut pipeline = stages(cuts);
    let schedule: LrSchedule = options.schedule();
    let mut clipped = false;
    for step in 0..STEPS {
        let tokens = batch(step);
        let (single_loss, _) = single.step(&tokens).unwrap();
        let (loss, clip) = pipelined_step(&mut pipeline, &tokens, schedule.at(step));
        clipped |= clip < 1.0;
        assert!(
            (single_loss - loss).abs() < 1e-5,
            "step {step}: loss {single_loss} vs {loss}"
        );
    }
    assert!(clipped, "clipping never triggered: raise the learning rate");
    let weights = single.model().var_store().variables();
    let moments = single.optimizer().moments();
    let mut compared = 0;
    for stage in &pipeline {
        for (name, w) in stage.shard().var_store().variables() {
            let d = max_diff(&w, &weights[&name]);
            assert!(d <= 1e-5, "{cuts:?} {name}: weights differ by {d}");
            let (ours, theirs) = (&stage.optimizer().moments()[&name], &moments[&name]);
            let dm = max_diff(&ours.m, &theirs.m);
            let dv = max_diff(&ours.v, &theirs.v);
            assert!(
                dm <= 1e-5 && dv <= 1e-5,
                "{name}: moments differ by {dm}, {dv}"
            );
            compared += 1;
        }
        assert_eq!(stage.optimizer().steps(), STEPS);
    }
    assert_eq!(compared, weights.len(), "every parameter is in one stage");
}

#[test]
fn two_stages_train_like_one_process() {
    assert_pipeline_equals_single_process(&[(0, 2), (2, 3)]);
}

#[test]
fn three_stages_train_like_one_process() {
    assert_pipeline_equals_single_process(&[(0, 1), (1, 2), (2, 3)]);
}

/// Our AdamW (moments the caller owns) steps exactly as libtorch's AdamW with clipping,
/// norm gains undecayed in both.
#[test]
fn adamw_equals_libtorch_adamw() {
    let options = options();
    let reference = shard(ShardSpec::full(config().num_layers));
    let ours = shard(ShardSpec::full(config().num_layers));
    let mut torch_opt = nn::AdamW {
        beta1: options.beta1,
        beta2: options.beta2,
        wd: options.weight_decay,
        eps: 1e-8,
        amsgrad: false,
    }
    .build(reference.var_store(), options.lr)
    .unwrap();
    torch_opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0);
    let mut our_opt = AdamW::new(ours.var_store(), options.adamw());
    for step in 0..STEPS {
        let tokens = batch(step);
        let lr = options.schedule().at(step);
        torch_opt.set_lr(lr);
        torch_opt.zero_grad();
        reference.loss(&tokens).unwrap().backward();
        torch_opt.clip_grad_norm(options.grad_clip);
        torch_opt.step();
        our_opt.zero_grad();
        ours.loss(&tokens).unwrap().backward();
        let clip = clip_coefficient(our_opt.squared_grad_norm(), options.grad_clip);
        our_opt.scale_grads(clip);
        our_opt.step(lr).unwrap();
    }
    let theirs = reference.var_store().variables();
    for (name, w) in ours.var_store().variables() {
        let d = max_diff(&w, &theirs[&name]);
        assert!(d <= 1e-5, "{name}: {d}");
    }
    // Reset zeroes the moments and the step count.
    our_opt.reset();
    assert_eq!(our_opt.steps(), 0);
    assert!(
        our_opt
            .moments()
            .values()
            .all(|m| m.m.abs().max().double_value(&[]) == 0.0)
    );
}

fn snapshot(stage: &StageTrainer) -> BTreeMap<String, Tensor> {
    stage
        .shard()
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, v)| (k, v.detach().copy()))
        .collect()
}

/// NaN or Inf in activations or gradients, a micro-batch never forwarded, a wrong shape, a
/// gradient to the last stage, targets to a middle stage, a step with backward passes
/// missing: each refused with a message naming it, and the weights do not change.
#[test]
fn bad_input_is_refused_and_the_weights_stay() {
    let mut pipeline = stages(&[(0, 2), (2, 3)]);
    let before: Vec<_> = pipeline.iter().map(snapshot).collect();
    let tokens = batch(0);
    let inputs = tokens.narrow(1, 0, 16).narrow(0, 0, 2);
    let targets = tokens.narrow(1, 1, 16).narrow(0, 0, 2);
    let err = |r: Result<StageOutput, neuroshard_model::ModelError>| r.unwrap_err().to_string();

    let hidden = match pipeline[0]
        .forward(0, ShardInput::Tokens(&inputs), None, 1.0)
        .unwrap()
    {
        StageOutput::Hidden(h) => h,
        StageOutput::Loss(_) => panic!("the first stage has no head"),
    };
    let e = err(pipeline[0].forward(0, ShardInput::Tokens(&inputs), None, 1.0));
    assert!(e.contains("micro-batch 0 is already forwarded"), "{e}");
    let e = err(pipeline[0].forward(1, ShardInput::Tokens(&inputs), Some(&targets), 1.0));
    assert!(e.contains("has no head"), "{e}");
    let nan = hidden.copy().fill_(f64::NAN);
    let e = err(pipeline[1].forward(0, ShardInput::Hidden(&nan), Some(&targets), 1.0));
    assert!(e.contains("hidden: holds NaN or Inf"), "{e}");
    let e = err(pipeline[1].forward(0, ShardInput::Hidden(&hidden), None, 1.0));
    assert!(e.contains("needs targets"), "{e}");
    let narrow = hidden.narrow(2, 0, 8);
    let e = err(pipeline[1].forward(0, ShardInput::Hidden(&narrow), Some(&targets), 1.0));
    assert!(e.contains("hidden: shape"), "{e}");

    let e = pipeline[1].backward(7, None).unwrap_err().to_string();
    assert!(e.contains("micro-batch 7 was never forwarded"), "{e}");
    let e = pipeline[0].backward(0, None).unwrap_err().to_string();
    assert!(e.contains("needs the gradient of its output"), "{e}");
    let wrong = Tensor::zeros([2, 16, 8], (Kind::Float, Device::Cpu));
    let e = pipeline[0]
        .backward(0, Some(&wrong))
        .unwrap_err()
        .to_string();
    assert!(e.contains("gradient shape [2, 16, 8]"), "{e}");
    let inf = hidden.ones_like().fill_(f64::INFINITY);
    let e = pipeline[0].backward(0, Some(&inf)).unwrap_err().to_string();
    assert!(e.contains("gradient: holds NaN or Inf"), "{e}");
    let e = pipeline[0].step(1e-2, 1.0).unwrap_err().to_string();
    assert!(e.contains("still wait for their backward"), "{e}");
    pipeline[1]
        .forward(0, ShardInput::Hidden(&hidden), Some(&targets), 1.0)
        .unwrap();
    let e = pipeline[1]
        .backward(0, Some(&hidden))
        .unwrap_err()
        .to_string();
    assert!(e.contains("takes no gradient"), "{e}");

    for stage in pipeline.iter_mut() {
        stage.abandon_step();
        assert_eq!(stage.in_flight(), 0);
    }
    for (stage, before) in pipeline.iter().zip(&before) {
        for (name, w) in snapshot(stage) {
            assert_eq!(max_diff(&w, &before[&name]), 0.0, "{name} changed");
        }
    }
}
