//! Parity against the native model: re-score `reference.jsonl` and compare with the rewards PyTorch computed.
//!
//! Each reference row carries the record, the token ids the exporter fed PyTorch, and PyTorch's rewards. The
//! check compares our tokenization with those ids (a tokenizer drift is reported as such, not as a numeric
//! difference) and our rewards with PyTorch's, with one reward per output label.

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{Error, Input, Result, Scorer};

/// Default tolerance on the absolute reward difference (float32 graphs).
pub const DEFAULT_TOLERANCE: f32 = 1e-4;

/// The tolerance for this model: the exporter's `precision.verify_tolerance` for a reduced-precision graph
/// (float16, int8), else [`DEFAULT_TOLERANCE`].
pub fn default_tolerance(model: &crate::ModelDir) -> f32 {
    model
        .manifest
        .precision
        .as_ref()
        .and_then(|p| p.verify_tolerance)
        .unwrap_or(DEFAULT_TOLERANCE)
}

/// One row of `reference.jsonl`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReferenceRow {
    pub id: serde_json::Value,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub response: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<crate::chat::Message>>,
    pub input_ids: Vec<i64>,
    pub rewards: Vec<f32>,
    /// PyTorch's `hidden_states[n]` at the scored token, for each layer `n` (graphs exported with all layers).
    #[serde(default)]
    pub layer_states: Option<Vec<Vec<f32>>>,
}

impl ReferenceRow {
    /// The input this row describes.
    pub fn input(&self) -> Option<Input> {
        if let Some(m) = &self.messages {
            return Some(Input::messages(m.clone()));
        }
        match (&self.text, &self.prompt, &self.response) {
            (Some(t), _, _) => Some(Input::text(t.clone())),
            (None, Some(p), Some(r)) => Some(Input::pair(p.clone(), r.clone())),
            _ => None,
        }
    }
}

/// The outcome of [`verify`].
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub file: PathBuf,
    pub records: usize,
    pub max_abs_diff: f32,
    pub mean_abs_diff: f32,
    /// Id of the record with the largest difference.
    pub worst: Option<serde_json::Value>,
    /// Records whose token ids differ from the reference's.
    pub token_mismatches: Vec<serde_json::Value>,
    /// Layers whose hidden states were compared (0 when the graph or the reference has none).
    pub layers_checked: usize,
    /// Largest difference over every compared layer state.
    pub max_abs_diff_layers: f32,
    pub tolerance: f32,
}

impl VerifyReport {
    /// True when tokens match everywhere and every difference is within tolerance.
    pub fn passed(&self) -> bool {
        self.token_mismatches.is_empty()
            && self.max_abs_diff <= self.tolerance
            && self.max_abs_diff_layers <= self.tolerance
            && self.records > 0
    }
}

/// Reads the reference rows of the scorer's model directory.
///
/// # Errors
/// No reference file in the manifest, an unreadable file, or a bad row (file and line named).
pub fn read_reference(scorer: &Scorer) -> Result<(PathBuf, Vec<ReferenceRow>)> {
    let model = scorer.model();
    let name = model
        .manifest
        .reference
        .as_deref()
        .ok_or_else(|| Error::model(model.manifest_path(), "no `reference` file named"))?;
    let path = model.path(name);
    let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
    let mut rows = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|e| Error::io(&path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let row: ReferenceRow = serde_json::from_str(&line).map_err(|e| Error::InputLine {
            path: path.clone(),
            line: i + 1,
            message: e.to_string(),
        })?;
        if row.input().is_none() {
            return Err(Error::InputLine {
                path: path.clone(),
                line: i + 1,
                message: "row needs `text`, `messages`, or `prompt` and `response`".into(),
            });
        }
        if row.rewards.len() != scorer.num_labels() {
            return Err(Error::InputLine {
                path: path.clone(),
                line: i + 1,
                message: format!(
                    "{} rewards for a head with {} outputs",
                    row.rewards.len(),
                    scorer.num_labels()
                ),
            });
        }
        rows.push(row);
    }
    Ok((path, rows))
}

/// Re-scores the model's `reference.jsonl` through the full pipeline and compares with PyTorch.
///
/// # Errors
/// As [`read_reference`], or a record that cannot be scored.
pub fn verify(scorer: &Scorer, tolerance: f32) -> Result<VerifyReport> {
    let (file, rows) = read_reference(scorer)?;
    let inputs: Vec<Input> = rows.iter().map(|r| r.input().expect("checked")).collect();
    let encoded = scorer.encode(&inputs);
    let mut token_mismatches = Vec::new();
    for (row, enc) in rows.iter().zip(&encoded) {
        if enc.as_ref().ok() != Some(&row.input_ids) {
            token_mismatches.push(row.id.clone());
        }
    }
    let (scored, _) = scorer.score_encoded(encoded)?;
    let (mut max, mut sum, mut n, mut worst) = (0f32, 0f64, 0usize, None);
    for (row, got) in rows.iter().zip(scored) {
        let got = got?;
        for (a, b) in got.iter().zip(&row.rewards) {
            let d = (a - b).abs();
            let d = if d.is_nan() { f32::INFINITY } else { d };
            if worst.is_none() || d > max {
                max = d;
                worst = Some(row.id.clone());
            }
            sum += f64::from(d);
            n += 1;
        }
    }
    let (layers_checked, max_abs_diff_layers) = verify_layers(scorer, &file, &rows, &inputs)?;
    Ok(VerifyReport {
        file,
        records: rows.len(),
        layers_checked,
        max_abs_diff_layers,
        max_abs_diff: max,
        mean_abs_diff: if n == 0 { 0.0 } else { (sum / n as f64) as f32 },
        worst,
        token_mismatches,
        tolerance,
    })
}

/// Compares each layer's state at the scored token with PyTorch's, when both the graph and the reference have
/// them; returns (layers compared, largest difference).
fn verify_layers(scorer: &Scorer, file: &Path, rows: &[ReferenceRow], inputs: &[Input]) -> Result<(usize, f32)> {
    let layers = scorer.backbone().layer_count();
    if layers == 0 || rows.iter().any(|r| r.layer_states.is_none()) {
        return Ok((0, 0.0));
    }
    let mut max = 0f32;
    for layer in 0..layers {
        for (row, got) in rows.iter().zip(scorer.score_with_layer(inputs, layer)?) {
            let expected = row.layer_states.as_ref().and_then(|s| s.get(layer));
            let got = got?.hidden.unwrap_or_default();
            let Some(expected) = expected.filter(|e| e.len() == got.len()) else {
                return Err(Error::model(
                    file,
                    format!(
                        "record {}: `layer_states` has no layer {layer} state of the graph's size",
                        row.id
                    ),
                ));
            };
            for (a, b) in got.iter().zip(expected) {
                let d = (a - b).abs();
                max = max.max(if d.is_nan() { f32::INFINITY } else { d });
            }
        }
    }
    Ok((layers, max))
}
