//! The examples users teach the model with (`borscht serve --dataset DIR`, off by
//! default): each is the photo exactly as it was sent and its caption in the article's
//! format (`блюдо: …; белков: …; жиров: …; углеводов: …; ккал: …;`), with who sent it, when,
//! from where in the app, and the consent they gave.
//!
//! On disk an example is two files in `DIR`: `<id>.<jpg|png|…>` (the photo) and
//! `<id>.json` (an [`Example`]), the JSON written last, so a listed example is always
//! whole. [`Dataset::export`] writes the article's CSV and the pictures as a zip;
//! [`Dataset::snapshot`] writes the same into a folder for a fine-tune.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The longest dish name an example may give.
pub const MAX_DISH_CHARS: usize = 60;
/// The longest consent text an example may carry (the app's is about 150 characters).
pub const MAX_CONSENT_CHARS: usize = 500;
/// What an example's record takes at most besides its photo (the dish and consent
/// bounded, the sender's address): counted against the store's bytes.
const RECORD_BYTES: u64 = 4096;

/// Where in the app an example came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExampleSource {
    /// "Wrong? Tell us" under an answer.
    Correction,
    /// A meal saved in the app's history, sent later.
    History,
}

/// One stored example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Example {
    pub id: String,
    pub dish: String,
    pub protein_g: f32,
    pub fat_g: f32,
    pub carbs_g: f32,
    pub kcal: f32,
    /// The training caption, in the article's format.
    pub caption: String,
    /// When it was stored (RFC 3339, UTC).
    pub created_at: String,
    /// The sender's address, as the server saw it.
    pub client: String,
    pub source: ExampleSource,
    /// The consent the sender agreed to, as the app showed it.
    pub consent: String,
    /// The photo's file name beside the example, and its size.
    pub photo: String,
    pub photo_bytes: u64,
}

/// What a client sends to store an example (the photo already checked as a picture).
#[derive(Debug, Clone)]
pub struct NewExample {
    pub dish: String,
    pub protein_g: f32,
    pub fat_g: f32,
    pub carbs_g: f32,
    pub kcal: f32,
    pub source: ExampleSource,
    pub consent: String,
    pub client: String,
    pub photo: Vec<u8>,
}

/// Why an example was not stored: the client's fault, or the store's.
#[derive(Debug)]
pub enum StoreError {
    Invalid(String),
    /// At its bounds: this many examples, or photos of this many bytes.
    Full {
        examples: usize,
        bytes: u64,
    },
    Io(anyhow::Error),
}

impl NewExample {
    /// Refuses a dish name or values that would make a broken caption.
    pub fn check(&self) -> Result<(), String> {
        let dish = self.dish.trim();
        if dish.is_empty() {
            return Err("give the dish's name".into());
        }
        if dish.chars().count() > MAX_DISH_CHARS {
            return Err(format!("the dish's name is over {MAX_DISH_CHARS} characters"));
        }
        if dish.chars().any(|c| c == ';' || c == ':' || c.is_control()) {
            return Err("the dish's name may not hold ';', ':' or line breaks".into());
        }
        for (what, value, max) in [
            ("protein", self.protein_g, 100.0),
            ("fat", self.fat_g, 100.0),
            ("carbohydrate", self.carbs_g, 100.0),
            ("kcal", self.kcal, 950.0),
        ] {
            if !(value.is_finite() && (0.0..=max).contains(&value)) {
                return Err(format!("{what} per 100 g must be between 0 and {max}, not {value}"));
            }
        }
        if self.protein_g + self.fat_g + self.carbs_g > 100.0 {
            return Err("protein, fat and carbohydrate add up to over 100 g per 100 g".into());
        }
        if self.consent.trim().is_empty() {
            return Err("an example is stored only with the sender's consent".into());
        }
        if self.consent.chars().count() > MAX_CONSENT_CHARS {
            return Err(format!("the consent's text is over {MAX_CONSENT_CHARS} characters"));
        }
        Ok(())
    }
}

/// The caption the model trains on, in the article's format.
pub fn caption(dish: &str, protein_g: f32, fat_g: f32, carbs_g: f32, kcal: f32) -> String {
    format!("блюдо: {}; белков: {protein_g}; жиров: {fat_g}; углеводов: {carbs_g}; ккал: {kcal};", dish.trim())
}

/// The example store in one folder.
pub struct Dataset {
    dir: PathBuf,
    max_examples: usize,
    max_bytes: u64,
    /// Examples stored, their bytes, and the time (ms) in the last id given; adds and
    /// deletes take it one at a time, so the store stays within its bounds.
    usage: Mutex<(usize, u64, i128)>,
}

impl Dataset {
    /// Opens (creating) the folder, which may hold up to `max_examples` examples whose
    /// photos take up to `max_bytes` together.
    pub fn open(dir: &Path, max_examples: usize, max_bytes: u64) -> Result<Dataset> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create the dataset folder {}", dir.display()))?;
        let mut dataset = Dataset { dir: dir.to_path_buf(), max_examples, max_bytes, usage: Mutex::new((0, 0, 0)) };
        let examples = dataset.list()?;
        let bytes = examples.iter().map(|e| e.photo_bytes + RECORD_BYTES).sum();
        dataset.usage = Mutex::new((examples.len(), bytes, 0));
        Ok(dataset)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stores an example; its id comes back in it.
    pub fn add(&self, new: NewExample) -> Result<Example, StoreError> {
        new.check().map_err(StoreError::Invalid)?;
        let extension = match image::guess_format(&new.photo) {
            Ok(format) => format.extensions_str().first().copied().unwrap_or("img"),
            Err(_) => return Err(StoreError::Invalid("the photo is not a picture".into())),
        };
        let mut usage = self.usage.lock().expect("dataset lock");
        let (count, bytes, last_ms) = *usage;
        if count >= self.max_examples || bytes + new.photo.len() as u64 + RECORD_BYTES > self.max_bytes {
            return Err(StoreError::Full { examples: self.max_examples, bytes: self.max_bytes });
        }
        let now = time::OffsetDateTime::now_utc();
        // Ids sort in the order examples came: one millisecond apart at least.
        let ms = (now.unix_timestamp_nanos() / 1_000_000).max(last_ms + 1);
        let id = format!("{ms}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let photo = format!("{id}.{extension}");
        let dish = new.dish.trim().to_string();
        let example = Example {
            caption: caption(&dish, new.protein_g, new.fat_g, new.carbs_g, new.kcal),
            id: id.clone(),
            dish,
            protein_g: new.protein_g,
            fat_g: new.fat_g,
            carbs_g: new.carbs_g,
            kcal: new.kcal,
            created_at: now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            client: new.client,
            source: new.source,
            consent: new.consent.trim().to_string(),
            photo: photo.clone(),
            photo_bytes: new.photo.len() as u64,
        };
        let write = || -> Result<()> {
            borscht_pipelines::write_atomically(&self.dir.join(&photo), |p| Ok(std::fs::write(p, &new.photo)?))?;
            let json = serde_json::to_vec_pretty(&example)?;
            borscht_pipelines::write_atomically(&self.dir.join(format!("{id}.json")), |p| Ok(std::fs::write(p, &json)?))
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(self.dir.join(&photo));
            StoreError::Io(e.context("cannot store the example"))
        })?;
        *usage = (count + 1, bytes + example.photo_bytes + RECORD_BYTES, ms);
        Ok(example)
    }

    /// Every example, oldest first (ids start with the time they were stored).
    pub fn list(&self) -> Result<Vec<Example>> {
        let mut examples = Vec::new();
        for entry in std::fs::read_dir(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path)?;
                match serde_json::from_str::<Example>(&text) {
                    Ok(example) => examples.push(example),
                    Err(e) => tracing::warn!("skipping {}: not an example: {e}", path.display()),
                }
            }
        }
        examples.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(examples)
    }

    /// The example with this id, if stored.
    pub fn get(&self, id: &str) -> Result<Option<Example>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let path = self.dir.join(format!("{id}.json"));
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The photo of an example.
    pub fn photo(&self, example: &Example) -> Result<Vec<u8>> {
        std::fs::read(self.dir.join(&example.photo)).with_context(|| format!("cannot read {}", example.photo))
    }

    /// Deletes an example (its JSON first: a half-deleted one is no longer listed).
    /// False when there was none.
    pub fn delete(&self, id: &str) -> Result<bool> {
        let mut usage = self.usage.lock().expect("dataset lock");
        let Some(example) = self.get(id)? else { return Ok(false) };
        std::fs::remove_file(self.dir.join(format!("{id}.json")))?;
        let _ = std::fs::remove_file(self.dir.join(&example.photo));
        *usage = (usage.0.saturating_sub(1), usage.1.saturating_sub(example.photo_bytes + RECORD_BYTES), usage.2);
        Ok(true)
    }

    /// The article's CSV of `examples`, its image paths under `images/`.
    fn csv(examples: &[Example]) -> Result<Vec<u8>> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        writer.write_record(["index", "protein", "fat", "carbs", "kcal", "name", "path"])?;
        for (index, e) in examples.iter().enumerate() {
            writer.write_record([
                index.to_string(),
                e.protein_g.to_string(),
                e.fat_g.to_string(),
                e.carbs_g.to_string(),
                e.kcal.to_string(),
                e.dish.clone(),
                format!("images/{}", e.photo),
            ])?;
        }
        Ok(writer.into_inner()?)
    }

    /// A zip of `food.csv` (the article's columns; paths relative to the zip's root),
    /// `images/` (each photo as sent) and `examples.json` (who, when, consent).
    pub fn export(&self) -> Result<Vec<u8>> {
        let examples = self.list()?;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        // Pictures are compressed already; the zip only bundles.
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("food.csv", options)?;
        zip.write_all(&Self::csv(&examples)?)?;
        zip.start_file("examples.json", options)?;
        zip.write_all(&serde_json::to_vec_pretty(&examples)?)?;
        for example in &examples {
            zip.start_file(format!("images/{}", example.photo), options)?;
            zip.write_all(&self.photo(example)?)?;
        }
        Ok(zip.finish()?.into_inner())
    }

    /// Writes the examples as a training set into `dir` (`food.csv`, `images/`), the
    /// photos copied so that a later delete leaves the run intact; how many.
    pub fn snapshot(&self, dir: &Path) -> Result<usize> {
        let examples = self.list()?;
        if examples.is_empty() {
            bail!("the dataset has no examples yet");
        }
        let images = dir.join("images");
        std::fs::create_dir_all(&images)?;
        for example in &examples {
            std::fs::copy(self.dir.join(&example.photo), images.join(&example.photo))
                .with_context(|| format!("cannot copy {}", example.photo))?;
        }
        std::fs::write(dir.join("food.csv"), Self::csv(&examples)?)?;
        Ok(examples.len())
    }
}

/// Ids are ours (`<ms>-<hex>`): anything else is refused before it meets a path.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 40 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png() -> Vec<u8> {
        let mut bytes = Vec::new();
        image::RgbImage::from_pixel(8, 6, image::Rgb([200, 30, 30]))
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .unwrap();
        bytes
    }

    fn new_example(dish: &str) -> NewExample {
        NewExample {
            dish: dish.into(),
            protein_g: 1.1,
            fat_g: 2.5,
            carbs_g: 5.4,
            kcal: 47.0,
            source: ExampleSource::Correction,
            consent: "I agree".into(),
            client: "127.0.0.1".into(),
            photo: png(),
        }
    }

    #[test]
    fn an_example_is_stored_listed_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::open(dir.path(), 10, 1 << 20).unwrap();
        let stored = dataset.add(new_example(" борщ ")).unwrap();
        assert_eq!(stored.caption, "блюдо: борщ; белков: 1.1; жиров: 2.5; углеводов: 5.4; ккал: 47;");
        assert_eq!(dataset.list().unwrap(), vec![stored.clone()]);
        assert_eq!(dataset.photo(&stored).unwrap(), png());
        assert!(stored.photo.ends_with(".png"), "{}", stored.photo);
        assert!(dataset.delete(&stored.id).unwrap());
        assert!(!dataset.delete(&stored.id).unwrap());
        assert!(dataset.list().unwrap().is_empty());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the photo is gone too");
        // Listed in the order they came, however fast.
        let dishes: Vec<String> = (0..5).map(|k| dataset.add(new_example(&format!("суп {k}"))).unwrap().dish).collect();
        assert_eq!(dataset.list().unwrap().into_iter().map(|e| e.dish).collect::<Vec<_>>(), dishes);
    }

    #[test]
    fn bad_examples_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::open(dir.path(), 10, 1 << 20).unwrap();
        let refused = |example: NewExample| match dataset.add(example) {
            Err(StoreError::Invalid(message)) => message,
            other => panic!("stored: {other:?}"),
        };
        assert!(refused(new_example("")).contains("name"));
        assert!(refused(new_example("суп; ккал: 0")).contains("';'"));
        assert!(refused(NewExample { kcal: f32::NAN, ..new_example("суп") }).contains("kcal"));
        assert!(refused(NewExample { fat_g: 70.0, carbs_g: 40.0, ..new_example("суп") }).contains("over 100"));
        assert!(refused(NewExample { consent: " ".into(), ..new_example("суп") }).contains("consent"));
        assert!(refused(NewExample { consent: "да".repeat(300), ..new_example("суп") }).contains("consent"));
        assert!(refused(NewExample { photo: b"not a picture".to_vec(), ..new_example("суп") }).contains("picture"));
        assert!(dataset.list().unwrap().is_empty());
    }

    #[test]
    fn the_store_refuses_beyond_its_size_and_ids_never_reach_a_path() {
        let dir = tempfile::tempdir().unwrap();
        let dataset = Dataset::open(dir.path(), 2, 1 << 20).unwrap();
        dataset.add(new_example("суп")).unwrap();
        let stored = dataset.add(new_example("каша")).unwrap();
        assert!(matches!(dataset.add(new_example("чай")), Err(StoreError::Full { examples: 2, .. })));
        // Counted again when the store is opened; a delete makes room.
        let reopened = Dataset::open(dir.path(), 2, 1 << 20).unwrap();
        assert!(matches!(reopened.add(new_example("чай")), Err(StoreError::Full { .. })));
        assert!(reopened.delete(&stored.id).unwrap());
        reopened.add(new_example("чай")).unwrap();
        // The photos' bytes are bounded too.
        let small = Dataset::open(&dir.path().join("small"), 100, (png().len() as u64 + RECORD_BYTES) * 3 / 2).unwrap();
        small.add(new_example("суп")).unwrap();
        assert!(matches!(small.add(new_example("каша")), Err(StoreError::Full { examples: 100, .. })));
        for id in ["../x", "a/b", "", "..", "x.json"] {
            assert_eq!(dataset.get(id).unwrap(), None, "{id}");
            assert!(!dataset.delete(id).unwrap(), "{id}");
        }
    }
}
