//! The shared layer of every NeuroShard service. Nothing here depends on a service.
//!
//! - [`config`]: defaults < TOML file < environment, unknown keys refused;
//! - [`shutdown`]: SIGTERM / Ctrl-C as a future; [`telemetry`]: structured logs;
//! - [`error`]: one error taxonomy, mapped to gRPC codes and HTTP statuses in one place;
//! - [`identity`]: secp256k1 node keys in 0600 files, node ids;
//! - [`signing`]: signed envelopes (domain tag, network id, low-S only), freshness rules,
//!   replay guard, nonce source;
//! - [`tensor`]: the tensor wire codec (f32/bf16/f16/i64, int8 with block scales, chunked
//!   streaming) with shape, size and finiteness checks.

pub mod config;
pub mod error;
pub mod identity;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod tensor;

pub use error::{Error, ErrorKind, Result};
