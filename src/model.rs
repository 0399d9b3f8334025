//! The language model: Embedding -> stacked LSTM -> Linear, and its loss.
//!
//! Written once against Burn's API: it takes a [`Device`] and runs on every backend.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::fused::xent::nll_rows;
use crate::lstm::{LstmLayer, LstmStack, LstmState};

/// How parameters are initialised.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum InitScheme {
    /// MXNet's `Xavier(factor_type="in", magnitude)`: every weight matrix `U(-s, s)` with
    /// `s = sqrt(magnitude / fan_in)`, biases zero but the forget gate's, set to `forget_bias`.
    MxXavier {
        /// 2.34 in the reference.
        magnitude: f64,
        /// 1.0 in the reference (mx.rnn.LSTMCell).
        forget_bias: f64,
    },
    /// Every parameter `U(-range, range)` (Zaremba et al.).
    Uniform {
        /// 0.1 in Zaremba et al.
        range: f64,
    },
}

/// How the per-token cross-entropy is reduced to the loss that is differentiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossNorm {
    /// Sum over real tokens divided by the batch size (MXNet `SoftmaxOutput` + `rescale_grad`,
    /// Zaremba); its gradients scale with sentence length, so it suits plain SGD's small rates.
    Batch,
    /// Mean over real tokens.
    Token,
}

/// Sizes and initialisation of a [`LanguageModel`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmConfig {
    /// Number of token ids: input and output size.
    pub vocab_size: usize,
    /// Embedding width `d_embed`.
    pub d_embed: usize,
    /// LSTM hidden width `d_hidden`, the same for every layer.
    pub d_hidden: usize,
    /// Number of stacked LSTM layers.
    pub n_layers: usize,
    /// Parameter initialisation.
    pub init: InitScheme,
    /// Loss reduction.
    pub loss_norm: LossNorm,
}

impl LmConfig {
    /// Creates the model on `device`, parameters drawn from a generator seeded with `seed`, so
    /// that a seed gives the same initial weights on every backend.
    pub fn init(&self, seed: u64, device: &Device) -> LanguageModel {
        let mut rng = StdRng::seed_from_u64(seed);
        let (v, e, h) = (self.vocab_size, self.d_embed, self.d_hidden);
        let matrix = |rng: &mut StdRng, rows: usize, cols: usize, fan_in: usize| {
            let values = match self.init {
                InitScheme::MxXavier { magnitude, .. } => {
                    uniform(rng, rows * cols, (magnitude / fan_in as f64).sqrt())
                }
                InitScheme::Uniform { range } => uniform(rng, rows * cols, range),
            };
            Param::from_tensor(Tensor::from_data(
                TensorData::new(values, [rows, cols]),
                device,
            ))
        };
        // MXNet's embedding weight is (V, E) and its "fan_in" is E.
        let embedding = Embedding {
            weight: matrix(&mut rng, v, e, e),
        };
        let layers = (0..self.n_layers)
            .map(|k| LstmLayer::new(if k == 0 { e } else { h }, h, &self.init, &mut rng, device))
            .collect();
        let output_weight = matrix(&mut rng, h, v, h);
        let output_bias = match self.init {
            InitScheme::MxXavier { .. } => vec![0.0; v],
            InitScheme::Uniform { range } => uniform(&mut rng, v, range),
        };
        LanguageModel {
            embedding,
            lstm: LstmStack { layers },
            output: Linear {
                weight: output_weight,
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(output_bias, [v]),
                    device,
                ))),
            },
            loss_per_batch: self.loss_norm == LossNorm::Batch,
        }
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let (v, e, h) = (self.vocab_size, self.d_embed, self.d_hidden);
        let lstm: usize = (0..self.n_layers)
            .map(|k| (if k == 0 { e } else { h } + h + 1) * 4 * h)
            .sum();
        v * e + lstm + h * v + v
    }
}

/// `n` values drawn uniformly from `[-range, range)`.
pub(crate) fn uniform(rng: &mut StdRng, n: usize, range: f64) -> Vec<f32> {
    let r = range as f32;
    (0..n).map(|_| rng.random_range(-r..r)).collect()
}

/// One batch of sentences for the model.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// Input token ids `[batch, seq]`.
    pub inputs: Tensor<2, Int>,
    /// Target token ids `[batch, seq]`: the inputs shifted left by one.
    pub targets: Tensor<2, Int>,
    /// 1.0 where the target is a real token, 0.0 on padding `[batch, seq]`.
    pub mask: Tensor<2>,
    /// Number of real target tokens (the ones in the perplexity).
    pub tokens: usize,
}

/// The loss of one batch.
#[derive(Debug, Clone)]
pub struct LmLoss {
    /// The loss to differentiate `[1]` (see [`LossNorm`]).
    pub loss: Tensor<1>,
    /// Sum of the negative log-likelihood over real tokens `[1]`, in nats.
    pub nll_sum: Tensor<1>,
    /// Number of real tokens.
    pub tokens: usize,
}

/// Embedding -> stacked LSTM -> Linear over the vocabulary.
#[derive(Module, Debug)]
pub struct LanguageModel {
    /// Token embeddings `[vocab, d_embed]`.
    pub embedding: Embedding,
    /// The LSTM layers.
    pub lstm: LstmStack,
    /// Output projection `[d_hidden, vocab]` with bias `[vocab]`.
    pub output: Linear,
    /// Loss reduction: true for [`LossNorm::Batch`], false for [`LossNorm::Token`].
    pub loss_per_batch: bool,
}

impl LanguageModel {
    /// Logits of the next token.
    ///
    /// - `inputs`: token ids `[batch, seq]`
    /// - `state`: per-layer state before the first step (zeros when `None`)
    /// - returns logits `[batch, seq, vocab]` and the per-layer state after the last step.
    pub fn forward(
        &self,
        inputs: Tensor<2, Int>,
        state: Option<Vec<LstmState>>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        let embedded = self.embedding.forward(inputs);
        let (hidden, state) = self.lstm.forward(embedded, state);
        (self.output.forward(hidden), state)
    }

    /// Cross-entropy of `batch`, padding excluded from both the loss and the token count; every
    /// sequence starts from the zero state.
    pub fn loss(&self, batch: &LmBatch) -> LmLoss {
        self.loss_with_state(batch, None).0
    }

    /// Like [`loss`](Self::loss), starting from `state` (zeros when `None`); also returns the
    /// per-layer state after the last step, for truncated backpropagation through time.
    pub fn loss_with_state(
        &self,
        batch: &LmBatch,
        state: Option<Vec<LstmState>>,
    ) -> (LmLoss, Vec<LstmState>) {
        let (logits, state) = self.forward(batch.inputs.clone(), state);
        let [b, t, v] = logits.dims();
        let nll = nll_rows(
            logits.reshape([b * t, v]),
            batch.targets.clone().reshape([b * t, 1]),
        )
        .reshape([b * t]);
        let nll_sum = (nll * batch.mask.clone().reshape([b * t])).sum();
        let denominator = if self.loss_per_batch {
            b
        } else {
            batch.tokens.max(1)
        };
        let loss = LmLoss {
            loss: nll_sum.clone() / denominator as f32,
            nll_sum,
            tokens: batch.tokens,
        };
        (loss, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LmConfig {
        LmConfig {
            vocab_size: 11,
            d_embed: 4,
            d_hidden: 6,
            n_layers: 2,
            init: InitScheme::MxXavier {
                magnitude: 2.34,
                forget_bias: 1.0,
            },
            loss_norm: LossNorm::Batch,
        }
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let model = config().init(1, &Device::flex());
        assert_eq!(model.num_params(), config().num_params());
    }

    #[test]
    fn forget_gate_bias_starts_at_one_and_weights_are_bounded() {
        let model = config().init(1, &Device::flex());
        let b: Vec<f32> = model.lstm.layers[0]
            .bias
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(b[..6].iter().all(|&x| x == 0.0));
        assert!(b[6..12].iter().all(|&x| x == 1.0));
        let w: Vec<f32> = model.lstm.layers[1]
            .hidden_weight
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let s = (2.34f32 / 6.0).sqrt();
        assert!(w.iter().all(|x| x.abs() <= s));
        assert!(w.iter().any(|x| x.abs() > s / 2.0), "uses the range");
    }

    #[test]
    fn same_seed_same_weights() {
        let a = config().init(7, &Device::flex());
        let b = config().init(7, &Device::flex());
        let c = config().init(8, &Device::flex());
        let w = |m: &LanguageModel| -> Vec<f32> {
            m.output
                .weight
                .val()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
    }
}
