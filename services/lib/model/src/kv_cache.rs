//! Key/value cache for incremental decoding: one entry per layer of a shard, so a decode step
//! costs one position instead of the whole prefix.

use tch::Tensor;

/// Keys and values of one attention layer for all positions seen so far.
#[derive(Debug, Default)]
pub struct LayerKv {
    /// [batch, kv_heads, cached_len, head_dim]
    pub keys: Option<Tensor>,
    /// [batch, kv_heads, cached_len, head_dim]
    pub values: Option<Tensor>,
}

impl LayerKv {
    /// Appends this step's k, v ([batch, kv_heads, seq, head_dim]) and returns the full ones.
    pub fn append(&mut self, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let keys = match self.keys.take() {
            Some(past) => Tensor::cat(&[&past, &k], 2),
            None => k,
        };
        let values = match self.values.take() {
            Some(past) => Tensor::cat(&[&past, &v], 2),
            None => v,
        };
        self.keys = Some(keys.shallow_clone());
        self.values = Some(values.shallow_clone());
        (keys, values)
    }
}

/// The cache of a whole shard: one `LayerKv` per layer it holds, plus the position count.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerKv>,
    len: i64,
}

impl KvCache {
    /// An empty cache for a shard with `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: (0..num_layers).map(|_| LayerKv::default()).collect(),
            len: 0,
        }
    }

    /// Number of positions already cached.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// True before the first forward.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held by cached tensors (for session memory caps).
    pub fn size_bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|l| [l.keys.as_ref(), l.values.as_ref()])
            .flatten()
            .map(|t| t.numel() * t.kind().elt_size_in_bytes())
            .sum()
    }

    /// Forgets every position from `len` on, in every layer (also one a failed pass appended
    /// to before it could advance the count), so a pass that was abandoned half-way leaves
    /// the cache as it was before.
    pub fn truncate(&mut self, len: i64) {
        let keep = len.clamp(0, self.len);
        for layer in &mut self.layers {
            for slot in [&mut layer.keys, &mut layer.values] {
                *slot = match slot.take() {
                    Some(_) if keep == 0 => None,
                    Some(t) if t.size()[2] > keep => Some(t.narrow(2, 0, keep).contiguous()),
                    other => other,
                };
            }
        }
        self.len = keep;
    }

    pub(crate) fn layer_mut(&mut self, index: usize) -> Option<&mut LayerKv> {
        self.layers.get_mut(index)
    }

    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }

    pub(crate) fn advance(&mut self, positions: i64) {
        self.len += positions;
    }
}
