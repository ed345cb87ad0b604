//! Last-position selection: which position of each padded row is "the last token" that gets scored.
//!
//! The reward is read at one position per sequence, so this stage decides correctness under padding. The
//! default rule reads the attention mask (the last position whose mask is 1), which is independent of token
//! ids and therefore immune to pad == eos collisions: a sequence that ends in eos scores the eos token, as
//! reward models trained with a trailing end-of-turn token expect. The `non_pad` rule reproduces Hugging Face
//! `*ForSequenceClassification` (the rightmost token whose id differs from the pad id), which skips a trailing
//! eos when pad == eos. (One difference: a row with no non-pad token at all is an error here, where transformers
//! would silently score position 0.)

use serde::{Deserialize, Serialize};

/// How the scored position is chosen in each row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LastTokenRule {
    /// The last position whose attention mask is 1.
    #[default]
    Mask,
    /// The rightmost position whose token id is not the pad id: what transformers' `*ForSequenceClassification`
    /// does (`hf` on the command line; `non_pad` in manifests).
    #[serde(alias = "hf")]
    #[cfg_attr(feature = "cli", value(name = "hf", alias = "non-pad", alias = "non_pad"))]
    NonPad,
}

/// Position to score in one row, or `None` when the row has no real token under the rule.
///
/// `ids` and `mask` are one row of the padded batch, of equal length.
pub fn last_position(rule: LastTokenRule, ids: &[i64], mask: &[i64], pad_id: i64) -> Option<usize> {
    debug_assert_eq!(ids.len(), mask.len());
    match rule {
        LastTokenRule::Mask => mask.iter().rposition(|&m| m != 0),
        LastTokenRule::NonPad => ids.iter().zip(mask).rposition(|(&id, &m)| m != 0 && id != pad_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: i64 = 0;

    #[test]
    fn mask_rule_right_padding() {
        assert_eq!(
            last_position(LastTokenRule::Mask, &[5, 6, 7, 0, 0], &[1, 1, 1, 0, 0], PAD),
            Some(2)
        );
    }

    #[test]
    fn mask_rule_left_padding() {
        assert_eq!(
            last_position(LastTokenRule::Mask, &[0, 0, 5, 6, 7], &[0, 0, 1, 1, 1], PAD),
            Some(4)
        );
    }

    #[test]
    fn mask_rule_full_row() {
        assert_eq!(last_position(LastTokenRule::Mask, &[5, 6, 7], &[1, 1, 1], PAD), Some(2));
    }

    #[test]
    fn empty_row_has_no_position() {
        assert_eq!(last_position(LastTokenRule::Mask, &[0, 0], &[0, 0], PAD), None);
        assert_eq!(last_position(LastTokenRule::NonPad, &[0, 0], &[0, 0], PAD), None);
    }

    /// pad id == eos id: a sequence that ends in eos must score the eos token under the mask rule, even though
    /// its id equals the padding after it.
    #[test]
    fn pad_equals_eos_mask_rule_scores_trailing_eos() {
        let eos = 2;
        let ids = [1, 9, 8, eos, eos, eos];
        let mask = [1, 1, 1, 1, 0, 0];
        assert_eq!(last_position(LastTokenRule::Mask, &ids, &mask, eos), Some(3));
    }

    /// The same row under Hugging Face's rule skips every eos, padding or not, and scores the token before.
    #[test]
    fn pad_equals_eos_non_pad_rule_skips_trailing_eos() {
        let eos = 2;
        let ids = [1, 9, 8, eos, eos, eos];
        let mask = [1, 1, 1, 1, 0, 0];
        assert_eq!(last_position(LastTokenRule::NonPad, &ids, &mask, eos), Some(2));
    }

    #[test]
    fn pad_equals_eos_left_padding() {
        let eos = 2;
        let ids = [eos, eos, 1, 9, eos];
        let mask = [0, 0, 1, 1, 1];
        assert_eq!(last_position(LastTokenRule::Mask, &ids, &mask, eos), Some(4));
        assert_eq!(last_position(LastTokenRule::NonPad, &ids, &mask, eos), Some(3));
    }

    /// A sequence ending in eos when pad != eos: both rules agree on the eos position.
    #[test]
    fn trailing_eos_distinct_pad_rules_agree() {
        let (eos, pad) = (6, 0);
        let ids = [1, 9, 8, eos, pad];
        let mask = [1, 1, 1, 1, 0];
        assert_eq!(last_position(LastTokenRule::Mask, &ids, &mask, pad), Some(3));
        assert_eq!(last_position(LastTokenRule::NonPad, &ids, &mask, pad), Some(3));
    }

    #[test]
    fn rule_names_round_trip_through_serde() {
        assert_eq!(serde_json::to_string(&LastTokenRule::NonPad).unwrap(), "\"non_pad\"");
        assert_eq!(
            serde_json::from_str::<LastTokenRule>("\"mask\"").unwrap(),
            LastTokenRule::Mask
        );
    }
}
