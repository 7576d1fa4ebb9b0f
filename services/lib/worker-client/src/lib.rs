//! Talking to a shard worker without linking libtorch (the gateway, tests, other services).
//!
//! - [`client`]: [`WorkerClient`], unary for small tensors and chunked streams for large ones;
//! - [`stream`]: the chunked wire form of Forward/Replay (split, reassembly, limits), shared
//!   with the worker's server side;
//! - [`named`]: streams of named tensors (a training stage's weights, moments, Δ) by name;
//! - [`aggregator`]: the diloco-aggregators (rounds, global weights, signed Δ submissions).

pub mod aggregator;
pub mod client;
pub mod named;
pub mod stream;

pub use client::{ClientOptions, WorkerClient};
