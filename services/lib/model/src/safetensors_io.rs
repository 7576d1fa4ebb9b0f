//! Reading and writing safetensors files. Reading parses only the JSON header and then seeks
//! to the tensors asked for, so a shard of a large model reads only its own bytes. Writing goes
//! to a temporary file in the same directory that is renamed into place (atomic).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use tch::{Kind, Tensor};

use crate::error::{ModelError, Result};

/// Headers larger than this are refused before allocation (same bound as the reference format).
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

#[derive(Debug, Deserialize)]
struct HeaderEntry {
    dtype: String,
    shape: Vec<i64>,
    data_offsets: [u64; 2],
}

/// Where one tensor lives in the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub kind: Kind,
    pub shape: Vec<i64>,
    /// Absolute byte offset in the file.
    offset: u64,
    len: u64,
}

/// An open safetensors file whose header has been parsed and checked.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    file: File,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header: every tensor's byte range lies inside the file
    /// and matches shape × dtype.
    pub fn open(path: &Path) -> Result<Self> {
        let bad = |message: String| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let mut file = File::open(path).map_err(|e| ModelError::io(path, e))?;
        let file_len = file.metadata().map_err(|e| ModelError::io(path, e))?.len();
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes)
            .map_err(|_| bad("file is shorter than the 8-byte header length".into()))?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
            return Err(bad(format!(
                "header length {header_len} does not fit in a file of {file_len} bytes"
            )));
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header)
            .map_err(|e| ModelError::io(path, e))?;
        let raw: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&header)
            .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
        let data_start = 8 + header_len;
        let data_len = file_len - data_start;
        let mut entries = BTreeMap::new();
        for (name, value) in raw {
            if name == "__metadata__" {
                continue;
            }
            let entry: HeaderEntry = serde_json::from_value(value)
                .map_err(|e| bad(format!("header entry `{name}`: {e}")))?;
            let kind = kind_of(&entry.dtype).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                name: name.clone(),
                actual: entry.dtype.clone(),
            })?;
            let [begin, end] = entry.data_offsets;
            let numel = entry
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| {
                    u64::try_from(d).ok().and_then(|d| acc.checked_mul(d))
                })
                .ok_or_else(|| {
                    bad(format!(
                        "tensor `{name}` has an invalid shape {:?}",
                        entry.shape
                    ))
                })?;
            let expected = numel * kind.elt_size_in_bytes() as u64;
            if begin > end || end > data_len || end - begin != expected {
                return Err(bad(format!(
                    "tensor `{name}`: byte range {begin}..{end} does not hold {:?} {:?} \
                     ({expected} bytes) inside {data_len} data bytes",
                    entry.dtype, entry.shape
                )));
            }
            entries.insert(
                name,
                TensorEntry {
                    kind,
                    shape: entry.shape,
                    offset: data_start + begin,
                    len: expected,
                },
            );
        }
        Ok(Self {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn entry(&self, name: &str) -> Option<&TensorEntry> {
        self.entries.get(name)
    }

    /// Reads one tensor (on CPU, in its stored dtype).
    pub fn read(&mut self, name: &str) -> Result<Tensor> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
            })?;
        let mut bytes = vec![0u8; entry.len as usize];
        self.file
            .seek(SeekFrom::Start(entry.offset))
            .and_then(|_| self.file.read_exact(&mut bytes))
            .map_err(|e| ModelError::io(&self.path, e))?;
        Ok(Tensor::f_from_data_size(&bytes, &entry.shape, entry.kind)?)
    }
}

fn kind_of(dtype: &str) -> Option<Kind> {
    match dtype {
        "F32" => Some(Kind::Float),
        "BF16" => Some(Kind::BFloat16),
        "F16" => Some(Kind::Half),
        _ => None,
    }
}

fn dtype_of(kind: Kind) -> Result<safetensors::Dtype> {
    match kind {
        Kind::Float => Ok(safetensors::Dtype::F32),
        Kind::BFloat16 => Ok(safetensors::Dtype::BF16),
        Kind::Half => Ok(safetensors::Dtype::F16),
        other => Err(ModelError::InvalidInput(format!(
            "cannot store dtype {other:?}; use f32, bf16 or f16"
        ))),
    }
}

/// One tensor's bytes, ready for the safetensors serializer.
struct TensorBytes {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &TensorBytes {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes `tensors` to `path` atomically, with `{"format": "pt"}` metadata (which
/// `transformers` expects).
pub fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut owned = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        let cpu = tensor.to_device(tch::Device::Cpu).contiguous();
        let numel = cpu.numel();
        let mut data = vec![0u8; numel * cpu.kind().elt_size_in_bytes()];
        cpu.f_copy_data_u8(&mut data, numel)?;
        let shape = cpu.size().iter().map(|&d| d as usize).collect();
        owned.push((
            name.clone(),
            TensorBytes {
                dtype: dtype_of(cpu.kind())?,
                shape,
                data,
            },
        ));
    }
    let metadata = Some(std::collections::HashMap::from([(
        "format".to_string(),
        "pt".to_string(),
    )]));
    let bytes = safetensors::serialize(owned.iter().map(|(n, t)| (n.as_str(), t)), metadata)
        .map_err(|e| ModelError::Checkpoint {
            path: path.to_path_buf(),
            message: format!("serialising: {e}"),
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary sibling and a rename, so readers never see a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    neuroshard_common::fs::write_atomic(path, bytes).map_err(|e| ModelError::io(path, e))
}
