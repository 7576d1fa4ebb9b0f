//! The `ShardWorker` gRPC service. Requests are checked against what this node holds (span,
//! hidden size, dtype, positions), the session id against the guessing rule and the session
//! against its owner, before any compute, and refused with the field named. Compute goes to
//! the span's compute thread ([`crate::compute`]); nothing here waits for a forward except
//! the request that asked for it. The streamed calls (large tensors in chunks, see
//! [`crate::stream`]) check the header before the tensor's bytes arrive, then run exactly what
//! the unary calls run.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use neuroshard_common::tensor::Limits;
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_model::kv_cache::KvCache;
use neuroshard_model::tch::Tensor;
use neuroshard_proto::common::v1::{LayerSpan, Role, Tensor as WireTensor};
use neuroshard_proto::worker::v1::shard_worker_server::ShardWorker;
use neuroshard_proto::worker::v1::{
    EndSessionRequest, EndSessionResponse, ForwardRequest, ForwardResponse, ForwardStreamRequest,
    ForwardStreamResponse, InfoRequest, InfoResponse, ReplayRequest, ReplayResponse,
    ReplayStreamRequest, ReplayStreamResponse,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::caller::{Caller, check_session_id};
use crate::compute::Pass;
use crate::convert::from_wire;
use crate::sessions::Session;
use crate::state::{Loaded, WorkerState};
use crate::stream::{StreamLimits, StreamMessage, receive, split};

fn current(state: &WorkerState) -> Result<Arc<Loaded>> {
    state.loaded().ok_or_else(|| {
        Error::new(
            ErrorKind::Unavailable,
            "no layers assigned to this node yet",
        )
    })
}

fn check_span(loaded: &Loaded, span: Option<LayerSpan>) -> Result<()> {
    let (start, end) = (loaded.spec.start as u32, loaded.spec.end as u32);
    match span {
        Some(s) if s.start == start && s.end == end => Ok(()),
        Some(s) => Err(Error::invalid_argument(format!(
            "span: [{}, {}) requested, this node holds [{start}, {end})",
            s.start, s.end
        ))),
        None => Err(Error::invalid_argument("span: missing")),
    }
}

/// The input tensor the span takes, checked so that a request can share a batched pass with
/// others without failing it: token ids [1, n] in the vocabulary for a Driver, hidden states
/// [1, n, hidden] in the span's dtype otherwise; and `position + n` within the context.
fn input_tensor(
    loaded: &Loaded,
    tokens: &[i64],
    hidden: Option<&WireTensor>,
    position: u32,
    limits: &Limits,
) -> Result<Tensor> {
    let config = &loaded.config;
    let input = if loaded.spec.embed {
        if tokens.is_empty() {
            return Err(Error::invalid_argument(
                "tokens: this node holds the embedding and needs token ids",
            ));
        }
        if let Some(bad) = tokens.iter().find(|&&t| t < 0 || t >= config.vocab_size) {
            return Err(Error::invalid_argument(format!(
                "tokens: id {bad} is outside the vocabulary [0, {})",
                config.vocab_size
            )));
        }
        Tensor::from_slice(tokens).view([1, -1])
    } else {
        let hidden = hidden
            .ok_or_else(|| Error::invalid_argument("hidden: this node needs hidden states"))?;
        let t = from_wire(hidden, "hidden", limits)?;
        let size = t.size();
        if size.len() != 3 || size[0] != 1 || size[1] == 0 || size[2] != config.hidden_size {
            return Err(Error::invalid_argument(format!(
                "hidden: shape {size:?}, expected [1, seq, {}]",
                config.hidden_size
            )));
        }
        if t.kind() != loaded.kind {
            return Err(Error::invalid_argument(format!(
                "hidden.dtype: {:?}, this node runs in {:?}",
                t.kind(),
                loaded.kind
            )));
        }
        t
    };
    let positions = input.size()[1];
    if i64::from(position) + positions > config.max_seq_len {
        return Err(Error::invalid_argument(format!(
            "position: positions {position}..{} exceed the model's context of {}",
            i64::from(position) + positions,
            config.max_seq_len
        )));
    }
    Ok(input)
}

impl WorkerState {
    pub(crate) fn stream_limits(&self) -> StreamLimits {
        StreamLimits {
            tensor: self.limits,
            max_chunks: self.max_stream_chunks,
        }
    }

    /// What can be checked of a streamed call from its header alone, so that a request this
    /// node would refuse is refused before its tensor's bytes are buffered.
    fn check_header(&self, header: &impl HopRequest, caller: Caller) -> Result<()> {
        check_session_id(header.session_id())?;
        let loaded = current(self)?;
        check_span(&loaded, header.span())?;
        loaded.sessions.check_owner(header.session_id(), caller)?;
        let hidden_size = loaded.config.hidden_size;
        match (loaded.spec.embed, header.hidden()) {
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

    /// Runs the next positions of `caller`'s session (opening it when new).
    async fn forward(&self, request: ForwardRequest, caller: Caller) -> Result<ForwardResponse> {
        check_session_id(&request.session_id)?;
        let loaded = current(self)?;
        check_span(&loaded, request.span)?;
        let input = input_tensor(
            &loaded,
            &request.tokens,
            request.hidden.as_ref(),
            request.position,
            &self.limits,
        )?;
        let session =
            loaded
                .sessions
                .open(&request.session_id, caller, loaded.layers(), Instant::now())?;
        let Pass { output, position } = loaded
            .compute
            .run(input, session, i64::from(request.position))
            .await?;
        loaded.sessions.enforce_cap();
        Ok(ForwardResponse {
            output: Some(output),
            position,
        })
    }

    /// Rebuilds `caller`'s session from the positions so far, in a fresh cache that replaces
    /// the old one only once it is complete.
    async fn replay(&self, request: ReplayRequest, caller: Caller) -> Result<ReplayResponse> {
        check_session_id(&request.session_id)?;
        let loaded = current(self)?;
        check_span(&loaded, request.span)?;
        loaded.sessions.check_owner(&request.session_id, caller)?;
        let input = input_tensor(
            &loaded,
            &request.tokens,
            request.hidden.as_ref(),
            0,
            &self.limits,
        )?;
        let session = Session::new(caller, KvCache::new(loaded.layers()));
        let Pass { output, position } = loaded.compute.run(input, session.clone(), 0).await?;
        loaded
            .sessions
            .install(&request.session_id, session, Instant::now())?;
        Ok(ReplayResponse {
            output: Some(output),
            position,
        })
    }
}

/// gRPC adapter over the shared state.
#[derive(Debug, Clone)]
pub struct WorkerService {
    pub state: Arc<WorkerState>,
}

pub(crate) type PartStream<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

/// The response stream for `response`: header, then its tensor in chunks.
pub(crate) fn chunked_response<M: StreamMessage + Send + 'static>(
    response: M::Header,
    chunk_bytes: usize,
) -> Response<PartStream<M>> {
    let parts = split::<M>(response, chunk_bytes);
    Response::new(Box::pin(tokio_stream::iter(parts.into_iter().map(Ok))))
}

/// What the header check reads of a hop request before its tensor's bytes arrive.
trait HopRequest {
    fn session_id(&self) -> &str;
    fn span(&self) -> Option<LayerSpan>;
    fn hidden(&self) -> Option<&WireTensor>;
}

impl HopRequest for ForwardRequest {
    fn session_id(&self) -> &str {
        &self.session_id
    }
    fn span(&self) -> Option<LayerSpan> {
        self.span
    }
    fn hidden(&self) -> Option<&WireTensor> {
        self.hidden.as_ref()
    }
}

impl HopRequest for ReplayRequest {
    fn session_id(&self) -> &str {
        &self.session_id
    }
    fn span(&self) -> Option<LayerSpan> {
        self.span
    }
    fn hidden(&self) -> Option<&WireTensor> {
        self.hidden.as_ref()
    }
}

/// Reassembles a streamed request, its header checked (session, span, tensor metadata)
/// before the tensor's bytes are accepted.
async fn receive_checked<In>(
    state: &WorkerState,
    request: Request<Streaming<In>>,
) -> Result<(In::Header, Caller), Status>
where
    In: StreamMessage,
    In::Header: HopRequest,
{
    let caller = Caller::of(&request);
    let mut stream = request.into_inner();
    let header = receive(&mut stream, state.stream_limits(), |h: &In::Header| {
        state.check_header(h, caller)
    })
    .await?;
    Ok((header, caller))
}

#[tonic::async_trait]
impl ShardWorker for WorkerService {
    type ForwardStreamStream = PartStream<ForwardStreamResponse>;
    type ReplayStreamStream = PartStream<ReplayStreamResponse>;

    async fn forward_stream(
        &self,
        request: Request<Streaming<ForwardStreamRequest>>,
    ) -> Result<Response<Self::ForwardStreamStream>, Status> {
        let (request, caller) = receive_checked(&self.state, request).await?;
        let response = self.state.forward(request, caller).await?;
        Ok(chunked_response(response, self.state.stream_chunk_bytes))
    }

    async fn replay_stream(
        &self,
        request: Request<Streaming<ReplayStreamRequest>>,
    ) -> Result<Response<Self::ReplayStreamStream>, Status> {
        let (request, caller) = receive_checked(&self.state, request).await?;
        let response = self.state.replay(request, caller).await?;
        Ok(chunked_response(response, self.state.stream_chunk_bytes))
    }

    async fn forward(
        &self,
        request: Request<ForwardRequest>,
    ) -> Result<Response<ForwardResponse>, Status> {
        let caller = Caller::of(&request);
        let response = self.state.forward(request.into_inner(), caller).await?;
        Ok(Response::new(response))
    }

    async fn replay(
        &self,
        request: Request<ReplayRequest>,
    ) -> Result<Response<ReplayResponse>, Status> {
        let caller = Caller::of(&request);
        let response = self.state.replay(request.into_inner(), caller).await?;
        Ok(Response::new(response))
    }

    async fn end_session(
        &self,
        request: Request<EndSessionRequest>,
    ) -> Result<Response<EndSessionResponse>, Status> {
        let caller = Caller::of(&request);
        if let Some(loaded) = self.state.loaded() {
            loaded.sessions.end(&request.get_ref().session_id, caller)?;
        }
        Ok(Response::new(EndSessionResponse {}))
    }

    async fn info(&self, _: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let (span, role, sessions, architecture_version) = match self.state.loaded() {
            Some(l) => {
                let role =
                    neuroshard_common::role::Role::from_ends(l.spec.embed, l.spec.head).to_wire();
                (
                    Some(LayerSpan {
                        start: l.spec.start as u32,
                        end: l.spec.end as u32,
                    }),
                    role,
                    l.sessions.len() as u32,
                    l.architecture.version,
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
