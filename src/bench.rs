//! Throughput measurement for `rewardrt bench`: sequences/s and tokens/s per (batch size, length), with the
//! time split into format+tokenize, backbone, and select+head.
//!
//! Inputs are built from the model's own tokenizer vocabulary (ids decoded to text) so every configuration
//! scores real text of a known token length through the whole pipeline, tokenization included.

use std::time::{Duration, Instant};

use crate::{Input, Result, Scorer};

/// One configuration to measure.
#[derive(Debug, Clone, Copy)]
pub struct BenchCase {
    pub batch_size: usize,
    /// Target tokens per sequence.
    pub length: usize,
    /// Sequences scored per repetition.
    pub sequences: usize,
}

/// What one configuration measured (the best of its repetitions by wall time).
#[derive(Debug, Clone, Copy)]
pub struct BenchRow {
    pub case: BenchCase,
    /// Mean real tokens per sequence actually scored.
    pub mean_tokens: f64,
    pub wall: Duration,
    pub format_tokenize: Duration,
    pub backbone: Duration,
    pub select_head: Duration,
}

impl BenchRow {
    /// Sequences per second.
    pub fn sequences_per_s(&self) -> f64 {
        self.case.sequences as f64 / self.wall.as_secs_f64()
    }

    /// Real tokens per second.
    pub fn tokens_per_s(&self) -> f64 {
        self.mean_tokens * self.sequences_per_s()
    }
}

/// Text that the scorer tokenizes to at most `length` tokens (and as close to it as a character cut allows):
/// `base` doubled until long enough, then the longest fitting prefix, found by bisection.
pub fn text_of_length(scorer: &Scorer, base: &str, length: usize) -> String {
    let count = |t: &str| {
        scorer
            .encode(&[Input::text(t)])
            .pop()
            .and_then(|r| r.ok())
            .map_or(usize::MAX, |ids| ids.len())
    };
    let mut text = base.to_owned();
    while count(&text) < length && text.len() < 1 << 20 {
        text = format!("{text} {text}");
    }
    let chars: Vec<char> = text.chars().collect();
    let prefix = |n: usize| chars[..n].iter().collect::<String>();
    let (mut lo, mut hi) = (1, chars.len());
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if count(&prefix(mid)) <= length {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    prefix(lo)
}

/// Runs each case `repeats` times after one warm-up and keeps the fastest repetition.
///
/// # Errors
/// A backbone failure, or a record that cannot be scored.
pub fn run(scorer: &Scorer, base: &str, cases: &[BenchCase], repeats: usize) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    for &case in cases {
        let text = text_of_length(scorer, base, case.length);
        let inputs = vec![Input::text(text); case.sequences];
        let scorer_batch = |inputs: &[Input]| -> Result<_> {
            let mut total = crate::ScoreStats::default();
            for chunk in inputs.chunks(case.batch_size.max(1)) {
                let (rewards, stats) = scorer.score_detailed(chunk)?;
                for r in rewards {
                    r?;
                }
                total.tokens += stats.tokens;
                total.format_tokenize += stats.format_tokenize;
                total.backbone += stats.backbone;
                total.select_head += stats.select_head;
            }
            Ok(total)
        };
        scorer_batch(&inputs[..case.batch_size.min(inputs.len())])?;
        let mut best: Option<BenchRow> = None;
        for _ in 0..repeats.max(1) {
            let started = Instant::now();
            let stats = scorer_batch(&inputs)?;
            let wall = started.elapsed();
            let row = BenchRow {
                case,
                mean_tokens: stats.tokens as f64 / case.sequences as f64,
                wall,
                format_tokenize: stats.format_tokenize,
                backbone: stats.backbone,
                select_head: stats.select_head,
            };
            if best.is_none_or(|b| row.wall < b.wall) {
                best = Some(row);
            }
        }
        rows.push(best.expect("at least one repetition"));
    }
    Ok(rows)
}
