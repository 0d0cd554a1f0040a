//! Choosing where the model runs (`--device`) and in which precision (`--dtype`).

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};

/// `cpu`, `cuda` or `cuda:N`. CUDA needs a build with `--features cuda`.
pub fn parse_device(spec: &str) -> Result<Device> {
    match spec {
        "cpu" => Ok(Device::Cpu),
        "cuda" => cuda(0),
        other => match other.strip_prefix("cuda:") {
            Some(n) => cuda(n.parse().with_context(|| format!("bad GPU index in {other:?}"))?),
            None => bail!("unknown device {other:?}: use cpu, cuda or cuda:N"),
        },
    }
}

fn cuda(ordinal: usize) -> Result<Device> {
    if !cfg!(feature = "cuda") {
        bail!("this borscht was built without CUDA; rebuild with `cargo build --release --features cuda`");
    }
    Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))
}

/// `f32`, `f16` or `bf16`. Half precision is for GPUs: on CPU it is slower than f32.
pub fn parse_dtype(spec: &str) -> Result<DType> {
    match spec {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => bail!("unknown dtype {other:?}: use f32, f16 or bf16"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").unwrap_err().to_string().contains("unknown device"));
        assert!(parse_device("cuda:x").is_err());
        if !cfg!(feature = "cuda") {
            assert!(parse_device("cuda").unwrap_err().to_string().contains("--features cuda"));
        }
        assert_eq!(parse_dtype("bf16").unwrap(), DType::BF16);
        assert!(parse_dtype("f64").is_err());
    }
}
