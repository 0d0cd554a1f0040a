//! The bundled demo model (models/demo): it loads by default, recognises a committed
//! icon through the CLI with the dish and values of the data table, and stays small.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The icon and its row in data/demo/food.csv: (dish, protein, fat, carbs, kcal).
fn table_row(image: &str) -> (String, [f64; 4]) {
    let table = std::fs::read_to_string(repo().join("data/demo/food.csv")).unwrap();
    let row: Vec<&str> =
        table.lines().find(|l| l.ends_with(image)).expect("the icon is in the table").split(',').collect();
    let number = |i: usize| row[i].parse::<f64>().unwrap();
    (row[5].to_string(), [number(1), number(2), number(3), number(4)])
}

#[test]
fn the_default_model_captions_a_committed_icon_with_the_tables_values() {
    let image = "images/twemoji/1f355-0.png";
    let (dish, values) = table_row(image);
    // No --model: the bundled demo model is the default, from any working directory.
    let output = Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["caption", "--json", "--n", "12", "--portion-g", "250", "--image"])
        .arg(repo().join("data/demo").join(image))
        .current_dir(std::env::temp_dir())
        .env_remove("BORSCHT_MODEL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let best = &json["best"];
    assert_eq!(best["dish"], dish.as_str(), "{json:#}");
    // A picture like those it learnt: answered as the dish, with a calibrated probability.
    assert_eq!((json["verdict"].as_str(), json["calibrated"].as_bool()), (Some("dish"), Some(true)), "{json:#}");
    assert!(json["confidence"].as_f64().unwrap() > 0.5, "{json:#}");
    for (key, expected) in ["protein_g", "fat_g", "carbs_g", "kcal"].iter().zip(values) {
        let got = best["nutrition"][key].as_f64().unwrap_or(f64::NAN);
        assert!((got - expected).abs() <= 0.05 * expected.max(1.0), "{key}: {got} vs the table's {expected}\n{json:#}");
        let portion = json["portion"][key].as_f64().unwrap_or(f64::NAN);
        assert!((portion - 2.5 * got).abs() <= 1e-3 * got.max(1.0), "250 g of {key}: {portion}, per 100 g {got}");
    }
}

#[test]
fn the_shipped_files_are_complete_and_small() {
    let dir = repo().join("models/demo");
    let mut total = 0;
    for file in [
        "config.json",
        "model.safetensors",
        "bpe.model",
        "vqgan/config.json",
        "vqgan/model.safetensors",
        "README.md",
        "calibration.json",
        "dishes.json",
    ] {
        let path = dir.join(file);
        total += std::fs::metadata(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).len();
    }
    assert!(total < 40 << 20, "the demo model takes {total} bytes; keep it under 40 MB");
}

#[test]
fn evaluate_reports_the_answers_and_metrics_that_agree_with_them() {
    let table = std::fs::read_to_string(repo().join("data/demo/food.csv")).unwrap();
    let mut lines = table.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> =
        lines.filter(|l| l.ends_with("twemoji/1f355-0.png") || l.ends_with("twemoji/1f34c-0.png")).collect();
    assert_eq!(rows.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("two.csv");
    std::fs::write(&csv, format!("{header}\n{}\n", rows.join("\n"))).unwrap();
    let report_path = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["evaluate", "--n", "6", "--zero-shot-classes", "3", "--csv"])
        .arg(&csv)
        .arg("--images")
        .arg(repo().join("data/demo"))
        .arg("--report")
        .arg(&report_path)
        .env_remove("BORSCHT_MODEL")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let items = report["items"].as_array().unwrap();
    assert_eq!((summary["samples"].as_u64(), items.len()), (Some(2), 2));
    let right = items.iter().filter(|i| i["predicted_dish"] == i["dish"]).count() as f64;
    assert_eq!(summary["dish_top1"].as_f64().unwrap(), right / 2.0, "{report:#}");
    let pizza = items.iter().find(|i| i["image"].as_str().unwrap().ends_with("1f355-0.png")).unwrap();
    assert_eq!(pizza["predicted_dish"], pizza["dish"], "{pizza:#}");
    // Each question's accuracy is the share of items whose choice was the dish.
    for (key, choice) in [
        ("zero_shot_accuracy", "zero_shot_choice"),
        ("image_fit_accuracy", "image_fit_choice"),
        ("caption_fit_accuracy", "caption_fit_choice"),
    ] {
        let right = items.iter().filter(|i| i[choice] == i["dish"]).count() as f64;
        assert!(items.iter().all(|i| i[choice].is_string()), "{choice} missing: {report:#}");
        assert_eq!(summary[key].as_f64().unwrap(), right / 2.0, "{key}: {report:#}");
    }
    let kcal_errors: Vec<f64> =
        items.iter().map(|i| (i["predicted_kcal"].as_f64().unwrap() - i["kcal"].as_f64().unwrap()).abs()).collect();
    let mae = summary["kcal_mae"].as_f64().unwrap();
    assert!((mae - kcal_errors.iter().sum::<f64>() / 2.0).abs() < 1e-6, "kcal MAE {mae} from {kcal_errors:?}");
}

/// "Which of these dishes?" as the app asks it (the default method, caption fit, with its
/// default template `блюдо: {};`).
#[test]
fn the_default_model_tells_which_of_ten_dishes_an_icon_shows() {
    let table = std::fs::read_to_string(repo().join("data/demo/food.csv")).unwrap();
    let rows: Vec<(String, String)> = table
        .lines()
        .skip(1)
        .filter(|l| l.contains("images/twemoji/") && l.ends_with("-0.png"))
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[5].to_string(), cells[6].to_string())
        })
        .fold(Vec::<(String, String)>::new(), |mut rows, row| {
            if rows.len() < 10 && !rows.iter().any(|(dish, _)| *dish == row.0) {
                rows.push(row);
            }
            rows
        });
    assert_eq!(rows.len(), 10);
    let classes = rows.iter().map(|(dish, _)| dish.as_str()).collect::<Vec<_>>().join(",");
    let mut right = 0;
    for (dish, image) in &rows {
        let output = Command::new(env!("CARGO_BIN_EXE_borscht"))
            .args(["classify", "--json", "--classes", &classes, "--image"])
            .arg(repo().join("data/demo").join(image))
            .env_remove("BORSCHT_MODEL")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        right += (json["class"] == dish.as_str()) as usize;
    }
    assert!(right >= 8, "{right} of 10 icons told right");
}

/// The demo model reads the Russian of its captions: a dish in Latin letters is refused
/// by name instead of being scored as one unknown token.
#[test]
fn the_default_model_refuses_dishes_it_cannot_spell() {
    let output = Command::new(env!("CARGO_BIN_EXE_borscht"))
        .args(["classify", "--classes", "борщ, pizza", "--image"])
        .arg(repo().join("data/demo/images/twemoji/1f355-0.png"))
        .env_remove("BORSCHT_MODEL")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("«pizza»") && stderr.contains("«z»") && stderr.contains("Russian"), "{stderr}");
}
