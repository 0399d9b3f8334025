//! The language model: Embedding -> stacked LSTM -> Linear, and its loss.
//!
//! Written once against Burn's API: it takes a [`Device`] and runs on every backend.

use burn::module::{Module, Param};
use burn::nn::{Embedding, Linear};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub mod adaptive;
pub mod carry;
pub mod fused;
pub mod init;
pub mod lstm;
pub mod sparse;
pub mod weights;

pub use adaptive::Softmax;
pub use init::InitScheme;

use adaptive::AdaptiveSoftmax;
use carry::CarryKey;
use fused::output::linear_nll;
use init::uniform;
use lstm::{LstmLayer, LstmStack, LstmState};
use sparse::SparseEmbedding;

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
    /// Dropout probability on the embeddings, between layers and before the output layer
    /// (Zaremba's non-recurrent dropout); 0 = none.
    #[serde(default)]
    pub dropout: f64,
    /// Share the embedding matrix with the output layer (needs `d_embed == d_hidden`).
    #[serde(default)]
    pub tied: bool,
    /// The output layer's softmax: full (the default) or adaptive.
    #[serde(default)]
    pub softmax: Softmax,
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
        if let Softmax::Adaptive { cutoffs, div_value } = &self.softmax {
            let adaptive = AdaptiveSoftmax::new(h, v, cutoffs, *div_value, |rows, cols| {
                matrix(&mut rng, rows, cols, rows)
            });
            return self.assemble(embedding, layers, None, None, Some(adaptive));
        }
        let output_weight = (!self.tied).then(|| matrix(&mut rng, h, v, h));
        let output_bias = Param::from_tensor(Tensor::from_data(
            TensorData::new(
                match self.init {
                    InitScheme::MxXavier { .. } => vec![0.0; v],
                    InitScheme::Uniform { range } => uniform(&mut rng, v, range),
                },
                [v],
            ),
            device,
        ));
        match output_weight {
            Some(weight) => {
                let output = Linear {
                    weight,
                    bias: Some(output_bias),
                };
                self.assemble(embedding, layers, Some(output), None, None)
            }
            None => self.assemble(embedding, layers, None, Some(output_bias), None),
        }
    }

    /// The model from its parts, with this config's training settings.
    fn assemble(
        &self,
        embedding: Embedding,
        layers: Vec<LstmLayer>,
        output: Option<Linear>,
        tied_bias: Option<Param<Tensor<1>>>,
        adaptive: Option<AdaptiveSoftmax>,
    ) -> LanguageModel {
        LanguageModel {
            embedding,
            lstm: LstmStack { layers },
            output,
            tied_bias,
            adaptive,
            dropout: self.dropout,
            loss_per_batch: self.loss_norm == LossNorm::Batch,
            max_grad_norm: 0.0,
            devices: 1,
            clip_scale: None,
            sparse_embedding: None,
        }
    }

    /// Number of trainable parameters.
    pub fn num_params(&self) -> usize {
        let (v, e, h) = (self.vocab_size, self.d_embed, self.d_hidden);
        let lstm: usize = (0..self.n_layers)
            .map(|k| (if k == 0 { e } else { h } + h + 1) * 4 * h)
            .sum();
        let output = match &self.softmax {
            Softmax::Adaptive { cutoffs, div_value } => {
                AdaptiveSoftmax::num_params(h, v, cutoffs, *div_value)
            }
            Softmax::Full if self.tied => v,
            Softmax::Full => h * v + v,
        };
        v * e + lstm + output
    }
}

/// One batch of sentences for the model.
#[derive(Debug, Clone)]
pub struct LmBatch {
    /// Input token ids `[batch, seq]`.
    pub inputs: Tensor<2, Int>,
    /// Target token ids `[batch, seq]`: the inputs shifted left by one.
    pub targets: Tensor<2, Int>,
    /// Positions (in `[batch * seq]` row-major order) whose target is a real token, `[real]`;
    /// `None` when every target is real (a stream window). Only these rows reach the output
    /// layer: padding is neither computed there nor counted.
    pub real_rows: Option<Tensor<1, Int>>,
    /// Number of real target tokens (the ones in the perplexity).
    pub tokens: usize,
    /// For a window of a stream: where to take the starting state from and leave the final one
    /// (see [`crate::model::carry`]); `None` starts from zeros.
    pub carry: Option<CarryKey>,
    /// Seed of this batch's dropout masks; `None` (evaluation) applies no dropout.
    pub dropout_seed: Option<u64>,
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
    /// Output projection `[d_hidden, vocab]` with bias `[vocab]`; `None` when the output layer
    /// is tied to the embedding.
    pub output: Option<Linear>,
    /// Output bias `[vocab]` of a tied model (which has no `output`).
    pub tied_bias: Option<Param<Tensor<1>>>,
    /// The adaptive softmax, in place of `output` and `tied_bias` (see [`Softmax`]).
    pub adaptive: Option<AdaptiveSoftmax>,
    /// Dropout probability used when training (see [`LmConfig::dropout`]).
    pub dropout: f64,
    /// Loss reduction: true for [`LossNorm::Batch`], false for [`LossNorm::Token`].
    pub loss_per_batch: bool,
    /// Largest global gradient norm in a training step; 0 = no clipping. A training setting
    /// kept here because burn-train's step sees only the model and the batch.
    pub max_grad_norm: f64,
    /// Devices a training step is spread over (1 = one device). burn-train's multi-device
    /// strategy sums the devices' gradients, so each device's loss is divided by this, making the
    /// sum their mean, and each device clips at its share of
    /// [`max_grad_norm`](Self::max_grad_norm). A training setting, never checkpointed.
    #[module(skip)]
    pub devices: usize,
    /// Where the clipping scale goes when the optimizer applies it in its own pass (plain SGD on
    /// the CPU: [`fused::update::sgd_step`]); `None`: clipping scales the gradients itself.
    /// A training setting, never checkpointed.
    #[module(skip)]
    pub clip_scale: Option<fused::update::ClipScale>,
    /// Where a training step collects the embedding's gradient as rows instead of a dense
    /// matrix (see [`sparse`]); `None`: Burn's dense gradient. A training setting, never
    /// checkpointed.
    #[module(skip)]
    pub sparse_embedding: Option<SparseEmbedding>,
}

impl LanguageModel {
    /// Logits of the next token, without dropout (log-probabilities with the adaptive softmax:
    /// the same distribution).
    ///
    /// - `inputs`: token ids `[batch, seq]`
    /// - `state`: per-layer state before the first step (zeros when `None`)
    /// - returns logits `[batch, seq, vocab]` and the per-layer state after the last step.
    pub fn forward(
        &self,
        inputs: Tensor<2, Int>,
        state: Option<Vec<LstmState>>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        self.forward_with_dropout(inputs, state, None)
    }

    /// Like [`forward`](Self::forward); with `dropout_seed` on an autodiff device and a nonzero
    /// [`dropout`](Self::dropout), drops embeddings, layer outputs and the top layer's output
    /// with masks drawn from the seed (the same on every backend).
    pub fn forward_with_dropout(
        &self,
        inputs: Tensor<2, Int>,
        state: Option<Vec<LstmState>>,
        dropout_seed: Option<u64>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        let (hidden, state) = self.hidden_states(inputs, state, dropout_seed);
        let [b, t, h] = hidden.dims();
        let hidden = hidden.reshape([b * t, h]);
        let logits = match &self.adaptive {
            Some(adaptive) => adaptive.log_probs(hidden),
            None => {
                let (weight, bias) = self.output_layer();
                hidden.matmul(weight) + bias.unsqueeze_dim(0)
            }
        };
        let v = logits.dims()[1];
        (logits.reshape([b, t, v]), state)
    }

    /// The top layer's hidden states `[batch, seq, d_hidden]` (after dropout when training,
    /// as in [`forward_with_dropout`](Self::forward_with_dropout)) and the per-layer state
    /// after the last step.
    fn hidden_states(
        &self,
        inputs: Tensor<2, Int>,
        state: Option<Vec<LstmState>>,
        dropout_seed: Option<u64>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        let training = inputs.device().is_autodiff() && self.dropout > 0.0;
        let mut rng = dropout_seed.filter(|_| training).map(StdRng::seed_from_u64);
        let mut drop = |x: Tensor<3>| match rng.as_mut() {
            Some(rng) => dropout(x, self.dropout, rng),
            None => x,
        };
        let embedded = match &self.sparse_embedding {
            Some(sparse) if inputs.device().is_autodiff() => {
                sparse.lookup(&self.embedding.weight, inputs)
            }
            _ => self.embedding.forward(inputs),
        };
        let embedded = drop(embedded);
        self.lstm.forward_with(embedded, state, &mut drop)
    }

    /// The output layer's weight `[d_hidden, vocab]` (the embedding matrix transposed when
    /// tied) and bias `[vocab]`.
    fn output_layer(&self) -> (Tensor<2>, Tensor<1>) {
        match (&self.output, &self.tied_bias) {
            (Some(linear), _) => (
                linear.weight.val(),
                linear
                    .bias
                    .as_ref()
                    .expect("LmConfig::init gives the output layer a bias")
                    .val(),
            ),
            (None, Some(bias)) => (self.embedding.weight.val().transpose(), bias.val()),
            (None, None) => {
                unreachable!("LmConfig::init gives a full softmax an output layer or a tied bias")
            }
        }
    }

    /// Cross-entropy of `batch`, padding excluded from both the loss and the token count; every
    /// sequence starts from the zero state.
    pub fn loss(&self, batch: &LmBatch) -> LmLoss {
        self.loss_with_state(batch, None).0
    }

    /// Like [`loss`](Self::loss) for a batch that may be a window of a stream: starts from the
    /// state its [`CarryKey`] hands over (zeros without one) and leaves the final state, detached,
    /// for the next window. The train and validation steps use this.
    pub fn loss_carried(&self, batch: &LmBatch) -> LmLoss {
        let (loss, last) =
            self.loss_with_state(batch, batch.carry.as_ref().and_then(CarryKey::take));
        if let Some(key) = &batch.carry {
            key.put(last);
        }
        loss
    }

    /// Like [`loss`](Self::loss), starting from `state` (zeros when `None`); also returns the
    /// per-layer state after the last step, for truncated backpropagation through time.
    pub fn loss_with_state(
        &self,
        batch: &LmBatch,
        state: Option<Vec<LstmState>>,
    ) -> (LmLoss, Vec<LstmState>) {
        let (hidden, state) = self.hidden_states(batch.inputs.clone(), state, batch.dropout_seed);
        let [b, t, h] = hidden.dims();
        let mut hidden = hidden.reshape([b * t, h]);
        let mut targets = batch.targets.clone().reshape([b * t, 1]);
        if let Some(rows) = &batch.real_rows {
            hidden = hidden.select(0, rows.clone());
            targets = targets.select(0, rows.clone());
        }
        let nll_sum = self.nll_rows(hidden, targets).sum();
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

impl LanguageModel {
    /// Negative log-likelihood of each target under the output layer: hidden states
    /// `[tokens, d_hidden]`, targets `[tokens, 1]` -> `[tokens, 1]`, in nats.
    fn nll_rows(&self, hidden: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<2> {
        match &self.adaptive {
            Some(adaptive) => adaptive.nll(hidden, targets),
            None => {
                let (weight, bias) = self.output_layer();
                linear_nll(hidden, weight, bias, targets)
            }
        }
    }

    /// The negative log-likelihood of every target, without dropout: inputs and targets
    /// `[batch, seq]` -> `[batch, seq]` in nats (padding positions included; mask them), and
    /// the per-layer state after the last step. Starts from `state` (zeros when `None`).
    pub fn token_nll(
        &self,
        inputs: Tensor<2, Int>,
        targets: Tensor<2, Int>,
        state: Option<Vec<LstmState>>,
    ) -> (Tensor<2>, Vec<LstmState>) {
        let (hidden, state) = self.hidden_states(inputs, state, None);
        let [b, t, h] = hidden.dims();
        let nll = self.nll_rows(hidden.reshape([b * t, h]), targets.reshape([b * t, 1]));
        (nll.reshape([b, t]), state)
    }
}

/// Inverted dropout: zeroes each value of `x` with probability `p` and scales the rest by
/// `1 / (1 - p)`; the mask comes from `rng` on the host, so it is the same on every backend.
fn dropout<const D: usize>(x: Tensor<D>, p: f64, rng: &mut StdRng) -> Tensor<D> {
    let shape = x.shape();
    let keep = 1.0 - p;
    // Keep a value when a uniform u32 falls below keep * 2^32.
    let threshold = (keep * 4_294_967_296.0).min(u32::MAX as f64) as u32;
    let scale = (1.0 / keep) as f32;
    let mask: Vec<f32> = (0..shape.num_elements())
        .map(|_| {
            if rng.random::<u32>() < threshold {
                scale
            } else {
                0.0
            }
        })
        .collect();
    let mask = Tensor::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
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
            dropout: 0.0,
            tied: false,
            softmax: Softmax::Full,
        }
    }

    #[test]
    fn parameter_count_matches_the_module() {
        let model = config().init(1, &Device::flex());
        assert_eq!(model.num_params(), config().num_params());
        let tied = LmConfig {
            d_embed: 6,
            tied: true,
            ..config()
        };
        assert_eq!(
            tied.init(1, &Device::flex()).num_params(),
            tied.num_params()
        );
        // The embedding and layer 0's input weights grow by two columns/rows; the output
        // matrix is gone.
        assert_eq!(
            tied.num_params(),
            config().num_params() + 2 * 11 + 2 * 4 * 6 - 6 * 11
        );
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
                .as_ref()
                .unwrap()
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
