//! Our CUDA kernels (`backend/model/kernels/transformer.cu`) without a GPU:
//! - they compile to PTX with nvcc for sm_90 (a kernel that does not compile never lands);
//! - run on the CPU under `kernels/emulate.h` (every block's threads as OS threads, with
//!   barriers for `__syncthreads` and warp shuffles), with the launch shapes the Rust side
//!   uses, each kernel in f32, f16 and bf16 agrees with plain double-precision loops.
//!
//! On a GPU, `borscht device-check` compares them with candle's ops and the CPU.

use std::path::{Path, PathBuf};
use std::process::Command;

fn kernels() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("model/kernels")
}

/// `BORSCHT_NVCC` (scripts/env.sh sets it to the nvcc that scripts/install-tools.sh
/// installs), or nvcc on the PATH.
fn nvcc() -> PathBuf {
    std::env::var_os("BORSCHT_NVCC").filter(|p| !p.is_empty()).map(PathBuf::from).unwrap_or_else(|| "nvcc".into())
}

#[test]
fn the_kernels_compile_to_ptx() {
    let out = tempfile::tempdir().unwrap();
    let ptx = out.path().join("transformer.ptx");
    let status = Command::new(nvcc())
        .args(["--ptx", "-O3", "-std=c++17", "-arch=sm_90", "-o"])
        .arg(&ptx)
        .arg(kernels().join("transformer.cu"))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {:?} ({e}): run scripts/install-tools.sh, or set BORSCHT_NVCC", nvcc()));
    assert!(status.success(), "nvcc failed");
    let text = std::fs::read_to_string(&ptx).unwrap();
    // Every kernel the Rust side loads, in every dtype.
    for name in [
        "masked_softmax",
        "masked_softmax_backward",
        "residual_norm",
        "bias_gelu",
        "qkv_split",
        "layer_norm",
        "layer_norm_backward",
        "gelu",
        "gelu_backward",
    ] {
        for dtype in ["f32", "f16", "bf16"] {
            assert!(text.contains(&format!(".entry {name}_{dtype}(")), "no kernel {name}_{dtype} in the PTX");
        }
    }
}

#[test]
fn the_kernels_compute_what_they_should_on_an_emulated_gpu() {
    let out = tempfile::tempdir().unwrap();
    let binary = out.path().join("emulate_test");
    let built = Command::new("g++")
        .args(["-std=c++20", "-O1", "-pthread", "-DBORSCHT_EMULATE", "-o"])
        .arg(&binary)
        .arg(kernels().join("emulate_test.cpp"))
        .output()
        .expect("g++ runs");
    assert!(built.status.success(), "g++ failed:\n{}", String::from_utf8_lossy(&built.stderr));
    let run = Command::new(&binary).output().unwrap();
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "kernels off on the emulated GPU:\n{report}");
    // 16 checks per dtype.
    assert_eq!(report.lines().filter(|l| l.starts_with("ok ")).count(), 48, "{report}");
}
