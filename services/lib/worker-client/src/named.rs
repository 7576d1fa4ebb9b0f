//! Named tensors streamed in chunks (`neuroshard.trainer.v1.NamedTensorChunk`: a stage's
//! weights, AdamW moments or pseudo-gradient), reassembled by name with the tensor codec's
//! limits.

use std::collections::BTreeMap;

use neuroshard_common::tensor::{ChunkAssembler, Limits};
use neuroshard_common::{Error, Result};
use neuroshard_proto::common::v1::Tensor as WireTensor;
use neuroshard_proto::trainer::v1::NamedTensorChunk;

/// Every tensor of `stream`, by name. A chunk before any name, a name given twice, a broken
/// stream or a tensor that breaks `limits` is an error naming it.
pub async fn collect_named(
    mut stream: tonic::Streaming<NamedTensorChunk>,
    limits: Limits,
) -> Result<BTreeMap<String, WireTensor>> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, ChunkAssembler)> = None;
    let finish = |current: Option<(String, ChunkAssembler)>,
                  out: &mut BTreeMap<String, WireTensor>|
     -> Result<()> {
        if let Some((name, assembler)) = current {
            let tensor = assembler.finish(false)?;
            if out.insert(name.clone(), tensor).is_some() {
                return Err(Error::invalid_argument(format!("{name}: sent twice")));
            }
        }
        Ok(())
    };
    while let Some(piece) = stream.message().await.map_err(|s| {
        Error::new(
            neuroshard_common::ErrorKind::Unavailable,
            format!("named tensor stream: {}", s.message()),
        )
    })? {
        if !piece.name.is_empty() {
            finish(current.take(), &mut out)?;
            current = Some((piece.name.clone(), ChunkAssembler::new(piece.name, limits)));
        }
        let (_, assembler) = current
            .as_mut()
            .ok_or_else(|| Error::invalid_argument("a chunk came before any tensor's name"))?;
        let chunk = piece
            .chunk
            .ok_or_else(|| Error::invalid_argument("a named chunk without its chunk"))?;
        assembler.push(chunk)?;
    }
    finish(current, &mut out)?;
    Ok(out)
}
