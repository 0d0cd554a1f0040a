//! With the `cuda` feature, compiles our CUDA kernels (`kernels/*.cu`) to PTX with nvcc
//! for `CUDA_COMPUTE_CAP` (default 90, the H100/H200): `src/cuda_kernels.rs`
//! embeds the PTX and loads it on the first launch.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=kernels");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let compute_cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = std::env::var_os("CUDA_HOME")
        .map(|home| PathBuf::from(home).join("bin").join("nvcc"))
        .filter(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("nvcc"));
    // One source file today; each further `.cu` gets its own PTX module.
    let kernels = ["transformer"];
    for kernel in kernels.iter() {
        let source = format!("kernels/{kernel}.cu");
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=sm_{compute_cap}"), "-o"])
            .arg(out.join(format!("{kernel}.ptx")))
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {} for {source}: {e}", nvcc.display()));
        assert!(status.success(), "nvcc failed on {source}");
    }
}
