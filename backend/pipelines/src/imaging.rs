//! Photos in and pictures out: decoding with limits and EXIF orientation, the
//! reference's square preparation for the VQGAN, PNG encoding and grids.

use candle_core::{Device, Tensor};
use image::{DynamicImage, ImageDecoder, ImageReader, Limits, RgbImage};
use std::io::Cursor;

/// Bounds checked before and while decoding, so a decompression bomb costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct ImageLimits {
    pub max_bytes: usize,
    pub max_width: u32,
    pub max_height: u32,
    pub max_pixels: u64,
}

impl Default for ImageLimits {
    /// Phone photos fit easily (48 MP sensors give 8000 x 6000).
    fn default() -> Self {
        ImageLimits { max_bytes: 20 << 20, max_width: 12_000, max_height: 12_000, max_pixels: 50_000_000 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageInputError {
    #[error("the image is {bytes} bytes; the limit is {max} bytes")]
    TooManyBytes { bytes: usize, max: usize },
    #[error("the image is {width}x{height} pixels; the limit is {max_pixels} pixels and {max_side} per side")]
    TooManyPixels { width: u32, height: u32, max_pixels: u64, max_side: u32 },
    #[error("not an image format we read (JPEG, PNG, WebP, GIF, BMP)")]
    UnknownFormat,
    #[error("the image could not be decoded: {0}")]
    Corrupt(String),
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Decodes an uploaded image, upright (EXIF orientation applied), within `limits`.
pub fn decode_image(bytes: &[u8], limits: ImageLimits) -> Result<DynamicImage, ImageInputError> {
    if bytes.len() > limits.max_bytes {
        return Err(ImageInputError::TooManyBytes { bytes: bytes.len(), max: limits.max_bytes });
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| ImageInputError::Corrupt(e.to_string()))?;
    if reader.format().is_none() {
        return Err(ImageInputError::UnknownFormat);
    }
    let mut decoder = reader.into_decoder().map_err(|e| ImageInputError::Corrupt(e.to_string()))?;
    // The header's size, checked before a single pixel is decoded.
    let (width, height) = decoder.dimensions();
    if width > limits.max_width || height > limits.max_height || width as u64 * height as u64 > limits.max_pixels {
        return Err(ImageInputError::TooManyPixels {
            width,
            height,
            max_pixels: limits.max_pixels,
            max_side: limits.max_width.max(limits.max_height),
        });
    }
    // A header may say 0x0 (GIF does); such a picture would reach the model as blank.
    if width == 0 || height == 0 {
        return Err(ImageInputError::Corrupt(format!("the image is {width}x{height} pixels: it has none")));
    }
    let mut decoder_limits = Limits::default();
    decoder_limits.max_image_width = Some(limits.max_width);
    decoder_limits.max_image_height = Some(limits.max_height);
    decoder_limits.max_alloc = Some(limits.max_pixels * 4 * 2);
    decoder.set_limits(decoder_limits).map_err(|e| ImageInputError::Corrupt(e.to_string()))?;
    let orientation = decoder.orientation().map_err(|e| ImageInputError::Corrupt(e.to_string()))?;
    // A decoder that panics on a broken file (zune-jpeg 0.5's AVX2 upsampler does on some
    // damaged JPEGs) refuses the file like any other broken one.
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| DynamicImage::from_decoder(decoder)))
        .map_err(|_| ImageInputError::Corrupt("the image's data is damaged (its decoder gave up)".into()))?;
    let mut image = decoded.map_err(|e| ImageInputError::Corrupt(e.to_string()))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Reads and decodes an image file.
pub fn open_image(path: &std::path::Path, limits: ImageLimits) -> Result<DynamicImage, ImageInputError> {
    let bytes =
        std::fs::read(path).map_err(|source| ImageInputError::Io { path: path.display().to_string(), source })?;
    decode_image(&bytes, limits)
}

/// The reference's preparation: RGB, centre square crop of the short side, resized to
/// `size` (torchvision's RandomResizedCrop with scale and ratio fixed to 1), as a
/// `[3, size, size]` tensor in [0, 1].
pub fn prepare(image: &DynamicImage, size: u32, device: &Device) -> candle_core::Result<Tensor> {
    let data: Vec<f32> = square_rgb(image, size).into_raw().into_iter().map(|v| v as f32 / 255.0).collect();
    Tensor::from_vec(data, (size as usize, size as usize, 3), device)?.permute((2, 0, 1))?.contiguous()
}

/// The picture as [`prepare`] reads it: RGB8, the centre square of the short side,
/// resized to `size`. A picture that is this already comes back unchanged, so the server
/// can shrink uploads to it at once and keep only `size * size * 3` bytes a request.
pub fn square_rgb(image: &DynamicImage, size: u32) -> RgbImage {
    let rgb = match image {
        DynamicImage::ImageRgb8(rgb) if rgb.width() == size && rgb.height() == size => return rgb.clone(),
        DynamicImage::ImageRgb8(rgb) => std::borrow::Cow::Borrowed(rgb),
        other => std::borrow::Cow::Owned(other.to_rgb8()),
    };
    let side = rgb.width().min(rgb.height());
    let (x, y) = ((rgb.width() - side) / 2, (rgb.height() - side) / 2);
    let square = image::imageops::crop_imm(rgb.as_ref(), x, y, side, side).to_image();
    if side == size {
        square
    } else {
        image::imageops::resize(&square, size, size, image::imageops::FilterType::Triangle)
    }
}

/// A `[3, H, W]` tensor in [0, 1] as an RGB picture.
pub fn to_rgb_image(tensor: &Tensor) -> candle_core::Result<RgbImage> {
    let (c, h, w) = tensor.dims3()?;
    if c != 3 {
        candle_core::bail!("expected 3 channels, got {c}");
    }
    let data: Vec<u8> = (tensor.to_dtype(candle_core::DType::F32)?.clamp(0f32, 1f32)? * 255.0)?
        .round()?
        .permute((1, 2, 0))?
        .flatten_all()?
        .to_vec1::<f32>()?
        .into_iter()
        .map(|v| v as u8)
        .collect();
    Ok(RgbImage::from_raw(w as u32, h as u32, data).expect("buffer size matches the dims"))
}

/// PNG bytes of a picture.
pub fn encode_png(image: &RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png)
        .expect("PNG encoding into memory cannot fail");
    bytes
}

/// Pictures of equal size laid out in rows of `columns`, with a 2-pixel white gap.
pub fn grid(images: &[RgbImage], columns: usize) -> RgbImage {
    let Some(first) = images.first() else { return RgbImage::new(1, 1) };
    let (w, h, gap) = (first.width(), first.height(), 2);
    let columns = columns.clamp(1, images.len()) as u32;
    let rows = (images.len() as u32).div_ceil(columns);
    let mut out = RgbImage::from_pixel(columns * (w + gap) - gap, rows * (h + gap) - gap, image::Rgb([255, 255, 255]));
    for (i, image) in images.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        image::imageops::replace(&mut out, image, (col * (w + gap)) as i64, (row * (h + gap)) as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    fn png_of(image: &RgbImage) -> Vec<u8> {
        encode_png(image)
    }

    #[test]
    fn prepare_crops_the_centre_square_and_scales_to_unit_range() {
        // 30x10: left third red, middle green, right blue; the centre square is green.
        let image = RgbImage::from_fn(30, 10, |x, _| match x / 10 {
            0 => image::Rgb([255, 0, 0]),
            1 => image::Rgb([0, 255, 0]),
            _ => image::Rgb([0, 0, 255]),
        });
        let t = prepare(&DynamicImage::ImageRgb8(image), 10, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [3, 10, 10]);
        let means: Vec<f32> = t.mean((1, 2)).unwrap().to_vec1().unwrap();
        assert_eq!(means, vec![0.0, 1.0, 0.0]);
    }

    #[test]
    fn png_round_trip_and_grid() {
        let t = Tensor::rand(0f32, 1f32, (3, 6, 4), &Device::Cpu).unwrap();
        let rgb = to_rgb_image(&t).unwrap();
        let decoded = decode_image(&png_of(&rgb), ImageLimits::default()).unwrap().to_rgb8();
        assert_eq!(decoded, rgb);
        let g = grid(&[rgb.clone(), rgb.clone(), rgb], 2);
        assert_eq!((g.width(), g.height()), (4 * 2 + 2, 6 * 2 + 2));
    }

    #[test]
    fn bad_input_is_refused_clearly() {
        let limits = ImageLimits { max_bytes: 100, ..ImageLimits::default() };
        assert!(matches!(decode_image(&[0u8; 200], limits), Err(ImageInputError::TooManyBytes { .. })));
        assert!(matches!(
            decode_image(b"hello, not an image", ImageLimits::default()),
            Err(ImageInputError::UnknownFormat)
        ));
        let mut png = png_of(&RgbImage::new(8, 8));
        png.truncate(png.len() - 20);
        assert!(matches!(decode_image(&png, ImageLimits::default()), Err(ImageInputError::Corrupt(_))));
        let big = png_of(&RgbImage::new(300, 200));
        let small = ImageLimits { max_pixels: 10_000, ..ImageLimits::default() };
        let err = decode_image(&big, small).unwrap_err();
        assert!(err.to_string().contains("300x200"), "{err}");
    }

    /// A GIF whose screen and frame say 0x0 decoded to an empty picture that the server
    /// then sent to the model as a blank one.
    #[test]
    fn a_picture_without_pixels_is_refused() {
        let mut gif = Vec::new();
        DynamicImage::ImageRgb8(RgbImage::new(3, 2))
            .write_to(&mut Cursor::new(&mut gif), image::ImageFormat::Gif)
            .unwrap();
        gif[6..10].copy_from_slice(&[0; 4]);
        let err = decode_image(&gif, ImageLimits::default()).unwrap_err();
        assert!(matches!(err, ImageInputError::Corrupt(_)) && err.to_string().contains("0x0"), "{err}");
    }

    /// A 16x8 JPEG, white with a red top-left corner, whose EXIF says `orientation`.
    fn jpeg_with_orientation(orientation: u16) -> Vec<u8> {
        let picture = RgbImage::from_fn(16, 8, |x, y| if x < 4 && y < 4 { Rgb([255, 0, 0]) } else { Rgb([255; 3]) });
        let mut jpeg = Vec::new();
        DynamicImage::ImageRgb8(picture).write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        // APP1 Exif segment: II*\0, IFD with one entry: Orientation (0x0112).
        let tiff: Vec<u8> = [
            b"II*\0".as_slice(),
            &8u32.to_le_bytes(),
            &1u16.to_le_bytes(),
            &0x0112u16.to_le_bytes(),
            &3u16.to_le_bytes(),
            &1u32.to_le_bytes(),
            &orientation.to_le_bytes(),
            &[0, 0],
            &0u32.to_le_bytes(),
        ]
        .concat();
        let payload = [b"Exif\0\0".as_slice(), &tiff].concat();
        let mut segment = vec![0xFF, 0xE1];
        segment.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
        segment.extend_from_slice(&payload);
        jpeg.splice(2..2, segment);
        jpeg
    }

    /// Each of EXIF's eight orientations turns the picture upright: the size, and where
    /// the marked corner ends up (by the EXIF specification's table).
    /// A damaged JPEG (found by AFL) on which the JPEG decoder panics: refused as
    /// damaged, not a panic.
    #[test]
    fn a_jpeg_its_decoder_panics_on_is_refused() {
        let hex = [
            "ffd8ffe00010564547420001010000010001fa00ffe1002241006962000059520024000000070101010a000300000001",
            "0006000000000198ffdb004301171906070605080707070909080a0c140d0c0b0b0c190a130f141d1a01001d1a1c1c20",
            "253e26202a2c211c1c2a37222e30313633360128333f35373f2e333339ffdb0043002020090909090909090909090909",
            "090909090935393635393834393736383737350a3133353837363637393638343836373435323635323337b238363936",
            "3433ffc200110800b8000803012101021101034200ffc4001f0000010501010101010100000000000000000102030405",
            "060708090a034cae69797467707474777376fcfbfac6c6c6c6c6c6c6c6c6436c45515652c6c698999aa2a3a491a6a7a8",
            "a9aab2b3b4b5b6b7b8b9bac2c3c4ba85ffda000c0301fe020e030e0100888786",
        ]
        .concat();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let error = decode_image(&bytes, ImageLimits::default()).unwrap_err();
        assert!(matches!(error, ImageInputError::Corrupt(_)), "{error}");
    }

    #[test]
    fn every_exif_orientation_is_applied() {
        // (orientation, upright size, corner holding the mark: (right?, bottom?))
        let expected = [
            (1, (16, 8), (false, false)), // as stored
            (2, (16, 8), (true, false)),  // mirrored left-right
            (3, (16, 8), (true, true)),   // turned 180°
            (4, (16, 8), (false, true)),  // mirrored top-bottom
            (5, (8, 16), (false, false)), // transposed
            (6, (8, 16), (true, false)),  // turned 90° clockwise
            (7, (8, 16), (true, true)),   // transversed
            (8, (8, 16), (false, true)),  // turned 90° anticlockwise
        ];
        for (orientation, size, mark) in expected {
            let image = decode_image(&jpeg_with_orientation(orientation), ImageLimits::default()).unwrap().to_rgb8();
            assert_eq!(image.dimensions(), size, "orientation {orientation}");
            let (w, h) = size;
            for (right, bottom) in [(false, false), (true, false), (false, true), (true, true)] {
                let pixel = image.get_pixel(if right { w - 2 } else { 1 }, if bottom { h - 2 } else { 1 });
                let red = pixel[0] > 180 && pixel[1] < 110 && pixel[2] < 110;
                assert_eq!(
                    red,
                    (right, bottom) == mark,
                    "orientation {orientation}: corner {right},{bottom} is {pixel:?}"
                );
            }
        }
    }
}
