//! RUDOLPH (rudolph 0.0.1rc4 `ruDolphModel`) in candle.
//!
//! One decoder over `[l_text (L) | image codes (I = T*T) | r_text (R)]`. Each
//! struct mirrors a module of the reference, and `vb.pp(...)` follows its
//! state-dict keys, so official checkpoints load as they are.
//!
//! Inference first: [`Rudolph::forward`], the decoding steps and the heads run the
//! inference kernels. Training asks for itself with one flag, as candle-nn's `ModuleT`
//! does ([`Rudolph::forward_t`] with `train`): ops with a backward pass (our fused
//! kernels, [`crate::fused`], on the CPU in f32; candle's composite ops elsewhere), the
//! step's dropout, and CogView's scaled embedding gradients, none of which an inference
//! forward ever runs.

use crate::config::RudolphConfig;
use crate::fused::{self, AttentionMask, NormWeights};
use crate::masks::{layer_mask_kind, layer_masks};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::{Embedding, Init, VarBuilder};
use std::ops::Range;
use std::sync::Arc;

/// Embedding gradients are scaled by this (CogView's `x * a + x.detach() * (1 - a)`).
const EMBEDDING_GRAD_SCALE: f64 = 0.1;

fn embedding(n: usize, hidden: usize, vb: VarBuilder) -> Result<Embedding> {
    let weight = vb.get_with_hints((n, hidden), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
    Ok(Embedding::new(weight, hidden))
}

fn linear(input: usize, output: usize, vb: VarBuilder) -> Result<RowLinear> {
    let weight = vb.get_with_hints((output, input), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
    let bias = vb.get_with_hints(output, "bias", Init::Const(0.0))?;
    RowLinear::new(weight, bias)
}

/// A Linear applied to `[b, n, in]` as one `[b*n, in]` product. candle's Linear
/// broadcasts the weight over the batch instead, so its weight gradient is a batch of
/// products summed afterwards, a single-threaded reduction that dominated training.
///
/// A frozen one (fine-tuning keeps attention and MLP fixed) gives gradients to its input
/// only: candle would compute the weight's gradient anyway, a third of the step's work.
#[derive(Debug, Clone)]
struct RowLinear {
    /// `[out, in]` as in the checkpoint when it is trained (a variable); `[in, out]`
    /// otherwise (see [`RowLinear::new`]).
    weight: Tensor,
    bias: Tensor,
    stored_transposed: bool,
    frozen: bool,
}

impl RowLinear {
    fn new(weight: Tensor, bias: Tensor) -> Result<Self> {
        if weight.is_variable() {
            return Ok(RowLinear { weight, bias, stored_transposed: false, frozen: false });
        }
        // The CPU matmul (the gemm crate) repacks a transposed right-hand side on every
        // call: a KV-cached decoding step, a few rows times a large weight, ran 3-7x
        // slower than with the weight laid out `[in, out]`. Weights that are not trained
        // are therefore stored transposed, once, at load.
        Ok(RowLinear { weight: weight.t()?.contiguous()?, bias, stored_transposed: true, frozen: false })
    }

    /// The output rows `[start, start + len)` only (the logits of one vocabulary).
    fn rows_of_output(&self, start: usize, len: usize) -> Result<Self> {
        if self.stored_transposed {
            let weight = self.weight.narrow(1, start, len)?.contiguous()?;
            return Ok(RowLinear { weight, bias: self.bias.narrow(0, start, len)?, ..self.clone() });
        }
        Ok(RowLinear {
            weight: self.weight.narrow(0, start, len)?,
            bias: self.bias.narrow(0, start, len)?,
            ..self.clone()
        })
    }

    /// `x · weightᵀ` for `x` `[rows, in]`, without the bias.
    fn product_2d(&self, x: &Tensor) -> Result<Tensor> {
        if self.stored_transposed {
            x.matmul(&self.weight)
        } else if !self.frozen {
            x.matmul(&self.weight.t()?)
        } else {
            fused::frozen_product(x, &self.weight)
        }
    }

    /// The product without the bias, for `x` of any rank (the fused ops add the bias).
    fn product(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims();
        if dims.len() <= 2 {
            return self.product_2d(x);
        }
        let features = dims[dims.len() - 1];
        let y = self.product_2d(&x.reshape((x.elem_count() / features, features))?)?;
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("rank > 2") = y.dim(1)?;
        y.reshape(shape)
    }

    /// A frozen layer's weights as the frozen blocks take them (`[out, in]`).
    fn frozen_weights(&self) -> Option<fused::FrozenLinear<'_>> {
        (self.frozen && !self.stored_transposed)
            .then_some(fused::FrozenLinear { weight: &self.weight, bias: &self.bias })
    }

    /// The bias as the fused ops take it (detached when the layer is frozen).
    fn bias(&self) -> Tensor {
        if self.frozen {
            self.bias.detach()
        } else {
            self.bias.clone()
        }
    }
}

impl Module for RowLinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.product(x)?.broadcast_add(&self.bias())
    }
}

/// LayerNorm with torch's semantics (biased variance, eps inside the square root).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(size, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        fused::layer_norm(x, &self.weight, &self.bias, self.eps, train)
    }

    fn weights(&self) -> NormWeights<'_> {
        NormWeights { weight: &self.weight, bias: &self.bias }
    }
}

/// Keys and values of earlier positions, per layer one `[2 (k|v), b, heads, capacity,
/// head_dim]` tensor allocated once and written in place (no copy of the past at each
/// step).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<Option<Tensor>>,
    len: usize,
    capacity: usize,
    /// Static decoding (what a CUDA graph replays): every step attends over the whole
    /// capacity, and the position of the step lives in this one-element device tensor.
    step_position: Option<Tensor>,
}

impl KvCache {
    fn new(num_layers: usize, capacity: usize) -> Self {
        KvCache { layers: vec![None; num_layers], len: 0, capacity, step_position: None }
    }

    /// How many positions are cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many positions it can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets every position from `len` on (the next forward writes there again).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Keeps only the samples at `indices` (e.g. the candidates still being decoded).
    pub fn select(&mut self, indices: &Tensor) -> Result<()> {
        for kv in self.layers.iter_mut().flatten() {
            *kv = kv.index_select(indices, 1)?;
        }
        Ok(())
    }

    /// Repeats every sample `n` times along the batch (one prompt, n samples).
    pub fn repeat_batch(&mut self, n: usize) -> Result<()> {
        for kv in self.layers.iter_mut().flatten() {
            *kv = kv.repeat((1, n, 1, 1, 1))?;
        }
        Ok(())
    }

    /// A new cache holding every sample `n` times (this one unchanged).
    pub fn repeated(&self, n: usize) -> Result<KvCache> {
        let layers = self.layers.iter().map(|kv| kv.as_ref().map(|kv| kv.repeat((1, n, 1, 1, 1))).transpose());
        Ok(KvCache { layers: layers.collect::<Result<_>>()?, step_position: None, ..*self })
    }

    /// Copies this cache's samples into rows `0..b` of `target` (a static cache of the same
    /// capacity and at least as many rows), and its length.
    pub fn copy_into(&self, target: &mut KvCache) -> Result<()> {
        if target.capacity != self.capacity {
            candle_core::bail!("caches of {} and {} positions", self.capacity, target.capacity);
        }
        for (from, to) in self.layers.iter().zip(&target.layers) {
            if let (Some(from), Some(to)) = (from, to) {
                to.slice_set(from, 1, 0)?;
            }
        }
        target.len = self.len;
        Ok(())
    }

    /// Sets the position the next static step writes (outside any graph capture).
    pub fn set_step_position(&mut self, position: usize) -> Result<()> {
        let Some(slot) = &self.step_position else { candle_core::bail!("not a static cache") };
        slot.slice_set(&Tensor::new(&[position as u32], slot.device())?, 0, 0)?;
        self.len = position;
        Ok(())
    }
}

/// The four per-layer-kind masks of one generation, `[b or 1, 1, S, S]` each: the
/// sample masks times the sparse layer masks, made once and sliced by every forward.
#[derive(Debug, Clone)]
pub struct LayerMasks {
    kinds: [Tensor; 4],
}

impl LayerMasks {
    pub fn batch(&self) -> usize {
        self.kinds[0].dim(0).unwrap_or(1)
    }

    /// The masks' columns up to `positions` only, as static decoding steps over a cache
    /// of that capacity read them.
    pub fn narrowed_to(&self, positions: usize) -> Result<LayerMasks> {
        let narrow = |t: &Tensor| t.narrow(3, 0, positions)?.contiguous();
        let [a, b, c, d] = &self.kinds;
        Ok(LayerMasks { kinds: [narrow(a)?, narrow(b)?, narrow(c)?, narrow(d)?] })
    }
}

/// Which vocabulary a head scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Head {
    /// Text ids (l_text and r_text positions).
    Text,
    /// Image ids (image positions).
    Image,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    query_key_value: RowLinear,
    dense: RowLinear,
    heads: usize,
    head_dim: usize,
    pb_relax: bool,
}

impl SelfAttention {
    fn new(cfg: &RudolphConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(SelfAttention {
            query_key_value: linear(h, 3 * h, vb.pp("query_key_value"))?,
            dense: linear(h, h, vb.pp("dense"))?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
            pb_relax: cfg.cogview_pb_relax,
        })
    }

    fn scale(&self) -> f64 {
        (self.head_dim as f64).sqrt()
    }

    /// Inference: `x` `[b, n, h]` (normalised); k and v of the new positions go into `kv`
    /// at `position`, and the queries attend over its first `visible` positions. Returns
    /// the output before the dense layer's bias (the residual norm adds it).
    fn forward(
        &self,
        x: &Tensor,
        mask: &AttentionMask,
        kv: &Tensor,
        position: &Tensor,
        visible: usize,
    ) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let qkv = self.query_key_value.product(x)?;
        // PB-relax scales q before the product (what keeps fp16 scores in range). Its
        // second half, subtracting each head's maximum (over the whole matrix, times 32),
        // shifts every row by a constant that the softmax's own row maximum removes again:
        // the same probabilities and gradients, so it is left out.
        let q_scale = if self.pb_relax { 1.0 / self.scale() } else { 1.0 };
        let q = fused::qkv_split(&qkv, &self.query_key_value.bias, kv, position, self.heads, q_scale)?;
        let k = kv.get(0)?.narrow(2, 0, visible)?;
        let v = kv.get(1)?.narrow(2, 0, visible)?;
        let scores = q.matmul(&k.t()?)?;
        let scores = if self.pb_relax { scores } else { (scores / self.scale())? };
        let probs = fused::masked_softmax(&scores, mask, false)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?;
        self.dense.product(&context)
    }

    /// Training: differentiable, no cache, with this step's dropout.
    fn forward_train(&self, x: &Tensor, mask: &AttentionMask, dropout: Option<LayerDropout>) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        if let (Some(qkv), Some(dense)) = (self.query_key_value.frozen_weights(), self.dense.frozen_weights()) {
            // The step's dropout of the probabilities, as factors (drawn only where the
            // kernel runs).
            let probs_dropout = || match dropout {
                Some(d) => {
                    let ones = Tensor::ones((b, self.heads, n, n), x.dtype(), x.device())?;
                    d.dropout.apply(&ones, DropoutSite::AttentionProbs { layer: d.layer }).map(Some)
                }
                None => Ok(None),
            };
            if let Some(output) = fused::frozen_attention(x, qkv, dense, mask, self.heads, probs_dropout)? {
                return match dropout {
                    Some(d) => d.dropout.apply(&output, DropoutSite::AttentionOutput { layer: d.layer }),
                    None => Ok(output),
                };
            }
        }
        let qkv = self.query_key_value.forward(x)?;
        // [b, n, (q|k|v, heads, head_dim)] -> [q|k|v, b, heads, n, head_dim] in one copy.
        let qkv = qkv.reshape((b, n, 3, self.heads, self.head_dim))?.permute((2, 0, 3, 1, 4))?.contiguous()?;
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let k_t = k.transpose(2, 3)?;
        let scale = self.scale();
        let scores = if self.pb_relax { (q / scale)?.matmul(&k_t)? } else { (q.matmul(&k_t)? / scale)? };
        let probs = fused::masked_softmax(&scores, mask, true)?;
        let probs = match dropout {
            Some(d) => d.dropout.apply(&probs, DropoutSite::AttentionProbs { layer: d.layer })?,
            None => probs,
        };
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, h))?;
        let output = self.dense.forward(&context)?;
        match dropout {
            Some(d) => d.dropout.apply(&output, DropoutSite::AttentionOutput { layer: d.layer }),
            None => Ok(output),
        }
    }
}

/// Where a training forward applies dropout, as the reference trains: the embeddings,
/// and in each layer the attention probabilities, the attention output and the MLP
/// output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropoutSite {
    Embeddings,
    AttentionProbs { layer: usize },
    AttentionOutput { layer: usize },
    MlpOutput { layer: usize },
}

impl DropoutSite {
    /// The site's place in the network, counted from the embeddings: 0, then three per layer.
    pub fn index(self) -> u64 {
        match self {
            DropoutSite::Embeddings => 0,
            DropoutSite::AttentionProbs { layer } => 1 + 3 * layer as u64,
            DropoutSite::AttentionOutput { layer } => 2 + 3 * layer as u64,
            DropoutSite::MlpOutput { layer } => 3 + 3 * layer as u64,
        }
    }
}

/// A training step's dropout: the model says where it applies, the training crate draws
/// the masks (inference never has one).
pub trait Dropout: std::fmt::Debug + Send + Sync {
    fn apply(&self, x: &Tensor, site: DropoutSite) -> Result<Tensor>;
}

/// A layer's view of the step's dropout.
#[derive(Debug, Clone, Copy)]
struct LayerDropout<'a> {
    dropout: &'a dyn Dropout,
    layer: usize,
}

#[derive(Debug, Clone)]
struct Mlp {
    dense_h_to_4h: RowLinear,
    dense_4h_to_h: RowLinear,
}

impl Mlp {
    fn new(cfg: &RudolphConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Mlp {
            dense_h_to_4h: linear(h, 4 * h, vb.pp("dense_h_to_4h"))?,
            dense_4h_to_h: linear(4 * h, h, vb.pp("dense_4h_to_h"))?,
        })
    }

    /// The output before the second product's bias (the residual norm adds it). The tanh
    /// GELU, as the reference's gelu_jit.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let up = self.dense_h_to_4h.product(x)?;
        let activated = fused::bias_gelu(&up, &self.dense_h_to_4h.bias(), train)?;
        self.dense_4h_to_h.product(&activated)
    }

    /// Training: the output with the second product's bias.
    fn forward_train(&self, x: &Tensor) -> Result<Tensor> {
        if let (Some(up), Some(down)) = (self.dense_h_to_4h.frozen_weights(), self.dense_4h_to_h.frozen_weights()) {
            if let Some(output) = fused::frozen_mlp(x, up, down)? {
                return Ok(output);
            }
        }
        self.forward(x, true)?.broadcast_add(&self.dense_4h_to_h.bias())
    }
}

#[derive(Debug, Clone)]
struct TransformerLayer {
    input_layernorm: LayerNorm,
    attention: SelfAttention,
    /// CogView sandwich LayerNorms (None when `cogview_sandwich_layernorm` is off).
    before_first_addition_layernorm: Option<LayerNorm>,
    post_attention_layernorm: LayerNorm,
    mlp: Mlp,
    before_second_addition_layernorm: Option<LayerNorm>,
    eps: f64,
}

impl TransformerLayer {
    fn new(cfg: &RudolphConfig, vb: VarBuilder) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.layernorm_epsilon);
        let sandwich = |name: &str| -> Result<Option<LayerNorm>> {
            cfg.cogview_sandwich_layernorm.then(|| LayerNorm::new(h, eps, vb.pp(name))).transpose()
        };
        Ok(TransformerLayer {
            input_layernorm: LayerNorm::new(h, eps, vb.pp("input_layernorm"))?,
            attention: SelfAttention::new(cfg, vb.pp("attention"))?,
            before_first_addition_layernorm: sandwich("before_first_addition_layernorm")?,
            post_attention_layernorm: LayerNorm::new(h, eps, vb.pp("post_attention_layernorm"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            before_second_addition_layernorm: sandwich("before_second_addition_layernorm")?,
            eps,
        })
    }

    /// `x` the residual stream, `x_norm` its input LayerNorm (the previous layer's last
    /// fused step made it). Returns the residual stream and `next_norm` of it: the next
    /// layer's input LayerNorm, or the final one.
    fn forward(
        &self,
        x: &Tensor,
        x_norm: &Tensor,
        mask: &AttentionMask,
        kv: &KvSlot,
        next_norm: &LayerNorm,
    ) -> Result<(Tensor, Tensor)> {
        let attention = self.attention.forward(x_norm, mask, &kv.kv, kv.position, kv.visible)?;
        let (residual, mlp_input) = fused::residual_norm(
            x,
            &attention,
            Some(&self.attention.dense.bias),
            self.before_first_addition_layernorm.as_ref().map(LayerNorm::weights),
            self.post_attention_layernorm.weights(),
            self.eps,
            false,
        )?;
        let mlp = self.mlp.forward(&mlp_input, false)?;
        fused::residual_norm(
            &residual,
            &mlp,
            Some(&self.mlp.dense_4h_to_h.bias),
            self.before_second_addition_layernorm.as_ref().map(LayerNorm::weights),
            next_norm.weights(),
            self.eps,
            false,
        )
    }

    /// Training: differentiable, with this step's dropout.
    fn forward_train(&self, x: &Tensor, mask: &AttentionMask, dropout: Option<LayerDropout>) -> Result<Tensor> {
        let mut attention = self.attention.forward_train(&self.input_layernorm.forward(x, true)?, mask, dropout)?;
        if let Some(ln) = &self.before_first_addition_layernorm {
            attention = ln.forward(&attention, true)?;
        }
        let residual = (x + attention)?;
        let mlp_input = self.post_attention_layernorm.forward(&residual, true)?;
        let mut mlp = self.mlp.forward_train(&mlp_input)?;
        if let Some(d) = dropout {
            mlp = d.dropout.apply(&mlp, DropoutSite::MlpOutput { layer: d.layer })?;
        }
        if let Some(ln) = &self.before_second_addition_layernorm {
            mlp = ln.forward(&mlp, true)?;
        }
        residual + mlp
    }
}

/// Where one layer's attention keeps its keys and values during a forward.
struct KvSlot<'a> {
    /// `[2, b, heads, capacity, head_dim]`.
    kv: Tensor,
    /// First position written (a one-element u32 tensor on the device).
    position: &'a Tensor,
    /// Positions the queries attend over.
    visible: usize,
}

/// The whole model.
#[derive(Debug, Clone)]
pub struct Rudolph {
    cfg: RudolphConfig,
    text_embeddings: Embedding,
    image_embeddings: Embedding,
    l_text_pos_embeddings: Embedding,
    r_text_pos_embeddings: Embedding,
    image_row_embeddings: Embedding,
    image_col_embeddings: Embedding,
    layers: Vec<TransformerLayer>,
    final_layernorm: LayerNorm,
    /// `to_logits.0` (LayerNorm) and `to_logits.1` (Linear).
    logits_layernorm: LayerNorm,
    /// The whole projection, for training (None for weights loaded for inference: the
    /// heads below hold them).
    logits_linear: Option<RowLinear>,
    /// `to_logits.1` split by vocabulary (text ids, then image ids): a pipeline computes
    /// the logits it reads only (re-ranking 16 texts would otherwise make ~300 MB of them).
    text_head: RowLinear,
    image_head: RowLinear,
    /// Row, column, conv, last-conv masks, `[S, S]`.
    layer_masks: [Tensor; 4],
    /// Every position's position embedding `[S, h]`, and the l_text pad ids `[L]` (for
    /// static decoding steps, whose position lives on the device).
    position_table: Tensor,
    pad_ids: Tensor,
    /// Training only: this step's dropout (None: no dropout, as at inference).
    dropout: Option<Arc<dyn Dropout>>,
    device: Device,
}

impl Rudolph {
    pub fn new(cfg: &RudolphConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let h = cfg.hidden_size;
        let device = vb.device().clone();
        let tvb = vb.pp("transformer");
        let layers =
            (0..cfg.num_layers).map(|i| TransformerLayer::new(cfg, tvb.pp("layers").pp(i))).collect::<Result<_>>()?;
        let masks = layer_masks(cfg);
        let mask = |i: usize| masks[i].to_tensor(&device)?.to_dtype(vb.dtype());
        let logits_linear = linear(h, cfg.total_vocab(), vb.pp("to_logits").pp(1))?;
        let l_text_pos_embeddings = embedding(cfg.l_text_seq_length + 1, h, vb.pp("l_text_pos_embeddings"))?;
        let r_text_pos_embeddings = embedding(cfg.r_text_seq_length + 1, h, vb.pp("r_text_pos_embeddings"))?;
        let image_row_embeddings = embedding(cfg.image_tokens_per_dim, h, vb.pp("image_row_embeddings"))?;
        let image_col_embeddings = embedding(cfg.image_tokens_per_dim, h, vb.pp("image_col_embeddings"))?;
        let (l, t, r) = (cfg.l_text_seq_length, cfg.image_tokens_per_dim, cfg.r_text_seq_length);
        let image_positions = image_row_embeddings
            .embeddings()
            .unsqueeze(1)?
            .broadcast_add(&image_col_embeddings.embeddings().unsqueeze(0)?)?
            .reshape((t * t, h))?;
        let position_table = Tensor::cat(
            &[
                &l_text_pos_embeddings.embeddings().narrow(0, 0, l)?,
                &image_positions,
                &r_text_pos_embeddings.embeddings().narrow(0, 0, r)?,
            ],
            0,
        )?
        .detach();
        let pad_base = (cfg.text_vocab() - l) as u32;
        Ok(Rudolph {
            text_embeddings: embedding(cfg.text_vocab(), h, vb.pp("text_embeddings"))?,
            image_embeddings: embedding(cfg.image_vocab(), h, vb.pp("image_embeddings"))?,
            l_text_pos_embeddings,
            r_text_pos_embeddings,
            image_row_embeddings,
            image_col_embeddings,
            layers,
            final_layernorm: LayerNorm::new(h, cfg.layernorm_epsilon, tvb.pp("final_layernorm"))?,
            logits_layernorm: LayerNorm::new(h, cfg.layernorm_epsilon, vb.pp("to_logits").pp(0))?,
            text_head: logits_linear.rows_of_output(0, cfg.text_vocab())?,
            image_head: logits_linear.rows_of_output(cfg.text_vocab(), cfg.image_vocab())?,
            logits_linear: logits_linear.weight.is_variable().then_some(logits_linear),
            layer_masks: [mask(0)?, mask(1)?, mask(2)?, mask(3)?],
            position_table,
            pad_ids: Tensor::arange(pad_base, pad_base + l as u32, &device)?,
            dropout: None,
            cfg: cfg.clone(),
            device,
        })
    }

    pub fn config(&self) -> &RudolphConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype the weights were loaded in.
    pub fn dtype(&self) -> DType {
        self.layer_masks[0].dtype()
    }

    /// Keeps the attention and/or MLP weights fixed in training: no gradient is computed
    /// for them (the article fine-tunes with both frozen).
    pub fn freeze_blocks(&mut self, attention: bool, mlp: bool) {
        for layer in &mut self.layers {
            layer.attention.query_key_value.frozen = attention;
            layer.attention.dense.frozen = attention;
            layer.mlp.dense_h_to_4h.frozen = mlp;
            layer.mlp.dense_4h_to_h.frozen = mlp;
        }
    }

    /// Dropout for the next forward passes (training sets a fresh draw every step);
    /// None turns it off.
    pub fn set_dropout(&mut self, dropout: Option<Arc<dyn Dropout>>) {
        self.dropout = dropout;
    }

    /// A cache for a whole sequence.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_with_capacity(self.cfg.total_seq_length())
    }

    /// A cache for the first `positions` positions (text continuation needs only l_text).
    pub fn new_cache_with_capacity(&self, positions: usize) -> KvCache {
        KvCache::new(self.cfg.num_layers, positions.min(self.cfg.total_seq_length()))
    }

    /// A cache of `batch` rows allocated now, for static decoding steps
    /// ([`Rudolph::forward_step`]): what a captured CUDA graph reads and writes.
    pub fn static_cache(&self, batch: usize, positions: usize) -> Result<KvCache> {
        let mut cache = self.new_cache_with_capacity(positions);
        for slot in cache.layers.iter_mut() {
            *slot = Some(self.kv_buffer(batch, cache.capacity)?);
        }
        cache.step_position = Some(Tensor::zeros(1, DType::U32, &self.device)?);
        Ok(cache)
    }

    fn kv_buffer(&self, batch: usize, capacity: usize) -> Result<Tensor> {
        let shape = (2, batch, self.cfg.num_attention_heads, capacity, self.cfg.head_dim());
        Tensor::zeros(shape, self.dtype(), &self.device)
    }

    /// The per-layer-kind masks of a generation from its sample masks `[b or 1, 1, S, S]`
    /// (from [`crate::masks`]): made once, used by every step.
    pub fn layer_masks(&self, attention_mask: &Tensor) -> Result<LayerMasks> {
        let sample = attention_mask.to_dtype(self.dtype())?;
        // The conv masks are built a little larger than S (see `layer_masks`).
        let size = self.cfg.total_seq_length();
        let kind = |i: usize| {
            let layer = self.layer_masks[i].narrow(0, 0, size)?.narrow(1, 0, size)?;
            sample.broadcast_mul(&layer.unsqueeze(0)?.unsqueeze(0)?)
        };
        Ok(LayerMasks { kinds: [kind(0)?, kind(1)?, kind(2)?, kind(3)?] })
    }

    /// Embeds the ids of absolute positions `start..start + n` (they may span segments).
    fn embed(&self, ids: &Tensor, start: usize, train: bool) -> Result<Tensor> {
        let cfg = &self.cfg;
        let (l, i_len) = (cfg.l_text_seq_length, cfg.image_seq_length());
        let (_, n) = ids.dims2()?;
        let end = start + n;
        let mut parts = Vec::new();
        let dev = &self.device;
        // l_text: pad id 0 becomes a per-position id `text_vocab - L + position`.
        if start < l {
            let (a, b) = (start, end.min(l));
            let seg = ids.narrow(1, a - start, b - a)?;
            let positions = Tensor::arange(a as u32, b as u32, dev)?;
            let pad_ids = self.pad_ids.narrow(0, a, b - a)?;
            let seg = seg.eq(0u32)?.where_cond(&pad_ids.unsqueeze(0)?.broadcast_as(seg.shape())?, &seg)?;
            let pos = self.l_text_pos_embeddings.forward(&positions)?;
            parts.push(self.text_embeddings.forward(&seg)?.broadcast_add(&pos)?);
        }
        if end > l && start < l + i_len {
            let (a, b) = (start.max(l), end.min(l + i_len));
            let seg = ids.narrow(1, a - start, b - a)?;
            let t = cfg.image_tokens_per_dim as u32;
            let cells: Vec<u32> = ((a - l) as u32..(b - l) as u32).collect();
            let rows = Tensor::from_vec(cells.iter().map(|c| c / t).collect::<Vec<_>>(), cells.len(), dev)?;
            let cols = Tensor::from_vec(cells.iter().map(|c| c % t).collect::<Vec<_>>(), cells.len(), dev)?;
            let pos = (self.image_row_embeddings.forward(&rows)? + self.image_col_embeddings.forward(&cols)?)?;
            parts.push(self.image_embeddings.forward(&seg)?.broadcast_add(&pos)?);
        }
        if end > l + i_len {
            let a = start.max(l + i_len);
            let seg = ids.narrow(1, a - start, end - a)?;
            let positions = Tensor::arange((a - l - i_len) as u32, (end - l - i_len) as u32, dev)?;
            let pos = self.r_text_pos_embeddings.forward(&positions)?;
            parts.push(self.text_embeddings.forward(&seg)?.broadcast_add(&pos)?);
        }
        let embeddings = if parts.len() == 1 { parts.remove(0) } else { Tensor::cat(&parts, 1)? };
        if !train {
            return Ok(embeddings);
        }
        // Same values; gradients to the embeddings are scaled by 0.1 (CogView).
        (&embeddings * EMBEDDING_GRAD_SCALE)? + (embeddings.detach() * (1.0 - EMBEDDING_GRAD_SCALE))?
    }

    /// Embeds one id per row at the position held in `position` (device memory): the
    /// segment, known to the host, picks the vocabulary; the position table gives the
    /// position embedding without the host.
    fn embed_step(&self, ids: &Tensor, position: &Tensor, host_position: usize) -> Result<Tensor> {
        let (l, i_len) = (self.cfg.l_text_seq_length, self.cfg.image_seq_length());
        let (batch, _) = ids.dims2()?;
        let tokens = if host_position < l {
            let pad = self.pad_ids.index_select(position, 0)?.unsqueeze(0)?.broadcast_as((batch, 1))?;
            self.text_embeddings.forward(&ids.eq(0u32)?.where_cond(&pad, ids)?)?
        } else if host_position < l + i_len {
            self.image_embeddings.forward(ids)?
        } else {
            self.text_embeddings.forward(ids)?
        };
        tokens.broadcast_add(&self.position_table.index_select(position, 0)?.unsqueeze(0)?)
    }

    /// Hidden states after `final_layernorm` for the positions `past..past + n`, where
    /// `past` is what `cache` holds (0 without a cache).
    ///
    /// `input_ids`: `[b, n]` u32 (image codes as image-local ids 0..image_vocab);
    /// `attention_mask`: `[b or 1, 1, S, S]` from [`crate::masks`].
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        self.forward_masked(input_ids, &self.layer_masks(attention_mask)?, cache)
    }

    /// [`Rudolph::forward_hidden`] with the generation's masks made already.
    pub fn forward_masked(
        &self,
        input_ids: &Tensor,
        masks: &LayerMasks,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let (batch, n) = input_ids.dims2()?;
        let past = cache.as_ref().map_or(0, |c| c.len());
        let total = past + n;
        let limit = cache.as_ref().map_or(self.cfg.total_seq_length(), |c| c.capacity);
        if total > limit {
            candle_core::bail!("sequence of {total} positions exceeds the {limit} this forward can hold");
        }
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let static_step = cache.as_ref().and_then(|c| c.step_position.clone());
        let (hidden, position, visible) = match &static_step {
            Some(position) => {
                if n != 1 {
                    candle_core::bail!("a static decoding step takes one position per row, got {n}");
                }
                let capacity = cache.as_ref().map_or(total, |c| c.capacity);
                (self.embed_step(&input_ids, position, past)?, position.clone(), capacity)
            }
            None => (self.embed(&input_ids, past, false)?, Tensor::new(&[past as u32], &self.device)?, total),
        };
        // Without a cache, this forward's keys and values go into a buffer of its own.
        let mut own = None;
        let layer_kv = |cache: &mut Option<&mut KvCache>, own: &mut Option<Tensor>, i: usize| -> Result<Tensor> {
            match cache {
                Some(cache) => {
                    if cache.layers[i].is_none() {
                        cache.layers[i] = Some(self.kv_buffer(batch, cache.capacity)?);
                    }
                    Ok(cache.layers[i].clone().expect("allocated above"))
                }
                // One buffer serves every layer: each layer's keys and values are used up
                // before the next layer writes its own.
                None => {
                    if own.is_none() {
                        *own = Some(self.kv_buffer(batch, n)?);
                    }
                    Ok(own.clone().expect("allocated above"))
                }
            }
        };
        // Layers share four mask kinds: each kind's mask is sliced once per forward.
        let mut kind_masks: [Option<AttentionMask>; 4] = Default::default();
        let mut cache = cache;
        let mut residual = hidden;
        let mut normed = self.layers[0].input_layernorm.forward(&residual, false)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = layer_mask_kind(i, self.cfg.num_layers) as usize;
            let mask = match &mut kind_masks[kind] {
                Some(mask) => mask,
                slot => {
                    let keep = &masks.kinds[kind];
                    let keep = match &static_step {
                        Some(position) => keep.index_select(position, 2)?.narrow(3, 0, visible)?,
                        None => keep.narrow(2, past, n)?.narrow(3, 0, total)?,
                    };
                    slot.insert(AttentionMask::new(&keep, batch, self.cfg.num_attention_heads)?)
                }
            };
            let kv = KvSlot { kv: layer_kv(&mut cache, &mut own, i)?, position: &position, visible };
            let next_norm = self.layers.get(i + 1).map_or(&self.final_layernorm, |next| &next.input_layernorm);
            (residual, normed) = layer.forward(&residual, &normed, mask, &kv, next_norm)?;
        }
        if let Some(cache) = cache {
            cache.len = total;
        }
        Ok(normed)
    }

    /// The differentiable forward of training (no cache), with this step's dropout.
    fn forward_train(&self, input_ids: &Tensor, masks: &LayerMasks) -> Result<Tensor> {
        let (batch, n) = input_ids.dims2()?;
        let mut hidden = self.embed(input_ids, 0, true)?;
        if let Some(d) = &self.dropout {
            hidden = d.apply(&hidden, DropoutSite::Embeddings)?;
        }
        let mut kind_masks: [Option<AttentionMask>; 4] = Default::default();
        for (i, layer) in self.layers.iter().enumerate() {
            let kind = layer_mask_kind(i, self.cfg.num_layers) as usize;
            let mask = match &mut kind_masks[kind] {
                Some(mask) => mask,
                slot => {
                    let keep = masks.kinds[kind].narrow(2, 0, n)?.narrow(3, 0, n)?;
                    slot.insert(AttentionMask::new(&keep, batch, self.cfg.num_attention_heads)?)
                }
            };
            let dropout = self.dropout.as_deref().map(|dropout| LayerDropout { dropout, layer: i });
            hidden = layer.forward_train(&hidden, mask, dropout)?;
        }
        self.final_layernorm.forward(&hidden, true)
    }

    /// Logits `[b, n, text_vocab + image_vocab]` for the new positions (text ids first).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: &Tensor, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let hidden = self.forward_hidden(input_ids, attention_mask, cache)?;
        self.logits(&hidden)
    }

    /// Logits `[b, S, text_vocab + image_vocab]` of whole sequences; with `train`, the
    /// differentiable forward of training with the step's dropout ([`Rudolph::set_dropout`]).
    pub fn forward_t(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Result<Tensor> {
        if !train {
            return self.forward(input_ids, attention_mask, None);
        }
        self.logits_t(&self.training_hidden(input_ids, attention_mask)?, true)
    }

    /// Training: the cross-entropy `[b, S]` of the logits [`Rudolph::forward_t`] gives,
    /// each position over its slice of the vocabulary ([`fused::sliced_cross_entropy`]).
    /// A trained projection goes through [`fused::linear_cross_entropy`], which on the
    /// CPU never makes the logits.
    pub fn cross_entropy_t(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        labels: &Tensor,
        vocab: &[Range<usize>],
    ) -> Result<Tensor> {
        let hidden = self.training_hidden(input_ids, attention_mask)?;
        match &self.logits_linear {
            Some(linear) => {
                let normed = self.logits_layernorm.forward(&hidden, true)?;
                fused::linear_cross_entropy(&normed, &linear.weight, &linear.bias, labels, vocab)
            }
            None => fused::sliced_cross_entropy(&self.logits_t(&hidden, true)?.to_dtype(DType::F32)?, labels, vocab),
        }
    }

    /// The differentiable hidden states of whole sequences, before `to_logits`.
    fn training_hidden(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Tensor> {
        let n = input_ids.dim(1)?;
        if n > self.cfg.total_seq_length() {
            candle_core::bail!("sequence of {n} positions exceeds the {} the model holds", self.cfg.total_seq_length());
        }
        self.forward_train(&input_ids.to_dtype(DType::U32)?, &self.layer_masks(attention_mask)?)
    }

    /// `to_logits`: another LayerNorm, then the projection onto both vocabularies.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.logits_t(hidden, false)
    }

    fn logits_t(&self, hidden: &Tensor, train: bool) -> Result<Tensor> {
        let normed = self.logits_layernorm.forward(hidden, train)?;
        if let Some(linear) = self.logits_linear.as_ref().filter(|_| train) {
            return linear.forward(&normed);
        }
        Tensor::cat(&[self.text_head.forward(&normed)?, self.image_head.forward(&normed)?], normed.rank() - 1)
    }

    /// The logits of one vocabulary (text ids, or every image id) for `hidden` `[b, n, h]`.
    pub fn head_logits(&self, hidden: &Tensor, head: Head) -> Result<Tensor> {
        let normed = self.logits_layernorm.forward(hidden, false)?;
        match head {
            Head::Text => self.text_head.forward(&normed),
            Head::Image => self.image_head.forward(&normed),
        }
    }

    /// One decoding step on a static cache ([`Rudolph::static_cache`]): one id per row at
    /// the cache's step position, attending over its whole capacity; the logits of `head`
    /// `[b, vocab]`. Every shape and address is the same at every step, so a CUDA graph
    /// captured from it replays any later step.
    pub fn forward_step(&self, ids: &Tensor, masks: &LayerMasks, cache: &mut KvCache, head: Head) -> Result<Tensor> {
        if cache.step_position.is_none() {
            candle_core::bail!("forward_step needs a static cache");
        }
        let hidden = self.forward_masked(ids, masks, Some(cache))?;
        self.head_logits(&hidden, head)?.squeeze(1)
    }
}
