//! A whole LSTM layer's recurrence as one op, with its own backward pass.
//!
//! Given the input projections of every step `p_t = x_t W_x` (one matmul outside) and the bias
//! `b`, the op runs `z_t = p_t + b + h_{t-1} W_h`, `i, f, o = σ(z_i, z_f, z_o)`, `g = tanh(z_g)`,
//! `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)` for all steps. Composed from Burn ops, each step
//! was a recurrent matmul plus a cell op, two autodiff nodes, and in the backward a separate
//! `[hidden, 4 * hidden]` weight gradient per step that autodiff allocated and summed; flex also
//! ran each step's small matmul on one core.
//!
//! This file holds the op's interface: [`lstm_recurrence`] and the composed reference it is
//! checked against, the backend trait [`LstmLayerOps`] with its shape checks (`Dims`), and the
//! autodiff node. Each backend's loops live beside it: `cpu.rs` (flex: the steps cut between
//! the cores by batch rows or by hidden units, the row kernels) and `cube.rs` (wgpu).
//!
//! The forward keeps a workspace row `h | c | i f g o | tanh c` (`7 * hidden` values) per step
//! and batch row: the backward needs exactly these, so nothing is recomputed. The bias is added
//! where each step reads its projections, and its gradient summed where the backward writes the
//! gates' gradients: no pass of its own over either (docs/BENCHMARKS.md).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{DType, Device, Distribution, Tensor};

use super::{has_fused_kernels, max_rel_err, register_grads};

/// The recurrence of one LSTM layer over a sequence, time-major.
///
/// - `projected`: `[seq * batch, 4 * hidden]`, row `t * batch + b` = `x_{b,t} W_x`, gate blocks
///   i, f, g, o
/// - `w_h`: recurrent weights `[hidden, 4 * hidden]`; `bias`: `[4 * hidden]`
/// - `h0`, `c0`: the state before the first step, `[batch, hidden]`
/// - returns the hidden states `[seq * batch, hidden]` (time-major, as `projected`), and the
///   last hidden and cell states `[batch, hidden]`.
///
/// On flex and wgpu (f32) this is the fused op; elsewhere (ndarray) Burn's ops, step by step.
pub fn lstm_recurrence(
    projected: Tensor<2>,
    w_h: Tensor<2>,
    bias: Tensor<1>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [rows, _] = projected.dims();
    let [batch, hidden] = h0.dims();
    assert!(
        batch > 0 && rows > 0 && rows % batch == 0,
        "projected inputs [{rows}, _] are not whole steps of a batch of {batch}"
    );
    if has_fused_layer(&projected.device()) && projected.dtype() == DType::F32 {
        let packed = Tensor::<2>::from_dispatch(<Dispatch as LstmLayerOps>::lstm_layer(
            projected.into_dispatch(),
            w_h.into_dispatch(),
            bias.into_dispatch(),
            h0.into_dispatch(),
            c0.into_dispatch(),
        ));
        let hs = packed.clone().slice([0..rows, 0..hidden]);
        let h_last = packed.clone().slice([rows - batch..rows, 0..hidden]);
        let c_last = packed.slice([rows..rows + batch, 0..hidden]);
        (hs, h_last, c_last)
    } else {
        composed_recurrence(projected, w_h, bias, h0, c0)
    }
}

/// [`lstm_recurrence`] from Burn's ops, step by step, on any device: what the fused layers are
/// tested against.
pub fn composed_recurrence(
    projected: Tensor<2>,
    w_h: Tensor<2>,
    bias: Tensor<1>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [rows, g] = projected.dims();
    let batch = h0.dims()[0];
    let (mut h, mut c) = (h0, c0);
    let mut outputs = Vec::with_capacity(rows / batch);
    let projected = projected + bias.unsqueeze_dim(0);
    for t in 0..rows / batch {
        let z = projected.clone().slice([t * batch..(t + 1) * batch, 0..g]) + h.matmul(w_h.clone());
        (h, c) = cell(z, c);
        outputs.push(h.clone());
    }
    (Tensor::cat(outputs, 0), h, c)
}

/// How far [`lstm_recurrence`] on `device` is from [`composed_recurrence`] on flex, from the
/// same random inputs (`projected` `[steps * batch, 4 * hidden]` scaled by `scale`; 4 saturates
/// the gates): the largest relative error ([`max_rel_err`]) of the hidden states, the last
/// hidden and cell states and the gradients in all four inputs, through a loss that weights
/// every output differently; then of the hidden states and the last cell state without autodiff
/// (evaluation, generation). The bias is a `[1, 4 * hidden]` leaf, reshaped for the op. What the
/// tests of the fused layers (flex, wgpu) assert on.
pub fn errors_against_composed(
    device: &Device,
    steps: usize,
    batch: usize,
    hidden: usize,
    scale: f32,
) -> Vec<(&'static str, f32)> {
    let flex = Device::flex();
    let normal = |shape: [usize; 2], s: f32| {
        Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &flex).mul_scalar(s)
    };
    let inputs = [
        normal([steps * batch, 4 * hidden], scale),
        normal([hidden, 4 * hidden], 0.5),
        normal([1, 4 * hidden], 0.5),
        normal([batch, hidden], 0.5),
        normal([batch, hidden], 1.0),
    ];
    let wy = normal([steps * batch, hidden], 1.0);
    let wc = normal([batch, hidden], 1.0);
    let on_flex = |t: Tensor<2>| Tensor::<2>::from_data(t.to_data(), &flex);
    // Outputs, then gradients in p and w, then (with `track_state`) in h0 and c0: untracked,
    // they stand for a state carried over from the last window, detached.
    let run = |device: &Device, recurrence: Recurrence, track_state: bool| {
        let ad = device.clone().autodiff();
        let leaf = |t: &Tensor<2>, tracked: bool| {
            let t = Tensor::<2>::from_data(t.to_data(), &ad);
            if tracked {
                t.require_grad()
            } else {
                t
            }
        };
        // p, w and b always tracked; h0 and c0 (the last two) only with `track_state`.
        let [p, w, b, h0, c0]: [Tensor<2>; 5] =
            std::array::from_fn(|i| leaf(&inputs[i], i < 3 || track_state));
        let bias = b.clone().reshape([4 * hidden]);
        let (hs, h_last, c_last) = recurrence(p.clone(), w.clone(), bias, h0.clone(), c0.clone());
        let loss = (hs.clone() * Tensor::from_data(wy.to_data(), &ad)).sum()
            + (c_last.clone() * Tensor::from_data(wc.to_data(), &ad)).sum()
            + h_last.clone().sum();
        let grads = loss.backward();
        let grad = |t: &Tensor<2>| t.grad(&grads).unwrap();
        let state_grads = track_state.then(|| [grad(&h0), grad(&c0)]);
        [hs, h_last, c_last]
            .map(|t| t.inner())
            .into_iter()
            .chain([grad(&p), grad(&w), grad(&b)])
            .chain(state_grads.into_iter().flatten())
            .map(on_flex)
            .collect::<Vec<_>>()
    };
    let fused = run(device, lstm_recurrence, true);
    let reference = run(&flex, composed_recurrence, true);
    let names = [
        "h",
        "h_T",
        "c_T",
        "d projected",
        "d w_h",
        "d bias",
        "d h0",
        "d c0",
    ];
    let mut errors: Vec<_> = names
        .into_iter()
        .zip(fused.into_iter().zip(reference.iter().cloned()))
        .map(|(name, (a, b))| (name, max_rel_err(a, b)))
        .collect();
    // The state detached: the backward skips h0's gradient; the others are unchanged.
    let detached = run(device, lstm_recurrence, false);
    let names = [
        "d projected, state detached",
        "d w_h, state detached",
        "d bias, state detached",
    ];
    errors.extend(
        names
            .into_iter()
            .zip(
                detached
                    .into_iter()
                    .skip(3)
                    .zip(reference[3..6].iter().cloned()),
            )
            .map(|(name, (a, b))| (name, max_rel_err(a, b))),
    );

    let [p, w, b, h0, c0] = inputs.map(|t| Tensor::<2>::from_data(t.to_data(), device));
    let (hs, _, c_last) = lstm_recurrence(p, w, b.reshape([4 * hidden]), h0, c0);
    errors.push((
        "h without autodiff",
        max_rel_err(on_flex(hs), reference[0].clone()),
    ));
    errors.push((
        "c_T without autodiff",
        max_rel_err(on_flex(c_last), reference[2].clone()),
    ));
    errors
}

/// [`lstm_recurrence`]'s signature.
type Recurrence =
    fn(Tensor<2>, Tensor<2>, Tensor<1>, Tensor<2>, Tensor<2>) -> (Tensor<2>, Tensor<2>, Tensor<2>);

/// Whether `device` runs the fused layer: flex, and with the `wgpu` feature the cubecl backend.
pub fn has_fused_layer(device: &Device) -> bool {
    let device = device.clone().without_autodiff();
    #[cfg(feature = "wgpu")]
    if super::enabled() && matches!(device.as_dispatch(), burn::backend::DispatchDevice::Cube(_)) {
        return true;
    }
    has_fused_kernels(&device)
}

/// One step's gate math from Burn's ops: `z` `[batch, 4H]`, `c_prev` `[batch, H]` -> `(h, c)`.
pub fn cell(z: Tensor<2>, c_prev: Tensor<2>) -> (Tensor<2>, Tensor<2>) {
    let mut parts = z.chunk(4, 1).into_iter();
    let mut next = || parts.next().expect("4 gate blocks");
    let (i, f, g, o) = (next(), next(), next(), next());
    let c = sigmoid(f) * c_prev + sigmoid(i) * tanh(g);
    let h = sigmoid(o) * tanh(c.clone());
    (h, c)
}

/// The fused LSTM layer as a Burn backend extension: flex's kernels here, the cubecl backend's
/// (wgpu) in `cube`, run lazily inside Burn's kernel fusion.
#[backend_extension(
    Flex,
    Cube: cfg(feature = "wgpu"),
    Fusion: cfg(feature = "wgpu"),
    Autodiff
)]
pub trait LstmLayerOps: Backend {
    /// `projected` `[T * B, 4H]`, `w_h` `[H, 4H]`, `bias` `[4H]`, `h0`, `c0` `[B, H]` ->
    /// `[(T + 1) * B, H]`: the hidden states `h_1 .. h_T` (time-major), then `c_T`.
    /// Differentiable in all five.
    /// By default [`lstm_layer_forward`](Self::lstm_layer_forward)'s output, its workspace
    /// dropped; autodiff overrides it to keep the workspace for the backward.
    #[fusion(dtype = projected, shape = output_shape(projected, h0))]
    fn lstm_layer(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::lstm_layer_forward(projected, w_h, bias, h0, c0).0
    }

    /// [`lstm_layer`](Self::lstm_layer)'s output and the workspace `[T * B, 7H]` (rows
    /// `h | c | i f g o | tanh c`) that the backward reads.
    #[fusion(meta = fusion_meta::forward)]
    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients in `projected`, `w_h`, `bias`, `h0` and `c0` ([`LayerGradTensors`], spelled
    /// out here for the extension macro), from the workspace and the gradient of the output
    /// `[(T + 1) * B, H]`. Without `state_grads` nobody reads the gradient in `h0` (a state
    /// carried over from the last window is detached): the last step's product that gives it,
    /// `dz_0 W_hᵀ`, is skipped and `h0`'s gradient is zeros.
    #[allow(clippy::type_complexity)]
    #[fusion(meta = fusion_meta::backward)]
    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state_grads: bool,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

/// The gradients of [`LstmLayerOps::lstm_layer_backward`], in the op's input order:
/// `projected`, `w_h`, `bias`, `h0`, `c0`.
pub type LayerGradTensors<B> = (
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
    FloatTensor<B>,
);

/// The output shape of [`LstmLayerOps::lstm_layer`]: `[T * B + B, H]` from `projected`
/// `[T * B, 4H]` and `h0` `[B, H]`.
#[cfg(feature = "wgpu")]
fn output_shape(projected: &burn::tensor::Shape, h0: &burn::tensor::Shape) -> burn::tensor::Shape {
    burn::tensor::Shape::new([projected[0] + h0[0], h0[1]])
}

/// The outputs that Burn's kernel fusion is told of before the cubecl kernels run.
#[cfg(feature = "wgpu")]
mod fusion_meta {
    use burn::backend::fusion::custom::TensorSpec;
    use burn::tensor::Shape;

    /// The output `[T * B + B, H]` and the workspace `[T * B, 7H]`.
    pub fn forward(
        projected: &TensorSpec,
        _w_h: &TensorSpec,
        _bias: &TensorSpec,
        h0: &TensorSpec,
        _c0: &TensorSpec,
    ) -> (TensorSpec, TensorSpec) {
        let (rows, hidden) = (projected.shape[0], h0.shape[1]);
        (
            TensorSpec::new(
                super::output_shape(&projected.shape, &h0.shape),
                projected.dtype,
            ),
            TensorSpec::new(Shape::new([rows, 7 * hidden]), projected.dtype),
        )
    }

    /// Gradients shaped as `projected` `[T * B, 4H]`, `w_h`, `bias` `[4H]`, `h0` and `c0`.
    pub fn backward(
        ws: &TensorSpec,
        w_h: &TensorSpec,
        h0: &TensorSpec,
        c0: &TensorSpec,
        _grad: &TensorSpec,
        _state_grads: &bool,
    ) -> (TensorSpec, TensorSpec, TensorSpec, TensorSpec, TensorSpec) {
        let gates = 4 * h0.shape[1];
        (
            TensorSpec::new(Shape::new([ws.shape[0], gates]), ws.dtype),
            w_h.clone(),
            TensorSpec::new(Shape::new([gates]), ws.dtype),
            h0.clone(),
            c0.clone(),
        )
    }
}

mod cpu;
#[cfg(feature = "wgpu")]
mod cube;

/// Shapes of one call: steps, batch, hidden.
#[derive(Debug, Clone, Copy)]
struct Dims {
    steps: usize,
    batch: usize,
    hidden: usize,
}

impl Dims {
    /// The shapes of a forward call, checked: `projected` `[T * B, 4H]`, `w_h` `[H, 4H]`, the
    /// bias's length `4H`, `h0` and `c0` `[B, H]`.
    fn forward(
        projected: (usize, usize),
        w_h: (usize, usize),
        bias: usize,
        h0: (usize, usize),
        c0: (usize, usize),
    ) -> Self {
        let (batch, hidden) = h0;
        assert_eq!(
            w_h,
            (hidden, 4 * hidden),
            "w_h must be [hidden, 4 * hidden]"
        );
        assert_eq!(bias, 4 * hidden, "bias must be [4 * hidden]");
        assert_eq!(
            projected.1,
            4 * hidden,
            "projected must be [rows, 4 * hidden]"
        );
        assert_eq!(c0, h0, "c0 must be [batch, hidden]");
        assert!(
            batch > 0 && projected.0.is_multiple_of(batch),
            "projected must be whole steps"
        );
        Self {
            steps: projected.0 / batch,
            batch,
            hidden,
        }
    }

    /// The shapes of a backward call, checked: the workspace `[T * B, 7H]`, the output's
    /// gradient `[T * B + B, H]`, the rest as in [`forward`](Self::forward).
    fn backward(
        ws: (usize, usize),
        w_h: (usize, usize),
        h0: (usize, usize),
        c0: (usize, usize),
        grad: (usize, usize),
    ) -> Self {
        let (rows, width) = ws;
        let (batch, hidden) = h0;
        assert_eq!(
            width,
            7 * hidden,
            "the workspace must be [rows, 7 * hidden]"
        );
        let d = Self::forward((rows, 4 * hidden), w_h, 4 * hidden, h0, c0);
        assert_eq!(grad, (rows + batch, hidden), "gradient shape");
        d
    }
}

impl<B: Backend + LstmLayerOps, C: CheckpointStrategy> LstmLayerOps for Autodiff<B, C> {
    fn lstm_layer(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        /// Backward of the fused layer; its state is the workspace, `w_h`, `h0` and `c0`.
        #[derive(Debug)]
        struct LayerBackward;

        impl<B: Backend + LstmLayerOps> Backward<B, 5> for LayerBackward {
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 5>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (ws, w_h, h0, c0) = ops.state;
                let [_, _, _, h0_node, c0_node] = &ops.parents;
                let state_grads = h0_node.is_some() || c0_node.is_some();
                let (dp, dw, db, dh0, dc0) =
                    B::lstm_layer_backward(ws, w_h, h0, c0, grad, state_grads);
                register_grads::<B, 5>(
                    grads,
                    ops.parents.map(|p| p.map(|n| n.id)),
                    [dp, dw, db, dh0, dc0],
                );
            }
        }

        let guards = [
            projected.node(),
            w_h.node(),
            bias.node(),
            h0.node(),
            c0.node(),
        ];
        let (w_h, h0, c0) = (Self::inner(w_h), Self::inner(h0), Self::inner(c0));
        let (projected, bias) = (Self::inner(projected), Self::inner(bias));
        match LayerBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, ws) =
                    B::lstm_layer_forward(projected, w_h.clone(), bias, h0.clone(), c0.clone());
                prep.finish((ws, w_h, h0, c0), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::lstm_layer(projected, w_h, bias, h0, c0)),
        }
    }

    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, ws) = B::lstm_layer_forward(
            Self::inner(projected),
            Self::inner(w_h),
            Self::inner(bias),
            Self::inner(h0),
            Self::inner(c0),
        );
        (Self::from_inner(out), Self::from_inner(ws))
    }

    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state_grads: bool,
    ) -> LayerGradTensors<Self> {
        let (a, b, c, d, e) = B::lstm_layer_backward(
            Self::inner(ws),
            Self::inner(w_h),
            Self::inner(h0),
            Self::inner(c0),
            Self::inner(grad),
            state_grads,
        );
        (
            Self::from_inner(a),
            Self::from_inner(b),
            Self::from_inner(c),
            Self::from_inner(d),
            Self::from_inner(e),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused layer on flex against Burn's composed ops, values and gradients.
    fn check(steps: usize, batch: usize, hidden: usize, scale: f32) {
        for (name, e) in errors_against_composed(&Device::flex(), steps, batch, hidden, scale) {
            assert!(
                e < 1e-4,
                "{name}: relative error {e} ({steps} steps x {batch} x {hidden}, scale {scale})"
            );
        }
    }

    #[test]
    fn matches_burn_reference() {
        check(1, 1, 3, 1.0); // one step, one row (generation)
        check(4, 3, 5, 1.0);
    }

    #[test]
    fn matches_burn_reference_with_blocks_on_several_cores() {
        // 19 rows: blocks of unequal size when split; odd width: the vector loops' tails;
        // scale 4: saturated gates.
        check(6, 19, 37, 4.0);
        // 520 units: split by units between the cores; (6 + 1) x 20 rows of 520 outputs (over
        // PARALLEL_MIN): gathered on every core.
        check(6, 20, 520, 1.0);
    }

    /// Every backend's layer checks its shapes here: 4 steps of a batch of 2, hidden 5.
    #[test]
    fn shapes_are_checked_for_every_backend() {
        let (w_h, h0) = ((5, 20), (2, 5));
        let d = Dims::backward((8, 35), w_h, h0, h0, (10, 5));
        assert_eq!((d.steps, d.batch, d.hidden), (4, 2, 5));
        let refused = |f: fn()| std::panic::catch_unwind(f).is_err();
        assert!(refused(|| {
            Dims::forward((8, 20), (5, 20), 20, (2, 5), (3, 5));
        }));
        assert!(refused(|| {
            Dims::forward((8, 20), (5, 20), 5, (2, 5), (2, 5));
        }));
        assert!(refused(|| {
            Dims::backward((8, 35), (5, 20), (2, 5), (2, 5), (8, 5));
        }));
        assert!(refused(|| {
            Dims::backward((8, 20), (5, 20), (2, 5), (2, 5), (10, 5));
        }));
    }
}
