//! The `Aggregator` gRPC service: a thin adapter over [`crate::aggregator`]. Submissions are
//! checked in the order that costs least first — signature, header, clock, the aggregator it
//! names, its nonce, the round and the registry's record of the span — before any tensor is
//! read; then the stream is reassembled within limits, its commitment compared, and every
//! tensor checked (names, shapes, finiteness). Each refusal leaves signed evidence and
//! changes nothing in the round.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use neuroshard_aggregation::ownership::in_span;
use neuroshard_common::identity::node_id_of;
use neuroshard_common::signing::{check_fresh, now_ms, verify};
use neuroshard_common::tensor::{
    ChunkAssembler, Commitment, Limits, chunk, decode_f32, encode_f32,
};
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::aggregator::v1::aggregator_server::Aggregator as AggregatorRpc;
use neuroshard_proto::aggregator::v1::submit_message::Part;
use neuroshard_proto::aggregator::v1::{
    GetRoundRequest, GlobalWeightsRequest, ListRoundsRequest, ListRoundsResponse, RoundReport,
    RoundReportRequest, RoundState, SubmitHeader, SubmitMessage, SubmitResponse,
    WatchRoundsRequest,
};
use neuroshard_proto::common::v1::{Dtype, Tensor as WireTensor};
use neuroshard_proto::trainer::v1::NamedTensorChunk;
use neuroshard_runtime::telemetry::names::aggregator as names;
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::aggregator::Aggregator;
use crate::rounds::Submission;

/// The name a submission header is signed under (its domain tag).
pub const SUBMIT_MESSAGE: &str = "SubmitHeader";

#[derive(Debug, Clone)]
pub struct AggregatorService {
    pub aggregator: Arc<Aggregator>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = std::result::Result<T, Status>> + Send>>;

/// What a submission's header says, once verified.
struct Header {
    node_id: String,
    header: SubmitHeader,
    span: (u32, u32),
}

impl AggregatorService {
    fn limits(&self) -> Limits {
        Limits {
            max_bytes: self.aggregator.config.max_tensor_bytes,
            ..Limits::default()
        }
    }

    async fn current_round(&self) -> u64 {
        self.aggregator.core.lock().await.open.number
    }

    /// Signature, header, clock, addressee, nonce, round and span.
    async fn admit(&self, first: Option<SubmitMessage>) -> Result<Header> {
        let agg = &self.aggregator;
        let round_now = self.current_round().await;
        let Some(Part::Header(envelope)) = first.and_then(|m| m.part) else {
            return Err(agg
                .refuse(
                    round_now,
                    "",
                    None,
                    "header",
                    Vec::new(),
                    Error::invalid_argument(
                        "header: the first message of a submission must be the signed SubmitHeader",
                    ),
                )
                .await);
        };
        let claimed = if envelope.signer.len() == 33 {
            node_id_of(&envelope.signer)
        } else {
            String::new()
        };
        let verified = match verify(&envelope, &agg.config.network_id, SUBMIT_MESSAGE) {
            Ok(v) => v,
            Err(e) => {
                return Err(agg
                    .refuse(round_now, &claimed, None, "signature", Vec::new(), e)
                    .await);
            }
        };
        let node_id = verified.node_id.clone();
        let header = match SubmitHeader::decode(verified.payload.as_slice()) {
            Ok(h) => h,
            Err(e) => {
                let e = Error::invalid_argument(format!(
                    "header: the signed payload is not a SubmitHeader: {e}"
                ));
                return Err(agg
                    .refuse(round_now, &node_id, None, "header", Vec::new(), e)
                    .await);
            }
        };
        let span = match header.span {
            Some(s) if s.start < s.end => (s.start, s.end),
            _ => {
                let e = Error::invalid_argument("header.span: missing or empty");
                return Err(agg
                    .refuse(
                        header.round,
                        &node_id,
                        None,
                        "header",
                        header.commitment.clone(),
                        e,
                    )
                    .await);
            }
        };
        let refuse = |kind: &'static str, e: Error| {
            let commitment = header.commitment.clone();
            let node_id = node_id.clone();
            async move {
                agg.refuse(header.round, &node_id, header.span, kind, commitment, e)
                    .await
            }
        };
        if header.commitment.len() != 32 {
            return Err(refuse(
                "header",
                Error::invalid_argument(format!(
                    "header.commitment: {} bytes, a SHA-256 has 32",
                    header.commitment.len()
                )),
            )
            .await);
        }
        if let Err(e) = check_fresh(
            None,
            verified.nonce,
            verified.timestamp_ms,
            now_ms(),
            agg.config.clock_window_ms,
        ) {
            return Err(refuse("stale", e).await);
        }
        if header.aggregator_id != agg.aggregator_id() {
            return Err(refuse(
                "wrong_aggregator",
                Error::invalid_argument(format!(
                    "header.aggregator_id: {} named, this aggregator is {}",
                    header.aggregator_id,
                    agg.aggregator_id()
                )),
            )
            .await);
        }
        if let Err(e) = agg.store.claim_nonce(&node_id, verified.nonce).await {
            let kind = if e.kind == ErrorKind::FailedPrecondition {
                "replay"
            } else {
                "store"
            };
            return Err(refuse(kind, e).await);
        }
        let admitted = {
            let core = agg.core.lock().await;
            core.open
                .admit(&node_id, header.round, span, &header.pipeline_id, now_ms())
        };
        if let Err(r) = admitted {
            let kind = match r.kind {
                "late" | "duplicate" => ErrorKind::FailedPrecondition,
                _ => ErrorKind::PermissionDenied,
            };
            return Err(refuse(r.kind, Error::new(kind, r.message)).await);
        }
        Ok(Header {
            node_id,
            header,
            span,
        })
    }

    /// Reads the chunks into named tensors, hashing them as they complete.
    async fn receive(
        &self,
        stream: &mut Streaming<SubmitMessage>,
    ) -> Result<(Vec<(String, WireTensor)>, [u8; 32], u64)> {
        let limits = self.limits();
        let max_chunks = self.aggregator.config.max_stream_chunks;
        let mut tensors: Vec<(String, WireTensor)> = Vec::new();
        let mut current: Option<(String, ChunkAssembler)> = None;
        let mut commitment = Commitment::default();
        let mut chunks = 0usize;
        let mut bytes = 0u64;
        let mut finish = |current: Option<(String, ChunkAssembler)>,
                          tensors: &mut Vec<(String, WireTensor)>|
         -> Result<()> {
            if let Some((name, assembler)) = current {
                let tensor = assembler.finish(false)?;
                commitment.add(&name, &tensor);
                tensors.push((name, tensor));
            }
            Ok(())
        };
        while let Some(message) = stream.next().await {
            let message =
                message.map_err(|s| Error::invalid_argument(format!("stream: {}", s.message())))?;
            let Some(Part::Chunk(NamedTensorChunk { name, chunk })) = message.part else {
                return Err(Error::invalid_argument(
                    "chunk: a second header in one submission",
                ));
            };
            chunks += 1;
            if chunks > max_chunks {
                return Err(Error::invalid_argument(format!(
                    "stream: more than {max_chunks} chunks"
                )));
            }
            let piece = chunk.ok_or_else(|| Error::invalid_argument("chunk: missing"))?;
            bytes += piece.data.len() as u64;
            if !name.is_empty() {
                finish(current.take(), &mut tensors)?;
                if tensors.iter().any(|(n, _)| *n == name) {
                    return Err(Error::invalid_argument(format!(
                        "tensors: {name} sent twice"
                    )));
                }
                current = Some((
                    name.clone(),
                    ChunkAssembler::new(name, limits).with_max_chunks(max_chunks),
                ));
            }
            let Some((_, assembler)) = current.as_mut() else {
                return Err(Error::invalid_argument(
                    "chunk: the first chunk names no tensor",
                ));
            };
            assembler.push(piece)?;
        }
        finish(current.take(), &mut tensors)?;
        Ok((tensors, commitment.finish(), bytes))
    }

    async fn submit(&self, mut stream: Streaming<SubmitMessage>) -> Result<SubmitResponse> {
        let agg = self.aggregator.clone();
        let first = stream
            .next()
            .await
            .transpose()
            .map_err(|s| Error::invalid_argument(format!("stream: {}", s.message())))?;
        let Header {
            node_id,
            header,
            span,
        } = self.admit(first).await?;
        let refuse = |kind: &'static str, e: Error| {
            let agg = agg.clone();
            let (node_id, commitment, span) =
                (node_id.clone(), header.commitment.clone(), header.span);
            async move {
                agg.refuse(header.round, &node_id, span, kind, commitment, e)
                    .await
            }
        };
        let (tensors, digest, bytes) = match self.receive(&mut stream).await {
            Ok(received) => received,
            Err(e) => return Err(refuse("tensors", e).await),
        };
        if digest.as_slice() != header.commitment.as_slice() {
            return Err(refuse(
                "commitment",
                Error::invalid_argument(format!(
                    "commitment: the header commits to {}, the tensors sent hash to {}",
                    hex::encode(&header.commitment),
                    hex::encode(digest)
                )),
            )
            .await);
        }
        let (num_layers, shapes, ownership) = {
            let core = agg.core.lock().await;
            (core.open.num_layers, core.shapes.clone(), core.ownership)
        };
        let expected: BTreeSet<&String> = shapes
            .keys()
            .filter(|n| ownership.owns(n) && in_span(n, span, num_layers))
            .collect();
        if expected.is_empty() {
            return Err(refuse(
                "tensors",
                Error::invalid_argument(format!(
                    "span: this aggregator owns none of layers [{}, {})",
                    span.0, span.1
                )),
            )
            .await);
        }
        let sent: BTreeSet<&String> = tensors.iter().map(|(n, _)| n).collect();
        if let Some(missing) = expected.difference(&sent).next() {
            return Err(refuse(
                "tensors",
                Error::invalid_argument(format!(
                    "tensors: {missing} is missing ({} expected for layers [{}, {}))",
                    expected.len(),
                    span.0,
                    span.1
                )),
            )
            .await);
        }
        if let Some(unknown) = sent.difference(&expected).next() {
            return Err(refuse("tensors", Error::invalid_argument(format!(
                "tensors: {unknown} is not a parameter of layers [{}, {}) that this aggregator owns",
                span.0, span.1
            ))).await);
        }
        let limits = self.limits();
        let mut deltas = BTreeMap::new();
        for (name, tensor) in &tensors {
            let shape = &shapes[name];
            if &tensor.shape != shape {
                return Err(refuse(
                    "shape",
                    Error::invalid_argument(format!(
                        "{name}: shape {:?}, the model's is {shape:?}",
                        tensor.shape
                    )),
                )
                .await);
            }
            if !matches!(
                Dtype::try_from(tensor.dtype),
                Ok(Dtype::Int8Block | Dtype::F32)
            ) {
                return Err(refuse(
                    "tensors",
                    Error::invalid_argument(format!(
                        "{name}.dtype: Δ travels as int8 blocks or f32, not {}",
                        tensor.dtype
                    )),
                )
                .await);
            }
            match decode_f32(tensor, name, &limits) {
                Ok(values) => {
                    deltas.insert(name.clone(), values);
                }
                Err(e) => return Err(refuse("non_finite", e).await),
            }
        }
        let mut commitment = [0u8; 32];
        commitment.copy_from_slice(&header.commitment);
        let mut submission = Submission {
            node_id: node_id.clone(),
            span,
            pipeline: header.pipeline_id.clone(),
            tokens: header.tokens,
            commitment,
            deltas,
            bytes,
            capacity_tokens_per_second: 0.0,
            elapsed_ms: 0,
        };
        let mut core = agg.core.lock().await;
        let now = now_ms();
        // The round may have closed while the bytes came.
        if let Err(r) = core
            .open
            .admit(&node_id, header.round, span, &header.pipeline_id, now)
        {
            drop(core);
            return Err(refuse(r.kind, Error::failed_precondition(r.message)).await);
        }
        submission.capacity_tokens_per_second = core.open.capacity_of(&node_id);
        submission.elapsed_ms = core.open.elapsed_ms(agg.config.round_deadline_ms, now);
        core.open.submissions.push(submission);
        metrics::counter!(names::SUBMISSIONS, "outcome" => "accepted").increment(1);
        metrics::counter!(names::DELTA_BYTES).increment(bytes);
        tracing::info!(
            node_id,
            round = header.round,
            start = span.0,
            end = span.1,
            bytes,
            "submission accepted"
        );
        Ok(SubmitResponse {
            round: header.round,
            tensors: tensors.len() as u32,
            bytes,
        })
    }

    async fn global_weights(
        &self,
        request: GlobalWeightsRequest,
    ) -> Result<BoxStream<NamedTensorChunk>> {
        let agg = &self.aggregator;
        let (published, theta, num_layers, shapes, ownership) = {
            let core = agg.core.lock().await;
            (
                core.published,
                core.theta.clone(),
                core.open.num_layers,
                core.shapes.clone(),
                core.ownership,
            )
        };
        if request.round != 0 && request.round != published {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "round {}'s weights are not served; the latest published is round {published}",
                    request.round
                ),
            ));
        }
        let span = request
            .span
            .filter(|s| s.start < s.end && s.end <= num_layers)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "span: missing, empty or beyond the model's {num_layers} layers"
                ))
            })?;
        let chunk_bytes = agg.config.stream_chunk_bytes;
        let mut messages = Vec::new();
        for (name, values) in theta.iter() {
            if !ownership.owns(name) || !in_span(name, (span.start, span.end), num_layers) {
                continue;
            }
            let wire = encode_f32(&shapes[name], values);
            for (i, piece) in chunk(&wire, chunk_bytes).into_iter().enumerate() {
                messages.push(Ok(NamedTensorChunk {
                    name: if i == 0 { name.clone() } else { String::new() },
                    chunk: Some(piece),
                }));
            }
        }
        Ok(Box::pin(tokio_stream::iter(messages)))
    }
}

#[tonic::async_trait]
impl AggregatorRpc for AggregatorService {
    async fn get_round(
        &self,
        _: Request<GetRoundRequest>,
    ) -> std::result::Result<Response<RoundState>, Status> {
        let core = self.aggregator.core.lock().await;
        Ok(Response::new(self.aggregator.state_of(&core)))
    }

    type WatchRoundsStream = BoxStream<RoundState>;

    async fn watch_rounds(
        &self,
        _: Request<WatchRoundsRequest>,
    ) -> std::result::Result<Response<Self::WatchRoundsStream>, Status> {
        let updates = tokio_stream::wrappers::WatchStream::new(self.aggregator.changes.subscribe());
        Ok(Response::new(Box::pin(updates.map(Ok))))
    }

    async fn submit(
        &self,
        request: Request<Streaming<SubmitMessage>>,
    ) -> std::result::Result<Response<SubmitResponse>, Status> {
        Ok(Response::new(
            AggregatorService::submit(self, request.into_inner()).await?,
        ))
    }

    type GlobalWeightsStream = BoxStream<NamedTensorChunk>;

    async fn global_weights(
        &self,
        request: Request<GlobalWeightsRequest>,
    ) -> std::result::Result<Response<Self::GlobalWeightsStream>, Status> {
        Ok(Response::new(
            AggregatorService::global_weights(self, request.into_inner()).await?,
        ))
    }

    async fn round_report(
        &self,
        request: Request<RoundReportRequest>,
    ) -> std::result::Result<Response<RoundReport>, Status> {
        let round = request.into_inner().round;
        match self.aggregator.store.report(round).await? {
            Some(report) => Ok(Response::new(report)),
            None => {
                Err(Error::new(ErrorKind::NotFound, format!("round {round} has not closed")).into())
            }
        }
    }

    async fn list_rounds(
        &self,
        request: Request<ListRoundsRequest>,
    ) -> std::result::Result<Response<ListRoundsResponse>, Status> {
        let limit = match request.into_inner().limit {
            0 => 50,
            n => n.min(1_000),
        };
        let rounds = self.aggregator.store.summaries(limit).await?;
        let published_round = self.aggregator.core.lock().await.published;
        Ok(Response::new(ListRoundsResponse {
            rounds,
            published_round,
        }))
    }
}
