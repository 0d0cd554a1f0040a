//! localStorage helpers and the meal history kept in the browser.

use serde::{Deserialize, Serialize};

fn local_storage() -> Option<web_sys::Storage> {
    web_sys::window()?.local_storage().ok()?
}

pub fn get(key: &str) -> Option<String> {
    local_storage()?.get_item(key).ok()?
}

pub fn set(key: &str, value: &str) {
    if let Some(storage) = local_storage() {
        let _ = storage.set_item(key, value);
    }
}

/// One saved meal: what was eaten, how much, and its values for that portion.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meal {
    /// Local date, `YYYY-MM-DD`.
    pub date: String,
    pub dish: String,
    pub grams: f32,
    pub protein_g: f32,
    pub fat_g: f32,
    pub carbs_g: f32,
    pub kcal: f32,
    /// The photo it was recognised from (a data URL), to teach the model with later;
    /// none for a large one (the browser keeps a few megabytes for the whole history).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub photo: Option<String>,
    /// Already sent to the server as a training example.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub taught: bool,
}

/// The largest photo kept with a meal, in characters of its data URL.
pub const MAX_KEPT_PHOTO: usize = 200_000;

impl Meal {
    /// Its values per 100 g (the meal keeps the portion's).
    pub fn per_100g(&self) -> [f32; 4] {
        let scale = if self.grams > 0.0 { 100.0 / self.grams } else { 1.0 };
        [self.protein_g, self.fat_g, self.carbs_g, self.kcal].map(|v| (v * scale * 10.0).round() / 10.0)
    }
}

const HISTORY_KEY: &str = "borscht.history";

pub fn load_history() -> Vec<Meal> {
    get(HISTORY_KEY).and_then(|text| serde_json::from_str(&text).ok()).unwrap_or_default()
}

pub fn save_history(meals: &[Meal]) {
    if let Ok(text) = serde_json::to_string(meals) {
        set(HISTORY_KEY, &text);
    }
}

/// Today's local date as `YYYY-MM-DD`.
pub fn today() -> String {
    let now = js_sys::Date::new_0();
    format!("{:04}-{:02}-{:02}", now.get_full_year(), now.get_month() + 1, now.get_date())
}

/// `YYYY-MM-DD` as a person reads it in `lang` ("4 декабря 2026 г." / "December 4, 2026").
pub fn long_date(date: &str, lang: &str) -> String {
    let parts: Vec<u32> = date.split('-').filter_map(|p| p.parse().ok()).collect();
    let [year, month, day] = parts[..] else { return date.to_string() };
    let when = js_sys::Date::new_with_year_month_day(year, month as i32 - 1, day as i32);
    let options = js_sys::Object::new();
    for (key, value) in [("day", "numeric"), ("month", "long"), ("year", "numeric")] {
        let _ = js_sys::Reflect::set(&options, &key.into(), &value.into());
    }
    when.to_locale_date_string(lang, &options).as_string().unwrap_or_else(|| date.to_string())
}

/// Totals per day, newest day first: (date, kcal, protein, fat, carbs).
pub fn daily_totals(meals: &[Meal]) -> Vec<(String, f32, f32, f32, f32)> {
    let mut days: Vec<(String, f32, f32, f32, f32)> = Vec::new();
    for meal in meals {
        match days.iter_mut().find(|d| d.0 == meal.date) {
            Some(day) => {
                day.1 += meal.kcal;
                day.2 += meal.protein_g;
                day.3 += meal.fat_g;
                day.4 += meal.carbs_g;
            }
            None => days.push((meal.date.clone(), meal.kcal, meal.protein_g, meal.fat_g, meal.carbs_g)),
        }
    }
    days.sort_by(|a, b| b.0.cmp(&a.0));
    days
}
