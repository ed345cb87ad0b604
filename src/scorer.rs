//! The scorer: loads a model directory and runs records through every stage.
//!
//! input records → [`Formatter`] → [`Encoder`] (tokenize, length check) → [`batch::plan`] (group by length)
//! → [`Batch::pad`] → `Backbone::run` (graph, then last-position selection) → [`RewardHead::apply`] → rewards
//! in input order. A record that fails formatting or tokenization gets its own error; the others are scored.

use std::{
    borrow::Cow,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    backbone::{Backbone, SessionConfig},
    batch::{self, Batch, Encoder},
    ep::{EpReport, ExecutionProvider},
    format::Formatter,
    head::RewardHead,
    manifest::{ModelDir, PaddingSide},
    record::Input,
    runtime::{self, Runtime},
    select::LastTokenRule,
    Error, Result,
};

/// Options for [`Scorer::load`]; defaults come from the manifest where it has an opinion.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ScorerOptions {
    /// Execution provider (default `Auto`).
    pub ep: ExecutionProvider,
    /// Sequences per backbone call (default 16).
    pub batch_size: usize,
    /// ONNX Runtime intra-op threads per session (default: ONNX Runtime's choice).
    pub threads: Option<usize>,
    /// Sessions in the pool, for concurrent callers (default 1).
    pub workers: usize,
    /// Padding side (default: the manifest's).
    pub padding_side: Option<PaddingSide>,
    /// Last-token rule (default: the manifest's).
    pub last_token: Option<LastTokenRule>,
    /// Token limit, at most the manifest's (default: the manifest's).
    pub max_length: Option<usize>,
    /// ONNX Runtime library to load instead of the resolution order in [`crate::runtime`].
    pub ort_library: Option<PathBuf>,
    /// Apply the model's reward normalisation `(r - mean) / std` (default false: raw rewards).
    pub normalize: bool,
}

impl Default for ScorerOptions {
    fn default() -> Self {
        ScorerOptions {
            ep: ExecutionProvider::Auto,
            batch_size: 16,
            threads: None,
            workers: 1,
            padding_side: None,
            last_token: None,
            max_length: None,
            ort_library: None,
            normalize: false,
        }
    }
}

impl ScorerOptions {
    /// Sets the execution provider.
    pub fn with_ep(mut self, ep: ExecutionProvider) -> Self {
        self.ep = ep;
        self
    }

    /// Sets the batch size (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    /// Sets the intra-op thread count.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    /// Sets the number of pooled sessions (at least 1).
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// Overrides the manifest's padding side.
    pub fn with_padding_side(mut self, side: PaddingSide) -> Self {
        self.padding_side = Some(side);
        self
    }

    /// Overrides the manifest's last-token rule.
    pub fn with_last_token(mut self, rule: LastTokenRule) -> Self {
        self.last_token = Some(rule);
        self
    }

    /// Lowers the token limit.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = Some(max_length);
        self
    }

    /// Applies the model's reward normalisation (`head.normalization` in the manifest; loading fails when the
    /// model has none).
    pub fn with_normalize(mut self, normalize: bool) -> Self {
        self.normalize = normalize;
        self
    }

    /// Loads ONNX Runtime from this file.
    pub fn with_ort_library(mut self, path: impl Into<PathBuf>) -> Self {
        self.ort_library = Some(path.into());
        self
    }
}

/// Rewards of one record: `k` values, one per head output.
pub type Rewards = Vec<f32>;

/// One record's rewards with, when asked for, a layer's hidden state at the scored token.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub rewards: Rewards,
    /// Layer `n`'s hidden state at the scored position (see [`Scorer::score_with_layer`]).
    pub hidden: Option<Vec<f32>>,
}

/// Where time went and how much padding a [`Scorer::score_detailed`] call cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoreStats {
    pub sequences: usize,
    pub batches: usize,
    /// Real tokens scored.
    pub tokens: usize,
    /// Tokens fed to the backbone including padding.
    pub padded_tokens: usize,
    pub format_tokenize: Duration,
    pub backbone: Duration,
    pub select_head: Duration,
}

/// A loaded reward model. `Send + Sync`: share it across threads (size the session pool with
/// [`ScorerOptions::with_workers`] for parallel calls).
#[derive(Debug)]
pub struct Scorer {
    model: ModelDir,
    runtime: &'static Runtime,
    formatter: Formatter,
    encoder: Encoder,
    backbone: Backbone,
    head: RewardHead,
    padding_side: PaddingSide,
    last_token: LastTokenRule,
    pad_id: i64,
    batch_size: usize,
}

impl Scorer {
    /// Loads and cross-checks the model directory: manifest, checksums, tokenizer, head, graph.
    ///
    /// # Errors
    /// Any invalid or inconsistent file (named in the error), a missing ONNX Runtime library, or a named
    /// execution provider that cannot run.
    pub fn load(dir: impl AsRef<Path>, options: ScorerOptions) -> Result<Scorer> {
        let model = ModelDir::open(dir)?;
        let m = &model.manifest;
        let max_length = match options.max_length {
            Some(n) if n > m.max_length || n == 0 => {
                return Err(Error::model(
                    model.manifest_path(),
                    format!("max_length {n} must be between 1 and the manifest's {}", m.max_length),
                ))
            }
            Some(n) => n,
            None => m.max_length,
        };
        let encoder = Encoder::load(
            &model.path(&m.tokenizer.file),
            m.tokenizer.add_special_tokens,
            max_length,
        )?;
        let mut head = RewardHead::load(&model.path(&m.head.file), &m.head)?;
        if options.normalize {
            let norm = m.head.normalization.as_ref().ok_or_else(|| {
                Error::model(
                    model.manifest_path(),
                    "normalisation requested, but the model carries none (head.normalization is null: the \
                     source config had no mean/std)",
                )
            })?;
            head = head.with_normalization(&norm.mean, &norm.std);
        }
        let runtime = runtime::runtime(options.ort_library.as_deref())?;
        let backbone = Backbone::load(
            &model,
            runtime,
            &SessionConfig {
                ep: options.ep,
                intra_threads: options.threads,
                pool_size: options.workers,
            },
        )?;
        Ok(Scorer {
            formatter: Formatter::new(m.format.template.clone()),
            padding_side: options.padding_side.unwrap_or(m.padding_side),
            last_token: options.last_token.unwrap_or(m.last_token),
            pad_id: i64::from(m.tokenizer.pad_id),
            batch_size: options.batch_size.max(1),
            model,
            runtime,
            encoder,
            backbone,
            head,
        })
    }

    /// Scores `inputs`; entry `i` is input `i`'s rewards or its own error.
    ///
    /// # Errors
    /// The outer error is a failure of the backbone itself (no record can be scored).
    pub fn score(&self, inputs: &[Input]) -> Result<Vec<Result<Rewards>>> {
        self.score_detailed(inputs).map(|(rewards, _)| rewards)
    }

    /// Scores one input.
    ///
    /// # Errors
    /// The record's own error or a backbone failure.
    pub fn score_one(&self, input: &Input) -> Result<Rewards> {
        self.score(std::slice::from_ref(input))?
            .pop()
            .expect("one result per input")
    }

    /// Like [`Scorer::score`], with timings and padding counts.
    ///
    /// # Errors
    /// As [`Scorer::score`].
    pub fn score_detailed(&self, inputs: &[Input]) -> Result<(Vec<Result<Rewards>>, ScoreStats)> {
        let started = Instant::now();
        let encoded = self.encode(inputs);
        let format_tokenize = started.elapsed();
        let (rewards, mut stats) = self.score_encoded(encoded)?;
        stats.format_tokenize = format_tokenize;
        Ok((rewards, stats))
    }

    /// Scores `inputs` and also returns layer `layer`'s hidden state at each record's scored token, for probing.
    /// Layer 0 is the embeddings and the last layer is the top one (the state the reward head reads); the
    /// model must have been exported with `--all-layers`.
    ///
    /// # Errors
    /// A layer the graph does not output (outer error), or as [`Scorer::score`].
    pub fn score_with_layer(&self, inputs: &[Input], layer: usize) -> Result<Vec<Result<Scored>>> {
        let layers = self.backbone.layer_count();
        if layer >= layers {
            let message = if layers == 0 {
                format!("layer {layer}: the graph has no per-layer outputs (export it with --all-layers)")
            } else {
                format!("layer {layer}: the graph outputs layers 0..={}", layers - 1)
            };
            return Err(Error::model(
                self.model.path(&self.model.manifest.backbone.file),
                message,
            ));
        }
        let encoded = self.encode(inputs);
        self.score_encoded_with(encoded, Some(layer)).map(|(scored, _)| scored)
    }

    /// Formats and tokenizes `inputs` as the scorer would; entry `i` is input `i`'s token ids or its error.
    pub fn encode(&self, inputs: &[Input]) -> Vec<Result<Vec<i64>>> {
        let texts: Vec<Cow<'_, str>> = inputs.iter().map(|i| self.formatter.format(i)).collect();
        let texts: Vec<&str> = texts.iter().map(AsRef::as_ref).collect();
        self.encoder.encode(&texts)
    }

    /// Scores already tokenized sequences (from [`Scorer::encode`], or ids from elsewhere).
    ///
    /// # Errors
    /// As [`Scorer::score`].
    pub fn score_encoded(&self, encoded: Vec<Result<Vec<i64>>>) -> Result<(Vec<Result<Rewards>>, ScoreStats)> {
        let (scored, stats) = self.score_encoded_with(encoded, None)?;
        let rewards = scored.into_iter().map(|r| r.map(|s| s.rewards)).collect();
        Ok((rewards, stats))
    }

    fn score_encoded_with(
        &self,
        encoded: Vec<Result<Vec<i64>>>,
        probe: Option<usize>,
    ) -> Result<(Vec<Result<Scored>>, ScoreStats)> {
        let mut stats = ScoreStats {
            sequences: encoded.len(),
            ..ScoreStats::default()
        };
        let mut out: Vec<Option<Result<Scored>>> = Vec::with_capacity(encoded.len());
        let mut ids: Vec<Option<Vec<i64>>> = Vec::with_capacity(encoded.len());
        let mut lengths = Vec::with_capacity(encoded.len());
        for (i, e) in encoded.into_iter().enumerate() {
            match e {
                Ok(seq) => {
                    lengths.push((i, seq.len()));
                    ids.push(Some(seq));
                    out.push(None);
                }
                Err(e) => {
                    ids.push(None);
                    out.push(Some(Err(e)));
                }
            }
        }
        for members in batch::plan(&lengths, self.batch_size) {
            let seqs: Vec<&[i64]> = members
                .iter()
                .map(|&i| ids[i].as_deref().expect("planned only tokenized records"))
                .collect();
            let batch = Batch::pad(&seqs, self.pad_id, self.padding_side, self.backbone.takes_positions());
            stats.batches += 1;
            stats.tokens += seqs.iter().map(|s| s.len()).sum::<usize>();
            stats.padded_tokens += batch.rows() * batch.width();
            let (rows, timing) = self
                .backbone
                .run(&batch, self.last_token, self.pad_id, probe, |_, h, p| Scored {
                    rewards: self.head.apply(h),
                    hidden: p.map(|p| p.to_vec()),
                })?;
            stats.backbone += timing.backbone;
            stats.select_head += timing.select_head;
            for (&index, row) in members.iter().zip(rows) {
                out[index] = Some(row.ok_or_else(|| Error::Record {
                    index,
                    field: None,
                    message: format!("no token to score under the `{:?}` last-token rule", self.last_token),
                }));
            }
        }
        let rewards = out
            .into_iter()
            .map(|r| r.expect("every record is scored or failed"))
            .collect();
        Ok((rewards, stats))
    }

    /// The model directory and its manifest.
    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// Label names, one per reward output.
    pub fn labels(&self) -> Vec<String> {
        self.model.labels()
    }

    /// Number of reward outputs `k`.
    pub fn num_labels(&self) -> usize {
        self.head.num_labels()
    }

    /// Which execution provider runs the backbone.
    pub fn ep_report(&self) -> &EpReport {
        self.backbone.ep_report()
    }

    /// The loaded ONNX Runtime.
    pub fn runtime(&self) -> &'static Runtime {
        self.runtime
    }

    /// The backbone graph (inputs, outputs, pool).
    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    /// The padding side in force.
    pub fn padding_side(&self) -> PaddingSide {
        self.padding_side
    }

    /// The last-token rule in force.
    pub fn last_token(&self) -> LastTokenRule {
        self.last_token
    }

    /// True when rewards are normalised with the model's `mean`/`std`.
    pub fn normalizes(&self) -> bool {
        self.head.normalizes()
    }

    /// The token limit in force.
    pub fn max_length(&self) -> usize {
        self.encoder.max_length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn scorer_is_send_and_sync() {
        assert_send_sync::<Scorer>();
    }
}
