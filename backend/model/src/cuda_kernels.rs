//! Launching our CUDA kernels (`backend/model/kernels/transformer.cu`, built to PTX by
//! `build.rs` with the `cuda` feature). The ops in [`crate::fused`] call these from
//! their `cuda_fwd`; nothing else does.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Result, Shape, Storage, StorageRef, Tensor};

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/transformer.ptx"));
const MODULE: &str = "borscht_transformer";

/// The kernel `name` for `dtype` (each kernel exists as `name_f32`, `name_f16`, `name_bf16`).
fn function(dev: &CudaDevice, name: &str, dtype: DType) -> Result<CudaFunction> {
    let suffix = match dtype {
        DType::F32 => "f32",
        DType::F16 => "f16",
        DType::BF16 => "bf16",
        other => candle_core::bail!("{name}: no CUDA kernel for {other:?}"),
    };
    Ok(dev.get_or_load_custom_func(&format!("{name}_{suffix}"), MODULE, PTX)?.into_cuda_function())
}

/// Runs `$body` with `$t` bound to the Rust type of `$dtype`.
macro_rules! with_float_type {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            DType::F32 => {
                type $t = f32;
                $body
            }
            DType::F16 => {
                type $t = half::f16;
                $body
            }
            DType::BF16 => {
                type $t = half::bf16;
                $body
            }
            other => candle_core::bail!("no CUDA kernel for {other:?}"),
        }
    };
}

/// The contiguous elements of `storage` under `layout`.
fn view<'a, T: CudaDType + DeviceRepr>(
    storage: &'a CudaStorage,
    layout: &Layout,
    what: &str,
) -> Result<CudaView<'a, T>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(storage.as_cuda_slice::<T>()?.slice(start..end)),
        None => candle_core::bail!("{what} expects a contiguous input"),
    }
}

/// A tensor the op holds besides its inputs (bias, norm weights, the KV cache), read
/// through candle's storage lock for the duration of a launch.
struct Held<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    fn new(tensor: &'a Tensor) -> Self {
        let (storage, layout) = tensor.storage_and_layout();
        Held { storage, layout }
    }

    fn view<T: CudaDType + DeviceRepr>(&self, what: &str) -> Result<CudaView<'_, T>> {
        match &*self.storage {
            Storage::Cuda(s) => view(s, self.layout, what),
            _ => candle_core::bail!("{what}: every tensor must be on the GPU"),
        }
    }
}

/// Threads for one row of `len` values: whole warps, at most 256.
fn row_threads(len: usize) -> u32 {
    (len.div_ceil(32) * 32).clamp(32, 256) as u32
}

/// Blocks of 256 threads for an element-wise kernel over `elements` (grid-stride loops).
fn element_config(elements: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (elements.div_ceil(256).clamp(1, 65_535) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A null device pointer for an absent optional input.
const NULL: u64 = 0;

fn output<T: CudaDType + DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every element is written by the kernel that follows.
    unsafe { dev.alloc::<T>(len) }
}

/// `(b, h, n, t, mb)` as i32 kernel arguments.
fn dims_i32(dims: [usize; 4]) -> [i32; 4] {
    dims.map(|d| d as i32)
}

/// Masked softmax forward: `[b, h, n, t]` scores with a `[mb, 1, n, t]` mask.
pub(crate) fn masked_softmax(
    scores: &CudaStorage,
    scores_layout: &Layout,
    mask: &CudaStorage,
    mask_layout: &Layout,
    (b, h, n, t, mb): (usize, usize, usize, usize, usize),
) -> Result<(CudaStorage, Shape)> {
    let dev = scores.device();
    let dtype = scores.dtype();
    with_float_type!(dtype, T => {
        let s = view::<T>(scores, scores_layout, "masked softmax")?;
        let m = view::<T>(mask, mask_layout, "masked softmax")?;
        let out = output::<T>(dev, b * h * n * t)?;
        let func = function(dev, "masked_softmax", dtype)?;
        let [t, h, n, mb] = dims_i32([t, h, n, mb]);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&s).arg(&m).arg(&out).arg(&t).arg(&h).arg(&n).arg(&mb);
        let config = LaunchConfig { grid_dim: ((b * h as usize * n as usize) as u32, 1, 1), block_dim: (row_threads(t as usize), 1, 1), shared_mem_bytes: 0 };
        // SAFETY: the kernel reads b*h*n rows of t and writes as many.
        unsafe { builder.launch(config) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), scores_layout.shape().clone()))
    })
}

/// Masked softmax backward: `m * p * (g - sum(p * g))` per row.
pub(crate) fn masked_softmax_backward(
    (probs, probs_layout): (&CudaStorage, &Layout),
    (grad, grad_layout): (&CudaStorage, &Layout),
    (mask, mask_layout): (&CudaStorage, &Layout),
    (b, h, n, t, mb): (usize, usize, usize, usize, usize),
) -> Result<(CudaStorage, Shape)> {
    let dev = probs.device();
    let dtype = probs.dtype();
    with_float_type!(dtype, T => {
        let p = view::<T>(probs, probs_layout, "masked softmax backward")?;
        let g = view::<T>(grad, grad_layout, "masked softmax backward")?;
        let m = view::<T>(mask, mask_layout, "masked softmax backward")?;
        let out = output::<T>(dev, b * h * n * t)?;
        let func = function(dev, "masked_softmax_backward", dtype)?;
        let [t, h, n, mb] = dims_i32([t, h, n, mb]);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&p).arg(&g).arg(&m).arg(&out).arg(&t).arg(&h).arg(&n).arg(&mb);
        let config = LaunchConfig { grid_dim: ((b * h as usize * n as usize) as u32, 1, 1), block_dim: (row_threads(t as usize), 1, 1), shared_mem_bytes: 0 };
        // SAFETY: as the forward.
        unsafe { builder.launch(config) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), probs_layout.shape().clone()))
    })
}

/// The tensors of a residual + sandwich-norm step besides `x` and `y`.
pub(crate) struct ResidualNormParams<'a> {
    pub bias: Option<&'a Tensor>,
    pub norm_a: Option<(&'a Tensor, &'a Tensor)>,
    pub norm_b: (&'a Tensor, &'a Tensor),
    pub eps: f32,
}

/// `r = x + LN_a(y + bias)`, `n = LN_b(r)`, returned packed as `[2, rows, h]`.
pub(crate) fn residual_norm(
    (x, x_layout): (&CudaStorage, &Layout),
    (y, y_layout): (&CudaStorage, &Layout),
    params: &ResidualNormParams,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dtype = x.dtype();
    let h = *x_layout.shape().dims().last().unwrap_or(&1);
    let rows = x_layout.shape().elem_count() / h.max(1);
    let bias = params.bias.map(Held::new);
    let norm_a = params.norm_a.map(|(w, b)| (Held::new(w), Held::new(b)));
    let norm_b = (Held::new(params.norm_b.0), Held::new(params.norm_b.1));
    with_float_type!(dtype, T => {
        let xv = view::<T>(x, x_layout, "residual norm")?;
        let yv = view::<T>(y, y_layout, "residual norm")?;
        let out = output::<T>(dev, 2 * rows * h)?;
        let (r_out, n_out) = (out.slice(0..rows * h), out.slice(rows * h..2 * rows * h));
        let bias_v = bias.as_ref().map(|b| b.view::<T>("residual norm bias")).transpose()?;
        let wa = norm_a.as_ref().map(|(w, _)| w.view::<T>("residual norm weight")).transpose()?;
        let ba = norm_a.as_ref().map(|(_, b)| b.view::<T>("residual norm bias")).transpose()?;
        let (wb, bb) = (norm_b.0.view::<T>("residual norm weight")?, norm_b.1.view::<T>("residual norm bias")?);
        let func = function(dev, "residual_norm", dtype)?;
        let (h_i32, eps) = (h as i32, params.eps);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&xv).arg(&yv);
        match &bias_v { Some(v) => builder.arg(v), None => builder.arg(&NULL) };
        match &wa { Some(v) => builder.arg(v), None => builder.arg(&NULL) };
        match &ba { Some(v) => builder.arg(v), None => builder.arg(&NULL) };
        builder.arg(&wb).arg(&bb).arg(&r_out).arg(&n_out).arg(&h_i32).arg(&eps);
        let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (row_threads(h), 1, 1), shared_mem_bytes: (h * 4) as u32 };
        // SAFETY: each block reads its row of x and y (h values) and writes one row of each output.
        unsafe { builder.launch(config) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((2, rows, h))))
    })
}

/// `gelu_tanh(x + bias)` over `[rows, cols]`.
pub(crate) fn bias_gelu(x: &CudaStorage, x_layout: &Layout, bias: &Tensor) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dtype = x.dtype();
    let cols = *x_layout.shape().dims().last().unwrap_or(&1);
    let elements = x_layout.shape().elem_count();
    let bias = Held::new(bias);
    with_float_type!(dtype, T => {
        let xv = view::<T>(x, x_layout, "bias gelu")?;
        let bv = bias.view::<T>("bias gelu")?;
        let out = output::<T>(dev, elements)?;
        let func = function(dev, "bias_gelu", dtype)?;
        let (elements_i64, cols_i32) = (elements as i64, cols as i32);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&xv).arg(&bv).arg(&out).arg(&elements_i64).arg(&cols_i32);
        // SAFETY: grid-stride over `elements`.
        unsafe { builder.launch(element_config(elements)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), x_layout.shape().clone()))
    })
}

/// The q/k/v split: returns q `[b, heads, n, d]` (times `q_scale`) and writes k and v into
/// `kv` `[2, cache_b, heads, capacity, d]` at the positions from `position[0]` on.
///
/// The cache is written in place through its storage (candle has no op with two
/// outputs; paged-attention kernels write their caches the same way).
pub(crate) struct QkvSplitParams<'a> {
    pub bias: &'a Tensor,
    pub kv: &'a Tensor,
    pub position: &'a Tensor,
    pub heads: usize,
    pub q_scale: f32,
}

pub(crate) fn qkv_split(
    qkv: &CudaStorage,
    qkv_layout: &Layout,
    params: &QkvSplitParams,
) -> Result<(CudaStorage, Shape)> {
    let dev = qkv.device();
    let dtype = qkv.dtype();
    let (b, n, three_hd) = qkv_layout.shape().dims3()?;
    let (_, cache_b, heads, capacity, d) = params.kv.dims5()?;
    if heads != params.heads || 3 * heads * d != three_hd || cache_b < b {
        candle_core::bail!("qkv split: qkv {:?} does not fit the cache {:?}", qkv_layout.shape(), params.kv.shape());
    }
    let (bias, kv, position) = (Held::new(params.bias), Held::new(params.kv), Held::new(params.position));
    with_float_type!(dtype, T => {
        let qkv_v = view::<T>(qkv, qkv_layout, "qkv split")?;
        let bias_v = bias.view::<T>("qkv split bias")?;
        let kv_v = kv.view::<T>("qkv split cache")?;
        let position_v = position.view::<u32>("qkv split position")?;
        let q = output::<T>(dev, b * n * heads * d)?;
        let func = function(dev, "qkv_split", dtype)?;
        let [b_i, n_i, heads_i, d_i] = dims_i32([b, n, heads, d]);
        let (capacity_i, cache_b_i, q_scale) = (capacity as i32, cache_b as i32, params.q_scale);
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&qkv_v).arg(&bias_v).arg(&q).arg(&kv_v).arg(&position_v);
        builder.arg(&b_i).arg(&n_i).arg(&heads_i).arg(&d_i).arg(&capacity_i).arg(&cache_b_i).arg(&q_scale);
        // SAFETY: grid-stride over the b*n*3*heads*d inputs; the caller checked that the
        // positions fit the cache's capacity.
        unsafe { builder.launch(element_config(b * n * three_hd)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(q, dev.clone()), Shape::from((b, heads, n, d))))
    })
}

/// LayerNorm forward over the last dim (`weight`, `bias` of `h` values).
pub(crate) fn layer_norm(
    (x, x_layout): (&CudaStorage, &Layout),
    (w, w_layout): (&CudaStorage, &Layout),
    (b, b_layout): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dtype = x.dtype();
    let h = w_layout.shape().elem_count();
    let rows = x_layout.shape().elem_count() / h.max(1);
    with_float_type!(dtype, T => {
        let (xv, wv, bv) = (view::<T>(x, x_layout, "layer norm")?, view::<T>(w, w_layout, "layer norm")?, view::<T>(b, b_layout, "layer norm")?);
        let out = output::<T>(dev, rows * h)?;
        let func = function(dev, "layer_norm", dtype)?;
        let h_i32 = h as i32;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&xv).arg(&wv).arg(&bv).arg(&out).arg(&h_i32).arg(&eps);
        let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (row_threads(h), 1, 1), shared_mem_bytes: (h * 4) as u32 };
        // SAFETY: one block a row of h values.
        unsafe { builder.launch(config) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), x_layout.shape().clone()))
    })
}

/// LayerNorm backward: `[dx, g * xhat]` packed as `[2, rows, h]` (the caller sums the
/// second over rows for the weight's gradient, and the gradient itself for the bias's).
pub(crate) fn layer_norm_backward(
    (x, x_layout): (&CudaStorage, &Layout),
    (w, w_layout): (&CudaStorage, &Layout),
    (grad, grad_layout): (&CudaStorage, &Layout),
    eps: f32,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dtype = x.dtype();
    let h = w_layout.shape().elem_count();
    let rows = x_layout.shape().elem_count() / h.max(1);
    with_float_type!(dtype, T => {
        let (xv, wv, gv) = (view::<T>(x, x_layout, "layer norm backward")?, view::<T>(w, w_layout, "layer norm backward")?, view::<T>(grad, grad_layout, "layer norm backward")?);
        let out = output::<T>(dev, 2 * rows * h)?;
        let (dx, g_xhat) = (out.slice(0..rows * h), out.slice(rows * h..2 * rows * h));
        let func = function(dev, "layer_norm_backward", dtype)?;
        let h_i32 = h as i32;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&xv).arg(&wv).arg(&gv).arg(&dx).arg(&g_xhat).arg(&h_i32).arg(&eps);
        let config = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (row_threads(h), 1, 1), shared_mem_bytes: (h * 4) as u32 };
        // SAFETY: one block a row of h values.
        unsafe { builder.launch(config) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((2, rows, h))))
    })
}

/// tanh GELU (`name` = "gelu") or its gradient ("gelu_backward", with `grad`).
pub(crate) fn gelu(
    (x, x_layout): (&CudaStorage, &Layout),
    grad: Option<(&CudaStorage, &Layout)>,
) -> Result<(CudaStorage, Shape)> {
    let dev = x.device();
    let dtype = x.dtype();
    let elements = x_layout.shape().elem_count();
    with_float_type!(dtype, T => {
        let xv = view::<T>(x, x_layout, "gelu")?;
        let gv = grad.map(|(g, l)| view::<T>(g, l, "gelu backward")).transpose()?;
        let out = output::<T>(dev, elements)?;
        let func = function(dev, if gv.is_some() { "gelu_backward" } else { "gelu" }, dtype)?;
        let elements_i64 = elements as i64;
        let stream = dev.cuda_stream();
        let mut builder = stream.launch_builder(&func);
        builder.arg(&xv);
        if let Some(g) = &gv {
            builder.arg(g);
        }
        builder.arg(&out).arg(&elements_i64);
        // SAFETY: grid-stride over `elements`.
        unsafe { builder.launch(element_config(elements)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), x_layout.shape().clone()))
    })
}
