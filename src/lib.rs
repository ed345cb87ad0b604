//! rewardrt runs LLM reward models exported to ONNX, exactly and on any ONNX Runtime execution provider.
//!
//! A reward model scores a (prompt, response) pair as `r = h_last · W_rᵀ (+ b)`, where `h_last` is the top
//! layer's hidden state at the last real token. A rewardrt model directory (written by `export/export.py`)
//! holds the backbone graph, which emits hidden states for every position, and the head `W_r` apart from it;
//! this crate selects each sequence's final real position and applies the head.
//!
//! Stages, one module each, in data-flow order: [`record`] (inputs) → [`format`](mod@format) (text, with
//! [`chat`] templates) → [`batch`] (tokenize, truncate, group, pad) → [`backbone`] (ONNX Runtime) → [`select`]
//! (last position) → [`head`] (`W_r`), tied together by [`Scorer`]. [`manifest`] is the model-directory
//! contract, [`runtime`] finds the ONNX Runtime library, [`ep`] picks execution providers and reports which one
//! really runs, [`verify`] re-checks parity with PyTorch, [`eval`] measures preference accuracy on pairs, and
//! `serve` (feature `server`) is the HTTP server with dynamic batching.
//!
//! ```
//! use rewardrt::{Input, Scorer, ScorerOptions};
//!
//! # fn main() -> rewardrt::Result<()> {
//! let scorer = Scorer::load("models/arith-rm", ScorerOptions::default())?;
//! let good = scorer.score_one(&Input::pair("What is 9+12?", "21"))?;
//! let bad = scorer.score_one(&Input::pair("What is 9+12?", "10"))?;
//! assert!(good[0] > bad[0]);
//! eprintln!("{}", scorer.ep_report().summary());
//! # Ok(())
//! # }
//! ```
//!
//! The library never prints and does no network I/O (except the server's own socket); all file reads happen in
//! [`Scorer::load`].

pub mod backbone;
pub mod batch;
pub mod bench;
pub mod chat;
pub mod ep;
mod error;
pub mod eval;
pub mod format;
pub mod head;
pub mod manifest;
pub mod record;
pub mod runtime;
pub mod scorer;
pub mod select;
#[cfg(feature = "server")]
pub mod serve;
pub mod verify;

pub use crate::{
    ep::{EpReport, ExecutionProvider},
    error::{Error, Result},
    manifest::{ModelDir, PaddingSide},
    record::{Input, Record},
    scorer::{Rewards, ScoreStats, Scored, Scorer, ScorerOptions},
    select::LastTokenRule,
};

/// Compiles the README's Rust examples as doctests, so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
