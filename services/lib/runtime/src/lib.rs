//! What every NeuroShard service runs on, apart from its own logic. The pure domain lives in
//! `neuroshard-common`; this crate holds the transport and process concerns:
//!
//! - [`service`]: [`service_main`], the few lines a service's `main.rs` calls (arguments,
//!   telemetry, layered config, bind, `run(config, listener, shutdown)`, exit code), and the
//!   [`ServiceConfig`] every service's config implements;
//! - [`grpc`]: the one gRPC server set-up (health, reflection, TLS, trace context, metrics,
//!   no Nagle delay);
//! - [`config`]: defaults < TOML file < environment, unknown keys refused;
//! - [`tls`]: rustls for gRPC links from PEM files (server, client, mutual);
//! - [`shutdown`]: SIGTERM / Ctrl-C as a future;
//! - [`telemetry`]: JSON logs, Prometheus metrics (with [`telemetry::names`], the one table of
//!   metric names), OTLP traces and `traceparent` propagation.

pub mod config;
pub mod grpc;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tls;

pub use service::{ServiceConfig, service_main};
