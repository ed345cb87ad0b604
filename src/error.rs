//! The library's one error type.
//!
//! Variants carry the context a user needs to act (the file, the record, the field) and keep their source.
//! Messages are lowercase without a trailing period; the CLI prints the whole chain.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model directory or scoring records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file of the model directory could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// `rewardrt.json` is not valid JSON or does not match the manifest schema.
    #[error("invalid manifest {}", path.display())]
    ManifestParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The manifest parsed but is inconsistent, or disagrees with a file it describes.
    #[error("{}: {message}", path.display())]
    Model { path: PathBuf, message: String },

    /// A file's sha256 differs from the manifest's.
    #[error("{}: sha256 mismatch (manifest {expected}, file {actual}): the file changed after export", path.display())]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },

    /// The tokenizer file could not be loaded.
    #[error("cannot load tokenizer {}", path.display())]
    Tokenizer {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },

    /// The reward head safetensors file is unreadable or has the wrong tensors.
    #[error("invalid reward head {}", path.display())]
    Head {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    /// The ONNX Runtime shared library could not be found or loaded.
    #[error("{message}")]
    OrtLibrary { message: String },

    /// A requested execution provider could not be used.
    #[error("execution provider {ep} is unavailable: {reason}")]
    ExecutionProvider { ep: &'static str, reason: String },

    /// ONNX Runtime failed while creating a session or running the graph.
    #[error("onnx runtime failed while {context}")]
    Ort {
        context: String,
        #[source]
        source: ort::Error,
    },

    /// One input record cannot be scored; the others are unaffected.
    #[error("record {index}{}: {message}", field.map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Record {
        /// Position of the record in the batch given to the scorer (0-based).
        index: usize,
        /// The offending field, when one is to blame.
        field: Option<&'static str>,
        message: String,
    },

    /// A reference or input file has a bad line.
    #[error("{}:{line}: {message}", path.display())]
    InputLine {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn model(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Model {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn ort(context: impl Into<String>) -> impl FnOnce(ort::Error) -> Self {
        let context = context.into();
        move |source| Error::Ort { context, source }
    }
}
