//! A model's parameters as plain `f32` values in lstm-lm's layout, and the model built from
//! them ([`LmConfig::with_weights`]): how a model trained elsewhere (PyTorch) comes in.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Tensor, TensorData};

use super::adaptive::AdaptiveSoftmax;
use super::lstm::LstmLayer;
use super::{LanguageModel, LmConfig, Softmax};

/// The output bias of a row a model never had (e.g. `<pad>` in a model imported from PyTorch):
/// `exp` of it is 0 in `f32`, so the row's probability is exactly 0.
pub const NEVER_LOGIT: f32 = -1e9;

/// A row-major matrix `[rows, cols]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// `rows * cols` values, row by row.
    pub values: Vec<f32>,
}

impl Matrix {
    /// The matrix `[rows, cols]` holding `values` (`rows * cols` of them).
    pub fn new(rows: usize, cols: usize, values: Vec<f32>) -> Self {
        assert_eq!(values.len(), rows * cols, "a [{rows}, {cols}] matrix");
        Self { rows, cols, values }
    }

    /// `[cols, rows]`.
    pub fn transposed(&self) -> Self {
        let mut values = vec![0.0; self.values.len()];
        for (r, row) in self.values.chunks_exact(self.cols.max(1)).enumerate() {
            for (c, &v) in row.iter().enumerate() {
                values[c * self.rows + r] = v;
            }
        }
        Self::new(self.cols, self.rows, values)
    }

    /// The matrix whose row `i` is row `rows[i]` of this one, or `fill` in every column where
    /// `rows[i]` is `None`.
    pub fn gather_rows(&self, rows: &[Option<usize>], fill: f32) -> Self {
        let mut values = Vec::with_capacity(rows.len() * self.cols);
        for row in rows {
            match row {
                Some(r) => values.extend_from_slice(&self.values[r * self.cols..][..self.cols]),
                None => values.extend(std::iter::repeat_n(fill, self.cols)),
            }
        }
        Self::new(rows.len(), self.cols, values)
    }

    fn param(self, device: &Device) -> Param<Tensor<2>> {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(self.values, [self.rows, self.cols]),
            device,
        ))
    }
}

/// Takes the values at `rows` of `values` (`fill` where `None`), as [`Matrix::gather_rows`].
pub fn gather(values: &[f32], rows: &[Option<usize>], fill: f32) -> Vec<f32> {
    rows.iter().map(|r| r.map_or(fill, |r| values[r])).collect()
}

/// One LSTM layer's parameters.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    /// Input weights `[d_input, 4 * d_hidden]`, gate blocks i, f, g, o.
    pub input: Matrix,
    /// Recurrent weights `[d_hidden, 4 * d_hidden]`, gate blocks i, f, g, o.
    pub hidden: Matrix,
    /// Gate bias `[4 * d_hidden]` (PyTorch's `b_ih + b_hh`).
    pub bias: Vec<f32>,
}

/// The output layer's parameters.
#[derive(Debug, Clone)]
pub enum OutputWeights {
    /// A full softmax: weight `[d_hidden, vocab]`, bias `[vocab]`.
    Full {
        /// `[d_hidden, vocab]`.
        weight: Matrix,
        /// `[vocab]`.
        bias: Vec<f32>,
    },
    /// A full softmax tied to the embedding: its bias `[vocab]`.
    Tied {
        /// `[vocab]`.
        bias: Vec<f32>,
    },
    /// An adaptive softmax: the head `[d_hidden, shortlist + clusters]` and each tail's
    /// projection `[d_hidden, d_tail]` and output `[d_tail, cluster size]`.
    Adaptive {
        /// `[d_hidden, shortlist + clusters]`.
        head: Matrix,
        /// `([d_hidden, d_tail], [d_tail, cluster size])` per tail cluster.
        tails: Vec<(Matrix, Matrix)>,
    },
}

/// Every parameter of a model, in lstm-lm's layout.
#[derive(Debug, Clone)]
pub struct LmWeights {
    /// Token embeddings `[vocab, d_embed]`.
    pub embedding: Matrix,
    /// The LSTM layers, bottom first.
    pub layers: Vec<LayerWeights>,
    /// The output layer.
    pub output: OutputWeights,
}

/// Fails with a message naming `what` unless `m` is `[rows, cols]`.
fn check(what: &str, m: &Matrix, rows: usize, cols: usize) -> Result<(), String> {
    if (m.rows, m.cols) == (rows, cols) {
        Ok(())
    } else {
        Err(format!(
            "{what} is [{}, {}], the config needs [{rows}, {cols}]",
            m.rows, m.cols
        ))
    }
}

/// Fails with a message naming `what` unless `v` holds `len` values.
fn check_len(what: &str, v: &[f32], len: usize) -> Result<(), String> {
    if v.len() == len {
        Ok(())
    } else {
        Err(format!(
            "{what} has {} values, the config needs {len}",
            v.len()
        ))
    }
}

fn vector(values: Vec<f32>, device: &Device) -> Param<Tensor<1>> {
    let n = values.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [n]), device))
}

impl LmConfig {
    /// The model of this config holding `weights`, on `device`; says which part does not fit
    /// the config's sizes, output layer or softmax.
    pub fn with_weights(
        &self,
        weights: LmWeights,
        device: &Device,
    ) -> Result<LanguageModel, String> {
        let (v, e, h) = (self.vocab_size, self.d_embed, self.d_hidden);
        check("the embedding", &weights.embedding, v, e)?;
        if weights.layers.len() != self.n_layers {
            return Err(format!(
                "{} LSTM layers, the config has {}",
                weights.layers.len(),
                self.n_layers
            ));
        }
        let layers = self.lstm_layers(weights.layers, device)?;
        let embedding = Embedding {
            weight: weights.embedding.param(device),
        };
        match (weights.output, &self.softmax, self.tied) {
            (OutputWeights::Full { weight, bias }, Softmax::Full, false) => {
                check("the output weight", &weight, h, v)?;
                check_len("the output bias", &bias, v)?;
                let output = Linear {
                    weight: weight.param(device),
                    bias: Some(vector(bias, device)),
                };
                Ok(self.assemble(embedding, layers, Some(output), None, None))
            }
            (OutputWeights::Tied { bias }, Softmax::Full, true) => {
                check_len("the output bias", &bias, v)?;
                let bias = vector(bias, device);
                Ok(self.assemble(embedding, layers, None, Some(bias), None))
            }
            (
                OutputWeights::Adaptive { head, tails },
                Softmax::Adaptive { cutoffs, div_value },
                _,
            ) => {
                let adaptive = self.adaptive(cutoffs, *div_value, head, tails, device)?;
                Ok(self.assemble(embedding, layers, None, None, Some(adaptive)))
            }
            _ => {
                Err("the output layer's kind does not match the config's softmax and tying".into())
            }
        }
    }

    /// The LSTM layers of `weights`, each checked against the config: input weight `[input,
    /// 4 * hidden]`, recurrent weight `[hidden, 4 * hidden]`, bias `[4 * hidden]`.
    fn lstm_layers(
        &self,
        weights: Vec<LayerWeights>,
        device: &Device,
    ) -> Result<Vec<LstmLayer>, String> {
        let (e, h) = (self.d_embed, self.d_hidden);
        let mut layers = Vec::with_capacity(weights.len());
        for (k, layer) in weights.into_iter().enumerate() {
            check(
                &format!("layer {k}'s input weight"),
                &layer.input,
                if k == 0 { e } else { h },
                4 * h,
            )?;
            check(
                &format!("layer {k}'s recurrent weight"),
                &layer.hidden,
                h,
                4 * h,
            )?;
            check_len(&format!("layer {k}'s bias"), &layer.bias, 4 * h)?;
            layers.push(LstmLayer {
                input_weight: layer.input.param(device),
                hidden_weight: layer.hidden.param(device),
                bias: vector(layer.bias, device),
            });
        }
        Ok(layers)
    }

    /// The adaptive softmax of `cutoffs` holding `head` (`[hidden, shortlist + clusters]`) and
    /// `tails` (`([hidden, d_tail], [d_tail, cluster size])` per tail cluster), each matrix
    /// checked against the shape the cutoffs give.
    fn adaptive(
        &self,
        cutoffs: &[usize],
        div_value: f64,
        head: Matrix,
        tails: Vec<(Matrix, Matrix)>,
        device: &Device,
    ) -> Result<AdaptiveSoftmax, String> {
        let mut given = std::iter::once(head).chain(tails.into_iter().flat_map(|(p, o)| [p, o]));
        let mut problem = None;
        let adaptive = AdaptiveSoftmax::new(
            self.d_hidden,
            self.vocab_size,
            cutoffs,
            div_value,
            |rows, cols| {
                let m = given
                    .next()
                    .unwrap_or_else(|| Matrix::new(0, 0, Vec::new()));
                if problem.is_none() {
                    problem = check("an adaptive softmax matrix", &m, rows, cols).err();
                }
                m.param(device)
            },
        );
        match problem.or_else(|| {
            given
                .next()
                .map(|_| "more adaptive softmax clusters than the cutoffs give".into())
        }) {
            Some(p) => Err(p),
            None => Ok(adaptive),
        }
    }
}

impl LanguageModel {
    /// Gives output row `id` the smallest bias of the other rows when its bias is
    /// [`NEVER_LOGIT`] (a row an imported model never had, such as `<unk>`), so that training
    /// can learn it; returns whether it did. Only the full softmax has an output bias.
    pub fn revive_output_row(&mut self, id: usize) -> bool {
        let floor = NEVER_LOGIT / 2.0;
        let bias = match (&mut self.output, &mut self.tied_bias) {
            (Some(linear), _) => linear.bias.as_mut(),
            (None, tied) => tied.as_mut(),
        };
        let Some(bias) = bias else {
            return false;
        };
        let tensor = bias.val();
        let device = tensor.device();
        let mut values: Vec<f32> = tensor
            .into_data()
            .convert::<f32>()
            .try_to_vec()
            .unwrap_or_default();
        if values.get(id).is_none_or(|&b| b >= floor) {
            return false;
        }
        let lowest = values
            .iter()
            .copied()
            .filter(|&b| b >= floor)
            .fold(f32::INFINITY, f32::min);
        values[id] = if lowest.is_finite() { lowest } else { 0.0 };
        *bias = vector(values, &device);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_and_gathers_rows() {
        let m = Matrix::new(2, 3, vec![1., 2., 3., 4., 5., 6.]);
        assert_eq!(
            m.transposed(),
            Matrix::new(3, 2, vec![1., 4., 2., 5., 3., 6.])
        );
        assert_eq!(
            m.gather_rows(&[Some(1), None, Some(0)], -1.0),
            Matrix::new(3, 3, vec![4., 5., 6., -1., -1., -1., 1., 2., 3.])
        );
        assert_eq!(
            gather(&[7., 8.], &[None, Some(1), Some(0)], 0.0),
            vec![0., 8., 7.]
        );
    }
}
