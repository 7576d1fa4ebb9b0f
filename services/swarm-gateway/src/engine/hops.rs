//! Calls to shard workers for one hop: connection reuse per endpoint, the per-hop deadline,
//! trace-context propagation, and errors classified for failover.
//!
//! A deadline that passes is a suspicion, not a verdict: the node is asked over the same
//! connection whether it is alive (gRPC health, answered by its I/O threads even while its
//! compute threads are busy). A node that answers is busy and keeps the call, a deadline at a
//! time, up to the ceiling; one that does not (hung, partitioned) is given up on. Overload then
//! slows streams down instead of failing every one of them over at once. Large hidden states (long
//! prompts, replays of long sessions) go as chunked streams through `WorkerClient`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use neuroshard_proto::common::v1::{LayerSpan, Tensor as WireTensor};
use neuroshard_proto::worker::v1::{ForwardRequest, ReplayRequest};
use neuroshard_runtime::telemetry::names::gateway;
use neuroshard_runtime::telemetry::propagation;
use neuroshard_runtime::tls::TlsFiles;
use neuroshard_worker_client::{ClientOptions, WorkerClient};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long a node whose hop passed its deadline has to show it is alive.
const PROBE_TIMEOUT: Duration = Duration::from_millis(50);

/// What a hop consumes: token ids (the first hop) or hidden states `[1, seq, hidden]`.
#[derive(Debug, Clone)]
pub enum HopInput {
    Tokens(Vec<i64>),
    Hidden(WireTensor),
}

impl HopInput {
    /// How many positions the hop computes.
    pub fn positions(&self) -> usize {
        match self {
            Self::Tokens(tokens) => tokens.len(),
            Self::Hidden(hidden) => hidden
                .shape
                .get(1)
                .and_then(|&n| usize::try_from(n).ok())
                .unwrap_or(0),
        }
    }
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

    pub(super) async fn channel(
        &self,
        endpoint: &str,
        deadline: Duration,
    ) -> Result<Channel, HopError> {
        if let Some(channel) = self.cached(endpoint) {
            return Ok(channel);
        }
        let channel = tokio::time::timeout(deadline, self.tls.connect(endpoint))
            .await
            .map_err(|_| HopError::Timeout)?
            .map_err(|e| HopError::Failed(e.message))?;
        if let Ok(mut m) = self.channels.lock() {
            m.insert(endpoint.to_string(), channel.clone());
        }
        Ok(channel)
    }

    fn worker(&self, channel: Channel) -> WorkerClient {
        WorkerClient::new(
            channel,
            ClientOptions {
                max_message_bytes: self.max_message_bytes,
                ..ClientOptions::default()
            },
        )
    }

    pub async fn forward(
        &self,
        hop: &Hop,
        session: &str,
        input: HopInput,
        position: u32,
        deadline: Duration,
        ceiling: Duration,
    ) -> Result<HopOutput, HopError> {
        let started = Instant::now();
        let channel = self.channel(&hop.endpoint, deadline).await?;
        let mut client = self.worker(channel.clone());
        let (tokens, hidden) = split(input);
        let mut request = tonic::Request::new(ForwardRequest {
            session_id: session.to_string(),
            span: Some(hop.span()),
            tokens,
            hidden,
            position,
        });
        request.set_timeout(ceiling.max(deadline));
        propagation::inject(&mut request);
        let response = patiently(
            &channel,
            client.forward(request),
            deadline,
            ceiling,
            started,
        )
        .await?;
        output(response.output, started)
    }

    /// Rebuilds `session`'s cache on `hop` from everything before the current step. Like a
    /// forward, the call outlives `deadline` while the node answers its liveness probe, up to
    /// `ceiling`.
    pub async fn replay(
        &self,
        hop: &Hop,
        session: &str,
        input: HopInput,
        deadline: Duration,
        ceiling: Duration,
    ) -> Result<HopOutput, HopError> {
        let started = Instant::now();
        let channel = self.channel(&hop.endpoint, deadline).await?;
        let mut client = self.worker(channel.clone());
        let (tokens, hidden) = split(input);
        let mut request = tonic::Request::new(ReplayRequest {
            session_id: session.to_string(),
            span: Some(hop.span()),
            tokens,
            hidden,
        });
        request.set_timeout(ceiling.max(deadline));
        propagation::inject(&mut request);
        let response =
            patiently(&channel, client.replay(request), deadline, ceiling, started).await?;
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

/// Awaits `call` for `deadline` at a time while the node answers a liveness probe, up to
/// `ceiling` after `started`; a deadline passed with no answer to the probe is a timeout.
async fn patiently<T>(
    channel: &Channel,
    call: impl Future<Output = Result<T, tonic::Status>>,
    deadline: Duration,
    ceiling: Duration,
    started: Instant,
) -> Result<T, HopError> {
    tokio::pin!(call);
    loop {
        let left = ceiling.saturating_sub(started.elapsed());
        match tokio::time::timeout(deadline.min(left), &mut call).await {
            Ok(result) => return result.map_err(classify),
            Err(_) if started.elapsed() >= ceiling => return Err(HopError::Timeout),
            Err(_) => {
                if !alive(channel).await {
                    return Err(HopError::Timeout);
                }
                metrics::counter!(gateway::HOP_DEADLINE_EXTENSIONS).increment(1);
            }
        }
    }
}

/// Whether the node behind `channel` answers a health check within [`PROBE_TIMEOUT`].
async fn alive(channel: &Channel) -> bool {
    let mut health = HealthClient::new(channel.clone());
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    request.set_timeout(PROBE_TIMEOUT);
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, health.check(request)).await,
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
    )
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
        // Cancelled is what the client's own timeout looks like.
        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => HopError::Timeout,
        code => HopError::Failed(format!("{code:?}: {}", status.message())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEADLINE: Duration = Duration::from_millis(100);

    /// A channel to a real gRPC server on loopback that serves only health, reporting
    /// `status` for the whole server. The reporter is returned to keep it alive.
    async fn health_server(
        status: tonic_health::ServingStatus,
    ) -> (Channel, tonic_health::server::HealthReporter) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status("", status).await;
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(neuroshard_runtime::grpc::incoming(listener)),
        );
        let channel = TlsFiles::default()
            .connect(&format!("http://{addr}"))
            .await
            .unwrap();
        (channel, reporter)
    }

    /// A call that answers 7 after `delay`, as a busy node does.
    async fn answers_after(delay: Duration) -> Result<u32, tonic::Status> {
        tokio::time::sleep(delay).await;
        Ok(7)
    }

    #[tokio::test]
    async fn a_busy_node_that_answers_the_probe_keeps_its_call() {
        let (channel, _reporter) = health_server(tonic_health::ServingStatus::Serving).await;
        let started = Instant::now();
        let delay = DEADLINE * 3 + DEADLINE / 2;
        let out = patiently(
            &channel,
            answers_after(delay),
            DEADLINE,
            Duration::from_secs(5),
            started,
        )
        .await;
        assert_eq!(
            out.unwrap(),
            7,
            "three passed deadlines, each probe answered"
        );
        assert!(started.elapsed() >= delay);
    }

    #[tokio::test]
    async fn a_node_that_fails_the_probe_is_given_up_after_one_deadline() {
        let (channel, _reporter) = health_server(tonic_health::ServingStatus::NotServing).await;
        let started = Instant::now();
        let out = patiently(
            &channel,
            answers_after(Duration::from_secs(5)),
            DEADLINE,
            Duration::from_secs(5),
            started,
        )
        .await;
        assert!(matches!(out, Err(HopError::Timeout)), "{out:?}");
        let took = started.elapsed();
        assert!(
            took >= DEADLINE && took < DEADLINE + PROBE_TIMEOUT + Duration::from_millis(400),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_hung_node_does_not_answer_the_probe() {
        // Connected, then frozen (as SIGSTOP leaves a process): the kernel keeps the
        // connection but nothing answers on it.
        let (channel, _reporter) = health_server(tonic_health::ServingStatus::Serving).await;
        assert!(alive(&channel).await);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let frozen = tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            listener.local_addr().unwrap()
        ))
        .unwrap()
        .connect_lazy();
        let started = Instant::now();
        assert!(!alive(&frozen).await);
        assert!(started.elapsed() < PROBE_TIMEOUT + Duration::from_millis(400));
        drop(listener);
    }

    #[tokio::test]
    async fn patience_ends_at_the_ceiling() {
        let (channel, _reporter) = health_server(tonic_health::ServingStatus::Serving).await;
        let started = Instant::now();
        let ceiling = DEADLINE * 4;
        let out = patiently(
            &channel,
            answers_after(Duration::from_secs(5)),
            DEADLINE,
            ceiling,
            started,
        )
        .await;
        assert!(matches!(out, Err(HopError::Timeout)), "{out:?}");
        let took = started.elapsed();
        assert!(
            took >= ceiling && took < ceiling + Duration::from_millis(600),
            "{took:?}"
        );
    }

    #[test]
    fn the_clients_own_timeout_counts_as_a_timeout() {
        assert!(matches!(
            classify(tonic::Status::cancelled("timeout")),
            HopError::Timeout
        ));
        assert!(matches!(
            classify(tonic::Status::invalid_argument("span")),
            HopError::Failed(m) if m.contains("span")
        ));
    }
}
