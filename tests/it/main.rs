//! The one integration-test binary. Reference values come from the native PyTorch models, via each model
//! directory's `reference.jsonl` (written by `export/export.py`; fixtures by `export/make_fixtures.py`, the
//! bundled model by `export/train_arith.py`).

mod chat;
mod cli;
mod ep;
mod invariance;
mod model_dir;
mod parity;
mod precision;
mod probe;
mod serve;
mod truncation;

use std::{
    fs,
    path::{Path, PathBuf},
};

use rewardrt::{Scorer, ScorerOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The bundled default model.
pub fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models/arith-rm")
}

/// A fixture model under `tests/data`.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// Loads a model on CPU with one intra-op thread (tests run in parallel).
pub fn load(dir: &Path, options: ScorerOptions) -> Scorer {
    Scorer::load(dir, options.with_ep(rewardrt::ExecutionProvider::Cpu).with_threads(1))
        .unwrap_or_else(|e| panic!("loading {}: {e:?}", dir.display()))
}

/// The error chain of `e` as one string, for message assertions.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// A writable copy of the bundled model.
pub fn copy_model() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(bundled()).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), tmp.path().join(entry.file_name())).unwrap();
    }
    tmp
}

pub fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("rewardrt.json");
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// Rewrites a file and updates its checksum, so the check under test is the one that fires.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) {
    fs::write(dir.join(name), bytes).unwrap();
    let digest = format!("{:x}", Sha256::digest(bytes));
    edit_manifest(dir, |v| v["files"][name] = Value::from(digest));
}
