//! The scorer: loads a model directory and runs records through every stage.
//!
//! input records → [`Formatter`] → [`Encoder`] (tokenize, length check) → [`batch::plan`] (group by length)
//! → [`Batch::pad`] → `Backbone::run` (graph, then last-position selection) → [`RewardHead::apply`] → rewards
//! in input order. A record that fails formatting or tokenization gets its own error; the others are scored.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::{
    backbone::{Backbone, SessionConfig},
    batch::{self, Batch, Encoded, Encoder, Truncation},
    chat::ChatTemplate,
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
    /// Over-length records: an error (default) or left truncation of the prompt.
    pub truncation: Truncation,
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
            truncation: Truncation::Error,
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

    /// Sets the over-length policy.
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
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
    /// Records shortened by left truncation.
    pub truncated: usize,
    /// Records whose doubled BOS (text BOS + tokenizer BOS) was removed.
    pub double_bos: usize,
    /// When pad id == eos id: sequences ending in eos, where the `mask` and `hf` rules score different tokens.
    pub ends_in_pad_eos: usize,
    /// Index of the first such sequence.
    pub first_ends_in_pad_eos: Option<usize>,
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
    pad_is_eos: bool,
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
        let encoder = Encoder::load(&model.path(&m.tokenizer.file), max_length)?
            .with_bos_id(m.tokenizer.bos_id)
            .with_truncation(options.truncation);
        let mut formatter = Formatter::new(m.format.template.clone(), m.tokenizer.add_special_tokens);
        let file = |f: &Option<String>| f.as_ref().map(|f| model.path(f));
        match ChatTemplate::load(
            file(&m.tokenizer.config_file).as_deref(),
            file(&m.tokenizer.chat_template_file).as_deref(),
        )? {
            Some(chat) => formatter = formatter.with_chat_template(chat, m.format.chat_template),
            None if m.format.chat_template => {
                return Err(Error::model(
                    model.manifest_path(),
                    "format.chat_template is true but the directory has no chat template (tokenizer.config_file or \
                     tokenizer.chat_template_file)",
                ))
            }
            None => {}
        }
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
            formatter,
            pad_is_eos: m.tokenizer.eos_id == Some(m.tokenizer.pad_id),
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

    /// Like [`Scorer::score`], with timings, padding, truncation and double-BOS counts.
    ///
    /// # Errors
    /// As [`Scorer::score`].
    pub fn score_detailed(&self, inputs: &[Input]) -> Result<(Vec<Result<Rewards>>, ScoreStats)> {
        let (scored, stats) = self.score_full(inputs, None)?;
        Ok((scored.into_iter().map(|r| r.map(|s| s.rewards)).collect(), stats))
    }

    /// The most general call: rewards, layer `layer`'s hidden state at the scored token when asked for (see
    /// [`Scorer::score_with_layer`]), and the run's statistics.
    ///
    /// # Errors
    /// A layer the graph does not output, or as [`Scorer::score`].
    pub fn score_full(&self, inputs: &[Input], layer: Option<usize>) -> Result<(Vec<Result<Scored>>, ScoreStats)> {
        if let Some(layer) = layer {
            self.check_layer(layer)?;
        }
        let started = Instant::now();
        let encoded = self.encode_detailed(inputs);
        let format_tokenize = started.elapsed();
        let (mut truncated, mut double_bos) = (0, 0);
        let ids = encoded
            .into_iter()
            .map(|e| {
                e.map(|e| {
                    truncated += usize::from(e.dropped > 0);
                    double_bos += usize::from(e.double_bos);
                    e.ids
                })
            })
            .collect();
        let (scored, mut stats) = self.score_encoded_rule(ids, layer, self.last_token)?;
        stats.format_tokenize = format_tokenize;
        stats.truncated = truncated;
        stats.double_bos = double_bos;
        Ok((scored, stats))
    }

    /// Scores one input under `rule` instead of the rule in force (to show what another rule would give).
    ///
    /// # Errors
    /// As [`Scorer::score_one`].
    pub fn score_one_under(&self, input: &Input, rule: LastTokenRule) -> Result<Rewards> {
        let encoded = self.encode(std::slice::from_ref(input));
        let (mut scored, _) = self.score_encoded_rule(encoded, None, rule)?;
        scored.pop().expect("one result").map(|s| s.rewards)
    }

    /// Scores `inputs` and also returns layer `layer`'s hidden state at each record's scored token, for probing.
    /// Layer 0 is the embeddings and the last layer is the top one (the state the reward head reads); the
    /// model must have been exported with `--all-layers`.
    ///
    /// # Errors
    /// A layer the graph does not output (outer error), or as [`Scorer::score`].
    pub fn score_with_layer(&self, inputs: &[Input], layer: usize) -> Result<Vec<Result<Scored>>> {
        self.score_full(inputs, Some(layer)).map(|(scored, _)| scored)
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        let layers = self.backbone.layer_count();
        if layer < layers {
            return Ok(());
        }
        let message = if layers == 0 {
            format!("layer {layer}: the graph has no per-layer outputs (export it with --all-layers)")
        } else {
            format!("layer {layer}: the graph outputs layers 0..={}", layers - 1)
        };
        Err(Error::model(
            self.model.path(&self.model.manifest.backbone.file),
            message,
        ))
    }

    /// Formats and tokenizes `inputs` as the scorer would; entry `i` is input `i`'s token ids or its error.
    pub fn encode(&self, inputs: &[Input]) -> Vec<Result<Vec<i64>>> {
        self.encode_detailed(inputs)
            .into_iter()
            .map(|e| e.map(|e| e.ids))
            .collect()
    }

    /// Like [`Scorer::encode`], saying what truncation and the double-BOS rule did to each record.
    pub fn encode_detailed(&self, inputs: &[Input]) -> Vec<Result<Encoded>> {
        self.encode_detailed_with(inputs, self.encoder.truncation())
    }

    /// [`Scorer::encode_detailed`] with another over-length policy (e.g. one chosen per server request).
    pub fn encode_detailed_with(&self, inputs: &[Input], truncation: Truncation) -> Vec<Result<Encoded>> {
        // Formatting errors stay in place; the formatted texts are tokenized in one call and fill the gaps.
        let mut failed: Vec<Option<Error>> = Vec::with_capacity(inputs.len());
        let mut texts = Vec::with_capacity(inputs.len());
        for (index, input) in inputs.iter().enumerate() {
            match self.formatter.format(input) {
                Ok(text) => {
                    texts.push(text);
                    failed.push(None);
                }
                Err(message) => {
                    let field = matches!(input, Input::Messages(_)).then_some("messages");
                    failed.push(Some(Error::Record { index, field, message }));
                }
            }
        }
        let mut encoded = self.encoder.encode_with(&texts, truncation).into_iter();
        failed
            .into_iter()
            .enumerate()
            .map(|(index, failed)| match failed {
                Some(e) => Err(e),
                None => encoded.next().expect("one encoding per text").map_err(|e| match e {
                    Error::Record { field, message, .. } => Error::Record { index, field, message },
                    other => other,
                }),
            })
            .collect()
    }

    /// Scores already tokenized sequences (from [`Scorer::encode`], or ids from elsewhere).
    ///
    /// # Errors
    /// As [`Scorer::score`].
    pub fn score_encoded(&self, encoded: Vec<Result<Vec<i64>>>) -> Result<(Vec<Result<Rewards>>, ScoreStats)> {
        let (scored, stats) = self.score_encoded_rule(encoded, None, self.last_token)?;
        let rewards = scored.into_iter().map(|r| r.map(|s| s.rewards)).collect();
        Ok((rewards, stats))
    }

    fn score_encoded_rule(
        &self,
        encoded: Vec<Result<Vec<i64>>>,
        probe: Option<usize>,
        rule: LastTokenRule,
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
                    if self.pad_is_eos && seq.last() == Some(&self.pad_id) {
                        stats.ends_in_pad_eos += 1;
                        stats.first_ends_in_pad_eos.get_or_insert(i);
                    }
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
            let (rows, timing) = self.backbone.run(&batch, rule, self.pad_id, probe, |_, h, p| Scored {
                rewards: self.head.apply(h),
                hidden: p.map(|p| p.to_vec()),
            })?;
            stats.backbone += timing.backbone;
            stats.select_head += timing.select_head;
            for (&index, row) in members.iter().zip(rows) {
                out[index] = Some(row.ok_or_else(|| Error::Record {
                    index,
                    field: None,
                    message: format!("no token to score under the `{rule:?}` last-token rule"),
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

    /// The over-length policy in force.
    pub fn truncation(&self) -> Truncation {
        self.encoder.truncation()
    }

    /// True when `prompt`/`response` records are rendered with the model's chat template.
    pub fn uses_chat_template(&self) -> bool {
        self.formatter.pairs_use_chat()
    }

    /// True when the model's pad id equals its eos id (the `mask` and `hf` rules then differ on a trailing eos).
    pub fn pad_is_eos(&self) -> bool {
        self.pad_is_eos
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
