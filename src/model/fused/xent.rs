//! Softmax cross-entropy row kernels for the fused output layer ([`super::output`]).
//!
//! Burn composes `log_softmax(logits).gather(targets)` from a dozen primitive ops, each a full
//! pass over the `[tokens, vocab]` logits (7 M floats for batch 20 x 35 steps x 10,000 words),
//! with a scalar `expf` in two of them; forward and backward took 68 ms of a 408 ms training
//! step of the `small` benchmark config. Here the forward is one pass per row (max, then the sum
//! of `exp(x - max)`) giving `lse = log Σ exp(x)` and `nll = lse - x[target]`; when a backward
//! pass follows, the same pass leaves `exp(x - max)` in the row for it (see `super::output`).

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
        /// `x += bias`, then `(max, Σ exp(x - max))` over the row: `log Σ exp(x)` is
        /// `max + ln(sum)` (stable for any finite `x`). With `keep`, `x[i]` becomes
        /// `exp(x[i] - max)`, the softmax times `sum`, which the backward pass reads. Two passes
        /// over `x` while it is in cache (`bias` as long as `x`); a non-finite max (an infinity or
        /// NaN that the loss must show) comes back with a sum of 1 and `x` left as it is.
        pub fn add_exp(x: &mut [f32], bias: &[f32], keep: bool) -> (f32, f32) {
            assert_eq!(x.len(), bias.len(), "add_exp: one bias per value");
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
            let tail_bias = &bias[bias.len() - tail.len()..];
            let mut max = f32::NEG_INFINITY;
            for (v, &b) in tail.iter_mut().zip(tail_bias) {
                *v += b;
                max = max.max(*v);
            }
            max = lanes.iter().fold(max, |m, &v| m.max(v));
            if !max.is_finite() {
                return (max, 1.0);
            }
            let mut sums = [0.0f32; LANES];
            let mut chunks = x.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for i in 0..LANES {
                    let e = exp::<FMA>(c[i] - max);
                    sums[i] += e;
                    if keep {
                        c[i] = e;
                    }
                }
            }
            let mut sum = sums.iter().sum::<f32>();
            for v in chunks.into_remainder() {
                let e = exp::<FMA>(*v - max);
                sum += e;
                if keep {
                    *v = e;
                }
            }
            (max, sum)
        }
    }
}
