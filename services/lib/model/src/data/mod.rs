//! The genesis dataset: documents read from text sources (`corpus`), tokenised into shards
//! pinned by SHA-256 in a `manifest.json` (`manifest`, `builder`), and the deterministic
//! choice of what a replica trains on (`batches`), which a verifier can replay.

pub mod batches;
pub mod builder;
pub mod corpus;
pub mod manifest;

pub use batches::{BatchSampler, shards_for_replica};
pub use builder::{BuildOptions, build_dataset};
pub use manifest::{Manifest, ShardEntry, Split, TokenShards};
