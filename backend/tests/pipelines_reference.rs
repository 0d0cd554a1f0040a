//! The pipelines against rudolph 0.0.1rc4 (fixtures: scripts/fixtures/pipeline_fixtures.py).

use borscht_pipelines::generation::{
    caption, caption_batch, generate_codes, generate_image, generate_texts, Cancelled, CaptionJob, CaptionOptions,
    GenerationEvent, ImageOptions, TextOptions,
};
use borscht_pipelines::imaging::{decode_image, ImageLimits};
use borscht_pipelines::perplexity::ce_to_ppl;
use borscht_pipelines::sampling::{filter_top_k_top_p, SamplingParams};
use borscht_pipelines::scoring::{
    caption_fit_of_images, classify, classify_with, rerank_by_image, rerank_by_text, text_perplexities,
};
use borscht_pipelines::Engine;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines")
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn engine() -> Engine {
    Engine::load(&fixtures(), &Device::Cpu, DType::F32).unwrap()
}

fn photo_codes(engine: &Engine) -> Vec<u32> {
    let photo = decode_image(&std::fs::read(fixtures().join("photo.png")).unwrap(), ImageLimits::default()).unwrap();
    engine.image_codes(&photo).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
}

fn assert_close(ours: &[f32], reference: &[f32], what: &str) {
    assert_eq!(ours.len(), reference.len(), "{what}");
    for (o, r) in ours.iter().zip(reference) {
        assert!((o - r).abs() <= 1e-4 * r.abs().max(1.0), "{what}: ours {ours:?}\nreference {reference:?}");
    }
}

#[test]
fn photo_codes_equal_the_reference() {
    let engine = engine();
    let expected: Vec<u32> =
        expected()["codes"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    assert_eq!(photo_codes(&engine), expected);
}

#[test]
fn rerank_by_image_equals_the_reference() {
    let engine = engine();
    let e = &expected()["rerank_by_image"];
    let scores = rerank_by_image(&engine, &strings(&e["texts"]), &photo_codes(&engine), 4).unwrap();
    assert_close(&scores.iter().map(|s| s.ppl_image).collect::<Vec<_>>(), &floats(&e["ppl_image"]), "ppl_image");
    assert_close(&scores.iter().map(|s| s.ppl_text).collect::<Vec<_>>(), &floats(&e["ppl_text"]), "ppl_text");
}

#[test]
fn rerank_by_text_equals_the_reference() {
    let engine = engine();
    let e = &expected()["rerank_by_text"];
    let codebooks: Vec<Vec<u32>> = serde_json::from_value(e["codebooks"].clone()).unwrap();
    let scores = rerank_by_text(&engine, e["text"].as_str().unwrap(), &codebooks, 2).unwrap();
    assert_close(&scores.iter().map(|s| s.ppl_image).collect::<Vec<_>>(), &floats(&e["ppl_image"]), "ppl_image");
    assert_close(&scores.iter().map(|s| s.ppl_text).collect::<Vec<_>>(), &floats(&e["ppl_text"]), "ppl_text");
}

#[test]
fn zero_shot_equals_the_reference() {
    let engine = engine();
    let e = &expected()["zs_clf"];
    let result =
        classify(&engine, &photo_codes(&engine), &strings(&e["classes"]), e["template"].as_str().unwrap(), 2).unwrap();
    assert_close(&result.scores, &floats(&e["scores"]), "scores");
    assert_eq!(result.label as u64, e["label"].as_u64().unwrap());
}

/// Caption fit is `zs_clf` without the end of text: the two agree exactly on texts too
/// long to keep their EOS, and differ on short ones, whose EOS `zs_clf` scores.
#[test]
fn caption_fit_is_zero_shot_without_the_end_of_text() {
    let engine = engine();
    let codes = photo_codes(&engine);
    let r = engine.model.config().r_text_seq_length;
    let caption_fit = |texts: &[String]| {
        classify_with(borscht_protocol::ClassifyMethod::CaptionFit, &engine, &codes, texts, "{}", 2).unwrap()
    };
    let long: Vec<String> = ["борщ", "пицца", "шаурма"].iter().map(|d| format!("{d} ").repeat(r)).collect();
    let (zs, cf) = (classify(&engine, &codes, &long, "{}", 2).unwrap(), caption_fit(&long));
    assert!(long.iter().all(|t| !engine.encode_text(t, r).contains(&3)), "cut before their EOS");
    assert_eq!(zs.scores, cf.scores);
    let short: Vec<String> = ["борщ", "пицца", "шаурма"].map(String::from).to_vec();
    let (zs, cf) = (classify(&engine, &codes, &short, "{}", 2).unwrap(), caption_fit(&short));
    assert_ne!(zs.scores, cf.scores);
    // Pictures against one caption (text-to-image's choice): self_reranking_by_text's
    // r_text perplexity, likewise without the end of text.
    let e = &expected()["rerank_by_text"];
    let codebooks: Vec<Vec<u32>> = serde_json::from_value(e["codebooks"].clone()).unwrap();
    let by_text = |text: &str| -> Vec<f32> {
        rerank_by_text(&engine, text, &codebooks, 2).unwrap().into_iter().map(|s| s.ppl_text).collect()
    };
    assert_eq!(caption_fit_of_images(&engine, &long[0], &codebooks, 2).unwrap(), by_text(&long[0]));
    assert_ne!(caption_fit_of_images(&engine, &short[0], &codebooks, 2).unwrap(), by_text(&short[0]));
}

#[test]
fn text_ranking_perplexities_equal_the_reference() {
    let engine = engine();
    let ranked = expected()["generate_texts_ranking"].as_array().unwrap().clone();
    assert!(!ranked.is_empty());
    let texts: Vec<String> = ranked.iter().map(|r| r["text"].as_str().unwrap().to_string()).collect();
    let ppl = text_perplexities(&engine, &texts, 4).unwrap();
    assert_eq!(ppl.len(), ranked.len(), "one perplexity a text");
    for (ours, r) in ppl.iter().zip(&ranked) {
        let reference = r["ppl"].as_f64().unwrap() as f32; // rounded to 2 decimals by the reference
        assert!((ours - reference).abs() <= 0.006 + 1e-4 * reference, "{}: {ours} vs {reference}", r["text"]);
    }
}

#[test]
fn ce_to_ppl_and_the_filter_equal_the_reference() {
    let e = expected();
    let ce: Vec<Vec<f32>> = serde_json::from_value(e["ce_to_ppl"]["ce"].clone()).unwrap();
    assert_close(&ce_to_ppl(&ce), &floats(&e["ce_to_ppl"]["ppl"]), "ce_to_ppl");
    let logits: Vec<Vec<f32>> = Tensor::read_npy(fixtures().join("filter_logits.npy")).unwrap().to_vec2().unwrap();
    let filters = e["top_k_top_p_filtering"].as_object().unwrap();
    assert_eq!(filters.len(), 6);
    for (key, kept) in filters {
        let (k, p) = key.split_once('_').unwrap();
        let kept: Vec<Vec<i64>> = serde_json::from_value(kept.clone()).unwrap();
        assert_eq!(kept.len(), logits.len(), "top_k {k}, top_p {p}: one row of the reference a row of logits");
        for (row, want) in logits.iter().zip(kept) {
            let mut row = row.clone();
            filter_top_k_top_p(&mut row, k.parse().unwrap(), p.parse().unwrap());
            let got: Vec<i64> = row.iter().map(|v| v.is_finite() as i64).collect();
            assert_eq!(got, want, "top_k {k}, top_p {p}");
        }
    }
}

#[test]
fn captions_stream_as_they_finish_and_repeat_with_a_seed() {
    let engine = engine();
    let codes = photo_codes(&engine);
    let options = CaptionOptions {
        count: 12,
        seed: 5,
        sampling: SamplingParams { top_k: 50, top_p: 0.95, temperature: 1.0 },
        ..Default::default()
    };
    let mut events = Vec::new();
    let first = caption(&engine, &codes, &options, |e| events.push(e)).unwrap();
    let second = caption(&engine, &codes, &options, |_| {}).unwrap();
    assert_eq!(first, second, "same seed, same captions");
    assert!(!first.is_empty());
    let streamed: Vec<String> = events
        .iter()
        .filter_map(|e| if let GenerationEvent::Text { text, .. } = e { Some(text.clone()) } else { None })
        .collect();
    assert_eq!(streamed, first, "every caption is streamed once, in order");
    assert!(first.iter().all(|t| t.starts_with("блюдо:")), "captions continue the template: {first:?}");
    let progress = events.iter().filter(|e| matches!(e, GenerationEvent::Progress { .. })).count();
    assert!(progress >= 1);
    let other = caption(&engine, &codes, &CaptionOptions { seed: 6, ..options.clone() }, |_| {}).unwrap();
    assert_ne!(first, other, "another seed, other captions");
}

#[test]
fn batched_captions_equal_each_photo_captioned_alone() {
    let engine = engine();
    let codes = photo_codes(&engine);
    // A second "photo": the same codes reversed.
    let other_codes: Vec<u32> = codes.iter().rev().copied().collect();
    let sampling = SamplingParams { top_k: 50, top_p: 0.95, temperature: 1.0 };
    let a = CaptionOptions { count: 6, seed: 5, sampling, ..Default::default() };
    let b = CaptionOptions { count: 4, seed: 9, sampling, ..Default::default() };
    let alone_a = caption(&engine, &codes, &a, |_| {}).unwrap();
    let alone_b = caption(&engine, &other_codes, &b, |_| {}).unwrap();
    let jobs = [
        CaptionJob { codes: &codes, options: &a, stop: None },
        CaptionJob { codes: &other_codes, options: &b, stop: None },
    ];
    let mut streamed: Vec<(usize, String)> = Vec::new();
    let results = caption_batch(&engine, &jobs, |job, event| {
        if let GenerationEvent::Text { text, .. } = event {
            streamed.push((job, text));
        }
    });
    let batched: Vec<Vec<String>> = results.into_iter().map(Result::unwrap).collect();
    assert_eq!(batched, vec![alone_a.clone(), alone_b.clone()], "each job keeps its own random stream");
    let of = |job: usize| streamed.iter().filter(|(j, _)| *j == job).map(|(_, t)| t.clone()).collect::<Vec<_>>();
    assert_eq!((of(0), of(1)), (alone_a, alone_b), "events name their job");
}

#[test]
fn reranking_several_photos_at_once_equals_each_alone() {
    let engine = engine();
    let codes = photo_codes(&engine);
    let other: Vec<u32> = codes.iter().rev().copied().collect();
    let texts: Vec<String> = ["блюдо: борщ", "блюдо: пицца; ккал: 266", "суп"].iter().map(|t| t.to_string()).collect();
    let pairs: Vec<(&str, &[u32])> =
        texts.iter().map(|t| (t.as_str(), codes.as_slice())).chain([(texts[0].as_str(), other.as_slice())]).collect();
    let together = borscht_pipelines::scoring::rerank_pairs(&engine, &pairs, 2).unwrap();
    let alone = [
        rerank_by_image(&engine, &texts, &codes, 8).unwrap(),
        rerank_by_image(&engine, &texts[..1], &other, 8).unwrap(),
    ]
    .concat();
    let image = |s: &[borscht_pipelines::scoring::TextImageScore]| s.iter().map(|x| x.ppl_image).collect::<Vec<_>>();
    assert_close(&image(&together), &image(&alone), "image perplexities, batched across photos");
}

#[test]
fn a_stopped_job_leaves_the_batch_and_the_others_finish() {
    let engine = engine();
    let codes = photo_codes(&engine);
    let options = CaptionOptions {
        count: 4,
        seed: 1,
        stop_at_eos: false,
        sampling: SamplingParams { top_k: 50, top_p: 0.95, temperature: 1.0 },
        ..Default::default()
    };
    let stop = AtomicBool::new(false);
    let jobs = [
        CaptionJob { codes: &codes, options: &options, stop: Some(&stop) },
        CaptionJob { codes: &codes, options: &options, stop: None },
    ];
    let mut steps_after_stop = 0;
    let results = caption_batch(&engine, &jobs, |job, event| {
        if let GenerationEvent::Progress { .. } = event {
            if job == 0 {
                steps_after_stop += usize::from(stop.load(Ordering::SeqCst));
                stop.store(true, Ordering::SeqCst);
            }
        }
    });
    assert_eq!(steps_after_stop, 0, "a stopped job reports no further progress");
    assert!(results[0].as_ref().unwrap_err().is::<Cancelled>());
    assert_eq!(results[1].as_ref().unwrap(), &caption(&engine, &codes, &options, |_| {}).unwrap());
}

#[test]
fn text_to_image_previews_then_decodes() {
    let engine = engine();
    let options = ImageOptions {
        count: 2,
        best_of: 1,
        sampling: SamplingParams { top_k: 32, top_p: 0.9, temperature: 1.0 },
        seed: 1,
        preview_every_rows: 1,
        stop: None,
    };
    let mut previews = 0;
    let result = generate_image(&engine, "борщ", &options, |e| {
        if let GenerationEvent::ImagePreview { pngs, rows_done, .. } = e {
            assert_eq!(pngs.len(), 2);
            assert!(rows_done >= 1);
            previews += 1;
        }
    })
    .unwrap();
    assert_eq!(previews, 3, "rows 1, 2 and 3 of 4 (the last is the final image)");
    assert_eq!(result.codes.len(), 2);
    assert!(result.codes.iter().all(|c| c.len() == 16 && c.iter().all(|&v| v < 64)));
    let image = decode_image(&result.pngs[0], ImageLimits::default()).unwrap();
    assert_eq!((image.width(), image.height()), (32, 32));
}

#[test]
fn text_to_image_keeps_the_drawings_that_best_fit_the_text() {
    let engine = engine();
    let sampling = SamplingParams { top_k: 32, top_p: 0.9, temperature: 1.0 };
    let options = ImageOptions { count: 2, best_of: 3, sampling, seed: 5, preview_every_rows: 1, stop: None };
    let mut preview_sizes = Vec::new();
    let result = generate_image(&engine, "борщ", &options, |e| {
        if let GenerationEvent::ImagePreview { pngs, .. } = e {
            preview_sizes.push(pngs.len());
        }
    })
    .unwrap();
    assert!(!preview_sizes.is_empty() && preview_sizes.iter().all(|&n| n == 2), "previews show two: {preview_sizes:?}");
    // The same seed draws the same six; the two kept are the six's best by caption fit.
    let all =
        generate_codes(&engine, "борщ", &ImageOptions { count: 6, best_of: 1, ..options.clone() }, |_| {}).unwrap();
    let fit = caption_fit_of_images(&engine, "блюдо: борщ;", &all, 4).unwrap();
    let mut order: Vec<usize> = (0..6).collect();
    order.sort_by(|&a, &b| fit[a].total_cmp(&fit[b]));
    assert_eq!(result.codes, vec![all[order[0]].clone(), all[order[1]].clone()]);
    assert_eq!(result.caption_fit, vec![fit[order[0]], fit[order[1]]]);
    assert!(fit[order[0]] < fit[order[5]], "the drawings differ in fit: {fit:?}");
    assert_eq!(result.pngs.len(), 2);
    let refused = generate_image(&engine, "борщ", &ImageOptions { best_of: 0, ..options }, |_| {});
    assert!(refused.unwrap_err().to_string().contains("best_of"));
}

#[test]
fn text_continuations_are_ranked_by_perplexity() {
    let engine = engine();
    let options = TextOptions {
        count: 6,
        sampling: SamplingParams { top_k: 8, top_p: 0.9, temperature: 1.0 },
        seed: 3,
        stop: None,
    };
    let ranked = generate_texts(&engine, "блюдо:", &options, |_| {}).unwrap();
    assert!(!ranked.is_empty());
    assert!(ranked.windows(2).all(|w| w[0].ppl <= w[1].ppl));
    let mut texts: Vec<_> = ranked.iter().map(|r| r.text.clone()).collect();
    texts.dedup();
    assert_eq!(texts.len(), ranked.len(), "distinct texts");
}

#[test]
fn text_continuation_stops_when_its_flag_is_raised() {
    let engine = engine();
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let options = TextOptions { count: 4, stop: Some(stop.clone()), ..Default::default() };
    let mut steps = 0;
    let result = generate_texts(&engine, "блюдо:", &options, |event| {
        if let GenerationEvent::Progress { step, .. } = event {
            steps = step;
            if step == 2 {
                stop.store(true, Ordering::Relaxed);
            }
        }
    });
    assert!(result.unwrap_err().is::<Cancelled>());
    assert_eq!(steps, 2, "no step after the flag was raised");
}
