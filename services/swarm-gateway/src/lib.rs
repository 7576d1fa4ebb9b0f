//! swarm-gateway: what users touch first. It never links libtorch: it tokenises, samples from
//! the logits the last stage returns, and routes each request through a chain of layer holders.
//!
//! Where things live:
//! - [`generator`]: the contract between the HTTP layer and whatever produces tokens (the
//!   routed swarm in production): a job in, a stream of sampled tokens out;
//! - [`engine`]: the production generator: live assignment view, route choice, per-hop
//!   deadlines, failover with KV-cache replay, request tracking;
//! - [`status`]: the `/api/v1/status` document (nodes, layers, requests, architecture,
//!   training) that the dashboard draws.

pub mod engine;
pub mod generator;
pub mod status;
