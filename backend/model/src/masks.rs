//! RUDOLPH's attention masks, built in code exactly as rudolph 0.0.1rc4 builds them
//! (the checkpoints' bool mask buffers are not loaded).
//!
//! Every mask starts lower-triangular with the r_text rows blind to l_text. The
//! sparse layer masks then restrict how image tokens see earlier image tokens:
//! - row: an image token sees only the previous `T` image tokens (about one row);
//! - column: it sees the tokens above it in its column plus its own row start;
//! - conv: it sees a `k x k` neighbourhood (clamped at the borders).

use crate::config::RudolphConfig;
use candle_core::{Device, Result, Tensor};

/// A square 0/1 mask, row-major (`rows` attend to `cols`).
#[derive(Debug, Clone, PartialEq)]
pub struct Mask {
    pub size: usize,
    pub data: Vec<f32>,
}

impl Mask {
    fn lower_triangular(size: usize) -> Self {
        let mut data = vec![0f32; size * size];
        for row in 0..size {
            data[row * size..row * size + row + 1].fill(1.0);
        }
        Mask { size, data }
    }

    pub fn get(&self, row: usize, col: usize) -> f32 {
        self.data[row * self.size + col]
    }

    fn set(&mut self, row: usize, col: usize, value: f32) {
        self.data[row * self.size + col] = value;
    }

    /// Zeroes `rows` of column `col` (a Python slice `mask[a:b, col]`; empty when a >= b).
    fn clear_column(&mut self, rows: std::ops::Range<usize>, col: usize) {
        for row in rows.start..rows.end.min(self.size) {
            self.set(row, col, 0.0);
        }
    }

    pub fn to_tensor(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_slice(&self.data, (self.size, self.size), device)
    }
}

/// `_init_mask`: lower-triangular, the last `r` rows cannot see the first `l` columns.
fn init_mask(l: usize, t: usize, r: usize) -> Mask {
    let mut mask = Mask::lower_triangular(l + t * t + r);
    let size = mask.size;
    for row in size - r..size {
        for col in 0..l {
            mask.set(row, col, 0.0);
        }
    }
    mask
}

pub fn row_mask(l: usize, t: usize, r: usize) -> Mask {
    let mut mask = init_mask(l, t, r);
    let step = t + 1;
    let image_end = l + t * t;
    for col in l..image_end {
        mask.clear_column(col + step..image_end, col);
    }
    mask
}

pub fn col_mask(l: usize, t: usize, r: usize) -> Mask {
    let mut mask = init_mask(l, t, r);
    let step = t - 1;
    let image_end = l + t * t;
    for col in l..image_end {
        for i in (1..image_end).step_by(step + 1) {
            let a = (col + i).max(l);
            let b = (col + i + step).min(image_end);
            mask.clear_column(a..b, col);
        }
    }
    mask
}

pub fn conv_mask(l: usize, t: usize, r: usize, kernel: usize) -> Mask {
    let mut mask = init_mask(l, t, r);
    let shift = (kernel / 2) as i64;
    let image_end = l + t * t;
    for pos in l..image_end {
        mask.clear_column(pos + 1..image_end, pos);
        let pixel = (pos - l) as i64;
        let (row, col) = (pixel / t as i64, pixel % t as i64);
        for dr in -shift..=shift {
            for dc in -shift..=shift {
                let c_abs = (dc + col).clamp(0, t as i64 - 1) as usize;
                let r_abs = (dr + row).clamp(0, t as i64 - 1) as usize;
                let cell = l + r_abs * t + c_abs;
                if cell > pos {
                    mask.set(cell, pos, 1.0);
                }
            }
        }
    }
    mask
}

/// Which sparse mask a layer uses; its value is the mask's index in [`layer_masks`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerMaskKind {
    Row = 0,
    Column = 1,
    Conv = 2,
    LastConv = 3,
}

/// `SparseTransformer._get_layer_mask`, with Python's non-negative `%`.
pub fn layer_mask_kind(layer: usize, num_layers: usize) -> LayerMaskKind {
    let i = layer as i64;
    if (i - 1).rem_euclid(4) == 0 {
        LayerMaskKind::Column
    } else if layer == num_layers - 1 {
        LayerMaskKind::LastConv
    } else if (i - 3).rem_euclid(4) == 0 {
        LayerMaskKind::Conv
    } else {
        LayerMaskKind::Row
    }
}

/// The four sparse masks of a config, as the reference builds them: the conv masks
/// are made with `l_text_seq_length` standing in for `r_text_seq_length` (a quirk of
/// rc4; harmless for r <= l, which [`RudolphConfig::validate`] requires).
pub fn layer_masks(cfg: &RudolphConfig) -> [Mask; 4] {
    let (l, t, r) = (cfg.l_text_seq_length, cfg.image_tokens_per_dim, cfg.r_text_seq_length);
    [
        row_mask(l, t, r),
        col_mask(l, t, r),
        conv_mask(l, t, l, cfg.kernel_size),
        conv_mask(l, t, l, cfg.last_kernel_size),
    ]
}

/// `get_attention_mask`: per sample, lower-triangular; if a sample's r_text mask has
/// its first zero at k > 0, every row from `L + I + k` on is zeroed. Returns `[b, 1, S, S]`.
pub fn attention_mask(cfg: &RudolphConfig, r_text_masks: &[Vec<f32>], device: &Device) -> Result<Tensor> {
    let size = cfg.total_seq_length();
    let start = cfg.l_text_seq_length + cfg.image_seq_length();
    let mut data = Vec::with_capacity(r_text_masks.len() * size * size);
    for mask in r_text_masks {
        let mut m = Mask::lower_triangular(size);
        // torch.argmin: index of the first minimum.
        let first_min = mask
            .iter()
            .enumerate()
            .fold(None::<(usize, f32)>, |best, (i, &v)| match best {
                Some((_, b)) if b <= v => best,
                _ => Some((i, v)),
            })
            .map_or(0, |(i, _)| i);
        if first_min > 0 {
            m.data[(start + first_min).min(size) * size..].fill(0.0);
        }
        data.extend_from_slice(&m.data);
    }
    Tensor::from_vec(data, (r_text_masks.len(), 1, size, size), device)
}

/// The plain causal mask for `batch` samples (every r_text position valid).
pub fn causal_mask(cfg: &RudolphConfig, batch: usize, device: &Device) -> Result<Tensor> {
    attention_mask(cfg, &vec![vec![1.0; cfg.r_text_seq_length]; batch], device)
}

/// `get_t2t_attention_mask`: lower-triangular with every row from `L` on zeroed.
pub fn t2t_attention_mask(cfg: &RudolphConfig, batch: usize, device: &Device) -> Result<Tensor> {
    let size = cfg.total_seq_length();
    let mut m = Mask::lower_triangular(size);
    m.data[cfg.l_text_seq_length * size..].fill(0.0);
    Tensor::from_slice(&m.data, (1, 1, size, size), device)?.repeat((batch, 1, 1, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_kinds_follow_python_modulo() {
        use LayerMaskKind::*;
        let kinds = |n: usize| (0..n).map(|i| layer_mask_kind(i, n)).collect::<Vec<_>>();
        assert_eq!(kinds(5), vec![Row, Column, Row, Conv, LastConv]);
        // The column rule is checked first: the last of 6 layers is a column layer.
        assert_eq!(kinds(6), vec![Row, Column, Row, Conv, Row, Column]);
        assert_eq!(layer_mask_kind(23, 24), LastConv);
    }

    #[test]
    fn row_mask_sees_only_the_last_row_of_image_tokens() {
        let (l, t, r) = (2, 3, 2);
        let m = row_mask(l, t, r);
        let img = |i: usize| l + i;
        assert_eq!(m.get(img(3), img(0)), 1.0); // T steps back: still seen
        assert_eq!(m.get(img(4), img(0)), 0.0); // T + 1 steps back: hidden
        assert_eq!(m.get(img(5), img(2)), 1.0);
        assert_eq!(m.get(img(8), img(3)), 0.0);
        assert_eq!(m.get(img(2), img(5)), 0.0); // causal
        assert_eq!(m.get(l + t * t, 0), 0.0); // r_text blind to l_text
        assert_eq!(m.get(l + t * t, img(8)), 1.0);
    }

    #[test]
    fn conv_mask_opens_the_neighbourhood_only() {
        let (l, t) = (1, 4);
        let m = conv_mask(l, t, l, 3);
        let img = |r: usize, c: usize| l + r * t + c;
        assert_eq!(m.get(img(1, 1), img(0, 0)), 1.0);
        assert_eq!(m.get(img(2, 2), img(0, 0)), 0.0);
        assert_eq!(m.get(img(0, 3), img(0, 0)), 0.0); // same row, too far
        assert_eq!(m.get(img(0, 1), img(0, 0)), 1.0);
    }
}
