//! One pipeline stage's training on its span: forward on micro-batches keeping the autograd
//! graph, backward from the next stage's gradient (returning the gradient of its own input
//! for the stage before), and an AdamW step on this span's weights only.
//!
//! A step of a pipeline of stages equals a single-process step on the whole batch when: every
//! micro-batch has the same number of rows, the last stage scales each micro-batch's mean
//! loss by 1 / micro-batches (so the accumulated gradient is the whole batch's), and the
//! stages clip with one coefficient from the sum of all stages' squared gradient norms
//! ([`crate::adamw::clip_coefficient`]).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

use crate::adamw::{AdamW, AdamWConfig};
use crate::error::{ModelError, Result};
use crate::shard::{Shard, ShardInput, cross_entropy};

/// What a micro-batch's forward left for its backward.
#[derive(Debug)]
struct Pending {
    /// [b, seq, hidden]: the input as a leaf that requires grad (stages without embedding)
    input: Option<Tensor>,
    /// [b, seq, hidden] output of a middle stage, or the scaled scalar loss of the last
    output: Tensor,
}

/// What a forward gives back.
#[derive(Debug)]
pub enum StageOutput {
    /// [b, seq, hidden] for the next stage (no graph attached).
    Hidden(Tensor),
    /// The last stage's mean cross-entropy of the micro-batch, in nats (unscaled).
    Loss(f64),
}

/// A span being trained: its shard, its optimizer, and the micro-batches in flight.
#[derive(Debug)]
pub struct StageTrainer {
    shard: Shard,
    optimizer: AdamW,
    pending: BTreeMap<u64, Pending>,
}

impl StageTrainer {
    /// Trains `shard` (any span) with fresh AdamW moments.
    pub fn new(shard: Shard, config: AdamWConfig) -> Self {
        let optimizer = AdamW::new(shard.var_store(), config);
        Self {
            shard,
            optimizer,
            pending: BTreeMap::new(),
        }
    }

    pub fn shard(&self) -> &Shard {
        &self.shard
    }

    pub fn optimizer(&self) -> &AdamW {
        &self.optimizer
    }

    /// Micro-batches forwarded and not yet backwarded.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Forward of micro-batch `id`. `input`: tokens [b, seq] on the first stage, hidden
    /// [b, seq, hidden] elsewhere. The last stage (the head) needs `targets` [b, seq] and
    /// keeps `loss_scale` × the mean loss for its backward; other stages take no targets.
    pub fn forward(
        &mut self,
        id: u64,
        input: ShardInput<'_>,
        targets: Option<&Tensor>,
        loss_scale: f64,
    ) -> Result<StageOutput> {
        if self.pending.contains_key(&id) {
            return Err(ModelError::InvalidInput(format!(
                "micro-batch {id} is already forwarded and waits for its backward"
            )));
        }
        let spec = self.shard.spec();
        let leaf = match input {
            ShardInput::Hidden(hidden) => {
                check_finite(hidden, "hidden")?;
                // A leaf of its own, so backward leaves the input's gradient in it.
                Some(hidden.detach().set_requires_grad(true))
            }
            ShardInput::Tokens(_) => None,
        };
        let output = match &leaf {
            Some(leaf) => self.shard.forward(ShardInput::Hidden(leaf), None)?,
            None => self.shard.forward(input, None)?,
        };
        match (spec.head, targets) {
            (true, Some(targets)) => {
                // output: [b, seq, vocab]; targets: [b, seq]
                let (b, seq) = (output.size()[0], output.size()[1]);
                if targets.size() != [b, seq] || targets.kind() != Kind::Int64 {
                    return Err(ModelError::InvalidInput(format!(
                        "targets: {:?} {:?}, expected int64 [{b}, {seq}]",
                        targets.kind(),
                        targets.size()
                    )));
                }
                if !(loss_scale.is_finite() && loss_scale > 0.0) {
                    return Err(ModelError::InvalidInput(format!(
                        "loss_scale must be positive, got {loss_scale}"
                    )));
                }
                let loss = cross_entropy(&output, &targets.to_device(self.shard.device()));
                let value = loss.double_value(&[]);
                if !value.is_finite() {
                    return Err(ModelError::Training(format!(
                        "micro-batch {id}: loss is {value}"
                    )));
                }
                self.pending.insert(
                    id,
                    Pending {
                        input: leaf,
                        output: loss * loss_scale,
                    },
                );
                Ok(StageOutput::Loss(value))
            }
            (true, None) => Err(ModelError::InvalidInput(format!(
                "micro-batch {id}: the last stage needs targets"
            ))),
            (false, Some(_)) => Err(ModelError::InvalidInput(format!(
                "micro-batch {id}: targets go to the last stage; span [{}, {}) has no head",
                spec.start, spec.end
            ))),
            (false, None) => {
                let hidden = output.detach();
                self.pending.insert(
                    id,
                    Pending {
                        input: leaf,
                        output,
                    },
                );
                Ok(StageOutput::Hidden(hidden))
            }
        }
    }

    /// Backward of micro-batch `id`, accumulating into this span's gradients. `grad` is the
    /// gradient of this stage's output, [b, seq, hidden], from the next stage; the last stage
    /// takes none. Returns the gradient of this stage's hidden input, [b, seq, hidden], for
    /// the stage before (none on the first stage).
    pub fn backward(&mut self, id: u64, grad: Option<&Tensor>) -> Result<Option<Tensor>> {
        let Some(pending) = self.pending.get(&id) else {
            return Err(ModelError::InvalidInput(format!(
                "micro-batch {id} was never forwarded here (or its backward already ran)"
            )));
        };
        let head = self.shard.spec().head;
        match (head, grad) {
            (true, None) => pending.output.backward(),
            (false, Some(grad)) => {
                if grad.size() != pending.output.size() {
                    return Err(ModelError::InvalidInput(format!(
                        "micro-batch {id}: gradient shape {:?}, the output was {:?}",
                        grad.size(),
                        pending.output.size()
                    )));
                }
                if grad.kind() != pending.output.kind() {
                    return Err(ModelError::InvalidInput(format!(
                        "micro-batch {id}: gradient dtype {:?}, the output was {:?}",
                        grad.kind(),
                        pending.output.kind()
                    )));
                }
                check_finite(grad, "gradient")?;
                // d(sum(output · grad)) / d(weights) is the vector-Jacobian product with grad.
                let grad = grad.to_device(self.shard.device()).detach();
                (&pending.output * grad).sum(Kind::Float).backward();
            }
            (true, Some(_)) => {
                return Err(ModelError::InvalidInput(format!(
                    "micro-batch {id}: the last stage starts backward from its loss; it takes no gradient"
                )));
            }
            (false, None) => {
                return Err(ModelError::InvalidInput(format!(
                    "micro-batch {id}: a stage before the last needs the gradient of its output"
                )));
            }
        }
        let pending = self.pending.remove(&id);
        Ok(pending
            .and_then(|p| p.input)
            .map(|leaf| leaf.grad().detach()))
    }

    /// Sum of this span's squared gradient norms, for the pipeline's global clipping.
    pub fn squared_grad_norm(&self) -> f64 {
        self.optimizer.squared_grad_norm()
    }

    /// Ends the step: scales the gradients by the pipeline's clip coefficient, updates the
    /// weights at `lr` and zeroes the gradients. Refused while micro-batches wait for their
    /// backward (the gradients would be partial).
    pub fn step(&mut self, lr: f64, clip_coefficient: f64) -> Result<()> {
        if !self.pending.is_empty() {
            let waiting: Vec<&u64> = self.pending.keys().collect();
            return Err(ModelError::InvalidInput(format!(
                "micro-batches {waiting:?} still wait for their backward"
            )));
        }
        if !(clip_coefficient.is_finite() && clip_coefficient > 0.0) {
            return Err(ModelError::InvalidInput(format!(
                "clip coefficient must be positive, got {clip_coefficient}"
            )));
        }
        self.optimizer.scale_grads(clip_coefficient);
        let stepped = self.optimizer.step(lr);
        self.optimizer.zero_grad();
        stepped
    }

    /// Drops every micro-batch in flight and the accumulated gradients (a step that failed
    /// elsewhere in the pipeline); the weights are untouched.
    pub fn abandon_step(&mut self) {
        self.pending.clear();
        self.optimizer.zero_grad();
    }
}

fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let finite = tch::no_grad(|| t.isfinite().all().int64_value(&[]) != 0);
    if finite {
        Ok(())
    } else {
        Err(ModelError::InvalidInput(format!(
            "{what}: holds NaN or Inf"
        )))
    }
}
