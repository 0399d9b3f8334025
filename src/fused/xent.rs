//! A fused softmax cross-entropy with its own backward pass.
//!
//! Burn composes `log_softmax(logits).gather(targets)` from a dozen primitive ops, each a full
//! pass over the `[tokens, vocab]` logits (7 M floats for batch 20 x 35 steps x 10,000 words),
//! with a scalar `expf` in two of them; forward and backward took 68 ms of a 408 ms training
//! step of the `small` benchmark config. Here the forward is one pass per row (max, then the sum
//! of `exp(x - max)`) giving `lse = log Σ exp(x)` and `nll = lse - x[target]`, and the backward
//! is one pass writing `g · (exp(x - lse) - 1[v = target])`, rows split over the cores.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::has_fused_kernels;
use super::simd::{exp, multiversion};

/// Negative log-likelihood of `targets` under `softmax(logits)`, row by row.
///
/// - `logits`: `[tokens, vocab]`
/// - `targets`: `[tokens, 1]` ids
/// - returns `[tokens, 1]`: `logsumexp(logits[n]) - logits[n, targets[n]]`.
///
/// On flex (f32) this is the fused kernel; elsewhere `-log_softmax(logits).gather(targets)`.
pub fn nll_rows(logits: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<2> {
    if has_fused_kernels(&logits.device()) && logits.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as CrossEntropyOps>::nll_rows(
            logits.into_dispatch(),
            targets.into_dispatch(),
        ))
    } else {
        -log_softmax(logits, 1).gather(1, targets)
    }
}

/// The fused cross-entropy as a Burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait CrossEntropyOps: Backend {
    /// `[tokens, vocab]`, `[tokens, 1]` -> NLL `[tokens, 1]`; differentiable in `logits`.
    fn nll_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self>;

    /// `logsumexp` of each row: `[tokens, vocab]` -> `[tokens, 1]`. Not differentiable.
    fn log_sum_exp_rows(logits: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient of [`nll_rows`](Self::nll_rows) in `logits`, given the forward's `lse`
    /// `[tokens, 1]` and the output gradient `grad` `[tokens, 1]`: `[tokens, vocab]`.
    fn nll_rows_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

impl CrossEntropyOps for Flex {
    fn nll_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        let lse = Self::log_sum_exp_rows(logits.clone());
        let picked = Self::float_gather(1, logits, targets);
        Self::float_sub(lse, picked)
    }

    fn log_sum_exp_rows(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        let [rows, cols] = dims2(&logits);
        let logits = logits.to_contiguous();
        let x: &[f32] = logits.as_slice().expect("contiguous f32 logits");
        let mut out = vec![0.0f32; rows];
        let run = |(r, o): (usize, &mut f32)| *o = kernels::log_sum_exp(&x[r * cols..][..cols]);
        if rows * cols >= PARALLEL_MIN {
            out.par_iter_mut().enumerate().for_each(run);
        } else {
            out.iter_mut().enumerate().for_each(run);
        }
        FlexTensor::from_data(TensorData::new(out, [rows, 1]))
    }

    fn nll_rows_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [rows, cols] = dims2(&logits);
        let logits = logits.to_contiguous();
        let x: &[f32] = logits.as_slice().expect("contiguous f32 logits");
        let lse = lse.to_contiguous();
        let lse: &[f32] = lse.as_slice().expect("contiguous f32 lse");
        let grad = grad.to_contiguous();
        let grad: &[f32] = grad.as_slice().expect("contiguous f32 grad");
        let targets = int_values(targets);
        let mut out = vec![0.0f32; rows * cols];
        let run = |(r, row): (usize, &mut [f32])| {
            let g = grad[r];
            if g != 0.0 {
                kernels::softmax_scaled(&x[r * cols..][..cols], lse[r], g, row);
                row[targets[r]] -= g;
            }
        };
        if rows * cols >= PARALLEL_MIN {
            out.par_chunks_mut(cols).enumerate().for_each(run);
        } else {
            out.chunks_mut(cols).enumerate().for_each(run);
        }
        FlexTensor::from_data(TensorData::new(out, [rows, cols]))
    }
}

/// Below this many logits the rows are not split over threads.
pub(super) const PARALLEL_MIN: usize = 1 << 16;

fn dims2(t: &FlexTensor) -> [usize; 2] {
    let shape = t.layout().shape();
    assert_eq!(shape.num_dims(), 2, "logits must be [tokens, vocab]");
    assert_eq!(t.dtype(), DType::F32, "the fused cross-entropy is f32 only");
    [shape[0], shape[1]]
}

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

impl<B: Backend + CrossEntropyOps, C: CheckpointStrategy> CrossEntropyOps for Autodiff<B, C> {
    fn nll_rows(logits: FloatTensor<Self>, targets: IntTensor<Self>) -> FloatTensor<Self> {
        /// Backward of the fused NLL; its state is what the forward already computed.
        #[derive(Debug)]
        struct NllBackward;

        impl<B: Backend + CrossEntropyOps> Backward<B, 1> for NllBackward {
            /// (logits, targets, lse), all on the inner backend.
            type State = (FloatTensor<B>, IntTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 1>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (logits, targets, lse) = ops.state;
                if let Some(parent) = &ops.parents[0] {
                    let grad_logits = B::nll_rows_backward(logits, targets, lse, grad);
                    grads.register::<B>(parent.id, grad_logits);
                }
            }
        }

        let guard = logits.node();
        let inner = Self::inner(logits);
        let lse = B::log_sum_exp_rows(inner.clone());
        let picked = B::float_gather(1, inner.clone(), targets.clone());
        let nll = B::float_sub(lse.clone(), picked);
        match NllBackward.prepare::<C>([guard]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((inner, targets, lse), nll),
            OpsKind::UnTracked(prep) => prep.finish(nll),
        }
    }

    fn log_sum_exp_rows(logits: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(B::log_sum_exp_rows(Self::inner(logits)))
    }

    fn nll_rows_backward(
        logits: FloatTensor<Self>,
        targets: IntTensor<Self>,
        lse: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::nll_rows_backward(
            Self::inner(logits),
            targets,
            Self::inner(lse),
            Self::inner(grad),
        ))
    }
}

/// Row kernels.
pub(super) mod kernels {
    use super::{exp, multiversion};

    const LANES: usize = 16;

    multiversion! {
        /// `log Σ exp(x)`, stable for any finite `x`.
        pub fn log_sum_exp(x: &[f32]) -> f32 {
            // Max and sum in LANES independent lanes (one running value would not vectorise).
            let mut lanes = [f32::NEG_INFINITY; LANES];
            let chunks = x.chunks_exact(LANES);
            let tail = chunks.remainder();
            for c in chunks {
                for i in 0..LANES {
                    lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
                }
            }
            let mut max = tail.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            max = lanes.iter().fold(max, |m, &v| m.max(v));
            if !max.is_finite() {
                return max; // an infinity or NaN that the loss must show
            }
            let mut sums = [0.0f32; LANES];
            for c in x.chunks_exact(LANES) {
                for i in 0..LANES {
                    sums[i] += exp(c[i] - max);
                }
            }
            let sum = sums.iter().sum::<f32>() + tail.iter().map(|&v| exp(v - max)).sum::<f32>();
            max + sum.ln()
        }
    }

    multiversion! {
        /// `x[i] = g · exp(x[i] - lse)`.
        pub fn softmax_scaled_in_place(x: &mut [f32], lse: f32, g: f32) {
            for v in x.iter_mut() {
                *v = g * exp(*v - lse);
            }
        }
    }

    multiversion! {
        /// `out[i] = g · exp(x[i] - lse)`.
        pub fn softmax_scaled(x: &[f32], lse: f32, g: f32, out: &mut [f32]) {
            for (o, &v) in out.iter_mut().zip(x) {
                *o = g * exp(v - lse);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_rel_err;
    use burn::tensor::{Device, Distribution};

    fn case(rows: usize, vocab: usize, scale: f32) -> (Tensor<2>, Tensor<2, Int>) {
        let device = Device::flex();
        let logits = Tensor::<2>::random([rows, vocab], Distribution::Normal(0.0, 1.0), &device)
            .mul_scalar(scale);
        let targets = Tensor::<2, Int>::from_data(
            TensorData::new(
                (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect(),
                [rows, 1],
            ),
            &device,
        );
        (logits, targets)
    }

    /// Values and gradients against Burn's `log_softmax` + `gather`, with a masked row and a
    /// weighted sum so that every row has a different output gradient.
    fn check(rows: usize, vocab: usize, scale: f32) {
        let (logits, targets) = case(rows, vocab, scale);
        let ad = Device::flex().autodiff();
        let weights = Tensor::<2>::from_data(
            TensorData::new(
                (0..rows)
                    .map(|r| if r == 1 { 0.0 } else { 1.0 + r as f32 * 0.25 })
                    .collect::<Vec<f32>>(),
                [rows, 1],
            ),
            &ad,
        );
        let run = |fused: bool| {
            let x = Tensor::<2>::from_data(logits.to_data(), &ad).require_grad();
            let t = Tensor::<2, Int>::from_data(targets.to_data(), &ad);
            let nll = if fused {
                nll_rows(x.clone(), t)
            } else {
                -log_softmax(x.clone(), 1).gather(1, t)
            };
            let grads = (nll.clone() * weights.clone()).sum().backward();
            (nll.inner(), x.grad(&grads).unwrap())
        };
        let (nll_f, grad_f) = run(true);
        let (nll_r, grad_r) = run(false);
        let e = max_rel_err(nll_f, nll_r);
        assert!(e < 1e-4, "nll rel err {e} ({rows}x{vocab}, scale {scale})");
        let e = max_rel_err(grad_f, grad_r);
        assert!(e < 1e-4, "grad rel err {e} ({rows}x{vocab}, scale {scale})");
    }

    #[test]
    fn matches_burn_reference_small_rows() {
        check(5, 37, 1.0);
    }

    #[test]
    fn matches_burn_reference_large_logits_parallel_path() {
        // 70 x 1,003 > PARALLEL_MIN logits, odd width (SIMD tail), large magnitudes.
        check(70, 1003, 8.0);
    }

    #[test]
    #[allow(deprecated)] // ndarray is the CPU backend without fused kernels
    fn falls_back_off_flex_and_agrees() {
        // ndarray has no fused kernel: nll_rows uses Burn's ops there.
        #[cfg(feature = "ndarray")]
        {
            let (logits, targets) = case(4, 50, 2.0);
            let nd = Device::ndarray();
            assert!(!has_fused_kernels(&nd));
            let a = nll_rows(
                Tensor::from_data(logits.to_data(), &nd),
                Tensor::from_data(targets.to_data(), &nd),
            );
            let b = nll_rows(logits, targets);
            let e = max_rel_err(Tensor::from_data(a.into_data(), &Device::flex()), b);
            assert!(e < 1e-5, "{e}");
        }
        assert!(has_fused_kernels(&Device::flex().autodiff()));
    }
}
