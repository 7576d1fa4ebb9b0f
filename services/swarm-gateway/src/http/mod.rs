//! The HTTP plumbing every route shares, in the order a request meets it: [`telemetry`] (the
//! middleware counting every response, and the per-request clock), [`auth`] (bearer key →
//! account, on `/v1/*`), [`extract`] (the JSON body, with errors naming the field), and
//! [`error`] (every failure as an OpenAI error document). [`admission`] limits the generation
//! requests running at once. [`state`] holds what they and the handlers share.
//!
//! Nothing here knows a route or an OpenAI request document: the routes (`crate::routes`)
//! build on this module, never the other way round.

pub mod admission;
pub mod api_keys;
pub mod auth;
pub mod error;
pub mod extract;
pub mod state;
pub mod telemetry;
