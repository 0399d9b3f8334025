//! The output layer and the cross-entropy as one op, with its own backward pass.
//!
//! `nll[n] = logsumexp(x[n] W + b) - (x[n] W + b)[target[n]]` for hidden states `x` `[N, H]`,
//! the output weight `W` `[H, V]` and bias `b` `[V]`. Composed from Burn ops, the `[N, V]`
//! logits (7 M floats for the `small` config) went through a matmul, a bias add, the
//! cross-entropy, and in the backward a fresh gradient tensor, a bias-gradient reduction and
//! two more matmuls, each a full pass with its own allocation. Here the bias is added to each
//! row of the product in the pass that takes its log-sum-exp, which leaves `exp(logit - max)` in
//! the row for the backward; the backward folds each row's scale into the products' other factor
//! instead of passing over the `[N, V]` values again, and the three products are cut into one
//! block per core (`super::matmul`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::activation::log_softmax;
use burn::tensor::{DType, Int, Tensor};
use rayon::prelude::*;

use super::matmul::{product, Mat};
use super::xent::{int_values, kernels, PARALLEL_MIN};
use super::{has_fused_kernels, host_f32, register_grads, to_flex, values};

/// Negative log-likelihood of `targets` under `softmax(x W + b)`, row by row.
///
/// - `x`: hidden states `[tokens, d_hidden]`
/// - `weight`: `[d_hidden, vocab]`; `bias`: `[vocab]`
/// - `targets`: `[tokens, 1]` ids
/// - returns `[tokens, 1]`.
///
/// On flex (f32) this is the fused op; elsewhere `-log_softmax(x W + b).gather(targets)`.
pub fn linear_nll(
    x: Tensor<2>,
    weight: Tensor<2>,
    bias: Tensor<1>,
    targets: Tensor<2, Int>,
) -> Tensor<2> {
    if has_fused_kernels(&x.device()) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as OutputOps>::linear_nll(
            x.into_dispatch(),
            weight.into_dispatch(),
            bias.into_dispatch(),
            targets.into_dispatch(),
        ))
    } else {
        -log_softmax(x.matmul(weight) + bias.unsqueeze_dim(0), 1).gather(1, targets)
    }
}

/// The fused output layer + cross-entropy as a Burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait OutputOps: Backend {
    /// `x` `[N, H]`, `weight` `[H, V]`, `bias` `[V]`, `targets` `[N, 1]` -> NLL `[N, 1]`;
    /// differentiable in `x`, `weight` and `bias`.
    fn linear_nll(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self>;

    /// [`linear_nll`](Self::linear_nll)'s output, `exp(logits - max)` `[N, V]` (each row's
    /// max taken out) and each row's sum of them `[N, 1]`, which the backward reads.
    fn linear_nll_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients in `x`, `weight` and `bias` from the output gradient `grad` `[N, 1]`; consumes
    /// the forward's `exps` (their buffer becomes the logits' gradient, up to each row's scale,
    /// when nothing else holds it).
    fn linear_nll_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        exps: FloatTensor<Self>,
        sums: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

impl OutputOps for Flex {
    fn linear_nll(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        forward(x, weight, bias, targets, false).0
    }

    fn linear_nll_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        forward(x, weight, bias, targets, true)
    }

    fn linear_nll_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        exps: FloatTensor<Self>,
        sums: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x, xd) = host_f32::<2>(x, "hidden states");
        let (w, wd) = host_f32::<2>(weight, "weights");
        let (mut exps, ed) = host_f32::<2>(exps, "exponentials");
        let (sums, _) = host_f32::<2>(sums, "row sums");
        let (grad, _) = host_f32::<2>(grad, "output gradient");
        let (n, h, v) = (xd[0], xd[1], wd[1]);
        assert_eq!(ed, [n, v]);
        let targets = int_values(targets);
        let (x, w, sums, grad) = (values(&x), values(&w), values(&sums), values(&grad));
        let parallel = n * v >= PARALLEL_MIN;
        // Row r's gradient in the logits is g_r (e_r / s_r - 1[target]) = (g_r / s_r) d_r with
        // d_r = e_r - s_r 1[target]: the exponentials become d in place (one value a row, or
        // zeros for a row without gradient), and the rows' scales g_r / s_r go into the
        // products' other factor. Before, a pass over all `[N, V]` values wrote g_r · softmax
        // and summed the bias gradient's columns (docs/BENCHMARKS.md).
        let d: &mut [f32] = exps.storage_mut();
        assert_eq!(
            d.len(),
            n * v,
            "the exponentials are a whole buffer of their own"
        );
        let scales: Vec<f32> = (0..n)
            .map(|r| {
                if grad[r] == 0.0 {
                    0.0
                } else {
                    grad[r] / sums[r]
                }
            })
            .collect();
        let to_gradient = |(r, row): (usize, &mut [f32])| {
            if grad[r] == 0.0 {
                row.fill(0.0);
            } else {
                row[targets[r]] -= sums[r];
            }
        };
        if parallel {
            d.par_chunks_mut(v.max(1)).enumerate().for_each(to_gradient);
        } else {
            d.chunks_mut(v.max(1)).enumerate().for_each(to_gradient);
        }
        let d: &[f32] = d;
        let dm = Mat::new(d, n, v, v);
        // `[x_r · scale_r | scale_r]` `[N, H + 1]`: its product with d gives the weight's
        // gradient in its first H rows and the bias's in its last.
        let mut scaled = Vec::with_capacity(n * (h + 1));
        for (r, &s) in scales.iter().enumerate() {
            scaled.extend(x[r * h..(r + 1) * h].iter().map(|&a| a * s));
            scaled.push(s);
        }
        let mut dw = product(Mat::new(&scaled, n, h + 1, h + 1).t(), dm, parallel);
        let db = dw.split_off(h * v);
        let mut dx = product(dm, Mat::new(w, h, v, v).t(), parallel);
        for (row, &s) in dx.chunks_mut(h.max(1)).zip(&scales) {
            row.iter_mut().for_each(|a| *a *= s);
        }
        (
            to_flex(dx, &[n, h]),
            to_flex(dw, &[h, v]),
            to_flex(db, &[v]),
        )
    }
}

/// The fused forward: `nll` `[N, 1]`, and with `keep` also what the backward reads,
/// `exp(logits - max)` `[N, V]` and each row's sum of them `[N, 1]` (otherwise two empty
/// tensors).
fn forward(
    x: FloatTensor<Flex>,
    weight: FloatTensor<Flex>,
    bias: FloatTensor<Flex>,
    targets: IntTensor<Flex>,
    keep: bool,
) -> (FloatTensor<Flex>, FloatTensor<Flex>, FloatTensor<Flex>) {
    let (x, xd) = host_f32::<2>(x, "hidden states");
    let (w, wd) = host_f32::<2>(weight, "weights");
    let (b, bd) = host_f32::<1>(bias, "bias");
    let (n, h, v) = (xd[0], xd[1], wd[1]);
    assert_eq!(wd[0], h, "weight must be [d_hidden, vocab]");
    assert_eq!(bd[0], v, "bias must be [vocab]");
    let targets = int_values(targets);
    assert_eq!(targets.len(), n, "one target per row");
    if let Some(&t) = targets.iter().find(|&&t| t >= v) {
        panic!("target id {t} is outside the vocabulary of {v}");
    }
    let b = values(&b);
    let parallel = n * v >= PARALLEL_MIN;
    // x · W into a new buffer (written once), then each row gains the bias and gives its
    // log-sum-exp in one pass while it is in cache: no pass that writes rows of bias for the
    // product to read back and accumulate onto (13 - 19% off this op, docs/BENCHMARKS.md). The
    // bias is added once to the whole product, where `gemm` added the product's blocks of `k`
    // (it cuts `k` over 512) to the bias in turn: for wide layers the logits' last digits
    // differ from before.
    let mut logits = product(
        Mat::new(values(&x), n, h, h),
        Mat::new(values(&w), h, v, v),
        parallel,
    );
    // Per row: (nll, sum of exp(logit - max)).
    let mut out = vec![(0.0f32, 0.0f32); n];
    let run = |(r, (o, row)): (usize, (&mut (f32, f32), &mut [f32]))| {
        let t = targets[r];
        let target = row[t] + b[t];
        let (max, sum) = kernels::add_exp(row, b, keep);
        *o = (max + sum.ln() - target, sum);
    };
    if parallel {
        out.par_iter_mut()
            .zip(logits.par_chunks_mut(v))
            .enumerate()
            .for_each(run);
    } else {
        out.iter_mut()
            .zip(logits.chunks_mut(v))
            .enumerate()
            .for_each(run);
    }
    let (nll, sums): (Vec<f32>, Vec<f32>) = out.into_iter().unzip();
    if !keep {
        return (
            to_flex(nll, &[n, 1]),
            to_flex(Vec::new(), &[0, 0]),
            to_flex(Vec::new(), &[0, 1]),
        );
    }
    (
        to_flex(nll, &[n, 1]),
        to_flex(logits, &[n, v]),
        to_flex(sums, &[n, 1]),
    )
}

impl<B: Backend + OutputOps, C: CheckpointStrategy> OutputOps for Autodiff<B, C> {
    fn linear_nll(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        /// Backward of the fused output layer; its state is what the forward computed.
        #[derive(Debug)]
        struct OutputBackward;

        impl<B: Backend + OutputOps> Backward<B, 3> for OutputBackward {
            /// (x, weight, exps, sums, targets), all on the inner backend.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                IntTensor<B>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight, exps, sums, targets) = ops.state;
                let (dx, dw, db) = B::linear_nll_backward(x, weight, exps, sums, targets, grad);
                register_grads::<B, 3>(grads, ops.parents.map(|p| p.map(|n| n.id)), [dx, dw, db]);
            }
        }

        let guards = [x.node(), weight.node(), bias.node()];
        let (x, weight, bias) = (Self::inner(x), Self::inner(weight), Self::inner(bias));
        match OutputBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (nll, exps, sums) =
                    B::linear_nll_forward(x.clone(), weight.clone(), bias, targets.clone());
                prep.finish((x, weight, exps, sums, targets), nll)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::linear_nll(x, weight, bias, targets)),
        }
    }

    fn linear_nll_forward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (a, b, c) = B::linear_nll_forward(
            Self::inner(x),
            Self::inner(weight),
            Self::inner(bias),
            targets,
        );
        (
            Self::from_inner(a),
            Self::from_inner(b),
            Self::from_inner(c),
        )
    }

    fn linear_nll_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        exps: FloatTensor<Self>,
        sums: FloatTensor<Self>,
        targets: IntTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (a, b, c) = B::linear_nll_backward(
            Self::inner(x),
            Self::inner(weight),
            Self::inner(exps),
            Self::inner(sums),
            targets,
            Self::inner(grad),
        );
        (
            Self::from_inner(a),
            Self::from_inner(b),
            Self::from_inner(c),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::{assert_close, max_rel_err};
    use burn::tensor::{Device, Distribution, TensorData};

    /// Values and the gradients in x, weight and bias against Burn's matmul + log_softmax +
    /// gather, with a masked row and a different weight for every row.
    fn check(rows: usize, hidden: usize, vocab: usize, scale: f32) {
        let flex = Device::flex();
        let normal = |shape: Vec<usize>, s: f32| {
            Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &flex).mul_scalar(s)
        };
        let x = normal(vec![rows, hidden], scale);
        let w = normal(vec![hidden, vocab], 1.0);
        let b = normal(vec![1, vocab], 1.0);
        let targets: Vec<i64> = (0..rows).map(|r| ((r * 7919) % vocab) as i64).collect();
        let weights: Vec<f32> = (0..rows)
            .map(|r| if r == 1 { 0.0 } else { 1.0 + r as f32 * 0.25 })
            .collect();
        let ad = Device::flex().autodiff();
        let run = |fused: bool| {
            let leaf = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &ad).require_grad();
            let (x, w, b) = (leaf(&x), leaf(&w), leaf(&b));
            let t = Tensor::<2, Int>::from_data(TensorData::new(targets.clone(), [rows, 1]), &ad);
            let bias = b.clone().reshape([vocab]);
            let nll = if fused {
                linear_nll(x.clone(), w.clone(), bias, t)
            } else {
                -log_softmax(x.clone().matmul(w.clone()) + bias.unsqueeze_dim(0), 1).gather(1, t)
            };
            let wt = Tensor::<2>::from_data(TensorData::new(weights.clone(), [rows, 1]), &ad);
            let grads = (nll.clone() * wt).sum().backward();
            [
                nll.inner(),
                x.grad(&grads).unwrap(),
                w.grad(&grads).unwrap(),
                b.grad(&grads).unwrap(),
            ]
        };
        assert_close(
            ["nll", "d x", "d weight", "d bias"],
            run(true),
            run(false),
            &format!("{rows}x{hidden}x{vocab}, scale {scale}"),
        );
    }

    #[test]
    fn matches_burn_reference_small() {
        check(5, 3, 37, 1.0);
    }

    #[test]
    fn matches_burn_reference_on_several_cores() {
        // 70 x 1,003 > PARALLEL_MIN logits: the parallel products and reductions; odd widths.
        check(70, 19, 1003, 2.0);
    }

    #[test]
    #[allow(deprecated)] // ndarray is the CPU backend without fused kernels
    fn falls_back_off_flex_and_agrees() {
        #[cfg(feature = "ndarray")]
        {
            let flex = Device::flex();
            let x = Tensor::<2>::random([4, 3], Distribution::Normal(0.0, 1.0), &flex);
            let w = Tensor::<2>::random([3, 50], Distribution::Normal(0.0, 2.0), &flex);
            let b = Tensor::<1>::random([50], Distribution::Normal(0.0, 1.0), &flex);
            let t =
                Tensor::<2, Int>::from_data(TensorData::new(vec![0i64, 7, 49, 3], [4, 1]), &flex);
            let nd = Device::ndarray();
            assert!(!has_fused_kernels(&nd));
            let on = |d: &Device| {
                let x = Tensor::<2>::from_data(x.to_data(), d);
                let w = Tensor::<2>::from_data(w.to_data(), d);
                let b = Tensor::<1>::from_data(b.to_data(), d);
                let t = Tensor::<2, Int>::from_data(t.to_data(), d);
                Tensor::<2>::from_data(linear_nll(x, w, b, t).into_data(), &flex)
            };
            let e = max_rel_err(on(&nd), on(&flex));
            assert!(e < 1e-5, "{e}");
        }
        assert!(has_fused_kernels(&Device::flex().autodiff()));
    }
}
