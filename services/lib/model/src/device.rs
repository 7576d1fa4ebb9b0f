//! Choosing the device and dtype at run time from user-facing names.

use tch::{Device, Kind};

use crate::error::{ModelError, Result};

/// `auto` (CUDA when available), `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "auto" => Ok(Device::cuda_if_available()),
        "cpu" => Ok(Device::Cpu),
        "cuda" => require_cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(index)) => require_cuda(index),
            _ => Err(ModelError::InvalidConfig(format!(
                "device `{other}`: use auto, cpu, cuda or cuda:N"
            ))),
        },
    }
}

fn require_cuda(index: usize) -> Result<Device> {
    let count = tch::Cuda::device_count();
    if (index as i64) < count {
        Ok(Device::Cuda(index))
    } else {
        Err(ModelError::InvalidConfig(format!(
            "device cuda:{index} requested but {count} CUDA device(s) are available"
        )))
    }
}

/// `f32`, `bf16` or `f16`.
pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name {
        "f32" | "float32" => Ok(Kind::Float),
        "bf16" | "bfloat16" => Ok(Kind::BFloat16),
        "f16" | "float16" => Ok(Kind::Half),
        other => Err(ModelError::InvalidConfig(format!(
            "dtype `{other}`: use f32, bf16 or f16"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_rejects_others() {
        assert_eq!(parse_device("cpu").unwrap(), Device::Cpu);
        assert!(parse_device("tpu").unwrap_err().to_string().contains("tpu"));
        assert_eq!(parse_dtype("bf16").unwrap(), Kind::BFloat16);
        assert!(parse_dtype("int8").is_err());
        if !tch::Cuda::is_available() {
            assert!(
                parse_device("cuda")
                    .unwrap_err()
                    .to_string()
                    .contains("0 CUDA device")
            );
        }
    }
}
