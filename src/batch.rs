//! Tokenization and batching: texts become padded `input_ids`, `attention_mask` and `position_ids` batches.
//!
//! Records are tokenized with the model's own `tokenizer.json` (its padding and truncation settings are
//! switched off: both are decided here). A record longer than `max_length` is an error for that record, never
//! silently cut, because the scored token is the last one. Records are grouped by length to cut padding and
//! each batch remembers which inputs it holds, so results return in input order. Position ids count real tokens
//! only (`cumsum(mask) - 1`), so a sequence gets the same positions whatever its padding.

use std::path::Path;

use ndarray::Array2;
use tokenizers::Tokenizer;

use crate::{manifest::PaddingSide, Error, Result};

/// The model's tokenizer with the manifest's settings.
#[derive(Debug, Clone)]
pub struct Encoder {
    tokenizer: Tokenizer,
    add_special_tokens: bool,
    max_length: usize,
}

impl Encoder {
    /// Loads `tokenizer.json`, with its own padding and truncation disabled.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] naming the file.
    pub fn load(path: &Path, add_special_tokens: bool, max_length: usize) -> Result<Encoder> {
        let mut tokenizer = Tokenizer::from_file(path).map_err(|source| Error::Tokenizer {
            path: path.to_path_buf(),
            source,
        })?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .expect("disabling truncation cannot fail");
        Ok(Encoder {
            tokenizer,
            add_special_tokens,
            max_length,
        })
    }

    /// The token limit per record.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Token ids of each text, or that record's error (`index` is the position in `texts`).
    pub fn encode(&self, texts: &[&str]) -> Vec<Result<Vec<i64>>> {
        let encoded = match self.tokenizer.encode_batch(texts.to_vec(), self.add_special_tokens) {
            Ok(all) => all.into_iter().map(Ok).collect::<Vec<_>>(),
            // One failing text fails the batch call: redo them one by one to blame only the culprits.
            Err(_) => texts
                .iter()
                .map(|&t| self.tokenizer.encode(t, self.add_special_tokens))
                .collect(),
        };
        encoded
            .into_iter()
            .enumerate()
            .map(|(index, enc)| {
                let enc = enc.map_err(|e| Error::Record {
                    index,
                    field: None,
                    message: format!("tokenization failed: {e}"),
                })?;
                let ids: Vec<i64> = enc.get_ids().iter().map(|&id| i64::from(id)).collect();
                if ids.is_empty() {
                    return Err(Error::Record {
                        index,
                        field: None,
                        message: "text tokenizes to no tokens".into(),
                    });
                }
                if ids.len() > self.max_length {
                    return Err(Error::Record {
                        index,
                        field: None,
                        message: format!(
                            "{} tokens exceed max_length {}; refusing to cut the sequence because the reward is read \
                             at its last token",
                            ids.len(),
                            self.max_length
                        ),
                    });
                }
                Ok(ids)
            })
            .collect()
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
