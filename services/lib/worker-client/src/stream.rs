//! Streamed Forward and Replay (and the training stages' Forward and Backward) on the wire: a message whose tensor is large travels as a header
//! (the message with its tensor's dtype and shape but no data) followed by the tensor's bytes
//! in [`TensorChunk`]s, using the chunk codec of `neuroshard_common::tensor`. This module splits
//! messages into such streams and reassembles them with limits (total bytes, chunk count,
//! order, header agreement); the service and [`crate::client`] both use it. No tch here.

use neuroshard_common::tensor::{ChunkAssembler, DEFAULT_MAX_CHUNKS, Limits, chunk};
use neuroshard_common::{Error, Result};
use neuroshard_proto::common::v1::{Tensor as WireTensor, TensorChunk};
use neuroshard_proto::trainer::v1::{
    TrainBackwardRequest, TrainBackwardResponse, TrainBackwardStreamRequest,
    TrainBackwardStreamResponse, TrainForwardRequest, TrainForwardResponse,
    TrainForwardStreamRequest, TrainForwardStreamResponse, train_backward_stream_request,
    train_backward_stream_response, train_forward_stream_request, train_forward_stream_response,
};
use neuroshard_proto::worker::v1::{
    ForwardRequest, ForwardResponse, ForwardStreamRequest, ForwardStreamResponse, ReplayRequest,
    ReplayResponse, ReplayStreamRequest, ReplayStreamResponse, forward_stream_request,
    forward_stream_response, replay_stream_request, replay_stream_response,
};

/// A message whose one tensor may travel as chunks.
pub trait Streamed: Sized {
    /// The tensor field's name, for errors.
    const FIELD: &'static str;
    fn tensor_mut(&mut self) -> &mut Option<WireTensor>;
}

/// One message of a stream: the header, or a piece of its tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Part<H> {
    Header(H),
    Chunk(TensorChunk),
}

/// A stream message type (the proto `oneof part` wrapper) over header type `Header`.
pub trait StreamMessage: Sized {
    type Header: Streamed;
    fn into_part(self) -> Option<Part<Self::Header>>;
    fn from_part(part: Part<Self::Header>) -> Self;
}

macro_rules! streamed {
    ($header:ty, $field:literal, $tensor:ident, $message:ty, $oneof:ident) => {
        impl Streamed for $header {
            const FIELD: &'static str = $field;
            fn tensor_mut(&mut self) -> &mut Option<WireTensor> {
                &mut self.$tensor
            }
        }

        impl StreamMessage for $message {
            type Header = $header;
            fn into_part(self) -> Option<Part<$header>> {
                self.part.map(|part| match part {
                    $oneof::Part::Header(h) => Part::Header(h),
                    $oneof::Part::Chunk(c) => Part::Chunk(c),
                })
            }
            fn from_part(part: Part<$header>) -> Self {
                Self {
                    part: Some(match part {
                        Part::Header(h) => $oneof::Part::Header(h),
                        Part::Chunk(c) => $oneof::Part::Chunk(c),
                    }),
                }
            }
        }
    };
}

streamed!(
    ForwardRequest,
    "hidden",
    hidden,
    ForwardStreamRequest,
    forward_stream_request
);
streamed!(
    ForwardResponse,
    "output",
    output,
    ForwardStreamResponse,
    forward_stream_response
);
streamed!(
    ReplayRequest,
    "hidden",
    hidden,
    ReplayStreamRequest,
    replay_stream_request
);
streamed!(
    ReplayResponse,
    "output",
    output,
    ReplayStreamResponse,
    replay_stream_response
);

// Training: a pipeline stage's micro-batch activations and gradients.
streamed!(
    TrainForwardRequest,
    "hidden",
    hidden,
    TrainForwardStreamRequest,
    train_forward_stream_request
);
streamed!(
    TrainForwardResponse,
    "hidden",
    hidden,
    TrainForwardStreamResponse,
    train_forward_stream_response
);
streamed!(
    TrainBackwardRequest,
    "grad",
    grad,
    TrainBackwardStreamRequest,
    train_backward_stream_request
);
streamed!(
    TrainBackwardResponse,
    "input_grad",
    input_grad,
    TrainBackwardStreamResponse,
    train_backward_stream_response
);

/// Limits on one reassembled stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Bytes, dimensions: the tensor limits of the unary path.
    pub tensor: Limits,
    pub max_chunks: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            tensor: Limits::default(),
            max_chunks: DEFAULT_MAX_CHUNKS,
        }
    }
}

/// The stream messages for `message`: its header (the tensor's dtype and shape, no data),
/// then the tensor's bytes in chunks of at most `chunk_bytes` (none without a tensor).
pub fn split<M: StreamMessage>(mut message: M::Header, chunk_bytes: usize) -> Vec<M> {
    let tensor = message.tensor_mut().take();
    let chunks = tensor.as_ref().map(|t| chunk(t, chunk_bytes));
    *message.tensor_mut() = tensor.map(|t| WireTensor {
        data: Vec::new(),
        ..t
    });
    std::iter::once(M::from_part(Part::Header(message)))
        .chain(
            chunks
                .into_iter()
                .flatten()
                .map(|c| M::from_part(Part::Chunk(c))),
        )
        .collect()
}

/// Reassembles one stream: the header first, then its tensor's chunks in order.
#[derive(Debug)]
pub struct Reassembly<H> {
    limits: StreamLimits,
    header: Option<H>,
    assembler: Option<ChunkAssembler>,
}

impl<H: Streamed> Reassembly<H> {
    pub fn new(limits: StreamLimits) -> Self {
        Self {
            limits,
            header: None,
            assembler: None,
        }
    }

    /// Takes the next message; returns the header when it has just arrived, so the caller can
    /// check it before any bytes are buffered.
    pub fn push(&mut self, part: Option<Part<H>>) -> Result<Option<&H>> {
        let field = H::FIELD;
        match part {
            None => Err(Error::invalid_argument(
                "stream message: carries neither a header nor a chunk",
            )),
            Some(Part::Header(_)) if self.header.is_some() => Err(Error::invalid_argument(
                "header: sent twice; a stream has one header, first",
            )),
            Some(Part::Header(mut header)) => {
                if let Some(tensor) = header.tensor_mut() {
                    if !tensor.data.is_empty() {
                        return Err(Error::invalid_argument(format!(
                            "header.{field}.data: must be empty in a stream header; the bytes follow as chunks"
                        )));
                    }
                    self.assembler = Some(
                        ChunkAssembler::new(field, self.limits.tensor)
                            .with_max_chunks(self.limits.max_chunks)
                            .announced(tensor)?,
                    );
                }
                Ok(Some(self.header.insert(header)))
            }
            Some(Part::Chunk(_)) if self.header.is_none() => Err(Error::invalid_argument(
                "chunk: arrived before the header; a stream starts with its header",
            )),
            Some(Part::Chunk(chunk)) => match &mut self.assembler {
                Some(assembler) => assembler.push(chunk).map(|()| None),
                None => Err(Error::invalid_argument(format!(
                    "chunk: the header declares no {field}, so no chunks may follow"
                ))),
            },
        }
    }

    /// The whole message, its tensor reassembled (values are checked where they are used).
    pub fn finish(self) -> Result<H> {
        let mut header = self
            .header
            .ok_or_else(|| Error::invalid_argument("stream ended before its header"))?;
        if let Some(assembler) = self.assembler {
            *header.tensor_mut() = Some(assembler.finish(false)?);
        }
        Ok(header)
    }
}

/// Reads a whole stream of `M` with `limits`; `on_header` may refuse the header before the
/// tensor's bytes arrive.
pub async fn receive<M: StreamMessage>(
    stream: &mut tonic::Streaming<M>,
    limits: StreamLimits,
    on_header: impl FnOnce(&M::Header) -> Result<()>,
) -> std::result::Result<M::Header, tonic::Status> {
    let mut reassembly = Reassembly::new(limits);
    let mut on_header = Some(on_header);
    while let Some(message) = stream.message().await? {
        if let Some(header) = reassembly.push(message.into_part())?
            && let Some(check) = on_header.take()
        {
            check(header)?;
        }
    }
    Ok(reassembly.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuroshard_common::tensor::encode_f32;
    use neuroshard_proto::common::v1::LayerSpan;

    fn request(seq: i64) -> ForwardRequest {
        ForwardRequest {
            session_id: "s".into(),
            span: Some(LayerSpan { start: 1, end: 2 }),
            tokens: vec![],
            hidden: Some(encode_f32(
                &[1, seq, 8],
                &(0..seq * 8).map(|i| i as f32).collect::<Vec<_>>(),
            )),
            position: 3,
        }
    }

    type Parts = Vec<Option<Part<ForwardRequest>>>;

    fn parts(messages: Vec<ForwardStreamRequest>) -> Parts {
        messages.into_iter().map(StreamMessage::into_part).collect()
    }

    fn reassemble(parts: Parts) -> Result<ForwardRequest> {
        let mut r = Reassembly::new(StreamLimits::default());
        for part in parts {
            r.push(part)?;
        }
        r.finish()
    }

    fn err(result: Result<ForwardRequest>) -> String {
        let e = result.unwrap_err();
        assert_eq!(e.kind, neuroshard_common::ErrorKind::InvalidArgument, "{e}");
        e.message
    }

    #[test]
    fn split_then_reassemble_is_the_identity() {
        let original = request(10);
        let messages = split::<ForwardStreamRequest>(original.clone(), 48);
        assert_eq!(messages.len(), 1 + 7);
        let Some(Part::Header(header)) = messages[0].clone().into_part() else {
            panic!("header first")
        };
        let announced = header.hidden.unwrap();
        assert!(announced.data.is_empty() && announced.shape == vec![1, 10, 8]);
        assert_eq!(reassemble(parts(messages)).unwrap(), original);
        // Without a tensor: the header alone.
        let tokens = ForwardRequest {
            hidden: None,
            tokens: vec![1, 2, 3],
            ..request(1)
        };
        let messages = split::<ForwardStreamRequest>(tokens.clone(), 48);
        assert_eq!(messages.len(), 1);
        assert_eq!(reassemble(parts(messages)).unwrap(), tokens);
    }

    #[test]
    fn every_malformed_stream_is_refused_by_name() {
        let good = parts(split::<ForwardStreamRequest>(request(10), 48));
        let with = |edit: &dyn Fn(&mut Parts)| {
            let mut p = good.clone();
            edit(&mut p);
            reassemble(p)
        };
        assert!(err(with(&|p| p.remove(0).map_or((), drop))).contains("before the header"));
        assert!(err(with(&|p| p.insert(1, p[0].clone()))).contains("header: sent twice"));
        assert!(err(with(&|p| drop(p.remove(3)))).contains("missing chunk"));
        assert!(err(with(&|p| p.insert(3, p[2].clone()))).contains("duplicate chunk"));
        assert!(err(with(&|p| drop(p.pop()))).contains("missing chunk"));
        assert!(err(with(&|p| p.insert(2, None))).contains("neither a header nor a chunk"));
        assert!(err(with(&|p| p.truncate(0))).contains("before its header"));
        let mismatch = with(&|p| {
            if let Some(Part::Chunk(c)) = &mut p[1]
                && let Some(h) = &mut c.header
            {
                h.shape = vec![1, 8, 10];
            }
        });
        assert!(err(mismatch).contains("header mismatch"));
        let inline = with(&|p| {
            if let Some(Part::Header(h)) = &mut p[0] {
                h.hidden = request(10).hidden;
            }
        });
        assert!(err(inline).contains("header.hidden.data: must be empty"));
        let no_tensor = with(&|p| {
            if let Some(Part::Header(h)) = &mut p[0] {
                h.hidden = None;
            }
        });
        assert!(err(no_tensor).contains("declares no hidden"));

        let mut few = Reassembly::new(StreamLimits {
            max_chunks: 4,
            ..StreamLimits::default()
        });
        let e = good
            .iter()
            .try_for_each(|p| few.push(p.clone()).map(|_| ()))
            .unwrap_err();
        assert!(e.message.contains("more than 4 chunks"), "{e}");

        let mut small = Reassembly::new(StreamLimits {
            tensor: Limits {
                max_bytes: 100,
                ..Limits::default()
            },
            ..StreamLimits::default()
        });
        let e = small.push(good[0].clone()).unwrap_err();
        assert_eq!(e.kind, neuroshard_common::ErrorKind::ResourceExhausted);
        assert!(
            e.message.contains("320 bytes exceeds the limit of 100"),
            "{e}"
        );
    }
}
