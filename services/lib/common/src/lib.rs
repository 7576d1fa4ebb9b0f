//! The pure domain every NeuroShard crate shares: no transport (tonic, axum, OpenTelemetry),
//! no tensors, no processes. Services add their runtime from `neuroshard-runtime`.
//!
//! - [`model_config`] (NeuroLLM's shape, HF `config.json`) and [`architecture`]
//!   (`architecture_for`, parameter counts, bytes per parameter, growth targets), so services
//!   that never touch tensors (the registry) use them without libtorch; [`checkpoint_files`]:
//!   a checkpoint directory's file names and its shape read from `config.json`; [`growth`]: the
//!   published architecture's history, when it grows, and how layer indices map across growth;
//! - [`role`]: a node's role in a pipeline, from its span, and its names on the wire;
//!   [`pipeline_schedule`]: the order of a training step's micro-batches on each stage
//!   (GPipe, 1F1B) and its simulated bubble;
//! - [`error`]: one error taxonomy, mapped to gRPC codes and HTTP statuses in one place (the
//!   `grpc` feature adds `From<Error> for tonic::Status`, for services only);
//! - [`identity`]: secp256k1 node keys in 0600 files, node ids;
//! - [`signing`]: signed envelopes (domain tag, network id, low-S only), freshness rules,
//!   replay guard, nonce source;
//! - [`tensor`]: the tensor wire codec (f32/bf16/f16/i64, int8 with block scales, chunked
//!   streaming) with shape, size and finiteness checks;
//! - [`fs`]: atomic file writes; [`health`]: health names probes ask for.

pub mod architecture;
pub mod checkpoint_files;
pub mod error;
pub mod fs;
pub mod growth;
pub mod health;
pub mod identity;
pub mod model_config;
pub mod pipeline_schedule;
pub mod role;
pub mod signing;
pub mod tensor;

pub use error::{Error, ErrorKind, Result};
pub use model_config::ModelConfig;

/// Shortest API key the gateway accepts (a key short enough to guess is no key); the local
/// swarm checks it before it starts anything.
pub const MIN_API_KEY_LEN: usize = 16;
