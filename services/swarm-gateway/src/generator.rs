//! The contract between the HTTP layer and token production. The HTTP layer owns everything
//! textual (tokenising, chat templates, stop strings, decoding, usage); a [`Generator`] owns
//! everything after the prompt's ids are known: routing, per-hop deadlines, failover, sampling.
//! Dropping a [`TokenStream`] cancels the generation and frees its sessions.

use std::pin::Pin;

use neuroshard_common::Error;
use neuroshard_text::sampling::SamplingParams;
use tokio_stream::Stream;

/// One generation: the prompt's token ids and how to choose each next token.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationJob {
    /// The gateway's request id (`cmpl-…` / `chatcmpl-…`); names the sessions on the workers
    /// and the request in the status document.
    pub request_id: String,
    /// Prompt token ids; never empty.
    pub prompt: Vec<u32>,
    /// Most tokens to generate; the stream also ends at end-of-sequence.
    pub max_tokens: u32,
    /// Temperature 0 is greedy. The same seed and prompt give the same tokens, failover or not.
    pub sampling: SamplingParams,
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced end-of-sequence (not yielded as a token).
    EndOfSequence,
    /// `max_tokens` tokens were produced.
    Length,
}

/// One item of a generation's stream: a sampled token, sent as soon as it is sampled, or the
/// end. After `Finished` or an error the stream yields nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Token(u32),
    Finished(FinishReason),
}

/// Tokens as they are sampled. Errors carry a kind that maps to an HTTP status
/// (`Unavailable` = no route, `InvalidArgument` = e.g. prompt too long).
pub type TokenStream = Pin<Box<dyn Stream<Item = Result<Step, Error>> + Send + 'static>>;

/// What `/v1/models` lists and what request validation checks against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    /// The model name clients pass as `model`.
    pub id: String,
    /// Most positions (prompt + generated) one sequence may hold; 0 while there is no model
    /// to run (a swarm whose registry has no architecture yet).
    pub context_length: u32,
    pub vocab_size: u32,
    /// Seconds since the Unix epoch when the served weights were created.
    pub created: u64,
}

impl ModelCard {
    /// Whether there is a model to run requests on.
    pub fn runnable(&self) -> bool {
        self.context_length > 0
    }
}

/// The nodes that served a generation, for its settlement: the node that ran the embedding,
/// every node that held a hop (failover replacements included), and the node that ran the
/// head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServedRoute {
    pub driver: String,
    pub processors: Vec<String>,
    pub validator: String,
}

/// Produces tokens for the HTTP layer. Implemented by the routed swarm engine.
pub trait Generator: Send + Sync + 'static {
    /// The served model.
    fn model(&self) -> ModelCard;

    /// Whether a full route (every layer covered by a live holder) exists right now.
    fn ready(&self) -> bool;

    /// Starts a generation. Errors that are known before the first token (no route, prompt
    /// longer than the context) may come as the stream's first item.
    fn generate(&self, job: GenerationJob) -> TokenStream;

    /// The swarm as the status document shows it.
    fn status(&self) -> crate::status::SwarmStatus;

    /// Who served generation `request_id` (in flight or recently finished), when known.
    fn served(&self, request_id: &str) -> Option<ServedRoute> {
        let _ = request_id;
        None
    }
}
