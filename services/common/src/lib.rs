//! The shared layer of every NeuroShard service. Nothing here depends on a service.
//!
//! - [`model_config`] (NeuroLLM's shape, HF `config.json`) and [`architecture`]
//!   (`architecture_for`, parameter counts, growth targets): pure, so services that never
//!   touch tensors (the registry) use them without libtorch; [`growth`]: the published
//!   architecture's history, when it grows, and how layer indices map across growth;
//! - [`config`]: defaults < TOML file < environment, unknown keys refused;
//! - [`grpc`]: transport settings every server uses (no Nagle delay on hops);
//! - [`tls`]: rustls for gRPC links from PEM files (server, client, mutual);
//! - [`shutdown`]: SIGTERM / Ctrl-C as a future; [`telemetry`]: JSON logs, Prometheus
//!   metrics, OTLP traces and `traceparent` propagation;
//! - [`fs`]: atomic file writes;
//! - [`error`]: one error taxonomy, mapped to gRPC codes and HTTP statuses in one place;
//! - [`identity`]: secp256k1 node keys in 0600 files, node ids;
//! - [`signing`]: signed envelopes (domain tag, network id, low-S only), freshness rules,
//!   replay guard, nonce source;
//! - [`tensor`]: the tensor wire codec (f32/bf16/f16/i64, int8 with block scales, chunked
//!   streaming) with shape, size and finiteness checks.

pub mod architecture;
pub mod config;
pub mod error;
pub mod fs;
pub mod growth;
pub mod grpc;
pub mod identity;
pub mod model_config;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod tensor;
pub mod tls;

pub use error::{Error, ErrorKind, Result};
pub use model_config::ModelConfig;
