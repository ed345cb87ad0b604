//! Tokenization and batching: texts become padded `input_ids`, `attention_mask` and `position_ids` batches.
//!
//! Records are tokenized with the model's own `tokenizer.json` (its padding and truncation settings are
//! switched off: both are decided here). A record longer than `max_length` is an error for that record, or with
//! [`Truncation::Left`] loses prompt tokens from its start; never its end, because the scored token is the last
//! one. A BOS doubled by the tokenizer (text that already starts with BOS) is removed. Records are grouped by length to cut padding and
//! each batch remembers which inputs it holds, so results return in input order. Position ids count real tokens
//! only (`cumsum(mask) - 1`), so a sequence gets the same positions whatever its padding.

use std::path::Path;

use ndarray::Array2;
use serde::{Deserialize, Serialize};
use tokenizers::{Encoding, Tokenizer};

use crate::{format::Formatted, manifest::PaddingSide, Error, Result};

/// What happens to a record longer than the token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Truncation {
    /// The record fails with an error naming its length; the others are scored.
    #[default]
    Error,
    /// Drop prompt tokens from the start (after any leading special tokens) until it fits; the template's
    /// tokens and the response are kept, so the scored token is still the real last one. A record that does
    /// not fit even without its prompt fails.
    Left,
}

/// One record's token ids and what was done to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<i64>,
    /// Prompt tokens dropped by left truncation (0 when the record fit).
    pub dropped: usize,
    /// True when the text began with BOS and the tokenizer added another, and the extra one was removed.
    pub double_bos: bool,
}

/// The model's tokenizer with the manifest's settings.
#[derive(Debug, Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
    /// Ids of the tokenizer's special added tokens (BOS, role markers, …): never dropped by truncation.
    special_ids: Vec<u32>,
    max_length: usize,
    bos_id: Option<u32>,
    truncation: Truncation,
}

impl Encoder {
    /// Loads `tokenizer.json`, with its own padding and truncation disabled.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file.
    pub fn load(path: &Path, max_length: usize) -> Result<Encoder> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|source| Error::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .expect("disabling truncation cannot fail");
        let mut special_ids: Vec<u32> = tokenizer
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| id)
            .collect();
        special_ids.sort_unstable();
        Ok(Encoder {
            tokenizer,
            special_ids,
            max_length,
            bos_id: None,
            truncation: Truncation::Error,
        })
    }

    /// Removes a doubled BOS (`bos_id` twice at the start) that the tokenizer's own BOS would add to a text
    /// that already starts with one.
    pub fn with_bos_id(mut self, bos_id: Option<u32>) -> Self {
        self.bos_id = bos_id;
        self
    }

    /// Sets the over-length policy.
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        self
    }

    /// The token limit per record.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The over-length policy.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// Token ids of each text, or that record's error (`index` is the position in `texts`).
    pub fn encode(&self, texts: &[Formatted<'_>]) -> Vec<Result<Encoded>> {
        self.encode_with(texts, self.truncation)
    }

    /// [`Encoder::encode`] with another over-length policy (e.g. one chosen per server request).
    pub fn encode_with(&self, texts: &[Formatted<'_>], truncation: Truncation) -> Vec<Result<Encoded>> {
        let mut encodings: Vec<Option<tokenizers::Result<Encoding>>> = (0..texts.len()).map(|_| None).collect();
        for add_special in [true, false] {
            let members: Vec<usize> = (0..texts.len())
                .filter(|&i| texts[i].add_special_tokens == add_special)
                .collect();
            if members.is_empty() {
                continue;
            }
            let batch: Vec<&str> = members.iter().map(|&i| texts[i].text.as_ref()).collect();
            match self.tokenizer.encode_batch(batch, add_special) {
                Ok(all) => {
                    for (&i, enc) in members.iter().zip(all) {
                        encodings[i] = Some(Ok(enc));
                    }
                }
                // One failing text fails the batch call: redo them one by one to blame only the culprits.
                Err(_) => {
                    for &i in &members {
                        encodings[i] = Some(self.tokenizer.encode(texts[i].text.as_ref(), add_special));
                    }
                }
            }
        }
        encodings
            .into_iter()
            .zip(texts)
            .enumerate()
            .map(|(index, (enc, text))| {
                let enc = enc.expect("every text encoded").map_err(|e| Error::Record {
                    index,
                    field: None,
                    message: format!("tokenization failed: {e}"),
                })?;
                self.fit(index, &enc, text, truncation)
            })
            .collect()
    }

    /// Applies the double-BOS rule and the length policy to one encoding.
    fn fit(&self, index: usize, enc: &Encoding, text: &Formatted<'_>, truncation: Truncation) -> Result<Encoded> {
        let fail = |message: String| Error::Record {
            index,
            field: None,
            message,
        };
        let all = enc.get_ids();
        let double_bos = text.add_special_tokens
            && self
                .bos_id
                .is_some_and(|bos| all.len() >= 2 && all[0] == bos && all[1] == bos);
        // Views past the extra BOS; nothing is copied until the ids are returned.
        let skip = usize::from(double_bos);
        let ids = &all[skip..];
        if ids.is_empty() {
            return Err(fail("text tokenizes to no tokens".into()));
        }
        let excess = ids.len().saturating_sub(self.max_length);
        if excess == 0 {
            return Ok(Encoded {
                ids: ids.iter().map(|&id| i64::from(id)).collect(),
                dropped: 0,
                double_bos,
            });
        }
        if truncation == Truncation::Error {
            return Err(fail(format!(
                "{} tokens exceed max_length {}; refusing to cut the sequence because the reward is read at its \
                 last token (--truncation left drops prompt tokens instead)",
                ids.len(),
                self.max_length
            )));
        }
        // Prompt tokens: ordinary tokens (not added by the tokenizer, not special tokens such as BOS or role
        // markers written in the text) lying wholly inside the prompt's byte ranges, earliest first.
        let (offsets, added) = (&enc.get_offsets()[skip..], &enc.get_special_tokens_mask()[skip..]);
        let droppable: Vec<usize> = (0..ids.len())
            .filter(|&t| {
                let (start, end) = offsets[t];
                added[t] == 0
                    && start < end
                    && self.special_ids.binary_search(&ids[t]).is_err()
                    && text.prompt.iter().any(|r| r.start <= start && end <= r.end)
            })
            .take(excess)
            .collect();
        if droppable.len() < excess {
            return Err(fail(format!(
                "{} tokens exceed max_length {} and dropping the whole prompt ({} tokens) is not enough: the \
                 response and template alone are too long",
                ids.len(),
                self.max_length,
                droppable.len()
            )));
        }
        let mut drop = droppable.into_iter().peekable();
        Ok(Encoded {
            ids: ids
                .iter()
                .enumerate()
                .filter(|(t, _)| drop.next_if_eq(t).is_none())
                .map(|(_, &id)| i64::from(id))
                .collect(),
            dropped: excess,
            double_bos,
        })
    }
}

/// Groups sequence indices into batches of at most `batch_size`, longest first, so rows of similar length share
/// a batch. Returns indices into `lengths`.
pub fn plan(lengths: &[(usize, usize)], batch_size: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<(usize, usize)> = lengths.to_vec();
    // Stable sort by descending length: equal lengths keep input order (deterministic batches).
    order.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
    order
        .chunks(batch_size.max(1))
        .map(|chunk| chunk.iter().map(|&(i, _)| i).collect())
        .collect()
}

/// One padded batch ready for the backbone.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `[rows, width]`.
    pub input_ids: Array2<i64>,
    /// `[rows, width]`, 1 for real tokens.
    pub attention_mask: Array2<i64>,
    /// `[rows, width]`, present when the graph takes positions.
    pub position_ids: Option<Array2<i64>>,
}

impl Batch {
    /// Pads `seqs` to the longest on `side` with `pad_id`.
    pub fn pad(seqs: &[&[i64]], pad_id: i64, side: PaddingSide, with_positions: bool) -> Batch {
        let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let rows = seqs.len();
        let mut input_ids = Array2::from_elem((rows, width), pad_id);
        let mut attention_mask = Array2::zeros((rows, width));
        let mut position_ids = with_positions.then(|| Array2::zeros((rows, width)));
        for (row, seq) in seqs.iter().enumerate() {
            let start = match side {
                PaddingSide::Right => 0,
                PaddingSide::Left => width - seq.len(),
            };
            for (offset, &id) in seq.iter().enumerate() {
                input_ids[[row, start + offset]] = id;
                attention_mask[[row, start + offset]] = 1;
                if let Some(pos) = position_ids.as_mut() {
                    pos[[row, start + offset]] = offset as i64;
                }
            }
        }
        Batch {
            input_ids,
            attention_mask,
            position_ids,
        }
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.input_ids.nrows()
    }

    /// Sequence width (longest row).
    pub fn width(&self) -> usize {
        self.input_ids.ncols()
    }
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn plan_groups_by_length_and_covers_every_index() {
        let lengths = [(0, 3), (1, 10), (2, 5), (3, 10), (4, 1)];
        let batches = plan(&lengths, 2);
        assert_eq!(batches, vec![vec![1, 3], vec![2, 0], vec![4]]);
    }

    #[test]
    fn pads_right_with_positions() {
        let b = Batch::pad(&[&[5, 6, 7], &[8]], 0, PaddingSide::Right, true);
        assert_eq!(b.input_ids, array![[5, 6, 7], [8, 0, 0]]);
        assert_eq!(b.attention_mask, array![[1, 1, 1], [1, 0, 0]]);
        assert_eq!(b.position_ids.unwrap(), array![[0, 1, 2], [0, 0, 0]]);
    }

    /// Under left padding the real tokens keep positions 0..n, as if unpadded.
    #[test]
    fn pads_left_with_positions_counting_real_tokens() {
        let b = Batch::pad(&[&[5, 6, 7], &[8]], 2, PaddingSide::Left, true);
        assert_eq!(b.input_ids, array![[5, 6, 7], [2, 2, 8]]);
        assert_eq!(b.attention_mask, array![[1, 1, 1], [0, 0, 1]]);
        assert_eq!(b.position_ids.unwrap(), array![[0, 1, 2], [0, 0, 0]]);
    }

    #[test]
    fn no_positions_when_graph_takes_none() {
        assert!(Batch::pad(&[&[1]], 0, PaddingSide::Right, false).position_ids.is_none());
    }
}
