//! A shard: a contiguous span of layers `[start, end)`, plus the token embedding if it is the
//! first (Driver) and the final norm + LM head if it is the last (Validator). Running the
//! shards of a cover in order equals the full model; the full model is the shard `[0, N)`
//! with both ends.

use tch::{Device, Kind, Tensor, nn};

use crate::block::Block;
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::kv_cache::{KvCache, LayerKv};
use crate::norm::RmsNorm;
use crate::rope::Rope;

/// Which part of the model a shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ShardSpec {
    pub start: i64,
    pub end: i64,
    /// Holds `model.embed_tokens` and takes token ids as input.
    pub embed: bool,
    /// Holds `model.norm` and `lm_head` and returns logits.
    pub head: bool,
}

impl ShardSpec {
    /// The span `[start, end)` of a model with `num_layers` layers; the ends of the model
    /// bring the embedding and the head with them.
    pub fn span(start: i64, end: i64, num_layers: i64) -> Result<Self> {
        let spec = Self {
            start,
            end,
            embed: start == 0,
            head: end == num_layers,
        };
        spec.check(num_layers)?;
        Ok(spec)
    }

    /// The whole model.
    pub fn full(num_layers: i64) -> Self {
        Self {
            start: 0,
            end: num_layers,
            embed: true,
            head: true,
        }
    }

    /// Number of layers held.
    pub fn len(&self) -> i64 {
        self.end - self.start
    }

    /// True for a shard with no layers (embedding or head only).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn check(&self, num_layers: i64) -> Result<()> {
        if self.start < 0 || self.end > num_layers || self.start > self.end {
            return Err(ModelError::InvalidSpan(format!(
                "[{}, {}) is not inside [0, {num_layers})",
                self.start, self.end
            )));
        }
        if self.is_empty() && !self.embed && !self.head {
            return Err(ModelError::InvalidSpan(format!(
                "[{}, {}) holds no layers, no embedding and no head",
                self.start, self.end
            )));
        }
        Ok(())
    }
}

/// What flows into a shard.
#[derive(Debug, Clone, Copy)]
pub enum ShardInput<'a> {
    /// [batch, seq] int64 token ids; only for a shard with the embedding.
    Tokens(&'a Tensor),
    /// [batch, seq, hidden] activations from the previous shard.
    Hidden(&'a Tensor),
}

/// The weights of one shard and the code to run them.
#[derive(Debug)]
pub struct Shard {
    config: ModelConfig,
    spec: ShardSpec,
    vs: nn::VarStore,
    /// [vocab, hidden]
    embed_tokens: Option<Tensor>,
    layers: Vec<Block>,
    norm: Option<RmsNorm>,
    /// [vocab, hidden]
    lm_head: Option<Tensor>,
    rope: Rope,
}

impl Shard {
    /// A shard with zero-filled weights on `device` in `kind`; fill it with
    /// `init::initialize` or `checkpoint::load_into`.
    pub fn new(config: &ModelConfig, spec: ShardSpec, device: Device, kind: Kind) -> Result<Self> {
        config.validate()?;
        spec.check(config.num_layers)?;
        if !matches!(kind, Kind::Float | Kind::BFloat16 | Kind::Half) {
            return Err(ModelError::InvalidConfig(format!(
                "dtype {kind:?} is not supported; use f32, bf16 or f16"
            )));
        }
        let mut vs = nn::VarStore::new(device);
        let root = vs.root();
        let model = &root / "model";
        let embed_tokens = spec.embed.then(|| {
            (&model / "embed_tokens").zeros("weight", &[config.vocab_size, config.hidden_size])
        });
        let layers = (spec.start..spec.end)
            .map(|i| Block::new(&model / "layers" / i, config))
            .collect();
        let norm = spec
            .head
            .then(|| RmsNorm::new(&model / "norm", config.hidden_size, config.rms_eps));
        let lm_head = spec
            .head
            .then(|| (&root / "lm_head").zeros("weight", &[config.vocab_size, config.hidden_size]));
        if kind != Kind::Float {
            vs.set_kind(kind);
        }
        let rope = Rope::new(
            config.head_dim(),
            config.max_seq_len,
            config.rope_theta,
            device,
        );
        Ok(Self {
            config: config.clone(),
            spec,
            vs,
            embed_tokens,
            layers,
            norm,
            lm_head,
            rope,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn spec(&self) -> ShardSpec {
        self.spec
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Parameter dtype.
    pub fn kind(&self) -> Kind {
        self.vs.kind()
    }

    /// The variable store holding every weight under its Hugging Face name.
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn var_store_mut(&mut self) -> &mut nn::VarStore {
        &mut self.vs
    }

    /// Number of parameters this shard holds.
    pub fn num_parameters(&self) -> i64 {
        self.vs.variables().values().map(|t| t.numel() as i64).sum()
    }

    /// An empty KV cache sized for this shard.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.layers.len())
    }

    /// Runs the shard. Output: logits [batch, seq, vocab] if it holds the head, otherwise
    /// hidden states [batch, seq, hidden], in the parameter dtype. With a cache, the input is
    /// the positions after those already cached, and the cache is extended.
    pub fn forward(
        &self,
        input: ShardInput<'_>,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let mut x = self.embed_input(input, offset)?;
        if let Some(cache) = cache.as_ref()
            && cache.num_layers() != self.layers.len()
        {
            return Err(ModelError::InvalidInput(format!(
                "cache has {} layers, shard has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let seq = x.size()[1];
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_mut().and_then(|c| c.layer_mut(i));
            x = layer.forward(&x, &self.rope, offset, layer_cache);
        }
        if let Some(cache) = cache {
            cache.advance(seq);
        }
        match (&self.norm, &self.lm_head) {
            (Some(norm), Some(head)) => Ok(norm.forward(&x).linear::<&Tensor>(head, None)),
            _ => Ok(x),
        }
    }

    /// A decode batch: one new position for each of several independent sequences, in one
    /// pass over the weights. `input` holds [batch, 1] token ids or [batch, 1, hidden] states;
    /// row b continues the sequence cached in `caches[b]`, at that cache's own position, and
    /// the cache is extended by one. The output, [batch, 1, vocab | hidden], is what
    /// [`Shard::forward`] gives each row alone with its cache, up to rounding.
    pub fn forward_rows(
        &self,
        input: ShardInput<'_>,
        caches: &mut [&mut KvCache],
    ) -> Result<Tensor> {
        let longest = caches.iter().map(|c| c.len()).max().unwrap_or(0);
        let mut x = self.embed_input(input, longest)?;
        let (batch, seq) = (x.size()[0], x.size()[1]);
        if seq != 1 || batch != caches.len() as i64 {
            return Err(ModelError::InvalidInput(format!(
                "input: shape [{batch}, {seq}] for {} caches; a decode batch is one position \
                 per cache",
                caches.len()
            )));
        }
        if let Some(cache) = caches.iter().find(|c| c.num_layers() != self.layers.len()) {
            return Err(ModelError::InvalidInput(format!(
                "cache has {} layers, shard has {}",
                cache.num_layers(),
                self.layers.len()
            )));
        }
        let lengths: Vec<i64> = caches.iter().map(|c| c.len()).collect();
        let positions = Tensor::from_slice(&lengths).to_device(self.device());
        for (i, layer) in self.layers.iter().enumerate() {
            let mut layer_caches: Vec<&mut LayerKv> =
                caches.iter_mut().filter_map(|c| c.layer_mut(i)).collect();
            x = layer.forward_rows(&x, &self.rope, &positions, &mut layer_caches);
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        match (&self.norm, &self.lm_head) {
            (Some(norm), Some(head)) => Ok(norm.forward(&x).linear::<&Tensor>(head, None)),
            _ => Ok(x),
        }
    }

    /// Validates the input against this shard and returns hidden states [batch, seq, hidden].
    fn embed_input(&self, input: ShardInput<'_>, offset: i64) -> Result<Tensor> {
        let x = match (input, &self.embed_tokens) {
            (ShardInput::Tokens(tokens), Some(embed)) => {
                check_tokens(tokens, self.config.vocab_size)?;
                Tensor::embedding(embed, &tokens.to_device(self.device()), -1, false, false)
            }
            (ShardInput::Tokens(_), None) => {
                return Err(ModelError::InvalidInput(format!(
                    "tokens: shard [{}, {}) has no embedding; send hidden states",
                    self.spec.start, self.spec.end
                )));
            }
            (ShardInput::Hidden(_), Some(_)) => {
                return Err(ModelError::InvalidInput(
                    "hidden: this shard holds the embedding and takes token ids".into(),
                ));
            }
            (ShardInput::Hidden(hidden), None) => {
                let size = hidden.size();
                if size.len() != 3 || size[2] != self.config.hidden_size {
                    return Err(ModelError::InvalidInput(format!(
                        "hidden: shape {size:?}, expected [batch, seq, {}]",
                        self.config.hidden_size
                    )));
                }
                if hidden.kind() != self.kind() {
                    return Err(ModelError::InvalidInput(format!(
                        "hidden: dtype {:?}, shard runs in {:?}",
                        hidden.kind(),
                        self.kind()
                    )));
                }
                hidden.to_device(self.device())
            }
        };
        let (batch, seq) = (x.size()[0], x.size()[1]);
        if batch == 0 || seq == 0 {
            return Err(ModelError::InvalidInput(format!(
                "input: empty batch or sequence (shape [{batch}, {seq}])"
            )));
        }
        if offset + seq > self.config.max_seq_len {
            return Err(ModelError::InvalidInput(format!(
                "input: positions {offset}..{} exceed max_seq_len {}",
                offset + seq,
                self.config.max_seq_len
            )));
        }
        Ok(x)
    }

    /// Next-token cross-entropy (nats, mean over positions) of a full-model shard on
    /// tokens: [batch, seq + 1] (inputs are `[.., :-1]`, targets `[.., 1:]`).
    pub fn loss(&self, tokens: &Tensor) -> Result<Tensor> {
        if !(self.spec.embed && self.spec.head) {
            return Err(ModelError::InvalidInput(
                "loss needs a shard with both the embedding and the head".into(),
            ));
        }
        let size = tokens.size();
        if size.len() != 2 || size[1] < 2 {
            return Err(ModelError::InvalidInput(format!(
                "tokens: shape {size:?}, expected [batch, seq + 1] with seq >= 1"
            )));
        }
        let seq = size[1] - 1;
        let inputs = tokens.narrow(1, 0, seq);
        let targets = tokens.narrow(1, 1, seq).to_device(self.device());
        let logits = self.forward(ShardInput::Tokens(&inputs), None)?;
        Ok(cross_entropy(&logits, &targets))
    }
}

/// Mean next-token cross-entropy in f32: logits [batch, seq, vocab], targets [batch, seq].
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    let vocab = logits.size()[2];
    logits
        .to_kind(Kind::Float)
        .reshape([-1, vocab])
        .cross_entropy_loss::<&Tensor>(
            &targets.reshape([-1]),
            None,
            tch::Reduction::Mean,
            -100,
            0.0,
        )
}

fn check_tokens(tokens: &Tensor, vocab: i64) -> Result<()> {
    if tokens.dim() != 2 || tokens.kind() != Kind::Int64 {
        return Err(ModelError::InvalidInput(format!(
            "tokens: {:?} {:?}, expected int64 [batch, seq]",
            tokens.kind(),
            tokens.size()
        )));
    }
    if tokens.numel() > 0 {
        let min = tokens.min().int64_value(&[]);
        let max = tokens.max().int64_value(&[]);
        if min < 0 || max >= vocab {
            return Err(ModelError::InvalidInput(format!(
                "tokens: ids must lie in [0, {vocab}), got range [{min}, {max}]"
            )));
        }
    }
    Ok(())
}
