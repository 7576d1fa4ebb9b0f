//! Talking to the diloco-aggregators: the round they have open, the published global weights
//! of a span, and submitting a span's Δ — each aggregator the part of the span it owns,
//! int8 block-quantised, under a header signed by the node that commits to the bytes.
//! [`submission`] builds the messages (pure), so tests can send exactly what a node would,
//! or a tampered copy.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use neuroshard_aggregation::DELTA_BLOCK;
use neuroshard_aggregation::ownership::{Ownership, in_span};
use neuroshard_common::identity::NodeKey;
use neuroshard_common::signing::{NonceSource, now_ms, sign};
use neuroshard_common::tensor::{Commitment, Limits, chunk, encode_int8_block};
use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::aggregator::v1::aggregator_client::AggregatorClient;
use neuroshard_proto::aggregator::v1::submit_message::Part;
use neuroshard_proto::aggregator::v1::{
    GetRoundRequest, GlobalWeightsRequest, Receipt, RoundReport, RoundReportRequest, RoundState,
    SubmitHeader, SubmitMessage,
};
use neuroshard_proto::common::v1::{LayerSpan, SignedEnvelope, Tensor as WireTensor};
use neuroshard_proto::trainer::v1::NamedTensorChunk;
use neuroshard_runtime::tls::TlsFiles;
use prost::Message;
use tonic::transport::Channel;

use crate::named::collect_named;

/// One parameter's Δ: name, shape, values.
pub type NamedDelta = (String, Vec<i64>, Vec<f32>);

/// A span's Δ for one round.
#[derive(Debug, Clone, Copy)]
pub struct DeltaSubmission<'a> {
    pub round: u64,
    pub span: (u32, u32),
    pub pipeline_id: &'a str,
    pub tokens: u64,
    pub deltas: &'a [NamedDelta],
}

/// What an aggregator in `state` owns.
pub fn ownership_of(state: &RoundState) -> Ownership {
    let layers = state.layers.unwrap_or_default();
    Ownership {
        start: layers.start,
        end: layers.end,
        embedding: state.embedding,
        head: state.head,
    }
}

/// The messages submitting `submission` to the aggregator of `state` (the part it owns,
/// int8 blocks, chunked), with the header signed by `key` under `nonce`; and the Δ bytes.
/// None when the aggregator owns nothing of the span.
pub fn submission(
    key: &NodeKey,
    network_id: &str,
    nonce: u64,
    state: &RoundState,
    submission: &DeltaSubmission<'_>,
    chunk_bytes: usize,
) -> Result<Option<(Vec<SubmitMessage>, u64)>> {
    let owns = ownership_of(state);
    let mut commitment = Commitment::default();
    let mut chunks = Vec::new();
    let mut bytes = 0u64;
    for (name, shape, values) in submission.deltas {
        if !owns.owns(name) || !in_span(name, submission.span, state.num_layers) {
            continue;
        }
        let wire = encode_int8_block(shape, values, DELTA_BLOCK)
            .map_err(|e| Error::new(e.kind, format!("{name}: {}", e.message)))?;
        commitment.add(name, &wire);
        bytes += wire.data.len() as u64;
        for (i, piece) in chunk(&wire, chunk_bytes).into_iter().enumerate() {
            chunks.push(SubmitMessage {
                part: Some(Part::Chunk(NamedTensorChunk {
                    name: if i == 0 { name.clone() } else { String::new() },
                    chunk: Some(piece),
                })),
            });
        }
    }
    if chunks.is_empty() {
        return Ok(None);
    }
    let header = SubmitHeader {
        round: submission.round,
        span: Some(LayerSpan {
            start: submission.span.0,
            end: submission.span.1,
        }),
        pipeline_id: submission.pipeline_id.to_string(),
        tokens: submission.tokens,
        commitment: commitment.finish().to_vec(),
        aggregator_id: state.aggregator_id.clone(),
    };
    let envelope = sign(
        key,
        network_id,
        "SubmitHeader",
        nonce,
        now_ms(),
        header.encode_to_vec(),
    )?;
    let mut messages = vec![SubmitMessage {
        part: Some(Part::Header(envelope)),
    }];
    messages.extend(chunks);
    Ok(Some((messages, bytes)))
}

fn status(endpoint: &str, what: &str, s: &tonic::Status) -> Error {
    Error::new(
        ErrorKind::from_grpc_code(s.code() as i32),
        format!("aggregator {endpoint}: {what}: {}", s.message()),
    )
}

/// The receipts in `report` made out to `node_id` (what the node proves its work with).
pub fn receipts_for(report: &RoundReport, node_id: &str) -> Vec<SignedEnvelope> {
    report
        .receipts
        .iter()
        .filter(|envelope| {
            Receipt::decode(envelope.payload.as_slice()).is_ok_and(|r| r.node_id == node_id)
        })
        .cloned()
        .collect()
}

/// The aggregators a node works with.
#[derive(Debug)]
pub struct Aggregators {
    endpoints: Vec<String>,
    tls: TlsFiles,
    max_message_bytes: usize,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Aggregators {
    pub fn new(endpoints: Vec<String>, tls: TlsFiles, max_message_bytes: usize) -> Self {
        Self {
            endpoints,
            tls,
            max_message_bytes,
            channels: Mutex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    async fn client(&self, endpoint: &str) -> Result<AggregatorClient<Channel>> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(endpoint)
            .cloned();
        let channel = match cached {
            Some(c) => c,
            None => {
                let c = self.tls.connect(endpoint).await?;
                self.channels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(endpoint.to_string(), c.clone());
                c
            }
        };
        Ok(AggregatorClient::new(channel)
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes))
    }

    /// The round every aggregator has open. They must agree on its number and on the
    /// weights it starts from; otherwise one is behind (closing, restarting) and the error
    /// says which.
    pub async fn round(&self) -> Result<RoundState> {
        let mut agreed: Option<(String, RoundState)> = None;
        for endpoint in &self.endpoints {
            let state = self
                .client(endpoint)
                .await?
                .get_round(GetRoundRequest {})
                .await
                .map_err(|s| status(endpoint, "GetRound", &s))?
                .into_inner();
            match &agreed {
                None => agreed = Some((endpoint.clone(), state)),
                Some((first, seen))
                    if seen.round != state.round || seen.weights_round != state.weights_round =>
                {
                    return Err(Error::new(
                        ErrorKind::Unavailable,
                        format!(
                            "aggregators disagree: {first} is in round {} (weights of {}), {endpoint} in round {} (weights of {})",
                            seen.round, seen.weights_round, state.round, state.weights_round
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        agreed
            .map(|(_, s)| s)
            .ok_or_else(|| Error::failed_precondition("no aggregator is configured"))
    }

    /// The published global weights of `span` for `round`, from every aggregator (each
    /// sends the part it owns).
    pub async fn fetch(
        &self,
        round: u64,
        span: (u32, u32),
        limits: Limits,
    ) -> Result<BTreeMap<String, WireTensor>> {
        let mut out = BTreeMap::new();
        for endpoint in &self.endpoints {
            let stream = self
                .client(endpoint)
                .await?
                .global_weights(GlobalWeightsRequest {
                    round,
                    span: Some(LayerSpan {
                        start: span.0,
                        end: span.1,
                    }),
                })
                .await
                .map_err(|s| status(endpoint, "GlobalWeights", &s))?
                .into_inner();
            out.extend(collect_named(stream, limits).await?);
        }
        Ok(out)
    }

    /// The receipts every aggregator signed for `node_id`'s accepted work in `round` (none
    /// when the round is not closed yet or the work was flagged).
    pub async fn receipts(&self, round: u64, node_id: &str) -> Result<Vec<SignedEnvelope>> {
        let mut out = Vec::new();
        for endpoint in &self.endpoints {
            let report = self
                .client(endpoint)
                .await?
                .round_report(RoundReportRequest { round })
                .await
                .map_err(|s| status(endpoint, "RoundReport", &s))?
                .into_inner();
            out.extend(receipts_for(&report, node_id));
        }
        Ok(out)
    }

    /// Submits `delta` to every aggregator that owns part of its span; the Δ bytes sent.
    pub async fn submit(
        &self,
        key: &NodeKey,
        network_id: &str,
        nonces: &NonceSource,
        delta: &DeltaSubmission<'_>,
        chunk_bytes: usize,
    ) -> Result<u64> {
        let mut sent = 0;
        for endpoint in &self.endpoints {
            let mut client = self.client(endpoint).await?;
            let state = client
                .get_round(GetRoundRequest {})
                .await
                .map_err(|s| status(endpoint, "GetRound", &s))?
                .into_inner();
            let Some((messages, bytes)) =
                submission(key, network_id, nonces.next(), &state, delta, chunk_bytes)?
            else {
                continue;
            };
            client
                .submit(tokio_stream::iter(messages))
                .await
                .map_err(|s| status(endpoint, &format!("submitting round {}", delta.round), &s))?;
            sent += bytes;
        }
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_finds_its_own_receipts_in_a_report() {
        let aggregator = NodeKey::generate();
        let receipt = |node: &str| {
            let r = Receipt {
                node_id: node.into(),
                round: 3,
                ..Receipt::default()
            };
            sign(
                &aggregator,
                "net",
                "Receipt",
                1,
                now_ms(),
                r.encode_to_vec(),
            )
            .unwrap()
        };
        let report = RoundReport {
            receipts: vec![receipt("aa"), receipt("bb"), receipt("aa")],
            ..RoundReport::default()
        };
        assert_eq!(receipts_for(&report, "aa").len(), 2);
        assert_eq!(
            receipts_for(&report, "bb"),
            vec![report.receipts[1].clone()]
        );
        assert!(receipts_for(&report, "cc").is_empty());
    }
}
