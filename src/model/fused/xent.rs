//! Softmax cross-entropy row kernels for the fused output layer ([`super::output`]).
//!
//! Burn composes `log_softmax(logits).gather(targets)` from a dozen primitive ops, each a full
//! pass over the `[tokens, vocab]` logits (7 M floats for batch 20 x 35 steps x 10,000 words),
//! with a scalar `expf` in two of them; forward and backward took 68 ms of a 408 ms training
//! step of the `small` benchmark config. Here the forward is one pass per row (max, then the sum
//! of `exp(x - max)`) giving `lse = log Σ exp(x)` and `nll = lse - x[target]`, and the backward
//! is one pass writing `g · (exp(x - lse) - 1[v = target])`, rows split over the cores.

use burn::tensor::DType;
use burn_flex::FlexTensor;

use super::simd::{exp, multiversion};

/// Below this many logits the rows are not split over threads.
pub(super) const PARALLEL_MIN: usize = 1 << 16;

/// The ids of an integer tensor (`i64` or `i32`).
pub(super) fn int_values(t: FlexTensor) -> Vec<usize> {
    let t = t.to_contiguous();
    match t.dtype() {
        DType::I64 => t
            .as_slice::<i64>()
            .unwrap()
            .iter()
            .map(|&i| i as usize)
            .collect(),
        DType::I32 => t
            .as_slice::<i32>()
            .unwrap()
            .iter()
            .map(|&i| i as usize)
            .collect(),
        other => panic!("target ids must be i64 or i32, not {other:?}"),
    }
}

/// Row kernels.
pub(super) mod kernels {
    use super::{exp, multiversion};

    const LANES: usize = 16;

    multiversion! {
        /// `x += bias`, then `log Σ exp(x)` (stable for any finite `x`), in one pass over `x`
        /// while it is in cache (`bias` as long as `x`).
        pub fn add_log_sum_exp(x: &mut [f32], bias: &[f32]) -> f32 {
            assert_eq!(x.len(), bias.len(), "add_log_sum_exp: one bias per value");
            // Max and sum in LANES independent lanes (one running value would not vectorise).
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let mut chunks = x.chunks_exact_mut(LANES);
            for (c, b) in (&mut chunks).zip(bias.chunks_exact(LANES)) {
                for i in 0..LANES {
                    c[i] += b[i];
                    lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
                }
            }
            let tail = chunks.into_remainder();
            let tail_len = tail.len();
            let mut max = f32::NEG_INFINITY;
            for (v, &b) in tail.iter_mut().zip(&bias[bias.len() - tail_len..]) {
                *v += b;
                max = max.max(*v);
            }
            let x: &[f32] = x;
            let tail = &x[x.len() - tail_len..];
            max = lanes.iter().fold(max, |m, &v| m.max(v));
            if !max.is_finite() {
                return max; // an infinity or NaN that the loss must show
            }
            let mut sums = [0.0f32; LANES];
            for c in x.chunks_exact(LANES) {
                for i in 0..LANES {
                    sums[i] += exp::<FMA>(c[i] - max);
                }
            }
            let sum = sums.iter().sum::<f32>() + tail.iter().map(|&v| exp::<FMA>(v - max)).sum::<f32>();
            max + sum.ln()
        }
    }

    multiversion! {
        /// `x[i] = g · exp(x[i] - lse)`.
        pub fn softmax_scaled_in_place(x: &mut [f32], lse: f32, g: f32) {
            for v in x.iter_mut() {
                *v = g * exp::<FMA>(*v - lse);
            }
        }
    }
}
