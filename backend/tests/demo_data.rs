//! The committed demo data set (data/demo, made by scripts/prepare-demo-data.sh).

use borscht_pipelines::nutrition::parse_caption;
use borscht_train::data::read_csv;
use borscht_train::data::Dataset;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A folder of the committed data set (`""`: data/demo itself) and its rows, all readable.
fn demo_set(folder: &str) -> (PathBuf, Dataset) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/demo").join(folder);
    let data = read_csv(&root.join("food.csv"), &root).unwrap();
    assert!(data.skipped.is_empty(), "{}", data.summary());
    (root, data)
}

#[test]
fn the_demo_data_set_is_complete_and_trainable() {
    let (root, data) = demo_set("");
    assert!(data.samples.len() >= 480, "about the article's size: {}", data.samples.len());
    let dishes: HashSet<String> = data.samples.iter().filter_map(|s| parse_caption(&s.caption).dish).collect();
    assert!(dishes.len() >= 60, "{} dishes", dishes.len());
    for style in ["twemoji", "noto", "fluent-emoji-flat", "fluent-emoji-high-contrast"] {
        let count = data.samples.iter().filter(|s| s.image.to_string_lossy().contains(&format!("/{style}/"))).count();
        assert!(count >= 100, "{style}: {count} pictures");
    }
    let formatted = data.samples.iter().all(|s| s.caption.starts_with("блюдо: ") && s.caption.ends_with(';'));
    assert!(formatted, "every caption has the article's format");
    assert!(root.join("CREDITS.md").is_file());
}

#[test]
fn the_extra_renderings_cover_the_same_dishes_with_new_pictures() {
    let ((root, main), (extra_root, extra)) = (demo_set(""), demo_set("extra"));
    assert_eq!(extra.samples.len(), 3 * main.samples.len(), "six renderings per style against two");
    let captions = |d: &Dataset| -> HashSet<String> { d.samples.iter().map(|s| s.caption.clone()).collect() };
    assert_eq!(captions(&extra), captions(&main), "the same dishes with the same values");
    // Another seed: the first extra rendering of an icon is not a copy of its picture.
    let first = |r: &Path| std::fs::read(r.join("images/twemoji/1f355-0.png")).unwrap();
    assert_ne!(first(&root), first(&extra_root));
}

#[test]
fn the_more_styles_draw_known_dishes_in_other_icon_sets_only() {
    let (_, main) = demo_set("");
    let main_captions: HashSet<&str> = main.samples.iter().map(|s| s.caption.as_str()).collect();
    // more-styles/ holds four sets; streamline/ the fifth, drawn later with its own seed.
    let folders = [demo_set("more-styles"), demo_set("streamline")];
    let more: Vec<_> = folders.iter().flat_map(|(_, data)| &data.samples).collect();
    for sample in &more {
        assert!(main_captions.contains(sample.caption.as_str()), "a dish of the main set: {}", sample.caption);
    }
    let credits: String =
        folders.iter().map(|(root, _)| std::fs::read_to_string(root.join("CREDITS.md")).unwrap()).collect();
    for (style, licence) in borscht_train::demo_data::MORE_STYLES {
        let count = more.iter().filter(|s| s.image.to_string_lossy().contains(&format!("/{style}/"))).count();
        // streamline-emojis draws only 24 of the 62 dishes (8 renderings each); the others 44-62.
        let least = if style == "streamline-emojis" { 24 * 8 } else { 200 };
        assert!(count >= least, "{style}: {count} pictures");
        assert!(credits.contains(&format!("`{style}`: {licence}")), "{style}'s licence is credited");
    }
    // None of the data set's own four styles: holding one out must keep it out of training.
    for (style, _) in borscht_train::demo_data::STYLES {
        let path = format!("/{style}/");
        assert!(!more.iter().any(|s| s.image.to_string_lossy().contains(&path)), "{style} is not here");
    }
}

/// openclipart/ and game-icons/: each drawing their table names, rendered 4 and 8 times,
/// of a known dish, and every drawing credited with the set's licence.
#[test]
fn the_drawing_sets_are_their_tables_known_dishes_credited() {
    let (_, main) = demo_set("");
    let main_captions: HashSet<&str> = main.samples.iter().map(|s| s.caption.as_str()).collect();
    for (style, renderings, least_drawings) in [("openclipart", 4, 100), ("game-icons", 8, 50)] {
        let (root, drawings) = demo_set(style);
        let table_path = root.parent().unwrap().join(format!("{style}.tsv"));
        let table = borscht_train::demo_data::read_drawing_table(&table_path).unwrap();
        assert!(table.len() >= least_drawings, "{style}: {} drawings", table.len());
        assert_eq!(drawings.samples.len(), renderings * table.len(), "{style}: {renderings} renderings each");
        for sample in &drawings.samples {
            assert!(main_captions.contains(sample.caption.as_str()), "a dish of the main set: {}", sample.caption);
            let path = sample.image.to_string_lossy();
            assert!(path.contains(&format!("/images/{style}/")), "{path}");
        }
        let dishes: HashSet<&str> = table.iter().map(|(emoji, _)| emoji.as_str()).collect();
        assert!(dishes.len() >= 40, "{style}: {} dishes drawn", dishes.len());
        let credits = std::fs::read_to_string(root.join("CREDITS.md")).unwrap();
        let (_, licence, _) = borscht_train::demo_data::DRAWING_STYLES.iter().find(|(s, ..)| *s == style).unwrap();
        assert!(credits.contains(&format!("`{style}`: {licence}")), "{style}: the licence is named");
        for (_, file) in &table {
            assert!(credits.contains(&format!("`{file}`")), "{style}: {file} is credited");
        }
    }
}
