//! The model directory contract: `rewardrt.json`, written by `export/export.py`, read and validated here.
//!
//! The manifest names every file of the directory with its sha256, the graph's input and output names, the hidden
//! size, the head's tensor names and shape `[k, hidden]`, the tokenizer's special ids, the padding side, the
//! last-token rule, the token limit and the text format. Loading checks that it is self-consistent and that the
//! files exist and match their checksums; `backbone.rs` and `head.rs` then check the files against it.

use std::{
    collections::BTreeMap,
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{select::LastTokenRule, Error, Result};

/// File name of the manifest inside a model directory.
pub const MANIFEST_FILE: &str = "rewardrt.json";

/// The manifest `format_version` this runtime reads.
pub const FORMAT_VERSION: u32 = 1;

/// Files above this size are not hashed at load time (only by [`ModelDir::verify_checksums`] with no limit, as `rewardrt verify` does).
pub const LOAD_CHECKSUM_LIMIT: u64 = 256 << 20;

/// Which side sequences are padded on in a batch. Rewards must not depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum PaddingSide {
    /// Real tokens first, padding after them.
    #[default]
    Right,
    /// Padding first, real tokens after it.
    Left,
}

/// Typed `rewardrt.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    #[serde(default)]
    pub architecture: Option<String>,
    pub backbone: BackboneSpec,
    pub head: HeadSpec,
    pub tokenizer: TokenizerSpec,
    #[serde(default)]
    pub format: FormatSpec,
    #[serde(default)]
    pub padding_side: PaddingSide,
    #[serde(default)]
    pub last_token: LastTokenRule,
    pub max_length: usize,
    /// Records with the rewards the native PyTorch model computed (`reference.jsonl`).
    #[serde(default)]
    pub reference: Option<String>,
    /// What the exporter's parity gate measured; informational.
    #[serde(default)]
    pub parity: Option<serde_json::Value>,
    /// Precision of the graph and, when reduced, the drift and preference flips the exporter measured.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// What the optional transformer-optimiser pass fused, and whether it was kept; informational.
    #[serde(default)]
    pub optimization: Option<serde_json::Value>,
    /// Exporter and library versions; informational.
    #[serde(default)]
    pub exporter: Option<serde_json::Value>,
    /// sha256 of each file of the directory, by file name.
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

/// The backbone graph.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackboneSpec {
    pub file: String,
    #[serde(default)]
    pub external_data: Option<String>,
    pub inputs: GraphInputs,
    pub output: String,
    /// Per-layer outputs `hidden_states.0` (embeddings) .. `hidden_states.L` (top layer), when exported with
    /// `--all-layers`; index `n` is layer `n`.
    #[serde(default)]
    pub layer_outputs: Option<Vec<String>>,
    pub hidden_size: usize,
    /// Precision of weights and activations: `float32` or `float16` (the output is float32 either way).
    #[serde(default = "default_dtype")]
    pub dtype: String,
    /// `int8` for a dynamically quantised graph.
    #[serde(default)]
    pub quantization: Option<String>,
}

/// Graph precision and what the exporter measured for a reduced one.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Precision {
    #[serde(default = "default_dtype")]
    pub dtype: String,
    #[serde(default)]
    pub quantization: Option<String>,
    /// Tolerance `rewardrt verify` applies against the float32 PyTorch reference (reduced precision only).
    #[serde(default)]
    pub verify_tolerance: Option<f32>,
    /// Drift against PyTorch and float32 ONNX, flip rate and pair counts, as the exporter wrote them.
    #[serde(flatten)]
    pub measured: BTreeMap<String, serde_json::Value>,
}

fn default_dtype() -> String {
    "float32".to_owned()
}

/// Graph input names; `position_ids` is present when the graph takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphInputs {
    pub input_ids: String,
    pub attention_mask: String,
    #[serde(default)]
    pub position_ids: Option<String>,
}

/// The reward head `W_r` (`[k, hidden]`) and optional bias (`[k]`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeadSpec {
    pub file: String,
    pub weight: String,
    #[serde(default)]
    pub bias: Option<String>,
    /// `[k, hidden]`.
    pub shape: [usize; 2],
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// Reward normalisation carried by the source model; applied only when asked for.
    #[serde(default)]
    pub normalization: Option<Normalization>,
}

/// `(r - mean) / std` per output, from the source model's config (e.g. OpenRLHF's `mean`/`std`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    /// Where the exporter found the values.
    #[serde(default)]
    pub source: Option<String>,
}

/// Tokenizer file and special ids.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenizerSpec {
    pub file: String,
    /// `tokenizer_config.json`, when the source model has one.
    #[serde(default)]
    pub config_file: Option<String>,
    /// `chat_template.jinja`, when the source model has one.
    #[serde(default)]
    pub chat_template_file: Option<String>,
    #[serde(default = "yes")]
    pub add_special_tokens: bool,
    pub pad_id: u32,
    #[serde(default)]
    pub bos_id: Option<u32>,
    #[serde(default)]
    pub eos_id: Option<u32>,
}

fn yes() -> bool {
    true
}

/// How a `{prompt, response}` record becomes text (the formatting stage).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FormatSpec {
    /// Text with `{prompt}` and `{response}` placeholders.
    pub template: String,
    /// When true, `{prompt, response}` records are rendered with the model's chat template (a user turn and an
    /// assistant turn) instead of `template`.
    #[serde(default)]
    pub chat_template: bool,
}

impl Default for FormatSpec {
    fn default() -> Self {
        FormatSpec {
            template: "{prompt}{response}".to_owned(),
            chat_template: false,
        }
    }
}

/// A manifest together with the directory it was read from.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl ModelDir {
    /// Reads and validates `DIR/rewardrt.json`, checks that the files it names exist, and checks the sha256 of
    /// every file up to [`LOAD_CHECKSUM_LIMIT`].
    ///
    /// # Errors
    /// A missing or unreadable file, invalid JSON, an unsupported `format_version`, an inconsistent manifest,
    /// or a checksum mismatch; each names the file.
    pub fn open(dir: impl AsRef<Path>) -> Result<ModelDir> {
        let dir = dir.as_ref().to_path_buf();
        if !dir.is_dir() {
            return Err(Error::model(
                &dir,
                "not a directory (expected a rewardrt model directory)",
            ));
        }
        let path = dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let raw: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::ManifestParse {
            path: path.clone(),
            source,
        })?;
        // Check the version before the schema, so a future manifest gets the right message.
        match raw.get("format_version").and_then(serde_json::Value::as_u64) {
            Some(v) if v == u64::from(FORMAT_VERSION) => {}
            Some(v) => {
                return Err(Error::model(
                    &path,
                    format!("unsupported format_version {v} (this rewardrt reads {FORMAT_VERSION})"),
                ))
            }
            None => return Err(Error::model(&path, "missing or non-integer field `format_version`")),
        }
        let manifest: Manifest = serde_json::from_value(raw).map_err(|source| Error::ManifestParse {
            path: path.clone(),
            source,
        })?;
        let model = ModelDir { dir, manifest };
        model.validate()?;
        model.verify_checksums(Some(LOAD_CHECKSUM_LIMIT))?;
        Ok(model)
    }

    /// Absolute path of a file named by the manifest.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Path of the manifest itself.
    pub fn manifest_path(&self) -> PathBuf {
        self.dir.join(MANIFEST_FILE)
    }

    /// Number of reward outputs `k`.
    pub fn num_labels(&self) -> usize {
        self.manifest.head.shape[0]
    }

    /// Label names, one per output (`reward` when the head has one output and names none).
    pub fn labels(&self) -> Vec<String> {
        match &self.manifest.head.labels {
            Some(labels) => labels.clone(),
            None if self.num_labels() == 1 => vec!["reward".to_owned()],
            None => (0..self.num_labels()).map(|i| format!("label_{i}")).collect(),
        }
    }

    fn validate(&self) -> Result<()> {
        let m = &self.manifest;
        let path = self.manifest_path();
        let fail = |message: String| Err(Error::model(&path, message));
        if m.backbone.hidden_size == 0 {
            return fail("backbone.hidden_size must be positive".into());
        }
        let [k, hidden] = m.head.shape;
        if k == 0 {
            return fail("head.shape [k, hidden] has k = 0".into());
        }
        if hidden != m.backbone.hidden_size {
            return fail(format!(
                "head.shape [{k}, {hidden}] does not match backbone.hidden_size {}",
                m.backbone.hidden_size
            ));
        }
        if let Some(labels) = &m.head.labels {
            if labels.len() != k {
                return fail(format!("head.labels has {} names for k = {k} outputs", labels.len()));
            }
        }
        if !matches!(m.backbone.dtype.as_str(), "float32" | "float16") {
            return fail(format!(
                "backbone.dtype `{}` is not supported (float32 or float16)",
                m.backbone.dtype
            ));
        }
        if let Some(q) = m.backbone.quantization.as_deref().filter(|q| *q != "int8") {
            return fail(format!("backbone.quantization `{q}` is not supported (int8 or null)"));
        }
        if let Some(layers) = &m.backbone.layer_outputs {
            if layers.is_empty() || layers.iter().any(|l| l.is_empty()) {
                return fail("backbone.layer_outputs must list at least one output name".into());
            }
        }
        if let Some(n) = &m.head.normalization {
            if n.mean.len() != k || n.std.len() != k {
                return fail(format!(
                    "head.normalization has {} means and {} stds for k = {k} outputs",
                    n.mean.len(),
                    n.std.len()
                ));
            }
            if let Some(bad) = n.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
                return fail(format!(
                    "head.normalization.std has {bad}; every std must be finite and positive"
                ));
            }
            if let Some(bad) = n.mean.iter().find(|m| !m.is_finite()) {
                return fail(format!("head.normalization.mean has {bad}; every mean must be finite"));
            }
        }
        if m.max_length == 0 {
            return fail("max_length must be positive".into());
        }
        if !m.format.template.contains("{response}") {
            return fail(format!(
                "format.template `{}` has no {{response}} placeholder",
                m.format.template
            ));
        }
        let mut required = vec![&m.backbone.file, &m.head.file, &m.tokenizer.file];
        required.extend(m.backbone.external_data.as_ref());
        for file in required {
            if !self.path(file).is_file() {
                return Err(Error::model(
                    self.path(file),
                    format!("file named by {MANIFEST_FILE} is missing"),
                ));
            }
        }
        Ok(())
    }

    /// Checks the sha256 of each file listed in `files` whose size is at most `limit` bytes (all when `None`).
    ///
    /// # Errors
    /// [`Error::Checksum`] naming the first file that differs, or an I/O error.
    pub fn verify_checksums(&self, limit: Option<u64>) -> Result<usize> {
        let mut checked = 0;
        for (file, expected) in &self.manifest.files {
            let path = self.path(file);
            let size = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            if limit.is_some_and(|limit| size > limit) {
                continue;
            }
            let actual = sha256_file(&path)?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(Error::Checksum {
                    path,
                    expected: expected.clone(),
                    actual,
                });
            }
            checked += 1;
        }
        Ok(checked)
    }
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
