//! How parameters are initialised: the schemes a config names, and the uniform draw they share.

use rand::rngs::StdRng;
use rand::RngExt;
use serde::{Deserialize, Serialize};

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

/// `n` values drawn uniformly from `[-range, range)`.
pub(crate) fn uniform(rng: &mut StdRng, n: usize, range: f64) -> Vec<f32> {
    let r = range as f32;
    (0..n).map(|_| rng.random_range(-r..r)).collect()
}
