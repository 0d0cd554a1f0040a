//! Nutrition facts and the dish answer, as both sides show them: the server builds
//! them from captions, the web app scales them to a portion and checks them again
//! when the user edits the numbers.

use serde::{Deserialize, Serialize};

/// Nutrition facts per 100 g (any field may be missing from a caption).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Nutrition {
    pub dish: Option<String>,
    pub protein_g: Option<f32>,
    pub fat_g: Option<f32>,
    pub carbs_g: Option<f32>,
    pub kcal: Option<f32>,
}

impl Nutrition {
    /// True when protein, fat, carbohydrate and kcal are all known.
    pub fn is_complete(&self) -> bool {
        self.protein_g.is_some() && self.fat_g.is_some() && self.carbs_g.is_some() && self.kcal.is_some()
    }

    /// The values for a portion of `grams` (the caption's are per 100 g).
    pub fn for_portion(&self, grams: f32) -> Nutrition {
        let scale = |v: Option<f32>| v.map(|x| x * grams / 100.0);
        Nutrition {
            dish: self.dish.clone(),
            protein_g: scale(self.protein_g),
            fat_g: scale(self.fat_g),
            carbs_g: scale(self.carbs_g),
            kcal: scale(self.kcal),
        }
    }
}

/// Whether stated energy agrees with the macronutrients.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AtwaterCheck {
    /// 4 x protein + 9 x fat + 4 x carbohydrate.
    pub expected_kcal: f32,
    pub stated_kcal: f32,
    /// |stated - expected| / max(expected, 1): how far the stated energy is from what the
    /// macronutrients give, as a share of the latter.
    pub relative_error: f32,
    /// Within [`ATWATER_TOLERANCE`] of the expected energy, or within
    /// [`ATWATER_TOLERANCE_KCAL`] of it (fibre, alcohol and rounding explain small gaps).
    pub consistent: bool,
}

impl AtwaterCheck {
    /// Stated minus expected kcal: positive when the stated energy is higher.
    pub fn difference_kcal(&self) -> f32 {
        self.stated_kcal - self.expected_kcal
    }
}

/// Share of the expected energy up to which the numbers count as consistent...
pub const ATWATER_TOLERANCE: f32 = 0.15;
/// ... or this many kcal, for foods with almost none (black coffee: 1 kcal stated, 0.4 by
/// the factors, 150 % off but nothing to worry about).
pub const ATWATER_TOLERANCE_KCAL: f32 = 10.0;

pub fn atwater(nutrition: &Nutrition) -> Option<AtwaterCheck> {
    let (p, f, c, kcal) = (nutrition.protein_g?, nutrition.fat_g?, nutrition.carbs_g?, nutrition.kcal?);
    let expected = 4.0 * p + 9.0 * f + 4.0 * c;
    let difference = (kcal - expected).abs();
    let relative_error = difference / expected.max(1.0);
    Some(AtwaterCheck {
        expected_kcal: expected,
        stated_kcal: kcal,
        relative_error,
        consistent: difference <= ATWATER_TOLERANCE_KCAL || relative_error <= ATWATER_TOLERANCE,
    })
}

/// A dish the model proposes, with the evidence for it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DishOption {
    pub dish: String,
    /// Median of the candidates' values for this dish, per 100 g.
    pub nutrition: Nutrition,
    /// Share of the total evidence (0..1).
    pub confidence: f32,
    pub atwater: Option<AtwaterCheck>,
    /// The best-scoring caption behind this option and how many agreed.
    pub best_caption: String,
    pub supporting_captions: usize,
}

/// The answer: the most likely dish first, then the alternatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub best: DishOption,
    pub alternatives: Vec<DishOption>,
}
