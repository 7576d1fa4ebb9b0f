//! NeuroLLM in tch, the only crate that links libtorch (with its dependents).
//!
//! Where things live:
//! - the model, one concept per file: [`config`] (shape, HF `config.json`, from
//!   `neuroshard-common`), [`norm`] (RMSNorm),
//!   [`rope`], [`attention`] (GQA), [`mlp`] (SwiGLU), [`block`], [`kv_cache`], [`shard`]
//!   (a layer span ± embedding ± head; the full model is the shard `[0, N)`), [`init`]
//!   (seeded initialisation);
//! - weights: [`safetensors_io`] (header-only reads, atomic writes), [`checkpoint`]
//!   (HF-compatible directories, shard-only loading);
//! - shape policy: [`architecture`] (from `neuroshard-common`: `architecture_for`, parameter
//!   counts, growth targets),
//!   [`growth`] (function-preserving depth growth);
//! - text: [`tokenizer`] (byte-level BPE, from `neuroshard-text`), [`data`] (genesis dataset, deterministic batches);
//! - running: [`training`] + [`schedule`] + [`adamw`] (AdamW with moments the caller owns,
//!   global clipping), [`stage`] (one pipeline stage's forward/backward/step on its span),
//!   [`generate`] + [`sampling`] (from `neuroshard-text`), [`device`].

pub mod adamw;
pub mod attention;
pub mod block;
pub mod checkpoint;
pub mod data;
pub mod device;
pub mod diloco;
pub mod error;
pub mod generate;
pub mod growth;
pub mod init;
pub mod kv_cache;
pub mod mlp;
pub mod norm;
pub mod rope;
pub mod safetensors_io;
pub mod schedule;
pub mod shard;
pub mod stage;
pub mod training;

pub use config::ModelConfig;
pub use error::{ModelError, Result};
/// Shape and architecture policy live in `neuroshard-common` (pure, no libtorch) and are
/// re-exported here under the paths model code uses.
pub use neuroshard_common::{architecture, model_config as config};
/// Tokenizer and sampling are pure Rust in `neuroshard-text` (the gateway uses them without
/// libtorch); re-exported under the paths model code uses.
pub use neuroshard_text::{sampling, tokenizer};
pub use shard::{Shard, ShardInput, ShardSpec};
pub use tch;
