//! The `ShardWorker` gRPC service. Requests are checked against what this node holds (span,
//! hidden size, dtype, session position) before any compute, and refused with the field named.
//! The streamed calls (large tensors in chunks, see [`crate::stream`]) check the header before
//! the tensor's bytes arrive, then run exactly what the unary calls run.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use neuroshard_common::tensor::Limits;
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_model::tch::{Kind, Tensor};
use neuroshard_model::{Shard, ShardInput};
use neuroshard_proto::common::v1::{LayerSpan, Role, Tensor as WireTensor};
use neuroshard_proto::worker::v1::shard_worker_server::ShardWorker;
use neuroshard_proto::worker::v1::{
    EndSessionRequest, EndSessionResponse, ForwardRequest, ForwardResponse, ForwardStreamRequest,
    ForwardStreamResponse, InfoRequest, InfoResponse, ReplayRequest, ReplayResponse,
    ReplayStreamRequest, ReplayStreamResponse,
};
use neuroshard_runtime::telemetry::names::worker as names;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert::{from_wire, to_wire};
use crate::sessions::Sessions;
use crate::stream::{StreamLimits, StreamMessage, receive, split};

/// A span of layers loaded on this node, with its sessions (which die with it).
#[derive(Debug)]
pub struct Loaded {
    pub shard: Shard,
    pub sessions: Sessions,
    pub assignment_version: u64,
    /// The architecture version `shard` belongs to.
    pub architecture_version: u64,
}

/// State shared by the service and the node lifecycle.
#[derive(Debug)]
pub struct WorkerState {
    pub node_id: String,
    pub loaded: Mutex<Option<Loaded>>,
    pub session_ttl: Duration,
    pub max_session_bytes: u64,
    pub limits: Limits,
    /// Most chunks one streamed tensor may come in.
    pub max_stream_chunks: usize,
    /// Size of the chunks streamed responses are cut into.
    pub stream_chunk_bytes: usize,
}

fn lock(state: &WorkerState) -> Result<std::sync::MutexGuard<'_, Option<Loaded>>> {
    state
        .loaded
        .lock()
        .map_err(|_| Error::internal("worker state poisoned"))
}

fn check_span(shard: &Shard, span: Option<LayerSpan>) -> Result<()> {
    let spec = shard.spec();
    let (start, end) = (spec.start as u32, spec.end as u32);
    match span {
        Some(s) if s.start == start && s.end == end => Ok(()),
        Some(s) => Err(Error::invalid_argument(format!(
            "span: [{}, {}) requested, this node holds [{start}, {end})",
            s.start, s.end
        ))),
        None => Err(Error::invalid_argument("span: missing")),
    }
}

/// The input tensor a shard takes: token ids [1, n] for a Driver, hidden [1, seq, hidden] otherwise.
fn input_tensor(
    shard: &Shard,
    tokens: &[i64],
    hidden: Option<&neuroshard_proto::common::v1::Tensor>,
    limits: &Limits,
) -> Result<Tensor> {
    if shard.spec().embed {
        if tokens.is_empty() {
            return Err(Error::invalid_argument(
                "tokens: this node holds the embedding and needs token ids",
            ));
        }
        Ok(Tensor::from_slice(tokens).view([1, -1]))
    } else {
        let hidden = hidden
            .ok_or_else(|| Error::invalid_argument("hidden: this node needs hidden states"))?;
        let t = from_wire(hidden, "hidden", limits)?;
        if t.dim() != 3 || t.size()[0] != 1 {
            return Err(Error::invalid_argument(format!(
                "hidden: shape {:?}, expected [1, seq, hidden]",
                t.size()
            )));
        }
        Ok(t)
    }
}

/// Runs the shard on `input` with `cache`; a Validator returns the last position's logits in f32.
fn run(
    shard: &Shard,
    input: &Tensor,
    cache: &mut neuroshard_model::kv_cache::KvCache,
) -> Result<Tensor> {
    let _guard = neuroshard_model::tch::no_grad_guard();
    let started = Instant::now();
    let positions = input.size().get(1).copied().unwrap_or(0);
    let x = if shard.spec().embed {
        ShardInput::Tokens(input)
    } else {
        ShardInput::Hidden(input)
    };
    let out = shard.forward(x, Some(cache)).map_err(Error::from)?;
    metrics::counter!(names::POSITIONS).increment(positions.max(0) as u64);
    metrics::histogram!(names::SPAN_COMPUTE_SECONDS).record(started.elapsed().as_secs_f64());
    Ok(if shard.spec().head {
        let seq = out.size()[1];
        out.narrow(1, seq - 1, 1).to_kind(Kind::Float)
    } else {
        out
    })
}

impl WorkerState {
    fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            tensor: self.limits,
            max_chunks: self.max_stream_chunks,
        }
    }

    /// What can be checked of a streamed call from its header alone, so that a request this
    /// node would refuse is refused before its tensor's bytes are buffered.
    fn check_header(&self, span: Option<LayerSpan>, hidden: Option<&WireTensor>) -> Result<()> {
        let guard = lock(self)?;
        let loaded = guard.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "no layers assigned to this node yet",
            )
        })?;
        check_span(&loaded.shard, span)?;
        let hidden_size = loaded.shard.config().hidden_size;
        match (loaded.shard.spec().embed, hidden) {
            (true, Some(_)) => Err(Error::invalid_argument(
                "hidden: this node holds the embedding and takes token ids, not hidden states",
            )),
            (false, None) => Err(Error::invalid_argument(
                "hidden: this node needs hidden states",
            )),
            (false, Some(h))
                if h.shape.len() != 3 || h.shape[0] != 1 || h.shape[2] != hidden_size =>
            {
                Err(Error::invalid_argument(format!(
                    "hidden.shape: {:?}, expected [1, seq, {hidden_size}]",
                    h.shape
                )))
            }
            _ => Ok(()),
        }
    }

    fn forward(&self, request: &ForwardRequest) -> Result<ForwardResponse> {
        let mut guard = lock(self)?;
        let loaded = guard.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "no layers assigned to this node yet",
            )
        })?;
        check_span(&loaded.shard, request.span)?;
        if request.session_id.is_empty() {
            return Err(Error::invalid_argument("session_id: missing"));
        }
        let input = input_tensor(
            &loaded.shard,
            &request.tokens,
            request.hidden.as_ref(),
            &self.limits,
        )?;
        let Loaded {
            shard, sessions, ..
        } = loaded;
        let cache =
            sessions.get_or_create(&request.session_id, Instant::now(), || shard.new_cache());
        if i64::from(request.position) != cache.len() {
            return Err(Error::failed_precondition(format!(
                "position: request is at {}, session {} holds {} positions (replay it)",
                request.position,
                request.session_id,
                cache.len()
            )));
        }
        let out = run(shard, &input, cache)?;
        let position = cache.len() as u32;
        sessions.enforce_cap();
        Ok(ForwardResponse {
            output: Some(to_wire(&out)?),
            position,
        })
    }

    fn replay(&self, request: &ReplayRequest) -> Result<ReplayResponse> {
        let mut guard = lock(self)?;
        let loaded = guard.as_mut().ok_or_else(|| {
            Error::new(
                ErrorKind::Unavailable,
                "no layers assigned to this node yet",
            )
        })?;
        check_span(&loaded.shard, request.span)?;
        let input = input_tensor(
            &loaded.shard,
            &request.tokens,
            request.hidden.as_ref(),
            &self.limits,
        )?;
        let mut cache = loaded.shard.new_cache();
        let out = run(&loaded.shard, &input, &mut cache)?;
        let position = cache.len() as u32;
        loaded
            .sessions
            .insert(&request.session_id, cache, Instant::now());
        Ok(ReplayResponse {
            output: Some(to_wire(&out)?),
            position,
        })
    }
}

/// gRPC adapter over the shared state; compute runs on the blocking pool.
#[derive(Debug, Clone)]
pub struct WorkerService {
    pub state: Arc<WorkerState>,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(format!("worker task failed: {e}")))?
        .map_err(Status::from)
}

type PartStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// The response stream for `response`: header, then its tensor in chunks.
fn chunked_response<M: StreamMessage + Send + 'static>(
    response: M::Header,
    chunk_bytes: usize,
) -> Response<PartStream<M>> {
    let parts = split::<M>(response, chunk_bytes);
    Response::new(Box::pin(tokio_stream::iter(parts.into_iter().map(Ok))))
}

/// What the header check reads of a hop request before its tensor's bytes arrive.
trait HopRequest {
    fn span(&self) -> Option<LayerSpan>;
    fn hidden(&self) -> Option<&WireTensor>;
}

impl HopRequest for ForwardRequest {
    fn span(&self) -> Option<LayerSpan> {
        self.span
    }
    fn hidden(&self) -> Option<&WireTensor> {
        self.hidden.as_ref()
    }
}

impl HopRequest for ReplayRequest {
    fn span(&self) -> Option<LayerSpan> {
        self.span
    }
    fn hidden(&self) -> Option<&WireTensor> {
        self.hidden.as_ref()
    }
}

/// A call in chunked streams both ways: the header is checked (span, tensor metadata) before
/// the tensor's bytes are accepted, `compute` runs on the blocking pool, and the answer goes
/// back in chunks.
async fn chunked_call<In, Out>(
    state: Arc<WorkerState>,
    request: Request<Streaming<In>>,
    compute: fn(&WorkerState, &In::Header) -> Result<Out::Header>,
) -> Result<Response<PartStream<Out>>, Status>
where
    In: StreamMessage,
    In::Header: HopRequest + Send + 'static,
    Out: StreamMessage + Send + 'static,
    Out::Header: Send + 'static,
{
    let mut stream = request.into_inner();
    let request = receive(&mut stream, state.stream_limits(), |h: &In::Header| {
        state.check_header(h.span(), h.hidden())
    })
    .await?;
    let chunk_bytes = state.stream_chunk_bytes;
    let response = blocking(move || compute(&state, &request)).await?;
    Ok(chunked_response(response, chunk_bytes))
}

#[tonic::async_trait]
impl ShardWorker for WorkerService {
    type ForwardStreamStream = PartStream<ForwardStreamResponse>;
    type ReplayStreamStream = PartStream<ReplayStreamResponse>;

    async fn forward_stream(
        &self,
        request: Request<Streaming<ForwardStreamRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        chunked_call(self.state.clone(), request, WorkerState::forward).await
    }

    async fn replay_stream(
        &self,
        request: Request<Streaming<ReplayStreamRequest>>,
    ) -> Result<Response<Self::ReplayStreamStream>, Status> {
        chunked_call(self.state.clone(), request, WorkerState::replay).await
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let state = self.state.clone();
        let request = request.into_inner();
        blocking(move || state.forward(&request))
            .await
            .map(Response::new)
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let state = self.state.clone();
        let request = request.into_inner();
        blocking(move || state.replay(&request))
            .await
            .map(Response::new)
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        if let Some(loaded) = lock(&self.state)?.as_mut() {
            loaded.sessions.remove(&request.get_ref().session_id);
        }
        Ok(Response::new(EndSessionResponse {}))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let guard = lock(&self.state)?;
        let (span, role, sessions, architecture_version) = match guard.as_ref() {
            Some(l) => {
                let spec = l.shard.spec();
                let role =
                    neuroshard_common::role::Role::from_ends(spec.embed, spec.head).to_wire();
                (
                    Some(LayerSpan {
                        start: spec.start as u32,
                        end: spec.end as u32,
                    }),
                    role,
                    l.sessions.len() as u32,
                    l.architecture_version,
                )
            }
            None => (None, Role::Unspecified, 0, 0),
        };
        Ok(Response::new(InfoResponse {
            node_id: self.state.node_id.clone(),
            span,
            role: role as i32,
            sessions,
            architecture_version,
        }))
    }
}
