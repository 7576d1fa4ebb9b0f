//! Test-only pieces shared by the HTTP tests: a deterministic [`Generator`] whose output the
//! tests can predict, a tokenizer trained on the spot, and a ready-made app.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use neuroshard_common::{Error, ErrorKind};
use neuroshard_swarm_gateway::config::{ApiKey, GatewayConfig};
use neuroshard_swarm_gateway::generator::{
    FinishReason, GenerationJob, Generator, ModelCard, Step, TokenStream,
};
use neuroshard_swarm_gateway::status::{NodeStatus, SwarmStatus};
use neuroshard_swarm_gateway::{AppState, app};
use neuroshard_text::tokenizer::TextTokenizer;
use tokio::sync::Semaphore;

pub const MODEL: &str = "neurollm-test";
pub const KEY: &str = "sk-test-key-0123456789";
pub const ACCOUNT: &str = "tester";
pub const CONTEXT: u32 = 128;

/// Words only (no newlines), so generated text never holds the chat turn end by accident.
const CORPUS: &str = "the quick brown fox jumps over the lazy dog while a merry band of \
    players sings of kings and queens in the garden by the river ";

pub fn tokenizer() -> TextTokenizer {
    TextTokenizer::train(std::iter::repeat_n(CORPUS, 30), 320).unwrap()
}

/// How the fake generator behaves.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Tokens until `max_tokens` (then `Finished(Length)`), or until `eos_after` tokens.
    Normal { eos_after: Option<u32> },
    /// The stream's first item is this error.
    FailFirst(ErrorKind),
    /// This error after `n` tokens.
    FailAfter(u32, ErrorKind),
    /// One token freely, then one more per permit added to the semaphore.
    Gated(Arc<Semaphore>),
}

/// A generator whose tokens are a pure function of (seed, prompt).
pub struct FakeGenerator {
    pub pool: Vec<u32>,
    pub mode: Mutex<Mode>,
    pub ready: AtomicBool,
    pub jobs: Mutex<Vec<GenerationJob>>,
    /// Tokens handed out over all streams.
    pub pulled: Arc<AtomicUsize>,
    /// Streams dropped (finished or cancelled).
    pub dropped: Arc<AtomicUsize>,
}

impl FakeGenerator {
    pub fn new(tokenizer: &TextTokenizer) -> Arc<Self> {
        let mut pool = tokenizer.encode(CORPUS).unwrap();
        pool.sort_unstable();
        pool.dedup();
        Arc::new(Self {
            pool,
            mode: Mutex::new(Mode::Normal { eos_after: None }),
            ready: AtomicBool::new(true),
            jobs: Mutex::new(Vec::new()),
            pulled: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(AtomicUsize::new(0)),
        })
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn jobs(&self) -> Vec<GenerationJob> {
        self.jobs.lock().unwrap().clone()
    }

    /// The first `len` tokens this generator produces for `seed` and `prompt`.
    pub fn sequence(&self, seed: u64, prompt: &[u32], len: usize) -> Vec<u32> {
        let mut x = seed ^ (prompt.len() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        for &id in prompt {
            x = x.wrapping_mul(31).wrapping_add(u64::from(id));
        }
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                self.pool[((x >> 33) % self.pool.len() as u64) as usize]
            })
            .collect()
    }
}

/// Counts a stream as dropped when it goes away.
struct DropGuard(Arc<AtomicUsize>);

impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

impl Generator for FakeGenerator {
    fn model(&self) -> ModelCard {
        ModelCard {
            id: MODEL.into(),
            context_length: CONTEXT,
            vocab_size: 320,
            created: 1_700_000_000,
        }
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    fn generate(&self, job: GenerationJob) -> TokenStream {
        self.jobs.lock().unwrap().push(job.clone());
        let mode = self.mode.lock().unwrap().clone();
        let tokens = self.sequence(job.sampling.seed, &job.prompt, job.max_tokens as usize);
        let pulled = self.pulled.clone();
        let guard = DropGuard(self.dropped.clone());
        let max = job.max_tokens;
        Box::pin(futures_util::stream::unfold(
            (0u32, false, guard),
            move |(k, ended, guard)| {
                let mode = mode.clone();
                let tokens = tokens.clone();
                let pulled = pulled.clone();
                async move {
                    if ended {
                        return None;
                    }
                    let item = match &mode {
                        Mode::FailFirst(kind) => {
                            return Some((
                                Err(Error::new(*kind, "no route to layer 3")),
                                (k, true, guard),
                            ));
                        }
                        Mode::FailAfter(n, kind) if k == *n => {
                            return Some((
                                Err(Error::new(*kind, "every holder of layer 2 failed")),
                                (k, true, guard),
                            ));
                        }
                        Mode::Normal { eos_after: Some(e) } if k == *e => {
                            return Some((
                                Ok(Step::Finished(FinishReason::EndOfSequence)),
                                (k, true, guard),
                            ));
                        }
                        _ if k == max => {
                            return Some((
                                Ok(Step::Finished(FinishReason::Length)),
                                (k, true, guard),
                            ));
                        }
                        Mode::Gated(permits) if k > 0 => {
                            permits.acquire().await.unwrap().forget();
                            Step::Token(tokens[k as usize])
                        }
                        _ => Step::Token(tokens[k as usize]),
                    };
                    pulled.fetch_add(1, Ordering::SeqCst);
                    Some((Ok(item), (k + 1, false, guard)))
                }
            },
        ))
    }

    fn status(&self) -> SwarmStatus {
        SwarmStatus {
            now_ms: 1,
            nodes: vec![NodeStatus {
                id: "node-a".into(),
                endpoint: Some("http://127.0.0.1:7500".into()),
                span: [0, 4],
                pid: Some(4242),
                role: "full".into(),
                state: "live".into(),
                ..NodeStatus::default()
            }],
            ..SwarmStatus::default()
        }
    }
}

pub fn config() -> GatewayConfig {
    GatewayConfig {
        model: MODEL.into(),
        api_keys: vec![ApiKey {
            key: KEY.into(),
            account: ACCOUNT.into(),
        }],
        registry: "http://127.0.0.1:7400".into(),
        tls: neuroshard_runtime::tls::TlsFiles::insecure_plaintext(),
        ..GatewayConfig::default()
    }
}

/// The app over a fresh fake generator, with the generator and tokenizer for predictions.
pub fn fixture() -> (axum::Router, Arc<FakeGenerator>, TextTokenizer) {
    fixture_with(config())
}

/// [`fixture`] with another configuration.
pub fn fixture_with(config: GatewayConfig) -> (axum::Router, Arc<FakeGenerator>, TextTokenizer) {
    let tok = tokenizer();
    let generator = FakeGenerator::new(&tok);
    let state = AppState::new(config, tok.clone(), generator.clone()).unwrap();
    (app(state), generator, tok)
}

/// The text the gateway should produce for `tokens`, piece by piece as it decodes them.
pub fn pieces(tok: &TextTokenizer, tokens: &[u32]) -> Vec<String> {
    let mut stream = tok.stream();
    tokens.iter().map(|&t| stream.push(t).unwrap()).collect()
}
