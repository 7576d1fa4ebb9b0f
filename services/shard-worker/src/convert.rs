//! Wire tensors ↔ tch tensors, at the edge of the worker. Wire-side checks (length, limits,
//! finiteness) come from `neuroshard_common::tensor`; this only maps dtypes and copies bytes.

use neuroshard_common::tensor::{Limits, check};
use neuroshard_common::{Error, Result};
use neuroshard_model::tch::{Device, Kind, Tensor};
use neuroshard_proto::common::v1::{Dtype, Tensor as WireTensor};

fn kind_of(dtype: Dtype, field: &str) -> Result<Kind> {
    match dtype {
        Dtype::F32 => Ok(Kind::Float),
        Dtype::Bf16 => Ok(Kind::BFloat16),
        Dtype::F16 => Ok(Kind::Half),
        other => Err(Error::invalid_argument(format!(
            "{field}.dtype: {other:?} is not a floating type"
        ))),
    }
}

/// A checked, finite floating wire tensor as a CPU tch tensor.
pub fn from_wire(tensor: &WireTensor, field: &str, limits: &Limits) -> Result<Tensor> {
    let dtype = check(tensor, field, limits, true)?;
    let kind = kind_of(dtype, field)?;
    Tensor::f_from_data_size(&tensor.data, &tensor.shape, kind)
        .map_err(|e| Error::invalid_argument(format!("{field}: {e}")))
}

/// A floating tch tensor as a wire tensor.
pub fn to_wire(tensor: &Tensor) -> Result<WireTensor> {
    let dtype = match tensor.kind() {
        Kind::Float => Dtype::F32,
        Kind::BFloat16 => Dtype::Bf16,
        Kind::Half => Dtype::F16,
        other => return Err(Error::internal(format!("cannot send dtype {other:?}"))),
    };
    let cpu = tensor.to_device(Device::Cpu).contiguous();
    let numel = cpu.numel();
    let mut data = vec![0u8; numel * cpu.kind().elt_size_in_bytes()];
    cpu.f_copy_data_u8(&mut data, numel)
        .map_err(|e| Error::internal(e.to_string()))?;
    Ok(WireTensor {
        block_size: 0,
        dtype: dtype as i32,
        shape: cpu.size(),
        data,
    })
}
