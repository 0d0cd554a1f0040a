//! Training-time image augmentation for `borscht train --augment N`: each picture
//! gets N extra renderings (a random zoom, shift, small rotation, mirror and colour
//! jitter), encoded to image codes once and cached; every epoch draws one of them.
//! With ~500 pictures a model otherwise learns each picture's exact codes (where the
//! dish sits, how big it is) instead of the dish.

use image::{Rgb, RgbImage};
use rand::Rng;

/// How far a rendering may depart from the picture.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// Zoom factor range (1 keeps the size; < 1 shows more border).
    pub scale: (f32, f32),
    /// Largest shift, as a share of the side.
    pub max_shift: f32,
    /// Largest rotation in degrees, either way.
    pub max_rotation_deg: f32,
    /// Mirror left-right half of the time.
    pub mirror: bool,
    /// Brightness and contrast factors are drawn from 1 ± this.
    pub light_jitter: f32,
    /// Saturation factor range (0 is grey).
    pub saturation: (f32, f32),
    /// Style changes, each applied with its probability: other icon sets draw the same
    /// dish with or without outlines, in flat or shaded colours, with more or less detail.
    pub styles: StyleChanges,
}

/// Probabilities of the drawing-style changes (all 0: none, and no random draws).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StyleChanges {
    /// Dark outlines along strong colour edges.
    pub outline: f64,
    /// Colours cut to a few levels per channel (flat shading).
    pub posterize: f64,
    /// A 3x3 box blur (less detail).
    pub blur: f64,
    /// Largest hue rotation in degrees, either way.
    pub max_hue_deg: f32,
}

impl Default for Augmentation {
    fn default() -> Self {
        Augmentation {
            scale: (0.8, 1.15),
            max_shift: 0.12,
            max_rotation_deg: 12.0,
            mirror: true,
            light_jitter: 0.12,
            saturation: (0.6, 1.3),
            styles: StyleChanges::default(),
        }
    }
}

impl Augmentation {
    /// One random rendering of `image` (same size). Pixels that come from outside
    /// the picture repeat its nearest edge, which for icons and most food photos is
    /// background.
    pub fn apply(&self, image: &RgbImage, rng: &mut impl Rng) -> RgbImage {
        let (w, h) = image.dimensions();
        let scale = rng.random_range(self.scale.0..=self.scale.1);
        let side = w.max(h) as f32;
        let shift = (
            rng.random_range(-self.max_shift..=self.max_shift) * side,
            rng.random_range(-self.max_shift..=self.max_shift) * side,
        );
        let angle = rng.random_range(-self.max_rotation_deg..=self.max_rotation_deg).to_radians();
        let mirror = self.mirror && rng.random_bool(0.5);
        let brightness = rng.random_range(1.0 - self.light_jitter..=1.0 + self.light_jitter);
        let contrast = rng.random_range(1.0 - self.light_jitter..=1.0 + self.light_jitter);
        let saturation = rng.random_range(self.saturation.0..=self.saturation.1);

        // Output pixel -> source position: undo the shift, the zoom and the rotation
        // about the centre, then the mirror.
        let centre = (w as f32 / 2.0, h as f32 / 2.0);
        let (sin, cos) = angle.sin_cos();
        let mean = mean_luma(image);
        let geometric = RgbImage::from_fn(w, h, |x, y| {
            let dx = (x as f32 + 0.5 - centre.0 - shift.0) / scale;
            let dy = (y as f32 + 0.5 - centre.1 - shift.1) / scale;
            let mut sx = cos * dx + sin * dy;
            let sy = -sin * dx + cos * dy;
            if mirror {
                sx = -sx;
            }
            let [r, g, b] = bilinear(image, sx + centre.0 - 0.5, sy + centre.1 - 0.5);
            let luma = 0.299 * r + 0.587 * g + 0.114 * b;
            let adjust = |c: f32| {
                let saturated = luma + (c - luma) * saturation;
                let contrasted = mean + (saturated - mean) * contrast;
                (contrasted * brightness).round().clamp(0.0, 255.0) as u8
            };
            Rgb([adjust(r), adjust(g), adjust(b)])
        });
        self.styles.apply(geometric, rng)
    }
}

impl StyleChanges {
    /// What `borscht train --augment-styles` applies.
    pub const MIXED: StyleChanges = StyleChanges { outline: 0.25, posterize: 0.25, blur: 0.25, max_hue_deg: 12.0 };

    fn is_none(&self) -> bool {
        self.outline == 0.0 && self.posterize == 0.0 && self.blur == 0.0 && self.max_hue_deg == 0.0
    }

    /// Drawn after the geometry and colour (so those draws stay as they were), in a
    /// fixed order: hue, outline, posterize, blur.
    fn apply(&self, mut image: RgbImage, rng: &mut impl Rng) -> RgbImage {
        if self.is_none() {
            return image;
        }
        let hue = rng.random_range(-self.max_hue_deg..=self.max_hue_deg).to_radians();
        let (outline, posterize, blur) =
            (rng.random_bool(self.outline), rng.random_bool(self.posterize), rng.random_bool(self.blur));
        if hue != 0.0 {
            rotate_hue(&mut image, hue);
        }
        if outline {
            image = darken_edges(&image);
        }
        if posterize {
            // Four levels per channel, at the centres of their ranges.
            for pixel in image.pixels_mut() {
                for c in pixel.0.iter_mut() {
                    *c = (*c / 64) * 64 + 32;
                }
            }
        }
        if blur {
            image = box_blur(&image);
        }
        image
    }
}

/// Rotates every colour's hue by `angle` radians about the grey axis (in YIQ space, so
/// brightness stays).
fn rotate_hue(image: &mut RgbImage, angle: f32) {
    let (sin, cos) = angle.sin_cos();
    for pixel in image.pixels_mut() {
        let [r, g, b] = pixel.0.map(|c| c as f32);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        let i = 0.596 * r - 0.274 * g - 0.322 * b;
        let q = 0.211 * r - 0.523 * g + 0.312 * b;
        let (i, q) = (i * cos - q * sin, i * sin + q * cos);
        let back = [y + 0.956 * i + 0.621 * q, y - 0.272 * i - 0.647 * q, y - 1.106 * i + 1.703 * q];
        pixel.0 = back.map(|c| c.round().clamp(0.0, 255.0) as u8);
    }
}

/// Pixels on a strong brightness edge (Sobel magnitude above a third of full scale)
/// turned dark, like an outlined drawing.
fn darken_edges(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    let luma = |x: i64, y: i64| {
        let p = image.get_pixel(x.clamp(0, w as i64 - 1) as u32, y.clamp(0, h as i64 - 1) as u32);
        0.299 * p[0] as f32 + 0.587 * p[1] as f32 + 0.114 * p[2] as f32
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (x, y) = (x as i64, y as i64);
        let gx = luma(x + 1, y - 1) + 2.0 * luma(x + 1, y) + luma(x + 1, y + 1)
            - luma(x - 1, y - 1)
            - 2.0 * luma(x - 1, y)
            - luma(x - 1, y + 1);
        let gy = luma(x - 1, y + 1) + 2.0 * luma(x, y + 1) + luma(x + 1, y + 1)
            - luma(x - 1, y - 1)
            - 2.0 * luma(x, y - 1)
            - luma(x + 1, y - 1);
        let p = *image.get_pixel(x as u32, y as u32);
        if (gx * gx + gy * gy).sqrt() > 255.0 / 3.0 {
            Rgb(p.0.map(|c| (c as f32 * 0.3) as u8))
        } else {
            p
        }
    })
}

/// The mean of each pixel's 3x3 neighbourhood (edges clamped).
fn box_blur(image: &RgbImage) -> RgbImage {
    let (w, h) = image.dimensions();
    RgbImage::from_fn(w, h, |x, y| {
        let mut sum = [0u32; 3];
        for dy in -1i64..=1 {
            for dx in -1i64..=1 {
                let px = (x as i64 + dx).clamp(0, w as i64 - 1) as u32;
                let py = (y as i64 + dy).clamp(0, h as i64 - 1) as u32;
                for (s, c) in sum.iter_mut().zip(image.get_pixel(px, py).0) {
                    *s += c as u32;
                }
            }
        }
        Rgb(sum.map(|s| ((s + 4) / 9) as u8))
    })
}

fn mean_luma(image: &RgbImage) -> f32 {
    let total: f64 = image.pixels().map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64).sum();
    (total / (image.width() as f64 * image.height() as f64).max(1.0)) as f32
}

/// The colour at a fractional pixel position, clamped to the picture's edge.
fn bilinear(image: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = image.dimensions();
    let x = x.clamp(0.0, (w - 1) as f32);
    let y = y.clamp(0.0, (h - 1) as f32);
    let (x0, y0) = (x.floor() as u32, y.floor() as u32);
    let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let mut out = [0f32; 3];
    for (c, value) in out.iter_mut().enumerate() {
        let at = |px: u32, py: u32| image.get_pixel(px, py)[c] as f32;
        let top = at(x0, y0) * (1.0 - fx) + at(x1, y0) * fx;
        let bottom = at(x0, y1) * (1.0 - fx) + at(x1, y1) * fx;
        *value = top * (1.0 - fy) + bottom * fy;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// A grey picture with a red square left of centre.
    fn picture() -> RgbImage {
        RgbImage::from_fn(32, 32, |x, y| {
            if (6..14).contains(&x) && (12..20).contains(&y) {
                Rgb([200, 20, 20])
            } else {
                Rgb([128, 128, 128])
            }
        })
    }

    fn red_centre_x(image: &RgbImage) -> f32 {
        let red: Vec<u32> =
            image.enumerate_pixels().filter(|(_, _, p)| p[0] > 150 && p[1] < 80).map(|(x, _, _)| x).collect();
        red.iter().sum::<u32>() as f32 / red.len() as f32
    }

    const IDENTITY: Augmentation = Augmentation {
        scale: (1.0, 1.0),
        max_shift: 0.0,
        max_rotation_deg: 0.0,
        mirror: false,
        light_jitter: 0.0,
        saturation: (1.0, 1.0),
        styles: StyleChanges { outline: 0.0, posterize: 0.0, blur: 0.0, max_hue_deg: 0.0 },
    };

    #[test]
    fn the_identity_keeps_the_picture() {
        let image = picture();
        assert_eq!(IDENTITY.apply(&image, &mut rand::rngs::StdRng::seed_from_u64(1)), image);
    }

    #[test]
    fn a_mirror_moves_the_dish_to_the_other_side_and_edges_repeat_the_background() {
        let mirror_only = Augmentation { scale: (0.7, 0.7), mirror: true, ..IDENTITY };
        let image = picture();
        let (mut mirrored, mut plain) = (0, 0);
        for seed in 0..8 {
            let out = mirror_only.apply(&image, &mut rand::rngs::StdRng::seed_from_u64(seed));
            // Zoomed out: the border comes from the clamped edge, plain grey.
            assert_eq!(out.get_pixel(0, 0), &Rgb([128, 128, 128]));
            if red_centre_x(&out) > 16.0 {
                mirrored += 1;
            } else {
                plain += 1;
            }
        }
        assert!(mirrored > 0 && plain > 0, "{mirrored} mirrored, {plain} not");
    }

    #[test]
    fn style_changes_outline_flatten_and_blur() {
        let image = picture();
        let only =
            |styles| Augmentation { styles, ..IDENTITY }.apply(&image, &mut rand::rngs::StdRng::seed_from_u64(5));
        let none = StyleChanges::default();
        // The square's edge turns dark; its inside and the background stay.
        let outlined = only(StyleChanges { outline: 1.0, ..none });
        assert!(outlined.get_pixel(6, 15)[0] < 80, "{:?}", outlined.get_pixel(6, 15));
        assert_eq!(outlined.get_pixel(10, 15), image.get_pixel(10, 15));
        assert_eq!(outlined.get_pixel(25, 25), image.get_pixel(25, 25));
        // Four levels a channel.
        let flat = only(StyleChanges { posterize: 1.0, ..none });
        assert_eq!(flat.get_pixel(10, 15), &Rgb([224, 32, 32]));
        assert_eq!(flat.get_pixel(25, 25), &Rgb([160, 160, 160]));
        // The blur mixes the square's edge with the background, not its inside.
        let blurred = only(StyleChanges { blur: 1.0, ..none });
        assert_eq!(blurred.get_pixel(10, 15), image.get_pixel(10, 15));
        let edge = blurred.get_pixel(6, 15)[0];
        assert!((128..200).contains(&edge), "{edge}");
        // A hue turn keeps grey grey and moves red.
        let turned = only(StyleChanges { max_hue_deg: 40.0, ..none });
        assert_eq!(turned.get_pixel(25, 25), image.get_pixel(25, 25));
        assert_ne!(turned.get_pixel(10, 15), image.get_pixel(10, 15));
    }

    #[test]
    fn renderings_differ_and_repeat_for_a_seed() {
        let augmentation = Augmentation::default();
        let image = picture();
        let draw = |seed| augmentation.apply(&image, &mut rand::rngs::StdRng::seed_from_u64(seed));
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        assert_eq!(draw(3).dimensions(), (32, 32));
    }
}
