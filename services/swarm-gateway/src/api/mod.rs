//! The OpenAI documents, from request to response, without any HTTP: what a client sends
//! ([`completions`], [`chat`] and its [`chat_template`], with the wire types both share in [`wire`]), how it is checked
//! into a generation plan ([`params`]), and the response documents each endpoint answers with
//! ([`response`]). Failures are [`ApiError`](crate::http::error::ApiError)s naming the field.

pub mod chat;
pub mod chat_template;
pub mod completions;
pub mod params;
pub mod response;
pub mod wire;
