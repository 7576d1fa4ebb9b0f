//! Calls to shard workers for one hop: connection reuse per endpoint, the per-hop deadline,
//! trace-context propagation, and errors classified for failover. Large hidden states (long
//! prompts, replays of long sessions) go as chunked streams through `WorkerClient`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use neuroshard_common::telemetry::propagation;
use neuroshard_common::tls::TlsFiles;
use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::worker::v1::{ForwardRequest, ReplayRequest};
use neuroshard_worker_client::{ClientOptions, WorkerClient};
use tonic::transport::Channel;

/// What a hop consumes: token ids (the first hop) or hidden states `[1, seq, hidden]`.
#[derive(Debug, Clone)]
pub enum HopInput {
    Tokens(Vec<i64>),
    Hidden(WireTensor),
}

/// One node of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub node_id: String,
    pub endpoint: String,
    pub start: u32,
    pub end: u32,
}

impl Hop {
    fn span(&self) -> LayerSpan {
        LayerSpan {
            start: self.start,
            end: self.end,
        }
    }
}

/// Why a hop failed. Both move the hop to another replica: the gateway builds every worker
/// request itself, so even a refusal (a span that no longer matches after a reassignment, a
/// lost session) says more about the node than about the request. A request that is wrong
/// everywhere runs out of replicas and fails with the last message.
#[derive(Debug)]
pub enum HopError {
    Timeout,
    Failed(String),
}

impl std::fmt::Display for HopError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => write!(f, "deadline exceeded"),
            Self::Failed(message) => write!(f, "{message}"),
        }
    }
}

/// Output of a successful call and how long it took.
#[derive(Debug)]
pub struct HopOutput {
    pub tensor: WireTensor,
    pub elapsed: Duration,
}

/// Worker connections shared by every request of the gateway.
#[derive(Debug)]
pub struct HopClient {
    tls: TlsFiles,
    channels: Mutex<HashMap<String, Channel>>,
    max_message_bytes: usize,
}

impl HopClient {
    pub fn new(tls: TlsFiles, max_message_bytes: usize) -> Self {
        Self {
            tls,
            channels: Mutex::new(HashMap::new()),
            max_message_bytes,
        }
    }

    fn cached(&self, endpoint: &str) -> Option<Channel> {
        self.channels
            .lock()
            .ok()
            .and_then(|m| m.get(endpoint).cloned())
    }

    /// Drops a connection after a failure so the next call reconnects (the node may have
    /// restarted at the same address).
    pub fn forget(&self, endpoint: &str) {
        if let Ok(mut m) = self.channels.lock() {
            m.remove(endpoint);
        }
    }

    async fn client(&self, endpoint: &str, deadline: Duration) -> Result<WorkerClient, HopError> {
        let channel = match self.cached(endpoint) {
            Some(channel) => channel,
            None => {
                let channel = tokio::time::timeout(deadline, self.tls.connect(endpoint))
                    .await
                    .map_err(|_| HopError::Timeout)?
                    .map_err(|e| HopError::Failed(e.message))?;
                if let Ok(mut m) = self.channels.lock() {
                    m.insert(endpoint.to_string(), channel.clone());
                }
                channel
            }
        };
        Ok(WorkerClient::new(
            channel,
            ClientOptions {
                max_message_bytes: self.max_message_bytes,
                ..ClientOptions::default()
            },
        ))
    }

    /// Runs `hop` on the next positions of `session`.
    pub async fn forward(
        &self,
        hop: &Hop,
        session: &str,
        input: HopInput,
        position: u32,
        deadline: Duration,
    ) -> Result<HopOutput, HopError> {
        let started = Instant::now();
        let mut client = self.client(&hop.endpoint, deadline).await?;
        let (tokens, hidden) = split(input);
        let mut request = tonic::Request::new(ForwardRequest {
            session_id: session.to_string(),
            span: Some(hop.span()),
            tokens,
            hidden,
            position,
        });
        request.set_timeout(deadline);
        propagation::inject(&mut request);
        let response = tokio::time::timeout(deadline, client.forward(request))
            .await
            .map_err(|_| HopError::Timeout)?
            .map_err(classify)?;
        output(response.output, started)
    }

    /// Rebuilds `session`'s cache on `hop` from everything before the current step.
    pub async fn replay(
        &self,
        hop: &Hop,
        session: &str,
        input: HopInput,
        deadline: Duration,
    ) -> Result<HopOutput, HopError> {
        let started = Instant::now();
        let mut client = self.client(&hop.endpoint, deadline).await?;
        let (tokens, hidden) = split(input);
        let mut request = tonic::Request::new(ReplayRequest {
            session_id: session.to_string(),
            span: Some(hop.span()),
            tokens,
            hidden,
        });
        request.set_timeout(deadline);
        propagation::inject(&mut request);
        let response = tokio::time::timeout(deadline, client.replay(request))
            .await
            .map_err(|_| HopError::Timeout)?
            .map_err(classify)?;
        output(response.output, started)
    }

    /// Frees `session` on `hop`; best effort (the node may be gone, and sessions expire).
    pub async fn end(&self, hop: &Hop, session: &str) {
        let Some(channel) = self.cached(&hop.endpoint) else {
            return;
        };
        let mut client = WorkerClient::new(channel, ClientOptions::default());
        let _ = tokio::time::timeout(Duration::from_secs(1), client.end_session(session)).await;
    }
}

fn split(input: HopInput) -> (Vec<i64>, Option<WireTensor>) {
    match input {
        HopInput::Tokens(tokens) => (tokens, None),
        HopInput::Hidden(hidden) => (Vec::new(), Some(hidden)),
    }
}

fn output(tensor: Option<WireTensor>, started: Instant) -> Result<HopOutput, HopError> {
    let tensor = tensor.ok_or_else(|| HopError::Failed("worker returned no output".into()))?;
    Ok(HopOutput {
        tensor,
        elapsed: started.elapsed(),
    })
}

fn classify(status: tonic::Status) -> HopError {
    match status.code() {
        tonic::Code::DeadlineExceeded => HopError::Timeout,
        code => HopError::Failed(format!("{code:?}: {}", status.message())),
    }
}
