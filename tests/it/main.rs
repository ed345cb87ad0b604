//! The one integration-test binary. Reference values come from the native PyTorch models, via each model
//! directory's `reference.jsonl` (written by `export/export.py`; fixtures by `export/make_fixtures.py`, the
//! bundled model by `export/train_arith.py`).

mod cli;
mod ep;
mod invariance;
mod model_dir;
mod parity;

use std::path::{Path, PathBuf};

use rewardrt::{Scorer, ScorerOptions};

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
