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
    let device = Device::new_cuda(ordinal).with_context(|| format!("cannot open CUDA device {ordinal}"))?;
    #[cfg(feature = "cuda")]
    cuda_memory::keep_freed_memory(&device)
        .with_context(|| format!("cannot set up CUDA device {ordinal}'s memory pool"))?;
    Ok(device)
}

/// The most GPU memory the process had allocated since the last [`reset_memory_peak`]
/// (the CUDA memory pool's high-water mark), or None on the CPU.
pub fn memory_peak(device: &Device) -> Option<u64> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda_memory::used_high(dev).ok(),
        _ => None,
    }
}

/// Starts a new [`memory_peak`] measurement from what is allocated now.
pub fn reset_memory_peak(device: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(dev) = device {
        let _ = cuda_memory::reset_used_high(dev);
    }
    let _ = device;
}

#[cfg(feature = "cuda")]
mod cuda_memory {
    use candle_core::cuda_backend::cudarc::driver::{result, sys, DriverError};
    use candle_core::CudaDevice;
    use std::ffi::c_void;

    fn pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool, DriverError> {
        let stream = dev.cuda_stream();
        let context = stream.context();
        context.bind_to_thread()?;
        // SAFETY: the device handle comes from a live context.
        unsafe { result::device::get_default_mem_pool(context.cu_device()) }
    }

    /// candle allocates from the device's default pool (stream-ordered), whose release
    /// threshold is 0: memory went back to the driver at every synchronisation (every
    /// decoding step copies its logits to the host) and was requested again at the next.
    /// The pool keeps what it has instead, as mistral.rs and candle-vllm set it.
    pub fn keep_freed_memory(device: &candle_core::Device) -> Result<(), DriverError> {
        let candle_core::Device::Cuda(dev) = device else { return Ok(()) };
        let mut threshold = u64::MAX;
        // SAFETY: the attribute takes a u64 (cuuint64_t).
        unsafe {
            result::mem_pool::set_attribute(
                pool(dev)?,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut c_void,
            )
        }
    }

    pub fn used_high(dev: &CudaDevice) -> Result<u64, DriverError> {
        let mut value = 0u64;
        // SAFETY: the attribute is a u64.
        unsafe {
            result::mem_pool::get_attribute(
                pool(dev)?,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut value as *mut u64 as *mut c_void,
            )?;
        }
        Ok(value)
    }

    pub fn reset_used_high(dev: &CudaDevice) -> Result<(), DriverError> {
        let mut zero = 0u64;
        // SAFETY: setting the high-water mark to 0 resets it to the current use.
        unsafe {
            result::mem_pool::set_attribute(
                pool(dev)?,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut c_void,
            )
        }
    }
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
