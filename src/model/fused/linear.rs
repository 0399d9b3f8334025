//! A linear map `y = x W` as one op, with its own backward: the LSTM layers' input projections
//! of all steps at once, `[seq * batch, d_input] x [d_input, 4 * d_hidden]`. The layers' bias is
//! not added here but in the recurrence, which reads every projection anyway
//! ([`super::lstm_layer`]): added here it took a pass over the projections, and its gradient
//! another over theirs (1.0 ms of a `medium` step, docs/BENCHMARKS.md).
//!
//! Composed from Burn's ops on flex, the product's buffer was zeroed on one core before the
//! product and the backward zeroed both gradients' buffers. Here the products write new
//! buffers once and are cut into one block per core (`super::matmul`).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::{DType, Tensor};

use super::matmul::{product, Mat};
use super::xent::PARALLEL_MIN;
use super::{has_fused_kernels, host_f32, register_grads, to_flex, values};

/// `x W`.
///
/// - `x`: `[rows, d_input]`
/// - `weight`: `[d_input, d_output]`
/// - returns `[rows, d_output]`.
///
/// On flex (f32) this is the fused op; elsewhere Burn's `matmul`.
pub fn linear(x: Tensor<2>, weight: Tensor<2>) -> Tensor<2> {
    if has_fused_kernels(&x.device()) && x.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as LinearOps>::linear(
            x.into_dispatch(),
            weight.into_dispatch(),
        ))
    } else {
        x.matmul(weight)
    }
}

/// The fused linear layer as a Burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait LinearOps: Backend {
    /// `x` `[N, I]`, `weight` `[I, O]` -> `[N, O]`; differentiable in both.
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradients in `x` `[N, I]` and `weight` `[I, O]` from the output gradient `grad` `[N, O]`.
    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

impl LinearOps for Flex {
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let (x, [n, i]) = host_f32(x, "inputs");
        let (w, [wi, o]) = host_f32(weight, "weights");
        assert_eq!(wi, i, "linear: weight must be [d_input, d_output]");
        let y = product(
            Mat::new(values(&x), n, i, i),
            Mat::new(values(&w), i, o, o),
            n * o >= PARALLEL_MIN,
        );
        to_flex(y, &[n, o])
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (x, [n, i]) = host_f32(x, "inputs");
        let (w, [wi, o]) = host_f32(weight, "weights");
        let (grad, [gn, go]) = host_f32(grad, "output gradient");
        assert_eq!((wi, gn, go), (i, n, o), "linear: gradient shapes");
        let parallel = n * o >= PARALLEL_MIN;
        let (x, w, g) = (values(&x), values(&w), Mat::new(values(&grad), n, o, o));
        let dx = product(g, Mat::new(w, i, o, o).t(), parallel);
        let dw = product(Mat::new(x, n, i, i).t(), g, parallel);
        (to_flex(dx, &[n, i]), to_flex(dw, &[i, o]))
    }
}

impl<B: Backend + LinearOps, C: CheckpointStrategy> LinearOps for Autodiff<B, C> {
    fn linear(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        /// Backward of the fused linear map; its state is the forward's inputs.
        #[derive(Debug)]
        struct LinearBackward;

        impl<B: Backend + LinearOps> Backward<B, 2> for LinearBackward {
            /// (x, weight), on the inner backend.
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (x, weight) = ops.state;
                let (dx, dw) = <B as LinearOps>::linear_backward(x, weight, grad);
                register_grads::<B, 2>(grads, ops.parents.map(|p| p.map(|n| n.id)), [dx, dw]);
            }
        }

        let guards = [x.node(), weight.node()];
        let (x, weight) = (Self::inner(x), Self::inner(weight));
        match LinearBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let y = <B as LinearOps>::linear(x.clone(), weight.clone());
                prep.finish((x, weight), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(<B as LinearOps>::linear(x, weight)),
        }
    }

    fn linear_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (a, b) = <B as LinearOps>::linear_backward(
            Self::inner(x),
            Self::inner(weight),
            Self::inner(grad),
        );
        (Self::from_inner(a), Self::from_inner(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fused::{assert_close, max_rel_err};
    use burn::tensor::{Device, Distribution};

    /// Values and the gradients in x and weight against Burn's matmul, through a loss that
    /// weights every output differently.
    fn check(rows: usize, d_input: usize, d_output: usize) {
        let flex = Device::flex();
        let normal =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &flex);
        let (x, w) = (normal([rows, d_input]), normal([d_input, d_output]));
        let weights = normal([rows, d_output]);
        let ad = Device::flex().autodiff();
        let run = |fused: bool| {
            let leaf = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &ad).require_grad();
            let (x, w) = (leaf(&x), leaf(&w));
            let y = if fused {
                linear(x.clone(), w.clone())
            } else {
                x.clone().matmul(w.clone())
            };
            let wt = Tensor::<2>::from_data(weights.to_data(), &ad);
            let grads = (y.clone() * wt).sum().backward();
            [y.inner(), x.grad(&grads).unwrap(), w.grad(&grads).unwrap()]
        };
        assert_close(
            ["y", "d x", "d weight"],
            run(true),
            run(false),
            &format!("{rows}x{d_input}x{d_output}"),
        );
    }

    #[test]
    fn matches_burn_reference_small() {
        check(5, 3, 8);
    }

    #[test]
    fn matches_burn_reference_on_several_cores() {
        // 70 x 1,003 > PARALLEL_MIN outputs: the parallel products; odd widths.
        check(70, 19, 1003);
    }

    /// Inputs that are views into bigger buffers (whole rows from the middle of a tensor, as
    /// the LSTM layer hands on its hidden states, read in place) or strided views (a transposed
    /// weight, copied) give exactly what their copies give.
    #[test]
    fn reads_views_as_their_copies() {
        let flex = Device::flex();
        let normal =
            |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &flex);
        let copy = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &flex);
        let (big, w_t) = (normal([10, 4]), normal([9, 4]));
        let (x, w) = (big.slice([3..8, 0..4]), w_t.transpose());
        let want = linear(copy(&x), copy(&w)).into_data();
        assert_eq!(linear(x, w).into_data(), want);
    }

    /// Without autodiff (evaluation, generation) the op gives Burn's values.
    #[test]
    fn untracked_without_autodiff_matches_burn() {
        let flex = Device::flex();
        let x = Tensor::<2>::random([6, 4], Distribution::Normal(0.0, 1.0), &flex);
        let w = Tensor::<2>::random([4, 9], Distribution::Normal(0.0, 1.0), &flex);
        let e = max_rel_err(linear(x.clone(), w.clone()), x.matmul(w));
        assert!(e < 1e-6, "{e}");
    }
}
