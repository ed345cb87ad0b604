//! Rewards equal the native PyTorch model's, within the stated tolerance of 1e-4 absolute.

use rewardrt::{verify, PaddingSide, ScorerOptions};

use crate::{bundled, fixture, load};

/// Re-scores the reference records in batches, padded on each side, against PyTorch's unpadded rewards.
fn assert_parity(dir: &std::path::Path) {
    for side in [PaddingSide::Right, PaddingSide::Left] {
        assert_parity_padded(dir, side);
    }
}

fn assert_parity_padded(dir: &std::path::Path, side: PaddingSide) {
    let scorer = load(dir, ScorerOptions::default().with_batch_size(4).with_padding_side(side));
    let report = verify::verify(&scorer, verify::DEFAULT_TOLERANCE).unwrap();
    assert!(report.records >= 5, "{} has too few reference records", dir.display());
    assert!(
        report.token_mismatches.is_empty(),
        "token ids differ from the exporter's for {:?}",
        report.token_mismatches
    );
    assert!(
        report.max_abs_diff <= verify::DEFAULT_TOLERANCE,
        "{} ({side:?} padding): max |Δ| {} > 1e-4 (worst {:?})",
        dir.display(),
        report.max_abs_diff,
        report.worst
    );
}

#[test]
fn bundled_model_matches_pytorch() {
    assert_parity(&bundled());
}

#[test]
fn multi_label_head_matches_pytorch() {
    let dir = fixture("tiny-llama-k3");
    assert_parity(&dir);
    let scorer = load(&dir, ScorerOptions::default());
    assert_eq!(scorer.num_labels(), 3);
    assert_eq!(scorer.labels(), ["objective_0", "objective_1", "objective_2"]);
}

/// pad id == eos id with sequences ending in eos: the exporter keeps transformers' `non_pad` rule and our
/// rewards equal PyTorch's, including for one and two trailing eos tokens.
#[test]
fn pad_equals_eos_matches_pytorch() {
    let dir = fixture("tiny-llama-padeos");
    let scorer = load(&dir, ScorerOptions::default());
    assert_eq!(scorer.model().manifest.last_token, rewardrt::LastTokenRule::NonPad);
    assert_parity(&dir);
}

/// Same rows under the `mask` rule score the trailing eos instead, so the rewards must differ from PyTorch's
/// for exactly the rows that end in eos: the rule matters and is applied.
#[test]
fn pad_equals_eos_mask_rule_scores_the_eos_token() {
    let dir = fixture("tiny-llama-padeos");
    let mask = load(
        &dir,
        ScorerOptions::default().with_last_token(rewardrt::LastTokenRule::Mask),
    );
    let (_, rows) = verify::read_reference(&mask).unwrap();
    for row in rows {
        let got = mask.score_one(&row.input().unwrap()).unwrap()[0];
        let ends_in_eos = row.input_ids.last() == Some(&2);
        let same = (got - row.rewards[0]).abs() <= 1e-4;
        assert_eq!(
            same, !ends_in_eos,
            "record {}: got {got}, pytorch {}",
            row.id, row.rewards[0]
        );
    }
}

/// GPT-2 has learned absolute positions: only because `position_ids` count real tokens does a left-padded
/// sequence score as PyTorch scores it unpadded.
#[test]
fn learned_positions_model_matches_pytorch() {
    assert_parity(&fixture("tiny-gpt2"));
}
