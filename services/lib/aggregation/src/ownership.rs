//! Which parameters belong where: to a node's span, and to an aggregator that owns a range of
//! the layers (several aggregators can split one model). By Hugging Face name: layer `i`'s
//! tensors go with layer `i`, the embedding with layer 0, the final norm and the head with
//! the last layer.

use crate::round::group_of;

/// Layer index of a `model.layers.{i}.…` name.
fn layer_index(name: &str) -> Option<u32> {
    group_of(name).strip_prefix("layer.")?.parse().ok()
}

/// Whether `name` is held by a node serving layers `[start, end)` of a `num_layers`-deep
/// model (the first span holds the embedding, the last the final norm and head).
pub fn in_span(name: &str, (start, end): (u32, u32), num_layers: u32) -> bool {
    match group_of(name).as_str() {
        "embed" => start == 0,
        "norm" | "head" => end == num_layers,
        _ => layer_index(name).is_some_and(|i| (start..end).contains(&i)),
    }
}

/// The part of the model an aggregator owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// Layers `[start, end)`.
    pub start: u32,
    pub end: u32,
    pub embedding: bool,
    pub head: bool,
}

impl Ownership {
    /// Layers from `start` to `end` (to the last layer when `None`) of a `num_layers`-deep
    /// model; the embedding comes with layer 0, the norm and head with the last layer.
    pub fn of_range(start: u32, end: Option<u32>, num_layers: u32) -> Self {
        let end = end.unwrap_or(num_layers).min(num_layers);
        Self {
            start,
            end,
            embedding: start == 0,
            head: end == num_layers,
        }
    }

    pub fn owns(&self, name: &str) -> bool {
        match group_of(name).as_str() {
            "embed" => self.embedding,
            "norm" | "head" => self.head,
            _ => layer_index(name).is_some_and(|i| (self.start..self.end).contains(&i)),
        }
    }

    /// Whether it owns every parameter of the model.
    pub fn is_whole(&self, num_layers: u32) -> bool {
        self.start == 0 && self.end >= num_layers && self.embedding && self.head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 5] = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.3.self_attn.q_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ];

    #[test]
    fn spans_hold_their_layers_and_the_ends_their_extras() {
        let held = |span| NAMES.map(|n| in_span(n, span, 4));
        assert_eq!(held((0, 2)), [true, true, false, false, false]);
        assert_eq!(held((2, 4)), [false, false, true, true, true]);
        assert_eq!(held((0, 4)), [true; 5]);
    }

    #[test]
    fn two_aggregators_split_the_model_without_overlap() {
        let low = Ownership::of_range(0, Some(2), 4);
        let high = Ownership::of_range(2, None, 4);
        for name in NAMES {
            assert!(low.owns(name) != high.owns(name), "{name}");
        }
        assert!(!low.is_whole(4) && !high.is_whole(4));
        assert!(Ownership::of_range(0, None, 4).is_whole(4));
        assert!(!low.owns("something.else"));
    }
}
