//! swarm-gateway: what users touch first. It never links libtorch: it tokenises, samples from
//! the logits the last stage returns, and routes each request through a chain of layer holders.
//!
//! Where things live, in the order a generation request meets them:
//!
//! 1. [`routes`]: the router [`app()`] and its handlers ([`routes::generation`] for
//!    `/v1/completions` and `/v1/chat/completions`, [`routes::models`], and the operator's
//!    [`routes::operations`]: dashboard, health, readiness, metrics, status);
//! 2. [`http`]: the plumbing every route shares: [`AppState`], the response-counting
//!    middleware and request clock ([`http::telemetry`]), the key check ([`http::auth`] over
//!    [`http::api_keys`]), the JSON body extractor ([`http::extract`]), and OpenAI error
//!    documents ([`http::error`]);
//! 3. [`api`]: the OpenAI documents: requests ([`api::completions`], [`api::chat`] with its
//!    [`api::chat_template`], shared [`api::wire`] types), their validation into a plan
//!    ([`api::params`]), and each endpoint's response documents ([`api::response`]);
//! 4. [`answer`]: from the plan to the answer: one [`GenerationJob`](generator::GenerationJob)
//!    per choice, sampled tokens decoded into text with stop sequences ([`answer::decode`],
//!    [`answer::stop`]), answered as one JSON document ([`answer::whole`]) or as server-sent
//!    events ([`answer::streamed`]);
//! 5. [`generator`]: the contract between the HTTP side and whatever produces tokens: a job in,
//!    a stream of sampled tokens out;
//! 6. [`engine`]: the production generator: live assignment view, route choice, per-hop
//!    deadlines, failover with KV-cache replay, request tracking.
//!
//! Beside the request path: [`billing`] (escrow before compute, settlement of what was
//! delivered, through the ledger), [`config`] ([`GatewayConfig`], layered defaults < TOML <
//! `NEUROSHARD_GATEWAY_*`), [`status`] (the `/api/v1/status` document the dashboard draws),
//! and [`server`] ([`run`] the whole gateway, or [`serve`] the API with any generator).
//!
//! Dependencies point one way: `routes` → `answer` → `api` → `http` → `config`/`generator`;
//! `engine` implements `generator` and knows nothing of HTTP; `billing` neither.

pub mod answer;
pub mod api;
pub mod billing;
pub mod config;
pub mod engine;
pub mod generator;
pub mod http;
pub mod routes;
pub mod server;
pub mod status;

pub use config::GatewayConfig;
pub use generator::Generator;
pub use http::state::AppState;
pub use routes::app;
pub use server::{run, serve};
