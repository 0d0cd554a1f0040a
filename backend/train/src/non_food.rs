//! `borscht prepare-non-food`: photos of anything but food, for calibrating and testing
//! the "not food" answer. They come from the scikit-image wheel on PyPI, whose sample
//! photos are CC0 or public domain; each is saved at 256 px on its short side, in one of
//! two sets kept apart: `calibration/` (what `evaluate --calibrate` fits on) and `test/`
//! (what the model card's figures and the tests measure).

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::Path;

/// A scikit-image sample photo: its file, which set it goes to, what it shows, and its
/// licence as scikit-image's `data` module states it.
struct Photo {
    file: &'static str,
    test: bool,
    shows: &'static str,
    licence: &'static str,
}

/// Every photo a set takes; coffee is left out (the demo model knows кофе).
const PHOTOS: &[Photo] = &[
    Photo { file: "brick.png", test: false, shows: "a brick wall", licence: "CC0 (CC0Textures)" },
    Photo { file: "camera.png", test: false, shows: "a man with a camera", licence: "CC0 (Lav Varshney)" },
    Photo { file: "cell.png", test: false, shows: "cells under a microscope", licence: "CC0" },
    Photo { file: "clock_motion.png", test: false, shows: "a clock", licence: "public domain (Stefan van der Walt)" },
    Photo { file: "grass.png", test: false, shows: "grass", licence: "CC0 (CC0Textures)" },
    Photo { file: "hubble_deep_field.jpg", test: false, shows: "galaxies", licence: "public domain (NASA)" },
    Photo { file: "microaneurysms.png", test: false, shows: "a retina scan", licence: "CC0 (Andreas Maier)" },
    Photo { file: "astronaut.png", test: true, shows: "an astronaut", licence: "public domain (NASA)" },
    Photo { file: "chelsea.png", test: true, shows: "a cat", licence: "CC0 (Stefan van der Walt)" },
    Photo { file: "gravel.png", test: true, shows: "gravel", licence: "CC0 (CC0Textures)" },
    Photo { file: "horse.png", test: true, shows: "a horse's silhouette", licence: "CC0 (Andreas Preuss)" },
    Photo { file: "retina.jpg", test: true, shows: "a retina", licence: "CC0" },
    Photo { file: "rocket.jpg", test: true, shows: "a rocket on its launch pad", licence: "public domain (SpaceX)" },
    Photo { file: "text.png", test: true, shows: "printed text", licence: "public domain" },
];

/// Side of the saved photos' short side.
const SIDE: u32 = 256;

/// Reads the photos from `skimage_data` (the wheel's `skimage/data`) and writes both sets
/// and their credits into `out`.
pub fn prepare_non_food(skimage_data: &Path, out: &Path) -> Result<()> {
    let mut credits = String::from(
        "# Non-food photos\n\nFrom the sample data of scikit-image 0.26.0 (the PyPI wheel's `skimage/data`), each\n\
         scaled to 256 px on its short side and saved as JPEG by `borscht prepare-non-food`\n\
         (`scripts/prepare-non-food.sh`). `calibration/` fits the demo model's \"not food\" answer,\n\
         `test/` measures it; no photo is in both.\n\n| set | file | shows | licence |\n|---|---|---|---|\n",
    );
    for set in ["calibration", "test"] {
        std::fs::create_dir_all(out.join(set))?;
    }
    for photo in PHOTOS {
        let source = skimage_data.join(photo.file);
        let image = image::open(&source).with_context(|| format!("cannot read {}", source.display()))?;
        let scale = SIDE as f64 / image.width().min(image.height()) as f64;
        let (w, h) = ((image.width() as f64 * scale).round() as u32, (image.height() as f64 * scale).round() as u32);
        let small =
            image::DynamicImage::ImageRgb8(image.to_rgb8()).resize_exact(w, h, image::imageops::FilterType::Lanczos3);
        let set = if photo.test { "test" } else { "calibration" };
        let name = Path::new(photo.file).with_extension("jpg");
        let target = out.join(set).join(&name);
        let mut file = std::io::BufWriter::new(std::fs::File::create(&target)?);
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut file, 88).encode_image(&small)?;
        let _ = writeln!(credits, "| {set} | {} | {} | {} |", name.display(), photo.shows, photo.licence);
    }
    std::fs::write(out.join("CREDITS.md"), credits)?;
    Ok(())
}
