//! Training data for `borscht train`: the article's food CSV or a plain
//! `caption,path` CSV, images under a root folder.
//!
//! Article format (header names may differ): `index, protein, fat, carbs, kcal,
//! name, path`; each row becomes the caption
//! `блюдо: {name}; белков: {protein}; жиров: {fat}; углеводов: {carbs}; ккал: {kcal};`,
//! lower-cased, kept when it is 11 to 99 characters long (the article's filter).
//! A bad row is reported with its line number and skipped; reading fails only when
//! nothing usable remains.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// One usable training pair.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub caption: String,
    pub image: PathBuf,
    /// 1-based line in the CSV (for messages).
    pub line: usize,
}

/// Why a row was skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct SkippedRow {
    pub line: usize,
    pub reason: String,
}

#[derive(Debug, Clone, Default)]
pub struct Dataset {
    pub samples: Vec<Sample>,
    pub skipped: Vec<SkippedRow>,
}

impl Dataset {
    /// A summary like `480 samples, 3 rows skipped (line 7: missing image ...)`.
    pub fn summary(&self) -> String {
        let mut text = format!("{} samples, {} rows skipped", self.samples.len(), self.skipped.len());
        for skip in self.skipped.iter().take(5) {
            text.push_str(&format!("\n  line {}: {}", skip.line, skip.reason));
        }
        if self.skipped.len() > 5 {
            text.push_str(&format!("\n  ... and {} more", self.skipped.len() - 5));
        }
        text
    }
}

/// The article's caption, lower-cased.
pub fn article_caption(name: &str, protein: &str, fat: &str, carbs: &str, kcal: &str) -> String {
    format!("блюдо: {}; белков: {protein}; жиров: {fat}; углеводов: {carbs}; ккал: {kcal};", name.trim()).to_lowercase()
}

fn is_number(text: &str) -> bool {
    text.trim().replace(',', ".").parse::<f64>().is_ok_and(f64::is_finite)
}

/// Reads a CSV of either format; image paths are relative to `image_root`.
pub fn read_csv(csv: &Path, image_root: &Path) -> Result<Dataset> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(csv)
        .with_context(|| format!("cannot read {}", csv.display()))?;
    let mut dataset = Dataset::default();
    for (index, record) in reader.records().enumerate() {
        let line = index + 1;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                dataset.skipped.push(SkippedRow { line, reason: format!("unreadable row: {e}") });
                continue;
            }
        };
        let fields: Vec<&str> = record.iter().collect();
        let (caption, path) = match fields.len() {
            7 => {
                let numbers = [fields[1], fields[2], fields[3], fields[4]];
                if !numbers.iter().all(|n| is_number(n)) {
                    // The header row (or a row with a non-numeric value).
                    if line == 1 {
                        continue;
                    }
                    dataset
                        .skipped
                        .push(SkippedRow { line, reason: format!("non-numeric nutrition value in {numbers:?}") });
                    continue;
                }
                (article_caption(fields[5], fields[1], fields[2], fields[3], fields[4]), fields[6])
            }
            2 => {
                if line == 1 && fields[0].eq_ignore_ascii_case("caption") {
                    continue;
                }
                (fields[0].trim().to_lowercase(), fields[1])
            }
            n => {
                dataset.skipped.push(SkippedRow {
                    line,
                    reason: format!(
                        "{n} columns; expected 7 (index, protein, fat, carbs, kcal, name, path) or 2 (caption, path)"
                    ),
                });
                continue;
            }
        };
        let length = caption.chars().count();
        if !(11..100).contains(&length) {
            dataset.skipped.push(SkippedRow {
                line,
                reason: format!("caption of {length} characters (the article keeps 11 to 99)"),
            });
            continue;
        }
        let image = image_root.join(path);
        if !image.is_file() {
            dataset.skipped.push(SkippedRow { line, reason: format!("missing image {}", image.display()) });
            continue;
        }
        dataset.samples.push(Sample { caption, image, line });
    }
    if dataset.samples.is_empty() {
        bail!("no usable rows in {}: {}", csv.display(), dataset.summary());
    }
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_article_format_and_reports_bad_rows() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["borscht.png", "pizza.png", "tea.png"] {
            std::fs::write(dir.path().join(name), b"image").unwrap();
        }
        let csv = dir.path().join("food.csv");
        std::fs::write(
            &csv,
            "index,belok,fats,uglevod,kkal,name,path\n\
             0,1.1,2.3,5.4,47,Борщ,borscht.png\n\
             1,11,10,33,270.5,пицца маргарита,pizza.png\n\
             2,x,1,1,1,чай,tea.png\n\
             3,0.1,0,0.3,1,чай,missing.png\n\
             4,1,2,3\n\
             5,0,0,0,0,\"очень длинное название блюда которое никак не помещается в сто символов подписи совсем\",tea.png\n",
        )
        .unwrap();
        let data = read_csv(&csv, dir.path()).unwrap();
        assert_eq!(data.samples.len(), 2);
        assert_eq!(data.samples[0].caption, "блюдо: борщ; белков: 1.1; жиров: 2.3; углеводов: 5.4; ккал: 47;");
        assert_eq!(data.samples[1].line, 3);
        let lines: Vec<usize> = data.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, vec![4, 5, 6, 7]);
        assert!(data.skipped[0].reason.contains("non-numeric"));
        assert!(data.skipped[1].reason.contains("missing image"));
        assert!(data.skipped[2].reason.contains("4 columns"));
        assert!(data.skipped[3].reason.contains("characters"));
        assert!(data.summary().contains("line 5: missing image"));
    }

    #[test]
    fn reads_caption_path_pairs_and_fails_when_nothing_is_usable() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.png"), b"image").unwrap();
        let csv = dir.path().join("pairs.csv");
        std::fs::write(&csv, "caption,path\n\"Блюдо: щи; ккал: 30;\",a.png\n").unwrap();
        let data = read_csv(&csv, dir.path()).unwrap();
        assert_eq!(data.samples[0].caption, "блюдо: щи; ккал: 30;");
        std::fs::write(&csv, "caption,path\nкоротко,a.png\n").unwrap();
        let err = read_csv(&csv, dir.path()).unwrap_err().to_string();
        assert!(err.contains("no usable rows") && err.contains("line 2"), "{err}");
    }
}
