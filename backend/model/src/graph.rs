//! CUDA graphs: a decoding step recorded once and replayed as one launch.
//!
//! A 350M decoding step is some 300 kernel launches whose arithmetic takes a fraction of
//! the time the host needs to issue them; a replayed graph issues them all at once. What
//! is captured must keep every shape and address from step to step: the static KV cache
//! and step position of [`crate::transformer::Rudolph::forward_step`] give it that.
//!
//! On the CPU, in a build without CUDA, or with `BORSCHT_CUDA_GRAPHS=0`, [`capture`]
//! captures nothing and the caller runs its step eagerly.

use candle_core::{Device, Result, Tensor};
use std::sync::atomic::{AtomicU8, Ordering};

/// 0: not read yet, 1: on, 2: off.
static GRAPHS: AtomicU8 = AtomicU8::new(0);

/// Whether decoding steps are captured as CUDA graphs (default on;
/// `BORSCHT_CUDA_GRAPHS=0` turns them off, to compare with eager steps).
pub fn graphs_enabled() -> bool {
    match GRAPHS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("BORSCHT_CUDA_GRAPHS").map_or(true, |v| v != "0");
            GRAPHS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
        state => state == 1,
    }
}

/// Turns graph capture on or off for the whole process (`device-check` compares both).
pub fn set_graphs_enabled(on: bool) {
    GRAPHS.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// A captured step, replayed by [`StepGraph::launch`]; it writes into the output tensor
/// that [`capture`] returned with it.
pub struct StepGraph {
    #[cfg(feature = "cuda")]
    graph: cuda::Graph,
    #[cfg(not(feature = "cuda"))]
    _never: std::convert::Infallible,
}

impl StepGraph {
    pub fn launch(&self) -> Result<()> {
        #[cfg(feature = "cuda")]
        return self.graph.launch();
        #[cfg(not(feature = "cuda"))]
        match self._never {}
    }
}

impl std::fmt::Debug for StepGraph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StepGraph")
    }
}

/// Records `step` (which must issue GPU work only: no copies to or from the host, no
/// frees of memory made before the capture) as a graph on `device`'s stream, and returns
/// the graph with the tensor `step` produced (its memory is the graph's output).
/// Returns `None` where graphs are not used: the caller then runs `step` eagerly.
pub fn capture(device: &Device, step: impl FnOnce() -> Result<Tensor>) -> Result<Option<(StepGraph, Tensor)>> {
    if !graphs_enabled() {
        return Ok(None);
    }
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => cuda::capture(dev, step).map(|c| c.map(|(graph, out)| (StepGraph { graph }, out))),
        _ => {
            let _ = step;
            Ok(None)
        }
    }
}

/// Runs `f` with candle's cache of small host-to-device uploads (kernel dims and strides)
/// on, as warm-up and capture need: inside a graph every upload must come from it.
pub fn with_upload_cache<T>(device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match device {
        #[cfg(feature = "cuda")]
        Device::Cuda(dev) => {
            let _guard = dev.enable_cuda_graph_htod_cache();
            f()
        }
        _ => f(),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::cuda_backend::cudarc::driver::{sys, CudaGraph};
    use candle_core::cuda_backend::WrapErr;
    use candle_core::{CudaDevice, Result, Tensor};

    /// cudarc's graph holds raw driver handles (neither Send nor Sync). Ours is used by
    /// one thread at a time: the engine keeps it behind a mutex.
    pub struct Graph(CudaGraph);

    // SAFETY: a CUDA graph may be launched from any thread as long as calls on it are
    // serialised, which the owner's mutex does.
    unsafe impl Send for Graph {}

    impl Graph {
        pub fn launch(&self) -> Result<()> {
            self.0.launch().w()
        }
    }

    pub fn capture(dev: &CudaDevice, step: impl FnOnce() -> Result<Tensor>) -> Result<Option<(Graph, Tensor)>> {
        let stream = dev.cuda_stream();
        let _uploads = dev.enable_cuda_graph_htod_cache();
        stream.synchronize().w()?;
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).w()?;
        let output = step();
        // The capture must end whatever the step did, or the stream stays unusable.
        let graph = stream.end_capture(sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        let output = output?;
        let Some(graph) = graph.w()? else { return Ok(None) };
        graph.upload().w()?;
        Ok(Some((Graph(graph), output)))
    }
}
