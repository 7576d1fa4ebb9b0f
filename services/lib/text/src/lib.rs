//! Text without tensors, shared by the services that never link libtorch (the gateway) and by
//! the model crate.
//!
//! - [`tokenizer`]: byte-level BPE (train, load, encode, decode, streaming decode);
//! - [`sampling`]: temperature / top-k / top-p / seeded next-token choice over `&[f32]` logits;
//! - [`error`]: the crate's error type.

pub mod error;
pub mod sampling;
pub mod tokenizer;

pub use error::{Result, TextError};
