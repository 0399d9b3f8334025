//! The model's shapes and the LSTM cell's arithmetic, on every CPU backend.

mod common;

use burn::module::Param;
use burn::tensor::{Int, Tensor, TensorData};
use lstm_lm::model::lstm::{LstmLayer, LstmState};
use lstm_lm::model::{InitScheme, LmConfig, LossNorm};

#[test]
fn forward_shapes_on_every_backend() {
    for (name, device) in common::cpu_devices() {
        let config = LmConfig {
            vocab_size: 13,
            d_embed: 5,
            d_hidden: 7,
            n_layers: 3,
            init: InitScheme::Uniform { range: 0.1 },
            loss_norm: LossNorm::Token,
            dropout: 0.0,
            tied: false,
            softmax: Default::default(),
        };
        let model = config.init(1, &device);
        let inputs =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64; 4 * 6], [4, 6]), &device);
        let (logits, state) = model.forward(inputs, None);
        assert_eq!(logits.dims(), [4, 6, 13], "{name}");
        assert_eq!(state.len(), 3, "{name}: one state per layer");
        for s in &state {
            assert_eq!(s.hidden.dims(), [4, 7], "{name}");
            assert_eq!(s.cell.dims(), [4, 7], "{name}");
        }
    }
}

/// One unit, one input, two steps, computed by hand:
/// gates z = x*wx + h*wh + b per gate (i, f, g, o); c' = σ(f)c + σ(i)tanh(g); h' = σ(o)tanh(c').
#[test]
fn lstm_cell_matches_a_hand_computation() {
    let (wx, wh, b) = (
        [0.5, -0.3, 0.8, 0.1],
        [0.2, 0.4, -0.6, 0.7],
        [0.1, 1.0, -0.2, 0.05],
    );
    let xs = [1.5, -0.5];
    let (h0, c0) = (0.3, -0.1);
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let (mut h, mut c) = (h0, c0);
    let mut expected = Vec::new();
    for x in xs {
        let z: Vec<f64> = (0..4).map(|k| x * wx[k] + h * wh[k] + b[k]).collect();
        c = sig(z[1]) * c + sig(z[0]) * z[2].tanh();
        h = sig(z[3]) * c.tanh();
        expected.push(h);
    }

    for (name, device) in common::cpu_devices() {
        let data = |v: &[f64], shape: Vec<usize>| {
            TensorData::new(v.iter().map(|&x| x as f32).collect::<Vec<_>>(), shape)
        };
        let t = |v: &[f64], shape: Vec<usize>| Tensor::<2>::from_data(data(v, shape), &device);
        let layer = LstmLayer {
            input_weight: Param::from_tensor(t(&wx, vec![1, 4])),
            hidden_weight: Param::from_tensor(t(&wh, vec![1, 4])),
            bias: Param::from_tensor(Tensor::<1>::from_data(data(&b, vec![4]), &device)),
        };
        let state = LstmState {
            hidden: t(&[h0], vec![1, 1]),
            cell: t(&[c0], vec![1, 1]),
        };
        let (out, last) = layer.forward(
            Tensor::<3>::from_data(data(&xs, vec![1, 2, 1]), &device),
            Some(state),
        );
        let got: Vec<f32> = out.into_data().try_into_vec::<f32>().unwrap();
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (*g as f64 - e).abs() < 1e-6,
                "{name}: {got:?} vs {expected:?}"
            );
        }
        let c_last: Vec<f32> = last.cell.into_data().try_into_vec::<f32>().unwrap();
        assert!((c_last[0] as f64 - c).abs() < 1e-6, "{name}");
    }
}

/// Padding is neither computed in the loss nor counted: a padded batch of two sentences scores
/// the same summed NLL and token count as each sentence alone, and gives the output layer the
/// same gradients (on the fused flex path, padded rows never reach the output layer).
#[test]
fn padding_is_neither_in_the_loss_nor_in_its_gradients() {
    use lstm_lm::data::batcher::HostBatch;
    for (name, device) in common::cpu_devices() {
        let device = device.autodiff();
        let config = LmConfig {
            vocab_size: 11,
            d_embed: 4,
            d_hidden: 6,
            n_layers: 2,
            init: InitScheme::Uniform { range: 0.3 },
            loss_norm: LossNorm::Batch,
            dropout: 0.0,
            tied: false,
            softmax: Default::default(),
        };
        let model = config.init(3, &device);
        let (a, b) = (vec![5, 6, 7, 9, 1], vec![8, 4, 1]);
        let score = |sentences: &[&Vec<usize>]| {
            let owned: Vec<Vec<usize>> = sentences.iter().map(|s| s.to_vec()).collect();
            let tokens = lstm_lm::data::store::Tokens::from_sentences(&owned);
            let rows: Vec<u32> = (0..owned.len() as u32).collect();
            let batch = HostBatch::new(&tokens, &rows, 7).to_device(&device);
            let loss = model.loss(&batch);
            let grads = loss.nll_sum.clone().backward();
            let bias = model.output.as_ref().unwrap().bias.as_ref().unwrap();
            let db: Vec<f32> = bias
                .val()
                .grad(&grads)
                .unwrap()
                .into_data()
                .try_into_vec::<f32>()
                .unwrap();
            (loss.nll_sum.into_scalar::<f32>(), loss.tokens, db)
        };
        let (both, both_tokens, both_db) = score(&[&a, &b]);
        let (one, one_tokens, one_db) = score(&[&a]);
        let (two, two_tokens, two_db) = score(&[&b]);
        assert_eq!(both_tokens, 4 + 2, "{name}");
        assert_eq!(both_tokens, one_tokens + two_tokens, "{name}");
        assert!(
            (both - (one + two)).abs() < 1e-4 * both.abs(),
            "{name}: {both} vs {one} + {two}"
        );
        for ((x, y), z) in both_db.iter().zip(&one_db).zip(&two_db) {
            assert!(
                (x - (y + z)).abs() < 1e-5,
                "{name}: bias gradient {x} vs {y} + {z}"
            );
        }
    }
}

/// The adaptive softmax's loss and gradients against its full log-probabilities on every CPU
/// backend: flex runs the fused output op for each part, ndarray Burn's composed ops (the path
/// wgpu takes too).
#[test]
fn the_adaptive_softmax_matches_its_reference_on_every_backend() {
    for (name, device) in common::cpu_devices() {
        for (what, err) in lstm_lm::model::adaptive::errors_against_reference(&device) {
            let bound = if what == "values" { 1e-5 } else { 1e-4 };
            assert!(err < bound, "{name}, {what}: {err}");
        }
    }
}
