//! The client callers (the gateway, other services, tests) use to reach a shard worker.
//! Forward and Replay go as one unary message when their tensors are small, and as chunked
//! streams (ForwardStream / ReplayStream, see [`crate::stream`]) when the request's tensor, or
//! the response it can produce, is large; callers never see the difference.

use neuroshard_common::{Error, ErrorKind, Result};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_proto::worker::v1::shard_worker_client::ShardWorkerClient;
use neuroshard_proto::worker::v1::{
    EndSessionRequest, ForwardRequest, ForwardResponse, ForwardStreamRequest,
    ForwardStreamResponse, InfoRequest, InfoResponse, ReplayRequest, ReplayResponse,
    ReplayStreamRequest, ReplayStreamResponse,
};
use tonic::Status;
use tonic::transport::Channel;

use crate::stream::{StreamLimits, receive, split};
use tonic::IntoRequest;

/// A bound on the bytes one position's output can take before the response is seen: a
/// 16,384-wide hidden state in f32. A Driver turns n tokens into n positions of hidden state,
/// so a request of n tokens is taken to answer with up to n times this.
pub const POSITION_BYTES_BOUND: usize = 64 * 1024;

/// How a [`WorkerClient`] chooses between unary calls and streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientOptions {
    /// Calls whose request tensor or bounded response exceeds this many bytes are streamed.
    /// Keep it well below `max_message_bytes` of both ends.
    pub stream_threshold_bytes: usize,
    /// Size of the chunks requests are cut into.
    pub chunk_bytes: usize,
    /// Largest gRPC message sent or accepted (unary calls, and each chunk of a stream).
    pub max_message_bytes: usize,
    /// Reassembly limits for streamed responses.
    pub limits: StreamLimits,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            stream_threshold_bytes: 4 << 20,
            chunk_bytes: 1 << 20,
            max_message_bytes: 64 << 20,
            limits: StreamLimits::default(),
        }
    }
}

/// A shard worker, called unary or streamed as the tensors require.
#[derive(Debug, Clone)]
pub struct WorkerClient {
    inner: ShardWorkerClient<Channel>,
    options: ClientOptions,
}

impl WorkerClient {
    /// Over `channel` (plain or TLS, e.g. from `neuroshard_runtime::tls::TlsFiles::connect`).
    pub fn new(channel: Channel, options: ClientOptions) -> Self {
        let inner = ShardWorkerClient::new(channel)
            .max_decoding_message_size(options.max_message_bytes)
            .max_encoding_message_size(options.max_message_bytes);
        Self { inner, options }
    }

    /// A plaintext connection to `endpoint` with `options`.
    pub async fn connect(endpoint: &str, options: ClientOptions) -> Result<Self> {
        let channel = Channel::from_shared(endpoint.to_string())
            .map_err(|e| Error::invalid_argument(format!("endpoint: `{endpoint}`: {e}")))?
            .connect()
            .await
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("{endpoint}: {e}")))?;
        Ok(Self::new(channel, options))
    }

    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// Whether a call with `tokens` and `hidden` goes as a stream.
    pub fn streams(&self, tokens: usize, hidden: Option<&WireTensor>) -> bool {
        let request = hidden.map_or(0, |h| h.data.len());
        // An inner stage answers with as many bytes as it gets; a Driver with its tokens'
        // positions of hidden state; a Validator with less than either.
        let response = request.max(tokens.saturating_mul(POSITION_BYTES_BOUND));
        request.max(response) > self.options.stream_threshold_bytes
    }

    /// Runs the worker's span on the next positions of a session. Metadata and the timeout
    /// of a `tonic::Request` (trace context, deadline) go with the call, unary or streamed.
    pub async fn forward(
        &mut self,
        request: impl IntoRequest<ForwardRequest>,
    ) -> std::result::Result<ForwardResponse, Status> {
        let (metadata, extensions, request) = request.into_request().into_parts();
        if !self.streams(request.tokens.len(), request.hidden.as_ref()) {
            let request = tonic::Request::from_parts(metadata, extensions, request);
            return Ok(self.inner.forward(request).await?.into_inner());
        }
        let parts = split::<ForwardStreamRequest>(request, self.options.chunk_bytes);
        let streamed = tonic::Request::from_parts(metadata, extensions, tokio_stream::iter(parts));
        let mut responses = self.inner.forward_stream(streamed).await?.into_inner();
        receive::<ForwardStreamResponse>(&mut responses, self.options.limits, |_| Ok(())).await
    }

    /// Rebuilds a session's KV cache from the tokens (or hidden states) so far; metadata and
    /// timeout go with the call as for [`WorkerClient::forward`].
    pub async fn replay(
        &mut self,
        request: impl IntoRequest<ReplayRequest>,
    ) -> std::result::Result<ReplayResponse, Status> {
        let (metadata, extensions, request) = request.into_request().into_parts();
        if !self.streams(request.tokens.len(), request.hidden.as_ref()) {
            let request = tonic::Request::from_parts(metadata, extensions, request);
            return Ok(self.inner.replay(request).await?.into_inner());
        }
        let parts = split::<ReplayStreamRequest>(request, self.options.chunk_bytes);
        let streamed = tonic::Request::from_parts(metadata, extensions, tokio_stream::iter(parts));
        let mut responses = self.inner.replay_stream(streamed).await?.into_inner();
        receive::<ReplayStreamResponse>(&mut responses, self.options.limits, |_| Ok(())).await
    }

    pub async fn end_session(&mut self, session_id: &str) -> std::result::Result<(), Status> {
        self.inner
            .end_session(EndSessionRequest {
                session_id: session_id.to_string(),
            })
            .await?;
        Ok(())
    }

    pub async fn info(&mut self) -> std::result::Result<InfoResponse, Status> {
        Ok(self.inner.info(InfoRequest {}).await?.into_inner())
    }

    /// The generated client underneath, for calls this one does not wrap.
    pub fn raw(&mut self) -> &mut ShardWorkerClient<Channel> {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::tensor::encode_f32;

    #[tokio::test]
    async fn small_calls_are_unary_and_large_ones_stream() {
        let channel = Channel::from_static("http://127.0.0.1:1").connect_lazy();
        let client = WorkerClient::new(
            channel,
            ClientOptions {
                stream_threshold_bytes: 1000,
                ..ClientOptions::default()
            },
        );
        let small = encode_f32(&[1, 2, 100], &[0.0; 200]);
        let large = encode_f32(&[1, 3, 100], &[0.0; 300]);
        assert!(!client.streams(0, Some(&small)));
        assert!(client.streams(0, Some(&large)));
        // A Driver's tokens answer with hidden states of unknown width: bounded per position.
        assert!(client.streams(1, None));
        let client = WorkerClient::new(
            Channel::from_static("http://127.0.0.1:1").connect_lazy(),
            ClientOptions::default(),
        );
        assert!(!client.streams(64, None));
        assert!(client.streams(65, None));
    }
}
