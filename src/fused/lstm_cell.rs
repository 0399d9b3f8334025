//! The elementwise part of an LSTM step, fused, with its own backward pass.
//!
//! Given the gate pre-activations `z = x W_x + h W_h + b` `[batch, 4 * hidden]` (blocks i, f,
//! g, o) and the previous cell `c_prev` `[batch, hidden]`, one pass computes
//! `i, f, o = σ(z_i, z_f, z_o)`, `g = tanh(z_g)`, `c = f c_prev + i g`, `h = o tanh(c)`.
//! Burn's composition of the same math is ~17 small ops per step, each an allocation, a pass
//! and an autodiff node.
//!
//! The op returns a workspace `[batch, 7 * hidden]` per row laid out as `h | c | i f g o |
//! tanh(c)`: the activations are what the backward pass needs, so nothing is recomputed. Only
//! the `h` and `c` columns are outputs; [`lstm_cell`] slices them off, and gradients flowing into
//! the other columns are ignored.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::FlexTensor;

use super::has_fused_kernels;
use super::simd::{self, multiversion};

/// One LSTM step's gate math.
///
/// - `gates`: pre-activations `[batch, 4 * hidden]`, blocks i, f, g, o
/// - `c_prev`: cell state `[batch, hidden]`
/// - returns `(h, c)`, each `[batch, hidden]`.
///
/// On flex (f32) this is the fused kernel; elsewhere Burn's ops.
pub fn lstm_cell(gates: Tensor<2>, c_prev: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let [batch, hidden] = c_prev.dims();
    if has_fused_kernels(&gates.device()) && gates.dtype() == DType::F32 {
        let ws = Tensor::<2>::from_dispatch(<Dispatch as LstmCellOps>::lstm_cell(
            gates.into_dispatch(),
            c_prev.into_dispatch(),
        ));
        let h = ws.clone().slice([0..batch, 0..hidden]);
        let c = ws.slice([0..batch, hidden..2 * hidden]);
        (h, c)
    } else {
        let mut parts = gates.chunk(4, 1).into_iter();
        let mut next = || parts.next().expect("4 gate blocks");
        let (i, f, g, o) = (next(), next(), next(), next());
        let c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g);
        let h = sigmoid(o) * tanh(c.clone());
        (h, c)
    }
}

/// The fused LSTM cell as a Burn backend extension.
#[backend_extension(Flex, Autodiff)]
pub trait LstmCellOps: Backend {
    /// `[batch, 4H]`, `[batch, H]` -> workspace `[batch, 7H]` (`h | c | i f g o | tanh c`);
    /// differentiable through its `h` and `c` columns.
    fn lstm_cell(gates: FloatTensor<Self>, c_prev: FloatTensor<Self>) -> FloatTensor<Self>;

    /// Gradient in `gates` `[batch, 4H]`, from the workspace, `c_prev` and the workspace's
    /// gradient (only its `h` and `c` columns are read).
    fn lstm_cell_backward_gates(
        ws: FloatTensor<Self>,
        c_prev: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;

    /// Gradient in `c_prev` `[batch, H]`.
    fn lstm_cell_backward_cell(ws: FloatTensor<Self>, grad: FloatTensor<Self>)
        -> FloatTensor<Self>;
}

fn f32_rows(t: FlexTensor) -> (FlexTensor, usize, usize) {
    let shape = t.layout().shape();
    assert_eq!(
        shape.num_dims(),
        2,
        "the fused LSTM cell takes [batch, features]"
    );
    assert_eq!(t.dtype(), DType::F32, "the fused LSTM cell is f32 only");
    let (rows, cols) = (shape[0], shape[1]);
    (t.to_contiguous(), rows, cols)
}

fn flex(values: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [rows, cols]))
}

impl LstmCellOps for Flex {
    fn lstm_cell(gates: FloatTensor<Self>, c_prev: FloatTensor<Self>) -> FloatTensor<Self> {
        let (gates, rows, g4) = f32_rows(gates);
        let (c_prev, _, h) = f32_rows(c_prev);
        assert_eq!(g4, 4 * h, "gates must be [batch, 4 * hidden]");
        let (z, cp) = (gates.as_slice().unwrap(), c_prev.as_slice().unwrap());
        let mut ws = vec![0.0f32; rows * 7 * h];
        for r in 0..rows {
            kernels::forward(
                &z[r * 4 * h..][..4 * h],
                &cp[r * h..][..h],
                &mut ws[r * 7 * h..][..7 * h],
            );
        }
        flex(ws, rows, 7 * h)
    }

    fn lstm_cell_backward_gates(
        ws: FloatTensor<Self>,
        c_prev: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (ws, rows, h7) = f32_rows(ws);
        let (c_prev, _, h) = f32_rows(c_prev);
        let (grad, _, _) = f32_rows(grad);
        assert_eq!(h7, 7 * h);
        let (w, cp, d) = (
            ws.as_slice().unwrap(),
            c_prev.as_slice().unwrap(),
            grad.as_slice().unwrap(),
        );
        let mut dz = vec![0.0f32; rows * 4 * h];
        for r in 0..rows {
            kernels::backward_gates(
                &w[r * 7 * h..][..7 * h],
                &cp[r * h..][..h],
                &d[r * 7 * h..][..2 * h],
                &mut dz[r * 4 * h..][..4 * h],
            );
        }
        flex(dz, rows, 4 * h)
    }

    fn lstm_cell_backward_cell(
        ws: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let (ws, rows, h7) = f32_rows(ws);
        let (grad, _, _) = f32_rows(grad);
        let h = h7 / 7;
        let (w, d) = (ws.as_slice().unwrap(), grad.as_slice().unwrap());
        let mut dc = vec![0.0f32; rows * h];
        for r in 0..rows {
            kernels::backward_cell(
                &w[r * 7 * h..][..7 * h],
                &d[r * 7 * h..][..2 * h],
                &mut dc[r * h..][..h],
            );
        }
        flex(dc, rows, h)
    }
}

impl<B: Backend + LstmCellOps, C: CheckpointStrategy> LstmCellOps for Autodiff<B, C> {
    fn lstm_cell(gates: FloatTensor<Self>, c_prev: FloatTensor<Self>) -> FloatTensor<Self> {
        /// Backward of the fused cell; its state is the forward's workspace and `c_prev`.
        #[derive(Debug)]
        struct CellBackward;

        impl<B: Backend + LstmCellOps> Backward<B, 2> for CellBackward {
            type State = (FloatTensor<B>, FloatTensor<B>);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (ws, c_prev) = ops.state;
                let [gates_node, cell_node] = ops.parents;
                if let Some(node) = cell_node {
                    let d = B::lstm_cell_backward_cell(ws.clone(), grad.clone());
                    grads.register::<B>(node.id, d);
                }
                if let Some(node) = gates_node {
                    let d = B::lstm_cell_backward_gates(ws, c_prev, grad);
                    grads.register::<B>(node.id, d);
                }
            }
        }

        let guards = [gates.node(), c_prev.node()];
        let c_prev = Self::inner(c_prev);
        let ws = B::lstm_cell(Self::inner(gates), c_prev.clone());
        match CellBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((ws.clone(), c_prev), ws),
            OpsKind::UnTracked(prep) => prep.finish(ws),
        }
    }

    fn lstm_cell_backward_gates(
        ws: FloatTensor<Self>,
        c_prev: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::lstm_cell_backward_gates(
            Self::inner(ws),
            Self::inner(c_prev),
            Self::inner(grad),
        ))
    }

    fn lstm_cell_backward_cell(
        ws: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::lstm_cell_backward_cell(
            Self::inner(ws),
            Self::inner(grad),
        ))
    }
}

/// Row kernels: one row of the batch, `h` = hidden size.
mod kernels {
    use super::{multiversion, simd};

    multiversion! {
        /// `z` `[4h]`, `c_prev` `[h]` -> `ws` `[7h]` = `h | c | i f g o | tanh c`.
        pub fn forward(z: &[f32], c_prev: &[f32], ws: &mut [f32]) {
            let h = c_prev.len();
            let (out, rest) = ws.split_at_mut(2 * h);
            let (acts, tc) = rest.split_at_mut(4 * h);
            let (hs, cs) = out.split_at_mut(h);
            for (a, &x) in acts[..2 * h].iter_mut().zip(&z[..2 * h]) {
                *a = simd::sigmoid(x);
            }
            for (a, &x) in acts[2 * h..3 * h].iter_mut().zip(&z[2 * h..3 * h]) {
                *a = simd::tanh(x);
            }
            for (a, &x) in acts[3 * h..].iter_mut().zip(&z[3 * h..]) {
                *a = simd::sigmoid(x);
            }
            let (i, rest) = acts.split_at(h);
            let (f, rest) = rest.split_at(h);
            let (g, o) = rest.split_at(h);
            for j in 0..h {
                let c = f[j] * c_prev[j] + i[j] * g[j];
                let t = simd::tanh(c);
                cs[j] = c;
                tc[j] = t;
                hs[j] = o[j] * t;
            }
        }
    }

    multiversion! {
        /// `d` `[2h]` = gradients of `h | c` -> `dz` `[4h]`.
        pub fn backward_gates(ws: &[f32], c_prev: &[f32], d: &[f32], dz: &mut [f32]) {
            let h = c_prev.len();
            let (i, f, g, o, tc) = split(ws, h);
            let (dh, dc_out) = d.split_at(h);
            let (di, rest) = dz.split_at_mut(h);
            let (df, rest) = rest.split_at_mut(h);
            let (dg, do_) = rest.split_at_mut(h);
            for j in 0..h {
                let dc = dc_out[j] + dh[j] * o[j] * (1.0 - tc[j] * tc[j]);
                di[j] = dc * g[j] * i[j] * (1.0 - i[j]);
                df[j] = dc * c_prev[j] * f[j] * (1.0 - f[j]);
                dg[j] = dc * i[j] * (1.0 - g[j] * g[j]);
                do_[j] = dh[j] * tc[j] * o[j] * (1.0 - o[j]);
            }
        }
    }

    multiversion! {
        /// `d` `[2h]` = gradients of `h | c` -> `dc_prev` `[h]`.
        pub fn backward_cell(ws: &[f32], d: &[f32], dc_prev: &mut [f32]) {
            let h = dc_prev.len();
            let (_, f, _, o, tc) = split(ws, h);
            let (dh, dc_out) = d.split_at(h);
            for j in 0..h {
                let dc = dc_out[j] + dh[j] * o[j] * (1.0 - tc[j] * tc[j]);
                dc_prev[j] = dc * f[j];
            }
        }
    }

    /// The `i, f, g, o, tanh c` parts of a workspace row.
    type Parts<'a> = (&'a [f32], &'a [f32], &'a [f32], &'a [f32], &'a [f32]);

    #[inline(always)]
    fn split(ws: &[f32], h: usize) -> Parts<'_> {
        let a = &ws[2 * h..];
        (
            &a[..h],
            &a[h..2 * h],
            &a[2 * h..3 * h],
            &a[3 * h..4 * h],
            &a[4 * h..5 * h],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::max_rel_err;
    use burn::tensor::{Device, Distribution};

    /// Values and gradients (in gates and c_prev) against Burn's composed ops, through a loss
    /// that weights h and c differently so both output gradients matter.
    fn check(batch: usize, hidden: usize, scale: f32) {
        let flex = Device::flex();
        let z = Tensor::<2>::random([batch, 4 * hidden], Distribution::Normal(0.0, 1.0), &flex)
            .mul_scalar(scale);
        let c0 = Tensor::<2>::random([batch, hidden], Distribution::Normal(0.0, 1.0), &flex);
        let wh = Tensor::<2>::random([batch, hidden], Distribution::Normal(0.0, 1.0), &flex);
        let wc = Tensor::<2>::random([batch, hidden], Distribution::Normal(0.0, 1.0), &flex);
        let ad = Device::flex().autodiff();
        let run = |fused: bool| {
            let zt = Tensor::<2>::from_data(z.to_data(), &ad).require_grad();
            let ct = Tensor::<2>::from_data(c0.to_data(), &ad).require_grad();
            let (h, c) = if fused {
                lstm_cell(zt.clone(), ct.clone())
            } else {
                let mut parts = zt.clone().chunk(4, 1).into_iter();
                let mut next = || parts.next().unwrap();
                let (i, f, g, o) = (next(), next(), next(), next());
                let c = sigmoid(f) * ct.clone() + sigmoid(i) * tanh(g);
                (sigmoid(o) * tanh(c.clone()), c)
            };
            let loss = (h.clone() * Tensor::from_data(wh.to_data(), &ad)).sum()
                + (c.clone() * Tensor::from_data(wc.to_data(), &ad)).sum();
            let grads = loss.backward();
            (
                h.inner(),
                c.inner(),
                zt.grad(&grads).unwrap(),
                ct.grad(&grads).unwrap(),
            )
        };
        let fused = run(true);
        let reference = run(false);
        for (name, a, b) in [
            ("h", fused.0, reference.0),
            ("c", fused.1, reference.1),
            ("d gates", fused.2, reference.2),
            ("d c_prev", fused.3, reference.3),
        ] {
            let e = max_rel_err(a, b);
            assert!(
                e < 1e-4,
                "{name}: relative error {e} ({batch}x{hidden}, scale {scale})"
            );
        }
    }

    #[test]
    fn matches_burn_reference() {
        check(3, 5, 1.0);
        check(20, 37, 4.0); // odd width: the vector loops' tails; saturated gates
    }

    #[test]
    fn a_sequence_of_steps_matches_burn_reference() {
        // Gradients through two chained steps (c flows from one cell into the next).
        let flex = Device::flex();
        let z1 = Tensor::<2>::random([4, 24], Distribution::Normal(0.0, 1.0), &flex);
        let z2 = Tensor::<2>::random([4, 24], Distribution::Normal(0.0, 1.0), &flex);
        let ad = Device::flex().autodiff();
        let run = |fused: bool| {
            let a = Tensor::<2>::from_data(z1.to_data(), &ad).require_grad();
            let b = Tensor::<2>::from_data(z2.to_data(), &ad).require_grad();
            let c0 = Tensor::<2>::zeros([4, 6], &ad);
            let cell = |z: Tensor<2>, c: Tensor<2>| {
                if fused {
                    lstm_cell(z, c)
                } else {
                    let mut parts = z.chunk(4, 1).into_iter();
                    let mut next = || parts.next().unwrap();
                    let (i, f, g, o) = (next(), next(), next(), next());
                    let c = sigmoid(f) * c + sigmoid(i) * tanh(g);
                    (sigmoid(o) * tanh(c.clone()), c)
                }
            };
            let (h1, c1) = cell(a.clone(), c0);
            let (h2, _) = cell(b.clone() + h1.clone().repeat_dim(1, 4), c1);
            let grads = (h2 * 1.5 + h1).sum().backward();
            (a.grad(&grads).unwrap(), b.grad(&grads).unwrap())
        };
        let (fa, fb) = run(true);
        let (ra, rb) = run(false);
        assert!(max_rel_err(fa, ra) < 1e-4);
        assert!(max_rel_err(fb, rb) < 1e-4);
    }
}
