//! Reduced-precision graphs (`--dtype float16`, `--quantize int8`): they load and score, and their rewards stay
//! within the tolerance the exporter recorded against the float32 PyTorch reference.

use rewardrt::{verify, Input, PaddingSide, ScorerOptions};
use serde_json::Value;

use crate::{fixture, load};

fn precision(dir: &std::path::Path) -> Value {
    let m: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("rewardrt.json")).unwrap()).unwrap();
    m["precision"].clone()
}

#[test]
fn float16_and_int8_score_within_their_recorded_drift() {
    for (name, dtype, quantization) in [
        ("tiny-llama-fp16", "float16", Value::Null),
        ("tiny-llama-int8", "float32", Value::from("int8")),
    ] {
        let dir = fixture(name);
        let p = precision(&dir);
        assert_eq!(p["dtype"], dtype, "{name}");
        assert_eq!(p["quantization"], quantization, "{name}");
        for key in ["drift_vs_pytorch", "drift_vs_onnx_float32"] {
            assert!(p[key]["max_abs"].as_f64().is_some(), "{name}: {key} missing");
        }
        assert!(
            p["flip_rate"].as_f64().is_some() && p["pairs"].as_u64() > Some(0),
            "{name}: flip rate"
        );
        let recorded = p["drift_vs_pytorch"]["max_abs"].as_f64().unwrap() as f32;
        let batch_dependence = p["batch_dependence_max_abs"].as_f64().unwrap() as f32;

        let scorer = load(&dir, ScorerOptions::default().with_batch_size(7));
        let tolerance = verify::default_tolerance(scorer.model());
        assert!(tolerance > verify::DEFAULT_TOLERANCE && tolerance == p["verify_tolerance"].as_f64().unwrap() as f32);
        let report = verify::verify(&scorer, tolerance).unwrap();
        assert!(report.passed(), "{name}: {report:?}");
        assert!(report.token_mismatches.is_empty());
        // Same ONNX Runtime and batch as the exporter's measurement: the drift is the one it recorded.
        assert!(
            (report.max_abs_diff - recorded).abs() <= 1e-5 + batch_dependence,
            "{name}: drift {} here, {recorded} recorded",
            report.max_abs_diff
        );
        assert!(
            report.max_abs_diff > 1e-6,
            "{name}: a reduced graph that matches float32 exactly is suspicious"
        );
    }
}

/// Rewards of three texts scored one at a time, and together in one batch padded on `side`.
fn alone_and_batched(dir: &std::path::Path, side: PaddingSide) -> (Vec<f32>, Vec<f32>) {
    let inputs: Vec<Input> = ["Hello there,", "The quick brown fox jumps over the lazy dog.", "a"]
        .into_iter()
        .map(|t| Input::text(t.to_owned()))
        .collect();
    let alone = load(dir, ScorerOptions::default().with_batch_size(1));
    let batched = load(dir, ScorerOptions::default().with_padding_side(side));
    let one = inputs.iter().map(|i| alone.score_one(i).unwrap()[0]).collect();
    let all = batched
        .score(&inputs)
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap()[0])
        .collect();
    (one, all)
}

#[test]
fn float16_rewards_do_not_depend_on_the_batch() {
    let (one, all) = alone_and_batched(&fixture("tiny-llama-fp16"), PaddingSide::Left);
    for (a, b) in one.iter().zip(&all) {
        assert!((a - b).abs() <= 1e-5, "batch of one {a} vs left-padded batch {b}");
    }
}

#[test]
fn int8_batch_dependence_stays_within_what_the_exporter_measured() {
    // Dynamic int8 quantises activations per tensor, so neighbours matter a little; the manifest says how much.
    let dir = fixture("tiny-llama-int8");
    let bound = precision(&dir)["batch_dependence_max_abs"].as_f64().unwrap() as f32;
    let tolerance = precision(&dir)["verify_tolerance"].as_f64().unwrap() as f32;
    let (one, all) = alone_and_batched(&dir, PaddingSide::Right);
    let worst = one.iter().zip(&all).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(
        bound > 0.0 && worst <= tolerance,
        "batch dependence {worst} (exporter measured {bound})"
    );
}
