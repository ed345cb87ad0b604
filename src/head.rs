//! The reward head `W_r`: `r = h_last · W_rᵀ (+ b)`, stored apart from the graph as float32 safetensors.
//!
//! The weight has shape `[k, hidden]` (one row per reward output) and the optional bias `[k]`. Loading
//! checks names, dtype and shapes against the manifest, so a head that does not fit the backbone fails at
//! load time with the file named rather than producing wrong numbers.

use std::path::Path;

use ndarray::{Array1, Array2, ArrayView1};
use safetensors::{Dtype, SafeTensors};

use crate::{manifest::HeadSpec, Error, Result};

/// The loaded head.
#[derive(Debug, Clone)]
pub struct RewardHead {
    /// `[k, hidden]`.
    weight: Array2<f32>,
    /// `[k]`.
    bias: Option<Array1<f32>>,
    /// `(mean, std)`, `[k]` each, applied after the bias when set.
    normalization: Option<(Array1<f32>, Array1<f32>)>,
}

impl RewardHead {
    /// Builds a head from its parts.
    ///
    /// # Panics
    /// If the bias length differs from the weight's row count.
    pub fn new(weight: Array2<f32>, bias: Option<Array1<f32>>) -> Self {
        if let Some(b) = &bias {
            assert_eq!(b.len(), weight.nrows(), "bias length must equal k");
        }
        RewardHead {
            weight,
            bias,
            normalization: None,
        }
    }

    /// Returns the head with `(r - mean) / std` applied to each output.
    ///
    /// # Panics
    /// If `mean` or `std` has a length other than `k` (the manifest check comes first).
    pub fn with_normalization(mut self, mean: &[f32], std: &[f32]) -> Self {
        let k = self.num_labels();
        assert!(
            mean.len() == k && std.len() == k,
            "normalisation needs k means and k stds"
        );
        self.normalization = Some((Array1::from(mean.to_vec()), Array1::from(std.to_vec())));
        self
    }

    /// True when outputs are normalised.
    pub fn normalizes(&self) -> bool {
        self.normalization.is_some()
    }

    /// Loads and checks the head named by `spec` from `path`.
    ///
    /// # Errors
    /// An unreadable file, a missing tensor, a dtype other than float32, or a shape other than the manifest's.
    pub fn load(path: &Path, spec: &HeadSpec) -> Result<RewardHead> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tensors = SafeTensors::deserialize(&bytes).map_err(|source| Error::Head {
            path: path.to_path_buf(),
            source,
        })?;
        let [k, hidden] = spec.shape;
        let weight = read_f32(&tensors, path, &spec.weight, &[k, hidden])?;
        let weight = Array2::from_shape_vec((k, hidden), weight).expect("shape checked");
        let bias = match &spec.bias {
            Some(name) => Some(Array1::from_vec(read_f32(&tensors, path, name, &[k])?)),
            None => None,
        };
        Ok(RewardHead::new(weight, bias))
    }

    /// Number of outputs `k`.
    pub fn num_labels(&self) -> usize {
        self.weight.nrows()
    }

    /// Hidden size the head expects.
    pub fn hidden_size(&self) -> usize {
        self.weight.ncols()
    }

    /// `h · W_rᵀ (+ b)` for one hidden state, normalised when set.
    pub fn apply(&self, hidden: ArrayView1<'_, f32>) -> Vec<f32> {
        let mut out = self.weight.dot(&hidden);
        if let Some(b) = &self.bias {
            out += b;
        }
        if let Some((mean, std)) = &self.normalization {
            out -= mean;
            out /= std;
        }
        out.to_vec()
    }
}

fn read_f32(tensors: &SafeTensors<'_>, path: &Path, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
    let view = tensors.tensor(name).map_err(|source| Error::Head {
        path: path.to_path_buf(),
        source,
    })?;
    if view.dtype() != Dtype::F32 {
        return Err(Error::model(
            path,
            format!("tensor `{name}` has dtype {:?}, expected F32", view.dtype()),
        ));
    }
    if view.shape() != shape {
        return Err(Error::model(
            path,
            format!(
                "tensor `{name}` has shape {:?}, but rewardrt.json says {shape:?} ([k, hidden] from head.shape)",
                view.shape()
            ),
        ));
    }
    Ok(view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use ndarray::array;

    use super::*;

    #[test]
    fn applies_weight_and_bias_per_label() {
        let head = RewardHead::new(array![[1.0, 2.0], [0.5, -1.0]], Some(array![0.25, 1.0]));
        let r = head.apply(array![3.0f32, 4.0].view());
        assert_eq!(r, vec![1.0 * 3.0 + 2.0 * 4.0 + 0.25, 0.5 * 3.0 - 4.0 + 1.0]);
    }

    #[test]
    fn normalization_follows_the_bias() {
        let head = RewardHead::new(array![[1.0, 2.0], [0.5, -1.0]], Some(array![0.25, 1.0]))
            .with_normalization(&[1.25, -2.0], &[2.0, 0.5]);
        let r = head.apply(array![3.0f32, 4.0].view());
        assert_eq!(r, vec![(11.25 - 1.25) / 2.0, (-1.5 + 2.0) / 0.5]);
    }
}
