//! `--all-layers` graphs, heads with a bias, and reward normalisation, against PyTorch's values in
//! `tests/data/tiny-llama-probe/reference.jsonl` (two objectives, a checkpoint bias, config mean/std).

use rewardrt::{verify, Error, Input, PaddingSide, ScorerOptions};
use serde_json::Value;

use crate::{bundled, chain, fixture, load};

fn reference() -> Vec<verify::ReferenceRow> {
    let text = std::fs::read_to_string(fixture("tiny-llama-probe").join("reference.jsonl")).unwrap();
    text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn every_layer_state_matches_pytorch_at_both_padding_sides() {
    let rows = reference();
    let inputs: Vec<Input> = rows.iter().map(|r| r.input().unwrap()).collect();
    for side in [PaddingSide::Right, PaddingSide::Left] {
        let scorer = load(
            &fixture("tiny-llama-probe"),
            ScorerOptions::default().with_padding_side(side),
        );
        assert_eq!(scorer.backbone().layer_count(), 3, "embeddings + 2 layers");
        for layer in 0..3 {
            for (row, got) in rows.iter().zip(scorer.score_with_layer(&inputs, layer).unwrap()) {
                let got = got.unwrap();
                let expected = &row.layer_states.as_ref().unwrap()[layer];
                let hidden = got.hidden.expect("asked for a layer");
                assert_eq!(hidden.len(), 32);
                let worst = hidden
                    .iter()
                    .zip(expected)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(worst <= 1e-4, "layer {layer}, {:?} ({side:?}): |Δ| {worst}", row.id);
                // The reward still comes from the top layer, whichever layer is probed.
                let diff = got
                    .rewards
                    .iter()
                    .zip(&row.rewards)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(diff <= 1e-4, "reward changed when probing layer {layer}: {diff}");
            }
        }
    }
}

#[test]
fn verify_checks_the_layers_too() {
    let scorer = load(&fixture("tiny-llama-probe"), ScorerOptions::default());
    let report = verify::verify(&scorer, verify::DEFAULT_TOLERANCE).unwrap();
    assert!(report.passed(), "{report:?}");
    assert_eq!(report.layers_checked, 3);
    assert!(report.max_abs_diff_layers <= 1e-4);
}

#[test]
fn a_layer_the_graph_lacks_is_an_error() {
    let probe = load(&fixture("tiny-llama-probe"), ScorerOptions::default());
    let input = [Input::text("Hello".to_owned())];
    let e = probe.score_with_layer(&input, 3).unwrap_err();
    assert!(
        chain(&e).contains("layer 3: the graph outputs layers 0..=2"),
        "{}",
        chain(&e)
    );
    let plain = load(&bundled(), ScorerOptions::default());
    let e = plain.score_with_layer(&input, 0).unwrap_err();
    assert!(chain(&e).contains("export it with --all-layers"), "{}", chain(&e));
}

#[test]
fn checkpoint_bias_is_part_of_the_reward() {
    // transformers' head drops the checkpoint's `score.bias`; the exporter keeps it and PyTorch's reference
    // (the head rebuilt with the bias) includes it, so parity holds only if the runtime adds it.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("tiny-llama-probe").join("rewardrt.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["head"]["bias"], "bias");
    let scorer = load(&fixture("tiny-llama-probe"), ScorerOptions::default());
    let rows = reference();
    for row in &rows {
        let got = scorer.score_one(&row.input().unwrap()).unwrap();
        for (a, b) in got.iter().zip(&row.rewards) {
            assert!((a - b).abs() <= 1e-4, "{:?}: {a} vs PyTorch {b}", row.id);
        }
    }
}

#[test]
fn normalisation_applies_only_when_asked() {
    let dir = fixture("tiny-llama-probe");
    let (mean, std) = ([0.5f32, -1.0], [2.0f32, 0.25]); // what make_fixtures.py put in config.json
    let raw = load(&dir, ScorerOptions::default());
    let normalized = load(&dir, ScorerOptions::default().with_normalize(true));
    assert!(!raw.normalizes() && normalized.normalizes());
    for row in reference() {
        let input = row.input().unwrap();
        let r = raw.score_one(&input).unwrap();
        let n = normalized.score_one(&input).unwrap();
        for k in 0..2 {
            assert!((r[k] - row.rewards[k]).abs() <= 1e-4, "raw is the default");
            let expected = (row.rewards[k] - mean[k]) / std[k];
            assert!((n[k] - expected).abs() <= 1e-3, "label {k}: {} vs {expected}", n[k]);
        }
    }
}

#[test]
fn normalisation_of_a_model_without_stats_is_an_error() {
    let e = rewardrt::Scorer::load(
        bundled(),
        ScorerOptions::default()
            .with_normalize(true)
            .with_ep(rewardrt::ExecutionProvider::Cpu),
    )
    .unwrap_err();
    assert!(matches!(e, Error::Model { .. }));
    assert!(chain(&e).contains("the model carries none"), "{}", chain(&e));
}
