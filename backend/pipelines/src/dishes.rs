//! The dishes a model knows: those its training captions name (`dishes.json` beside the
//! model, written by `borscht train` and `borscht dishes`). The app offers them as
//! suggestions and shows their English names in English.

use anyhow::{Context, Result};
use borscht_protocol::Dish;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

use crate::nutrition::parse_caption;

pub const DISHES_FILE: &str = "dishes.json";

#[derive(Debug, Serialize, Deserialize)]
struct DishesFile {
    dishes: Vec<Dish>,
}

/// The dishes `captions` name, each once, sorted; English names from `english` (dish →
/// name) where it has them.
pub fn dishes_of<'a>(captions: impl IntoIterator<Item = &'a str>, english: &BTreeMap<String, String>) -> Vec<Dish> {
    let mut names: Vec<String> = captions.into_iter().filter_map(|c| parse_caption(c).dish).collect();
    names.sort();
    names.dedup();
    names.into_iter().map(|name| Dish { en: english.get(&name).cloned(), name }).collect()
}

/// English names from a table with the columns `dish` and `en` (tab-separated, `#`
/// comments; the demo data set's `foods.tsv`).
pub fn english_names(table: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(table).with_context(|| format!("cannot read {}", table.display()))?;
    let mut rows = text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty());
    let header: Vec<&str> = rows.next().unwrap_or_default().split('\t').collect();
    let column = |name: &str| {
        header
            .iter()
            .position(|h| h.trim() == name)
            .with_context(|| format!("{} has no column {name}", table.display()))
    };
    let (dish, en) = (column("dish")?, column("en")?);
    Ok(rows
        .filter_map(|row| {
            let fields: Vec<&str> = row.split('\t').collect();
            Some((fields.get(dish)?.trim().to_lowercase(), fields.get(en)?.trim().to_string()))
        })
        .filter(|(_, en)| !en.is_empty())
        .collect())
}

pub fn save(dir: &Path, dishes: &[Dish]) -> Result<()> {
    let file = DishesFile { dishes: dishes.to_vec() };
    std::fs::write(dir.join(DISHES_FILE), serde_json::to_string_pretty(&file)? + "\n")
        .with_context(|| format!("cannot write {}", dir.join(DISHES_FILE).display()))
}

/// The model directory's dishes (none when it has no list).
pub fn load(dir: &Path) -> Result<Vec<Dish>> {
    let path = dir.join(DISHES_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: DishesFile =
        serde_json::from_str(&text).with_context(|| format!("{} is not a dish list", path.display()))?;
    Ok(file.dishes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_captions_name_each_dish_once_with_its_english_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("foods.tsv"), "# a comment\nhexcode\tdish\tfood\tmatch\ten\n1f355\tпицца\tpizza\texact\tpizza\n1f35a\tрис\trice\texact\t\n")
            .unwrap();
        let english = english_names(&dir.path().join("foods.tsv")).unwrap();
        let captions = ["блюдо: Пицца; ккал: 268;", "блюдо: рис; ккал: 130;", "блюдо: пицца;", "без блюда"];
        let dishes = dishes_of(captions, &english);
        assert_eq!(
            dishes,
            vec![Dish { name: "пицца".into(), en: Some("pizza".into()) }, Dish { name: "рис".into(), en: None },]
        );
        save(dir.path(), &dishes).unwrap();
        assert_eq!(load(dir.path()).unwrap(), dishes);
        assert!(load(&dir.path().join("elsewhere")).unwrap().is_empty());
    }
}
