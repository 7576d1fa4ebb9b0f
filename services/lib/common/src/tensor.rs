//! Tensors on the wire: `{dtype, shape, data}` little-endian, an int8 form with per-block f32
//! scales for pseudo-gradients, and chunking for large tensors. Every decoder checks that
//! shape × dtype equals the byte length, that sizes stay within limits, and (where asked)
//! that values are finite; a bad tensor is `InvalidArgument` naming the field. This crate has
//! no libtorch: tensors cross into tch only inside the services that need it.

use half::{bf16, f16};
use neuroshard_proto::common::v1::{Dtype, QuantizedTensor, Tensor as WireTensor, TensorChunk};

use crate::error::{Error, Result};

/// Bounds a decoder enforces before allocating or trusting anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_dims: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_bytes: 256 * 1024 * 1024,
            max_dims: 8,
        }
    }
}

/// Bytes per element of `dtype` (none for int8 blocks, whose scales add bytes per block).
pub fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::Bf16 | Dtype::F16 => Some(2),
        Dtype::I64 => Some(8),
        Dtype::Int8Block | Dtype::Unspecified => None,
    }
}

/// Bytes `count` elements of `header`'s dtype take on the wire: for int8 blocks, one f32
/// scale per block then one byte per value. Refuses a block size on a dtype without blocks,
/// and int8 blocks without one.
fn data_len(header: &WireTensor, dtype: Dtype, count: usize, field: &str) -> Result<usize> {
    let overflow =
        || Error::invalid_argument(format!("{field}.shape: {:?} overflows", header.shape));
    match (dtype, header.block_size) {
        (Dtype::Int8Block, 0) => Err(Error::invalid_argument(format!(
            "{field}.block_size: int8 blocks need a positive block size"
        ))),
        (Dtype::Int8Block, block) => count
            .div_ceil(block as usize)
            .checked_mul(4)
            .and_then(|scales| scales.checked_add(count))
            .ok_or_else(overflow),
        (_, 0) => count
            .checked_mul(element_size(dtype).unwrap_or(1))
            .ok_or_else(overflow),
        (_, block) => Err(Error::invalid_argument(format!(
            "{field}.block_size: {block} given for {dtype:?}, which has no blocks"
        ))),
    }
}

fn dtype_of(raw: i32, field: &str) -> Result<Dtype> {
    match Dtype::try_from(raw) {
        Ok(Dtype::Unspecified) | Err(_) => Err(Error::invalid_argument(format!(
            "{field}.dtype: {raw} is not a known dtype"
        ))),
        Ok(dtype) => Ok(dtype),
    }
}

/// Number of elements of `shape`, checked: no negative dims, no overflow, at most `max_dims`.
pub fn numel(shape: &[i64], field: &str, limits: &Limits) -> Result<usize> {
    if shape.len() > limits.max_dims {
        return Err(Error::invalid_argument(format!(
            "{field}.shape: {} dimensions, at most {} allowed",
            shape.len(),
            limits.max_dims
        )));
    }
    shape.iter().try_fold(1usize, |acc, &d| {
        let d = usize::try_from(d).map_err(|_| {
            Error::invalid_argument(format!("{field}.shape: negative dimension in {shape:?}"))
        })?;
        acc.checked_mul(d)
            .ok_or_else(|| Error::invalid_argument(format!("{field}.shape: {shape:?} overflows")))
    })
}

/// Checks a dense tensor's header against its bytes and the limits; with `finite`, also that
/// every floating value is finite (no NaN or infinity).
pub fn check(tensor: &WireTensor, field: &str, limits: &Limits, finite: bool) -> Result<Dtype> {
    let dtype = dtype_of(tensor.dtype, field)?;
    let count = numel(&tensor.shape, field, limits)?;
    let expected = data_len(tensor, dtype, count, field)?;
    if expected > limits.max_bytes {
        return Err(Error::new(
            crate::error::ErrorKind::ResourceExhausted,
            format!(
                "{field}: {expected} bytes exceeds the limit of {} bytes",
                limits.max_bytes
            ),
        ));
    }
    if tensor.data.len() != expected {
        return Err(Error::invalid_argument(format!(
            "{field}.data: {} bytes, but {:?} {:?} needs {expected}",
            tensor.data.len(),
            dtype,
            tensor.shape
        )));
    }
    if dtype == Dtype::Int8Block {
        // The scales are the only floats; a negative one would flip a block's sign unseen.
        let scales = count.div_ceil(tensor.block_size as usize);
        if let Some(i) = tensor.data[..scales * 4]
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .position(|s| !s.is_finite() || s < 0.0)
        {
            return Err(Error::invalid_argument(format!(
                "{field}: scale {i} is negative, NaN or infinite"
            )));
        }
    } else if finite && let Some(index) = first_non_finite(dtype, &tensor.data) {
        return Err(Error::invalid_argument(format!(
            "{field}: element {index} is NaN or infinite"
        )));
    }
    Ok(dtype)
}

fn first_non_finite(dtype: Dtype, data: &[u8]) -> Option<usize> {
    match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite()),
        Dtype::Bf16 => data
            .chunks_exact(2)
            .position(|c| !bf16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::F16 => data
            .chunks_exact(2)
            .position(|c| !f16::from_le_bytes([c[0], c[1]]).is_finite()),
        Dtype::I64 | Dtype::Int8Block | Dtype::Unspecified => None,
    }
}

/// Encodes f32 values of `shape` as a dense f32 tensor.
pub fn encode_f32(shape: &[i64], values: &[f32]) -> WireTensor {
    WireTensor {
        dtype: Dtype::F32 as i32,
        shape: shape.to_vec(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        block_size: 0,
    }
}

/// Decodes a checked floating tensor (f32, bf16 or f16) to f32 values.
pub fn decode_f32(tensor: &WireTensor, field: &str, limits: &Limits) -> Result<Vec<f32>> {
    let dtype = check(tensor, field, limits, true)?;
    let data = &tensor.data;
    Ok(match dtype {
        Dtype::F32 => data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::Bf16 => data
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F16 => data
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::Int8Block => {
            let block = tensor.block_size as usize;
            let count = numel(&tensor.shape, field, limits)?;
            let (scales, values) = data.split_at(data.len() - count);
            let scales: Vec<f32> = scales
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            values
                .iter()
                .enumerate()
                .map(|(i, &v)| f32::from(v as i8) * scales[i / block])
                .collect()
        }
        Dtype::I64 | Dtype::Unspecified => {
            return Err(Error::invalid_argument(format!(
                "{field}.dtype: {dtype:?} is not a floating type"
            )));
        }
    })
}

/// `values` of `shape` int8 block-quantised (see [`quantize_int8`]) as a wire tensor of dtype
/// `INT8_BLOCK`: the scales, then the values.
pub fn encode_int8_block(shape: &[i64], values: &[f32], block_size: u32) -> Result<WireTensor> {
    let q = quantize_int8(shape, values, block_size)?;
    let mut data = Vec::with_capacity(q.scales.len() * 4 + q.values.len());
    data.extend(q.scales.iter().flat_map(|s| s.to_le_bytes()));
    data.extend_from_slice(&q.values);
    Ok(WireTensor {
        dtype: Dtype::Int8Block as i32,
        shape: shape.to_vec(),
        data,
        block_size,
    })
}

/// SHA-256 over named tensors as sent: what a signed header commits to. Each tensor adds its
/// name, dtype, block size, shape and data, every variable-length part length-prefixed, so no
/// two different sequences of tensors hash alike.
#[derive(Debug, Clone, Default)]
pub struct Commitment(sha2::Sha256);

impl Commitment {
    pub fn add(&mut self, name: &str, tensor: &WireTensor) {
        use sha2::Digest;
        let h = &mut self.0;
        h.update((name.len() as u64).to_be_bytes());
        h.update(name.as_bytes());
        h.update(tensor.dtype.to_be_bytes());
        h.update(tensor.block_size.to_be_bytes());
        h.update((tensor.shape.len() as u64).to_be_bytes());
        for d in &tensor.shape {
            h.update(d.to_be_bytes());
        }
        h.update((tensor.data.len() as u64).to_be_bytes());
        h.update(&tensor.data);
    }

    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest;
        self.0.finalize().into()
    }
}

/// Int8 quantisation with one scale per `block_size` elements: scale = max|x| / 127.
pub fn quantize_int8(shape: &[i64], values: &[f32], block_size: u32) -> Result<QuantizedTensor> {
    if block_size == 0 {
        return Err(Error::invalid_argument("block_size must be positive"));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::invalid_argument(format!(
            "values: element {i} is NaN or infinite"
        )));
    }
    let mut quantized = Vec::with_capacity(values.len());
    let mut scales = Vec::with_capacity(values.len().div_ceil(block_size as usize));
    for block in values.chunks(block_size as usize) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let scale = if max > 0.0 { max / 127.0 } else { 0.0 };
        scales.push(scale);
        quantized.extend(block.iter().map(|v| {
            let q = if scale > 0.0 {
                (v / scale).round().clamp(-127.0, 127.0)
            } else {
                0.0
            };
            (q as i8) as u8
        }));
    }
    Ok(QuantizedTensor {
        shape: shape.to_vec(),
        block_size,
        values: quantized,
        scales,
    })
}

/// Dequantises a checked int8 tensor to f32.
pub fn dequantize_int8(q: &QuantizedTensor, field: &str, limits: &Limits) -> Result<Vec<f32>> {
    let count = numel(&q.shape, field, limits)?;
    if count.saturating_mul(4) > limits.max_bytes {
        return Err(Error::new(
            crate::error::ErrorKind::ResourceExhausted,
            format!(
                "{field}: {count} elements exceed the limit of {} bytes as f32",
                limits.max_bytes
            ),
        ));
    }
    if q.block_size == 0 {
        return Err(Error::invalid_argument(format!(
            "{field}.block_size: must be positive"
        )));
    }
    if q.values.len() != count {
        return Err(Error::invalid_argument(format!(
            "{field}.values: {} bytes, but shape {:?} has {count} elements",
            q.values.len(),
            q.shape
        )));
    }
    let blocks = count.div_ceil(q.block_size as usize);
    if q.scales.len() != blocks {
        return Err(Error::invalid_argument(format!(
            "{field}.scales: {} scales, but {count} elements in blocks of {} need {blocks}",
            q.scales.len(),
            q.block_size
        )));
    }
    if let Some(i) = q.scales.iter().position(|s| !s.is_finite() || *s < 0.0) {
        return Err(Error::invalid_argument(format!(
            "{field}.scales: scale {i} is negative, NaN or infinite"
        )));
    }
    Ok(q.values
        .iter()
        .enumerate()
        .map(|(i, &v)| f32::from(v as i8) * q.scales[i / q.block_size as usize])
        .collect())
}

/// Splits a tensor into chunks of at most `chunk_bytes` data bytes; the first carries the header.
pub fn chunk(tensor: &WireTensor, chunk_bytes: usize) -> Vec<TensorChunk> {
    let header = WireTensor {
        dtype: tensor.dtype,
        shape: tensor.shape.clone(),
        data: Vec::new(),
        block_size: tensor.block_size,
    };
    let mut chunks: Vec<TensorChunk> = tensor
        .data
        .chunks(chunk_bytes.max(1))
        .scan(0u64, |offset, piece| {
            let chunk = TensorChunk {
                header: None,
                offset: *offset,
                data: piece.to_vec(),
            };
            *offset += piece.len() as u64;
            Some(chunk)
        })
        .collect();
    match chunks.first_mut() {
        Some(first) => first.header = Some(header),
        None => chunks.push(TensorChunk {
            header: Some(header),
            offset: 0,
            data: Vec::new(),
        }),
    }
    chunks
}

/// Chunks one stream may carry unless told otherwise: with 1 MiB chunks, far more than the
/// byte limit allows; with tiny chunks, a stop to per-message overhead.
pub const DEFAULT_MAX_CHUNKS: usize = 16_384;

/// Reassembles chunks arriving in order, refusing gaps, repeats, a header that contradicts the
/// announced one, too many chunks and oversize streams before they are buffered.
#[derive(Debug)]
pub struct ChunkAssembler {
    field: String,
    limits: Limits,
    max_chunks: usize,
    /// dtype and shape announced before the chunks (by a stream's header message), if any.
    announced: Option<WireTensor>,
    tensor: Option<WireTensor>,
    expected_bytes: usize,
    chunks: usize,
}

impl ChunkAssembler {
    pub fn new(field: impl Into<String>, limits: Limits) -> Self {
        Self {
            field: field.into(),
            limits,
            max_chunks: DEFAULT_MAX_CHUNKS,
            announced: None,
            tensor: None,
            expected_bytes: 0,
            chunks: 0,
        }
    }

    /// Refuses the stream past `max_chunks` chunks.
    pub fn with_max_chunks(mut self, max_chunks: usize) -> Self {
        self.max_chunks = max_chunks;
        self
    }

    /// The tensor's dtype and shape are already known (its data is ignored): the first
    /// chunk's header must repeat them, and the size limit is checked now.
    pub fn announced(mut self, header: &WireTensor) -> Result<Self> {
        let header = WireTensor {
            data: Vec::new(),
            ..header.clone()
        };
        self.expected_bytes = self.checked_bytes(&header)?;
        self.announced = Some(header);
        Ok(self)
    }

    fn checked_bytes(&self, header: &WireTensor) -> Result<usize> {
        let field = &self.field;
        let dtype = dtype_of(header.dtype, field)?;
        let count = numel(&header.shape, field, &self.limits)?;
        let bytes = data_len(header, dtype, count, field)?;
        if bytes > self.limits.max_bytes {
            return Err(Error::new(
                crate::error::ErrorKind::ResourceExhausted,
                format!(
                    "{field}: {bytes} bytes exceeds the limit of {} bytes",
                    self.limits.max_bytes
                ),
            ));
        }
        Ok(bytes)
    }

    pub fn push(&mut self, chunk: TensorChunk) -> Result<()> {
        self.chunks += 1;
        if self.chunks > self.max_chunks {
            return Err(Error::invalid_argument(format!(
                "{}: more than {} chunks",
                self.field, self.max_chunks
            )));
        }
        match (&self.tensor, chunk.header) {
            (None, Some(header)) => {
                if let Some(announced) = &self.announced
                    && (announced.dtype != header.dtype
                        || announced.shape != header.shape
                        || announced.block_size != header.block_size)
                {
                    return Err(Error::invalid_argument(format!(
                        "{}: header mismatch: the chunks declare dtype {} shape {:?}, the request announced dtype {} shape {:?}",
                        self.field, header.dtype, header.shape, announced.dtype, announced.shape
                    )));
                }
                self.expected_bytes = self.checked_bytes(&header)?;
                self.tensor = Some(WireTensor {
                    data: Vec::with_capacity(self.expected_bytes),
                    ..header
                });
            }
            (None, None) => {
                return Err(Error::invalid_argument(format!(
                    "{}: first chunk has no header",
                    self.field
                )));
            }
            (Some(_), Some(_)) => {
                return Err(Error::invalid_argument(format!(
                    "{}: header repeated in a later chunk",
                    self.field
                )));
            }
            (Some(_), None) => {}
        }
        let field = &self.field;
        let tensor = self
            .tensor
            .as_mut()
            .ok_or_else(|| Error::internal("chunk state"))?;
        let received = tensor.data.len() as u64;
        if chunk.offset < received {
            return Err(Error::invalid_argument(format!(
                "{field}: chunk at offset {}, expected {received}: it repeats bytes already received (duplicate chunk)",
                chunk.offset
            )));
        }
        if chunk.offset > received {
            return Err(Error::invalid_argument(format!(
                "{field}: chunk at offset {}, expected {received}: bytes [{received}, {}) are missing (missing chunk)",
                chunk.offset, chunk.offset
            )));
        }
        if tensor.data.len() + chunk.data.len() > self.expected_bytes {
            return Err(Error::invalid_argument(format!(
                "{field}: chunks carry more than the {} bytes the header announces",
                self.expected_bytes
            )));
        }
        tensor.data.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The whole tensor, checked (finite values when `finite`).
    pub fn finish(self, finite: bool) -> Result<WireTensor> {
        let tensor = self.tensor.ok_or_else(|| {
            Error::invalid_argument(format!("{}: no chunks received", self.field))
        })?;
        if tensor.data.len() < self.expected_bytes {
            return Err(Error::invalid_argument(format!(
                "{}: stream ended after {} of {} bytes (missing chunk)",
                self.field,
                tensor.data.len(),
                self.expected_bytes
            )));
        }
        check(&tensor, &self.field, &self.limits, finite)?;
        Ok(tensor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    #[test]
    fn f32_round_trip_and_length_check() {
        let t = encode_f32(&[2, 3], &[1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]);
        assert_eq!(
            decode_f32(&t, "hidden", &limits()).unwrap(),
            vec![1.0, -2.0, 3.5, 0.0, 1e-3, 7.0]
        );
        let mut short = t.clone();
        short.data.pop();
        let err = decode_f32(&short, "hidden", &limits())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("hidden.data: 23 bytes") && err.contains("needs 24"),
            "{err}"
        );
    }

    #[test]
    fn bf16_and_f16_decode_to_f32() {
        for (dtype, bytes) in [
            (Dtype::Bf16, bf16::from_f32(1.5).to_le_bytes()),
            (Dtype::F16, f16::from_f32(1.5).to_le_bytes()),
        ] {
            let t = WireTensor {
                block_size: 0,
                dtype: dtype as i32,
                shape: vec![1],
                data: bytes.to_vec(),
            };
            assert_eq!(decode_f32(&t, "x", &limits()).unwrap(), vec![1.5]);
        }
    }

    #[test]
    fn malformed_headers_are_named() {
        let mut t = encode_f32(&[2], &[1.0, 2.0]);
        t.dtype = 42;
        assert!(
            decode_f32(&t, "hidden", &limits())
                .unwrap_err()
                .to_string()
                .contains("hidden.dtype: 42")
        );
        let t = WireTensor {
            block_size: 0,
            dtype: Dtype::F32 as i32,
            shape: vec![-1, 4],
            data: vec![],
        };
        assert!(
            check(&t, "hidden", &limits(), false)
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        let t = WireTensor {
            block_size: 0,
            dtype: Dtype::F32 as i32,
            shape: vec![i64::MAX, i64::MAX],
            data: vec![],
        };
        assert!(
            check(&t, "hidden", &limits(), false)
                .unwrap_err()
                .to_string()
                .contains("overflows")
        );
        let t = WireTensor {
            block_size: 0,
            dtype: Dtype::F32 as i32,
            shape: vec![1024, 1024, 1024],
            data: vec![],
        };
        let err = check(&t, "hidden", &limits(), false).unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::ResourceExhausted);
    }

    #[test]
    fn nan_and_infinity_are_refused_where_it_matters() {
        let t = encode_f32(&[3], &[1.0, f32::NAN, 2.0]);
        let err = decode_f32(&t, "delta", &limits()).unwrap_err().to_string();
        assert!(err.contains("delta: element 1 is NaN"), "{err}");
        let t = encode_f32(&[1], &[f32::INFINITY]);
        assert!(check(&t, "delta", &limits(), true).is_err());
        assert!(check(&t, "delta", &limits(), false).is_ok());
        assert!(quantize_int8(&[2], &[0.0, f32::NAN], 4).is_err());
    }

    #[test]
    fn int8_checks_lengths_and_scales() {
        let q = quantize_int8(&[5], &[1.0, -1.0, 0.5, 0.25, 3.0], 2).unwrap();
        assert_eq!(q.scales.len(), 3);
        let mut bad = q.clone();
        bad.scales.pop();
        assert!(
            dequantize_int8(&bad, "delta", &limits())
                .unwrap_err()
                .to_string()
                .contains("need 3")
        );
        let mut bad = q.clone();
        bad.scales[0] = f32::NAN;
        assert!(
            dequantize_int8(&bad, "delta", &limits())
                .unwrap_err()
                .to_string()
                .contains("scale 0")
        );
        let mut bad = q;
        bad.values.push(0);
        assert!(
            dequantize_int8(&bad, "delta", &limits())
                .unwrap_err()
                .to_string()
                .contains("delta.values")
        );
    }

    #[test]
    fn chunks_reassemble_and_refuse_gaps() {
        let t = encode_f32(&[100], &(0..100).map(|i| i as f32).collect::<Vec<_>>());
        let chunks = chunk(&t, 64);
        assert_eq!(chunks.len(), 7);
        let mut asm = ChunkAssembler::new("hidden", limits());
        for c in chunks.clone() {
            asm.push(c).unwrap();
        }
        assert_eq!(asm.finish(true).unwrap(), t);
        let mut asm = ChunkAssembler::new("hidden", limits());
        asm.push(chunks[0].clone()).unwrap();
        let err = asm.push(chunks[2].clone()).unwrap_err().to_string();
        assert!(err.contains("offset 128, expected 64"), "{err}");
        let mut asm = ChunkAssembler::new("hidden", limits());
        assert!(
            asm.push(chunks[1].clone())
                .unwrap_err()
                .to_string()
                .contains("no header")
        );
        let mut asm = ChunkAssembler::new("hidden", limits());
        asm.push(chunks[0].clone()).unwrap();
        let err = asm.finish(true).unwrap_err().to_string();
        assert!(
            err.contains("after 64 of 400 bytes (missing chunk)"),
            "{err}"
        );
    }

    #[test]
    fn chunks_refuse_repeats_mismatched_headers_and_too_many_pieces() {
        let t = encode_f32(&[100], &(0..100).map(|i| i as f32).collect::<Vec<_>>());
        let chunks = chunk(&t, 64);
        let mut asm = ChunkAssembler::new("hidden", limits());
        asm.push(chunks[0].clone()).unwrap();
        asm.push(chunks[1].clone()).unwrap();
        let err = asm.push(chunks[1].clone()).unwrap_err().to_string();
        assert!(err.contains("duplicate chunk"), "{err}");
        let err = asm.push(chunks[0].clone()).unwrap_err().to_string();
        assert!(err.contains("header repeated"), "{err}");

        let other = encode_f32(&[10, 10], &[0.0; 100]);
        let mut asm = ChunkAssembler::new("hidden", limits())
            .announced(&other)
            .unwrap();
        let err = asm.push(chunks[0].clone()).unwrap_err().to_string();
        assert!(
            err.contains("hidden: header mismatch") && err.contains("[10, 10]"),
            "{err}"
        );
        let mut asm = ChunkAssembler::new("hidden", limits())
            .announced(&t)
            .unwrap();
        for c in chunks.clone() {
            asm.push(c).unwrap();
        }
        assert_eq!(asm.finish(true).unwrap(), t);

        let mut asm = ChunkAssembler::new("hidden", limits()).with_max_chunks(3);
        for c in &chunks[..3] {
            asm.push(c.clone()).unwrap();
        }
        let err = asm.push(chunks[3].clone()).unwrap_err().to_string();
        assert!(err.contains("more than 3 chunks"), "{err}");

        let huge = WireTensor {
            block_size: 0,
            dtype: Dtype::F32 as i32,
            shape: vec![1 << 20, 1 << 10],
            data: Vec::new(),
        };
        let err = ChunkAssembler::new("hidden", limits())
            .announced(&huge)
            .unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::ResourceExhausted);
    }

    proptest! {
        #[test]
        fn int8_error_is_within_half_a_step(values in prop::collection::vec(-100.0f32..100.0, 1..300), block in 1u32..64) {
            let q = quantize_int8(&[values.len() as i64], &values, block).unwrap();
            let back = dequantize_int8(&q, "delta", &limits()).unwrap();
            for (i, (a, b)) in values.iter().zip(&back).enumerate() {
                let scale = q.scales[i / block as usize];
                // A value exactly half a step from two levels rounds either way, and `v / scale`
                // and `q * scale` each round once more: allow a few ulps of `a` on top.
                let rounding = a.abs() * 4.0 * f32::EPSILON + 1e-6;
                prop_assert!((a - b).abs() <= scale * 0.5 + rounding, "{a} vs {b} (scale {scale})");
            }
        }

        #[test]
        fn chunking_round_trips(n in 0usize..500, chunk_bytes in 1usize..300) {
            let t = encode_f32(&[n as i64], &(0..n).map(|i| i as f32 * 0.5).collect::<Vec<_>>());
            let mut asm = ChunkAssembler::new("t", limits());
            for c in chunk(&t, chunk_bytes) {
                asm.push(c).unwrap();
            }
            prop_assert_eq!(asm.finish(true).unwrap(), t);
        }
    }
}
