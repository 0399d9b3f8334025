//! A stack of LSTM layers that projects the inputs of all time steps in one matmul.
//!
//! Per layer and step: `gates = x_t W_x + h_{t-1} W_h + b`, split into input, forget, cell and
//! output gates (that order, as in PyTorch); `c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g)`,
//! `h_t = σ(o) ⊙ tanh(c_t)`.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;

use crate::model::fused::linear::linear;
use crate::model::fused::lstm_layer::lstm_recurrence;
use crate::model::init::{uniform, InitScheme};

/// The recurrent state of one layer.
#[derive(Debug, Clone)]
pub struct LstmState {
    /// Hidden state `[batch, hidden]`.
    pub hidden: Tensor<2>,
    /// Cell state `[batch, hidden]`.
    pub cell: Tensor<2>,
}

impl LstmState {
    /// Zero state for `batch` sequences.
    pub fn zeros(batch: usize, d_hidden: usize, device: &Device) -> Self {
        Self {
            hidden: Tensor::zeros([batch, d_hidden], device),
            cell: Tensor::zeros([batch, d_hidden], device),
        }
    }

    /// The same state cut from the autodiff graph (truncated backpropagation through time).
    pub fn detach(self) -> Self {
        Self {
            hidden: self.hidden.detach(),
            cell: self.cell.detach(),
        }
    }
}

/// One LSTM layer.
#[derive(Module, Debug)]
pub struct LstmLayer {
    /// Input weights `[d_input, 4 * d_hidden]`, gate blocks i, f, g, o.
    pub input_weight: Param<Tensor<2>>,
    /// Recurrent weights `[d_hidden, 4 * d_hidden]`, gate blocks i, f, g, o.
    pub hidden_weight: Param<Tensor<2>>,
    /// Gate bias `[4 * d_hidden]` (PyTorch's `b_ih + b_hh`).
    pub bias: Param<Tensor<1>>,
}

impl LstmLayer {
    /// A layer from `d_input` to `d_hidden` features, initialised by `init` from `rng`.
    pub fn new(
        d_input: usize,
        d_hidden: usize,
        init: &InitScheme,
        rng: &mut StdRng,
        device: &Device,
    ) -> Self {
        let g = 4 * d_hidden;
        let (wi, wh, mut b) = match *init {
            InitScheme::MxXavier { magnitude, .. } => (
                uniform(rng, d_input * g, (magnitude / d_input as f64).sqrt()),
                uniform(rng, d_hidden * g, (magnitude / d_hidden as f64).sqrt()),
                vec![0.0; g],
            ),
            InitScheme::Uniform { range } => (
                uniform(rng, d_input * g, range),
                uniform(rng, d_hidden * g, range),
                uniform(rng, g, range),
            ),
        };
        if let InitScheme::MxXavier { forget_bias, .. } = *init {
            b[d_hidden..2 * d_hidden].fill(forget_bias as f32);
        }
        let param = |v: Vec<f32>, shape: Vec<usize>| TensorData::new(v, shape);
        Self {
            input_weight: Param::from_tensor(Tensor::from_data(
                param(wi, vec![d_input, g]),
                device,
            )),
            hidden_weight: Param::from_tensor(Tensor::from_data(
                param(wh, vec![d_hidden, g]),
                device,
            )),
            bias: Param::from_tensor(Tensor::from_data(param(b, vec![g]), device)),
        }
    }

    /// Hidden size of the layer.
    pub fn d_hidden(&self) -> usize {
        self.hidden_weight.dims()[0]
    }

    /// Runs the layer over a sequence.
    ///
    /// - `input`: `[batch, seq, d_input]`
    /// - `state`: the state before the first step (zeros when `None`)
    /// - returns the hidden states `[batch, seq, d_hidden]` and the state after the last step.
    pub fn forward(&self, input: Tensor<3>, state: Option<LstmState>) -> (Tensor<3>, LstmState) {
        let [batch, seq, d_input] = input.dims();
        let d_hidden = self.d_hidden();
        let device = input.device();
        let LstmState { hidden: h, cell: c } =
            state.unwrap_or_else(|| LstmState::zeros(batch, d_hidden, &device));

        // All time steps' input projections in one matmul, time-major so that each step's
        // rows are contiguous: [seq * batch, 4h]. The recurrence adds the bias as it reads them.
        let projected = linear(
            input.swap_dims(0, 1).reshape([seq * batch, d_input]),
            self.input_weight.val(),
        );
        let (hs, h, c) =
            lstm_recurrence(projected, self.hidden_weight.val(), self.bias.val(), h, c);
        let output = hs.reshape([seq, batch, d_hidden]).swap_dims(0, 1);
        (output, LstmState { hidden: h, cell: c })
    }
}

/// Stacked LSTM layers; layer `k + 1` reads the hidden states of layer `k`.
#[derive(Module, Debug)]
pub struct LstmStack {
    /// The layers, bottom first.
    pub layers: Vec<LstmLayer>,
}

impl LstmStack {
    /// Runs all layers.
    ///
    /// - `input`: `[batch, seq, d_input]`
    /// - `state`: one state per layer (zeros when `None`)
    /// - returns the top layer's hidden states `[batch, seq, d_hidden]` and the final states.
    pub fn forward(
        &self,
        input: Tensor<3>,
        state: Option<Vec<LstmState>>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        self.forward_with(input, state, |x| x)
    }

    /// Like [`forward`](Self::forward), passing every layer's output `[batch, seq, d_hidden]`
    /// through `after_layer` (dropout) before the next layer reads it; the top layer's too.
    pub fn forward_with(
        &self,
        input: Tensor<3>,
        state: Option<Vec<LstmState>>,
        mut after_layer: impl FnMut(Tensor<3>) -> Tensor<3>,
    ) -> (Tensor<3>, Vec<LstmState>) {
        let mut states = state.map(Vec::into_iter);
        let mut x = input;
        let mut finals = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let s = states.as_mut().and_then(Iterator::next);
            let (out, last) = layer.forward(x, s);
            x = after_layer(out);
            finals.push(last);
        }
        (x, finals)
    }
}
