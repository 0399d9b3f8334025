//! A whole LSTM layer's recurrence as one op, with its own backward pass.
//!
//! Given the input projections of every step `p_t = x_t W_x + b` (one matmul outside), the op
//! runs `z_t = p_t + h_{t-1} W_h`, `i, f, o = σ(z_i, z_f, z_o)`, `g = tanh(z_g)`,
//! `c_t = f c_{t-1} + i g`, `h_t = o tanh(c_t)` for all steps. Composed from Burn ops, each step
//! was a recurrent matmul plus a cell op, two autodiff nodes, and in the backward a separate
//! `[hidden, 4 * hidden]` weight gradient per step that autodiff allocated and summed; flex also
//! ran each step's small matmul on one core. Here:
//!
//! - below 512 hidden units the batch rows, independent sequences, are cut into one block per
//!   core and each block runs all its steps on its own core, with no synchronisation between
//!   steps; from 512 on (where `W_h` streams from L3 at every step) each core takes all batch
//!   rows and its own hidden units' gate columns instead, so that it streams only its part of
//!   `W_h`, and the cores wait for each other's previous step (`Split`, `threads.rs`);
//! - the backward runs the steps in reverse the same way, keeping only `dh` and `dc` per block,
//!   and computes the recurrent weight's gradient after the loop as one product
//!   `[hidden, steps * batch] x [steps * batch, 4 * hidden]`.
//!
//! The forward keeps a workspace row `h | c | i f g o | tanh c` (`7 * hidden` values) per step
//! and batch row: the backward needs exactly these, so nothing is recomputed.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch, Flex};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::{DType, Device, Distribution, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::matmul::{equal_spans, matmul, product, Mat};
use super::panels::PackedWeight;
use super::simd::{self, multiversion};
use super::threads::{on_threads, Progress, SpinBarrier};
use super::xent::PARALLEL_MIN;
use super::{has_fused_kernels, host_f32, max_rel_err, register_grads, to_flex, values};

/// The recurrence of one LSTM layer over a sequence, time-major.
///
/// - `projected`: `[seq * batch, 4 * hidden]`, row `t * batch + b` = `x_{b,t} W_x + bias`,
///   gate blocks i, f, g, o
/// - `w_h`: recurrent weights `[hidden, 4 * hidden]`
/// - `h0`, `c0`: the state before the first step, `[batch, hidden]`
/// - returns the hidden states `[seq * batch, hidden]` (time-major, as `projected`), and the
///   last hidden and cell states `[batch, hidden]`.
///
/// On flex and wgpu (f32) this is the fused op; elsewhere (ndarray) Burn's ops, step by step.
pub fn lstm_recurrence(
    projected: Tensor<2>,
    w_h: Tensor<2>,
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
            h0.into_dispatch(),
            c0.into_dispatch(),
        ));
        let hs = packed.clone().slice([0..rows, 0..hidden]);
        let h_last = packed.clone().slice([rows - batch..rows, 0..hidden]);
        let c_last = packed.slice([rows..rows + batch, 0..hidden]);
        (hs, h_last, c_last)
    } else {
        composed_recurrence(projected, w_h, h0, c0)
    }
}

/// [`lstm_recurrence`] from Burn's ops, step by step, on any device: what the fused layers are
/// tested against.
pub fn composed_recurrence(
    projected: Tensor<2>,
    w_h: Tensor<2>,
    h0: Tensor<2>,
    c0: Tensor<2>,
) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let [rows, g] = projected.dims();
    let batch = h0.dims()[0];
    let (mut h, mut c) = (h0, c0);
    let mut outputs = Vec::with_capacity(rows / batch);
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
/// (evaluation, generation). What the tests of the fused layers (flex, wgpu) assert on.
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
        normal([batch, hidden], 0.5),
        normal([batch, hidden], 1.0),
    ];
    let wy = normal([steps * batch, hidden], 1.0);
    let wc = normal([batch, hidden], 1.0);
    let on_flex = |t: Tensor<2>| Tensor::<2>::from_data(t.to_data(), &flex);
    let run = |device: &Device, recurrence: Recurrence| {
        let ad = device.clone().autodiff();
        let leaf = |t: &Tensor<2>| Tensor::<2>::from_data(t.to_data(), &ad).require_grad();
        let [p, w, h0, c0] = inputs.each_ref().map(leaf);
        let (hs, h_last, c_last) = recurrence(p.clone(), w.clone(), h0.clone(), c0.clone());
        let loss = (hs.clone() * Tensor::from_data(wy.to_data(), &ad)).sum()
            + (c_last.clone() * Tensor::from_data(wc.to_data(), &ad)).sum()
            + h_last.clone().sum();
        let grads = loss.backward();
        let grad = |t: &Tensor<2>| t.grad(&grads).unwrap();
        [hs, h_last, c_last]
            .map(|t| t.inner())
            .into_iter()
            .chain([grad(&p), grad(&w), grad(&h0), grad(&c0)])
            .map(on_flex)
            .collect::<Vec<_>>()
    };
    let fused = run(device, lstm_recurrence);
    let reference = run(&flex, composed_recurrence);
    let names = ["h", "h_T", "c_T", "d projected", "d w_h", "d h0", "d c0"];
    let mut errors: Vec<_> = names
        .into_iter()
        .zip(fused.into_iter().zip(reference.iter().cloned()))
        .map(|(name, (a, b))| (name, max_rel_err(a, b)))
        .collect();

    let [p, w, h0, c0] = inputs.map(|t| Tensor::<2>::from_data(t.to_data(), device));
    let (hs, _, c_last) = lstm_recurrence(p, w, h0, c0);
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
    fn(Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>) -> (Tensor<2>, Tensor<2>, Tensor<2>);

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
    /// `projected` `[T * B, 4H]`, `w_h` `[H, 4H]`, `h0`, `c0` `[B, H]` -> `[(T + 1) * B, H]`:
    /// the hidden states `h_1 .. h_T` (time-major), then `c_T`. Differentiable in all four.
    /// By default [`lstm_layer_forward`](Self::lstm_layer_forward)'s output, its workspace
    /// dropped; autodiff overrides it to keep the workspace for the backward.
    #[fusion(dtype = projected, shape = output_shape(projected, h0))]
    fn lstm_layer(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::lstm_layer_forward(projected, w_h, h0, c0).0
    }

    /// [`lstm_layer`](Self::lstm_layer)'s output and the workspace `[T * B, 7H]` (rows
    /// `h | c | i f g o | tanh c`) that the backward reads.
    #[fusion(meta = fusion_meta::forward)]
    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// Gradients in `projected`, `w_h`, `h0` and `c0`, from the workspace and the gradient of
    /// the output `[(T + 1) * B, H]`.
    #[fusion(meta = fusion_meta::backward)]
    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    );
}

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

    /// Gradients shaped as `projected` `[T * B, 4H]`, `w_h`, `h0` and `c0`.
    pub fn backward(
        ws: &TensorSpec,
        w_h: &TensorSpec,
        h0: &TensorSpec,
        c0: &TensorSpec,
        _grad: &TensorSpec,
    ) -> (TensorSpec, TensorSpec, TensorSpec, TensorSpec) {
        (
            TensorSpec::new(Shape::new([ws.shape[0], 4 * h0.shape[1]]), ws.dtype),
            w_h.clone(),
            h0.clone(),
            c0.clone(),
        )
    }
}

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
    /// The shapes of a forward call, checked: `projected` `[T * B, 4H]`, `w_h` `[H, 4H]`, `h0`
    /// and `c0` `[B, H]`.
    fn forward(
        projected: (usize, usize),
        w_h: (usize, usize),
        h0: (usize, usize),
        c0: (usize, usize),
    ) -> Self {
        let (batch, hidden) = h0;
        assert_eq!(
            w_h,
            (hidden, 4 * hidden),
            "w_h must be [hidden, 4 * hidden]"
        );
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
        let d = Self::forward((rows, 4 * hidden), w_h, h0, c0);
        assert_eq!(grad, (rows + batch, hidden), "gradient shape");
        d
    }

    /// The batch rows cut into one block per core (at least 8 rows a block).
    fn blocks(&self) -> Vec<(usize, usize)> {
        let n = self
            .batch
            .div_ceil(8)
            .min(rayon::current_num_threads())
            .max(1);
        let size = self.batch.div_ceil(n);
        (0..self.batch)
            .step_by(size)
            .map(|start| (start, (start + size).min(self.batch)))
            .collect()
    }
}

/// A raw pointer through which threads write disjoint rows of one buffer (which may start
/// uninitialised: each value is written before it is read).
#[derive(Clone, Copy)]
struct Rows(*mut f32);
// SAFETY: every use below hands each thread its own block of batch rows.
unsafe impl Send for Rows {}
unsafe impl Sync for Rows {}

impl Rows {
    /// The buffer's start (a method, so closures capture the whole `Rows`).
    fn ptr(self) -> *mut f32 {
        self.0
    }

    /// `N` segments of `n` values to be written, `stride` apart from `start`: a row's gate
    /// blocks (or one core's units of each).
    ///
    /// # Safety
    /// The segments lie inside the buffer, and no other live reference covers them.
    unsafe fn segments<'a, const N: usize>(
        self,
        start: usize,
        stride: usize,
        n: usize,
    ) -> [&'a mut [MaybeUninit<f32>]; N] {
        std::array::from_fn(|s| unsafe {
            std::slice::from_raw_parts_mut(self.ptr().add(start + s * stride).cast(), n)
        })
    }
}

/// `N` segments of `n` values of `row`, `stride` apart from `start`.
fn segments<const N: usize>(row: &[f32], start: usize, stride: usize, n: usize) -> [&[f32]; N] {
    std::array::from_fn(|s| &row[start + s * stride..][..n])
}

/// A new buffer of `len` values, every one of which `fill` writes through the [`Rows`] it is
/// given: the buffer is not zeroed first (that was a serial pass over megabytes on one core,
/// docs/BENCHMARKS.md).
///
/// # Safety
/// `fill` writes all `len` values.
unsafe fn written_once(len: usize, fill: impl FnOnce(Rows)) -> Vec<f32> {
    let mut buf = Vec::<f32>::with_capacity(len);
    fill(Rows(buf.spare_capacity_mut().as_mut_ptr().cast()));
    // SAFETY: the caller's promise: all `len` values were written.
    unsafe { buf.set_len(len) };
    buf
}

impl LstmLayerOps for Flex {
    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (projected, [pr, pc]) = host_f32(projected, "projected inputs");
        let (w_h, [wr, wc]) = host_f32(w_h, "recurrent weights");
        let (h0, [b, h]) = host_f32(h0, "h0");
        let (c0, [cr, cc]) = host_f32(c0, "c0");
        let d = Dims::forward((pr, pc), (wr, wc), (b, h), (cr, cc));
        let ws = forward(
            d,
            values(&projected),
            values(&w_h),
            values(&h0),
            values(&c0),
            Split::for_dims(&d),
        );
        let rows = d.steps * b;
        // The hidden states of every step, then the last step's cell states, gathered on every
        // core (the rows are independent) unless they are few (a generation step's).
        let w7 = 7 * h;
        let mut out = Vec::with_capacity((rows + b) * h);
        let gather = |(r, dst): (usize, &mut [MaybeUninit<f32>])| {
            let src = if r < rows {
                &ws[r * w7..][..h]
            } else {
                &ws[(r - b) * w7 + h..][..h]
            };
            for (d, &v) in dst.iter_mut().zip(src) {
                d.write(v);
            }
        };
        let dst = &mut out.spare_capacity_mut()[..(rows + b) * h];
        if dst.len() >= PARALLEL_MIN {
            dst.par_chunks_mut(h.max(1)).enumerate().for_each(gather);
        } else {
            dst.chunks_mut(h.max(1)).enumerate().for_each(gather);
        }
        // SAFETY: each of the `rows + b` rows of `h` values was written above.
        unsafe { out.set_len((rows + b) * h) };
        (to_flex(out, &[rows + b, h]), to_flex(ws, &[rows, w7]))
    }

    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (ws, [rows, wsc]) = host_f32(ws, "workspace");
        let (w_h, [wr, wc]) = host_f32(w_h, "recurrent weights");
        let (h0, [b, h]) = host_f32(h0, "h0");
        let (c0, [cr, cc]) = host_f32(c0, "c0");
        let (grad, [gr, gc]) = host_f32(grad, "output gradient");
        let d = Dims::backward((rows, wsc), (wr, wc), (b, h), (cr, cc), (gr, gc));
        let g = backward(
            d,
            values(&ws),
            values(&w_h),
            values(&h0),
            values(&c0),
            values(&grad),
            Split::for_dims(&d),
        );
        (
            to_flex(g.projected, &[rows, 4 * h]),
            to_flex(g.w_h, &[h, 4 * h]),
            to_flex(g.h0, &[b, h]),
            to_flex(g.c0, &[b, h]),
        )
    }
}

/// Runs the recurrence, its work cut between the cores as `split` says; returns the workspace
/// `[T * B, 7H]`.
fn forward(
    d: Dims,
    projected: &[f32],
    w_h: &[f32],
    h0: &[f32],
    c0: &[f32],
    split: Split,
) -> Vec<f32> {
    let len = d.steps * d.batch * 7 * d.hidden;
    // SAFETY: both splits write every workspace row whole: `kernels::forward` writes all 7h
    // values of a row, and the blocks of rows (or of units) cover the batch (or the units).
    unsafe {
        written_once(len, |out| match split {
            Split::Rows => forward_by_rows(d, projected, w_h, h0, c0, out),
            Split::Units => forward_by_units(d, projected, w_h, h0, c0, out),
        })
    }
}

/// [`forward`] with the batch rows split between the cores: each block of rows runs every
/// step on its own, writing its rows of the workspace `out`.
fn forward_by_rows(d: Dims, projected: &[f32], w_h: &[f32], h0: &[f32], c0: &[f32], out: Rows) {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7) = (4 * h, 7 * h);
    let w = PackedWeight::new(&[Mat::new(w_h, h, g4, g4)]);
    d.blocks().into_par_iter().for_each(|(r0, r1)| {
        let nb = r1 - r0;
        let mut z = vec![0.0f32; nb * g4];
        for t in 0..steps {
            let first = t * batch + r0;
            z.copy_from_slice(&projected[first * g4..(first + nb) * g4]);
            // SAFETY: this block's rows of step t - 1, written at the last step; nothing writes
            // them now.
            let prev: &[f32] = if t == 0 {
                &[]
            } else {
                unsafe { read(out, (first - batch) * w7, nb * w7) }
            };
            let (h_prev, c_prev, c_stride) = if t == 0 {
                (Mat::new(&h0[r0 * h..], nb, h, h), &c0[r0 * h..r1 * h], h)
            } else {
                (Mat::new(prev, nb, h, w7), &prev[h..], w7)
            };
            w.mul(&mut z, g4, true, h_prev);
            for r in 0..nb {
                kernels::forward(
                    segments(&z, r * g4, h, h),
                    &c_prev[r * c_stride..][..h],
                    // SAFETY: this block's row (t, r), touched by no other reference.
                    unsafe { out.segments((first + r) * w7, h, h) },
                );
            }
        }
    });
}

/// The four gradients of [`backward`].
struct LayerGrads {
    projected: Vec<f32>,
    w_h: Vec<f32>,
    h0: Vec<f32>,
    c0: Vec<f32>,
}

/// `dW_h = Σ_t h_{t-1}ᵀ dz_t`: `h0` for the first step, the workspace's h columns after it.
fn recurrent_weight_grad(d: Dims, ws: &[f32], h0: &[f32], dz: &[f32]) -> Vec<f32> {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7, rows) = (4 * h, 7 * h, steps * batch);
    let mut dw = product(
        Mat::new(h0, batch, h, h).t(),
        Mat::new(dz, batch, g4, g4),
        true,
    );
    if steps > 1 {
        let h_prev = Mat::new(ws, rows - batch, h, w7).t();
        let dz_rest = Mat::new(&dz[batch * g4..], rows - batch, g4, g4);
        matmul(&mut dw, g4, true, h_prev, dz_rest, true);
    }
    dw
}

/// Where the backward loops write: `dz` `[T * B, 4H]`, `dh0` and `dc0` `[B, H]`.
#[derive(Clone, Copy)]
struct GradRows {
    dz: Rows,
    dh0: Rows,
    dc0: Rows,
}

/// Backpropagates `grad` `[(T + 1) * B, H]` (hidden states, then the last cell state), the
/// steps' work cut between the cores as `split` says.
fn backward(
    d: Dims,
    ws: &[f32],
    w_h: &[f32],
    h0: &[f32],
    c0: &[f32],
    grad: &[f32],
    split: Split,
) -> LayerGrads {
    let (b, h) = (d.batch, d.hidden);
    let mut dh0 = vec![0.0f32; b * h];
    let mut dc0 = vec![0.0f32; b * h];
    let (dh0_rows, dc0_rows) = (Rows(dh0.as_mut_ptr()), Rows(dc0.as_mut_ptr()));
    // SAFETY: both splits write every row of `dz` whole (`kernels::backward_step` writes all
    // 4h values of a row; the blocks cover the batch or the units).
    let dz = unsafe {
        written_once(d.steps * b * 4 * h, |dz| {
            let out = GradRows {
                dz,
                dh0: dh0_rows,
                dc0: dc0_rows,
            };
            match split {
                Split::Rows => backward_by_rows(d, ws, w_h, c0, grad, out),
                Split::Units => backward_by_units(d, ws, w_h, c0, grad, out),
            }
        })
    };
    LayerGrads {
        w_h: recurrent_weight_grad(d, ws, h0, &dz),
        projected: dz,
        h0: dh0,
        c0: dc0,
    }
}

/// [`backward`] with the batch rows split between the cores: each block of rows runs every
/// step back on its own.
fn backward_by_rows(d: Dims, ws: &[f32], w_h: &[f32], c0: &[f32], grad: &[f32], out: GradRows) {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7, rows) = (4 * h, 7 * h, steps * batch);
    let GradRows {
        dz: dz_rows,
        dh0: dh0_rows,
        dc0: dc0_rows,
    } = out;
    // W_hᵀ `[4H, H]`, packed once for all steps.
    let w_t = PackedWeight::new(&[Mat::new(w_h, h, g4, g4).t()]);
    d.blocks().into_par_iter().for_each(|(r0, r1)| {
        let nb = r1 - r0;
        // dh: the gradient reaching h_t from step t + 1; dc: reaching c_t.
        let mut dh = vec![0.0f32; nb * h];
        let mut dc = grad[(rows + r0) * h..(rows + r1) * h].to_vec();
        for t in (0..steps).rev() {
            let first = t * batch + r0;
            for (a, &g) in dh.iter_mut().zip(&grad[first * h..(first + nb) * h]) {
                *a += g;
            }
            let cur = &ws[first * w7..(first + nb) * w7];
            let (c_prev, c_stride) = if t == 0 {
                (&c0[r0 * h..r1 * h], h)
            } else {
                (&ws[(first - batch) * w7 + h..], w7)
            };
            for r in 0..nb {
                kernels::backward_step(
                    segments(cur, r * w7 + 2 * h, h, h),
                    &c_prev[r * c_stride..][..h],
                    &dh[r * h..][..h],
                    &mut dc[r * h..][..h],
                    // SAFETY: this block's row (t, r) of `dz`, touched by no other reference.
                    unsafe { dz_rows.segments((first + r) * g4, h, h) },
                );
            }
            // SAFETY: the rows just written, of this block only.
            let dz_t = unsafe { read(dz_rows, first * g4, nb * g4) };
            w_t.mul(&mut dh, h, false, Mat::new(dz_t, nb, g4, g4));
        }
        // SAFETY: rows of this block only.
        unsafe {
            write_at(dh0_rows, r0 * h, &dh);
            write_at(dc0_rows, r0 * h, &dc);
        }
    });
}

impl<B: Backend + LstmLayerOps, C: CheckpointStrategy> LstmLayerOps for Autodiff<B, C> {
    fn lstm_layer(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        /// Backward of the fused layer; its state is the workspace, `w_h`, `h0` and `c0`.
        #[derive(Debug)]
        struct LayerBackward;

        impl<B: Backend + LstmLayerOps> Backward<B, 4> for LayerBackward {
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 4>,
                grads: &mut Gradients,
                _checkpointer: &mut Checkpointer,
            ) {
                let grad = grads.consume::<B>(&ops.node);
                let (ws, w_h, h0, c0) = ops.state;
                let (dp, dw, dh0, dc0) = B::lstm_layer_backward(ws, w_h, h0, c0, grad);
                register_grads::<B, 4>(
                    grads,
                    ops.parents.map(|p| p.map(|n| n.id)),
                    [dp, dw, dh0, dc0],
                );
            }
        }

        let guards = [projected.node(), w_h.node(), h0.node(), c0.node()];
        let (w_h, h0, c0) = (Self::inner(w_h), Self::inner(h0), Self::inner(c0));
        match LayerBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let (out, ws) = B::lstm_layer_forward(
                    Self::inner(projected),
                    w_h.clone(),
                    h0.clone(),
                    c0.clone(),
                );
                prep.finish((ws, w_h, h0, c0), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::lstm_layer(Self::inner(projected), w_h, h0, c0))
            }
        }
    }

    fn lstm_layer_forward(
        projected: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (out, ws) = B::lstm_layer_forward(
            Self::inner(projected),
            Self::inner(w_h),
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
    ) -> (
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
        FloatTensor<Self>,
    ) {
        let (a, b, c, d) = B::lstm_layer_backward(
            Self::inner(ws),
            Self::inner(w_h),
            Self::inner(h0),
            Self::inner(c0),
            Self::inner(grad),
        );
        (
            Self::from_inner(a),
            Self::from_inner(b),
            Self::from_inner(c),
            Self::from_inner(d),
        )
    }
}

/// How a layer's recurrence is cut between the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Split {
    /// Each core its batch rows through every step, no barrier.
    Rows,
    /// Each core all batch rows and its own hidden units' gate columns; the cores wait for
    /// each other's previous step (the forward only for the part of the product that needs it).
    Units,
}

impl Split {
    /// The split for a layer of `d`: units from 512 hidden units on, rows below;
    /// `LSTM_LM_LSTM_SPLIT=units|batch` overrides (read once a process). Measured on a 2-vCPU
    /// Xeon (docs/BENCHMARKS.md): a `[20, 650] x [650, 2600]` step product ran at ~57 GFLOP/s
    /// per core with 10 rows a core and ~95 with 20 rows and half the columns (each core then
    /// streams half of `W_h` instead of all of it); at 256 units (`W_h` 1 MB, in L2) the split
    /// by rows is as fast and needs no barrier.
    fn for_dims(d: &Dims) -> Split {
        static OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
        let forced = OVERRIDE.get_or_init(|| std::env::var("LSTM_LM_LSTM_SPLIT").ok());
        let units_from = match forced.as_deref() {
            Some("units") => 32,
            Some("batch") => usize::MAX,
            _ => 512,
        };
        if rayon::current_num_threads() > 1 && d.hidden >= units_from {
            Split::Units
        } else {
            Split::Rows
        }
    }
}

/// The hidden units cut into one block per core (at least 16 units a block), each block a
/// multiple of `multiple` units but the last.
///
/// The backward's blocks are multiples of 16: its packed weight has one column a unit, in panels
/// of 16 (`medium`'s 650 units: 336 + 314, 21 + 20 panels). The forward's pack the four gates'
/// columns of a block side by side, `4n` columns in `ceil(4n / 16)` panels, so multiples of 4
/// even them out: 328 + 322 units are 82 + 81 panels where 336 + 314 were 84 + 79, and the
/// core with more panels sets every step's pace. Alternating per call, 10 runs of 100 `medium`
/// steps: a forward call 15.05 -> 14.34 ms on average, faster in 8 of 10 (docs/BENCHMARKS.md).
fn unit_blocks(h: usize, multiple: usize) -> Vec<(usize, usize)> {
    let n = rayon::current_num_threads().min(h.div_ceil(16)).max(1);
    equal_spans(h, n, multiple)
}

/// `n` values of `buf` from `offset`, written by no thread while this reference lives.
///
/// # Safety
/// The range lies inside the buffer and no thread writes it meanwhile.
unsafe fn read<'a>(buf: Rows, offset: usize, n: usize) -> &'a [f32] {
    unsafe { std::slice::from_raw_parts(buf.ptr().add(offset), n) }
}

/// Copies `src` into `buf` from `offset`.
///
/// # Safety
/// `offset..offset + src.len()` lies inside the buffer and only this thread touches it.
unsafe fn write_at(buf: Rows, offset: usize, src: &[f32]) {
    // SAFETY: the caller's promise; `src` and the buffer are different allocations.
    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), buf.ptr().add(offset), src.len()) };
}

/// [`forward`] with the hidden units split between the cores ([`Split::Units`]): each core
/// packs its units' columns of the four gates of `W_h` once, cut by the rows each core's units
/// own; each step it computes its gate pre-activations for all batch rows from the whole
/// previous `h` and its units' cell and hidden states. Its own units' part of the product comes
/// first: it needs only what this core wrote, so a core that finished the last step early works
/// on it instead of waiting, and only the other cores' parts wait for them ([`Progress`]).
fn forward_by_units(d: Dims, projected: &[f32], w_h: &[f32], h0: &[f32], c0: &[f32], out: Rows) {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7) = (4 * h, 7 * h);
    let blocks = unit_blocks(h, 4);
    let progress = Progress::new(blocks.len());
    on_threads(&blocks, |i, (u0, u1)| {
        let n = u1 - u0;
        // This block's columns of each gate (`[h, 4n]`), cut by the rows of each core's units.
        let whole = Mat::new(w_h, h, g4, g4);
        let gates: Vec<Mat> = (0..4).map(|s| whole.cols(s * h + u0, s * h + u1)).collect();
        let parts: Vec<PackedWeight> = blocks
            .iter()
            .map(|&(v0, v1)| {
                PackedWeight::new(&gates.iter().map(|g| g.rows(v0, v1)).collect::<Vec<_>>())
            })
            .collect();
        // This core's units of `h_{t-1}`, `[batch, n]`: read by this core only.
        let mut own: Vec<f32> = (0..batch)
            .flat_map(|r| h0[r * h + u0..r * h + u1].iter().copied())
            .collect();
        let mut z = vec![0.0f32; batch * 4 * n];
        for t in 0..steps {
            for r in 0..batch {
                let src = &projected[(t * batch + r) * g4..][..g4];
                for s in 0..4 {
                    z[(r * 4 + s) * n..][..n].copy_from_slice(&src[s * h + u0..s * h + u1]);
                }
            }
            parts[i].mul(&mut z, 4 * n, true, Mat::new(&own, batch, n, n));
            progress.wait_for_others(i, t);
            // SAFETY: every core finished step t - 1 (the wait above) and nothing writes its
            // rows any more (this step writes step t's rows).
            let prev = (t > 0).then(|| unsafe { read(out, (t - 1) * batch * w7, batch * w7) });
            let h_prev = match prev {
                Some(prev) => Mat::new(prev, batch, h, w7),
                None => Mat::new(h0, batch, h, h),
            };
            for (j, (&(v0, v1), w)) in blocks.iter().zip(&parts).enumerate() {
                if j != i {
                    w.mul(&mut z, 4 * n, true, h_prev.cols(v0, v1));
                }
            }
            for r in 0..batch {
                let c_prev = match prev {
                    Some(prev) => &prev[r * w7 + h + u0..][..n],
                    None => &c0[r * h + u0..][..n],
                };
                let row = (t * batch + r) * w7 + u0;
                kernels::forward(
                    segments(&z, r * 4 * n, n, n),
                    c_prev,
                    // SAFETY: this block's units of row (t, r): no other thread touches them.
                    unsafe { out.segments(row, h, n) },
                );
                // SAFETY: this core's units of row (t, r), just written; no thread writes them.
                own[r * n..][..n].copy_from_slice(unsafe { read(out, row, n) });
            }
            progress.publish(i, t + 1);
        }
    });
}

/// [`backward`] with the hidden units split between the cores ([`Split::Units`]): each step,
/// each core computes its units' gate gradients for all batch rows, waits for the others, then
/// the gradient reaching its units of `h_{t-1}` from the whole `dz_t`.
fn backward_by_units(d: Dims, ws: &[f32], w_h: &[f32], c0: &[f32], grad: &[f32], out: GradRows) {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7, rows) = (4 * h, 7 * h, steps * batch);
    let GradRows {
        dz: dz_rows,
        dh0: dh0_rows,
        dc0: dc0_rows,
    } = out;
    let blocks = unit_blocks(h, 16);
    let barrier = SpinBarrier::new(blocks.len());
    on_threads(&blocks, |_, (u0, u1)| {
        let n = u1 - u0;
        // `W_hᵀ` `[4h, h]`, this block's units' columns: `[4h, n]`.
        let w_t = PackedWeight::new(&[Mat::new(w_h, h, g4, g4).t().cols(u0, u1)]);
        let mut dh = vec![0.0f32; batch * n];
        let mut dc: Vec<f32> = (0..batch)
            .flat_map(|r| {
                grad[(rows + r) * h + u0..(rows + r) * h + u1]
                    .iter()
                    .copied()
            })
            .collect();
        for t in (0..steps).rev() {
            for r in 0..batch {
                let first = (t * batch + r) * h;
                for (a, &g) in dh[r * n..][..n]
                    .iter_mut()
                    .zip(&grad[first + u0..first + u1])
                {
                    *a += g;
                }
                let c_prev = if t == 0 {
                    &c0[r * h + u0..][..n]
                } else {
                    &ws[((t - 1) * batch + r) * w7 + h + u0..][..n]
                };
                kernels::backward_step(
                    segments(ws, (t * batch + r) * w7 + 2 * h + u0, h, n),
                    c_prev,
                    &dh[r * n..][..n],
                    &mut dc[r * n..][..n],
                    // SAFETY: this block's units of dz's row (t, r): no other thread touches
                    // them.
                    unsafe { dz_rows.segments((t * batch + r) * g4 + u0, h, n) },
                );
            }
            barrier.wait();
            // SAFETY: dz's rows of step t are complete (the barrier) and no thread writes them
            // any more (the steps go down).
            let dz_t = unsafe { read(dz_rows, t * batch * g4, batch * g4) };
            w_t.mul(&mut dh, n, false, Mat::new(dz_t, batch, g4, g4));
        }
        for r in 0..batch {
            // SAFETY: this block's units of row r, touched by no other thread.
            unsafe {
                write_at(dh0_rows, r * h + u0, &dh[r * n..][..n]);
                write_at(dc0_rows, r * h + u0, &dc[r * n..][..n]);
            }
        }
    });
}

/// Row kernels: one batch row of one step, `n` units (all of a layer's, or one core's block)
/// whose values lie in segments: the gates' `[n]` each, the workspace's seven.
mod kernels {
    use std::mem::MaybeUninit;

    use super::{multiversion, simd};

    multiversion! {
        /// The gate pre-activations `z` (i, f, g, o) and `c_prev` `[n]` -> the workspace's
        /// segments `h | c | i f g o | tanh c`, every value written.
        pub fn forward(z: [&[f32]; 4], c_prev: &[f32], ws: [&mut [MaybeUninit<f32>]; 7]) {
            let n = c_prev.len();
            let [zi, zf, zg, zo] = z.map(|s| &s[..n]);
            let [hs, cs, is, fs, gs, os, tcs] = ws.map(|s| &mut s[..n]);
            for j in 0..n {
                let (i, f) = (simd::sigmoid::<FMA>(zi[j]), simd::sigmoid::<FMA>(zf[j]));
                let (g, o) = (simd::tanh::<FMA>(zg[j]), simd::sigmoid::<FMA>(zo[j]));
                let c = f * c_prev[j] + i * g;
                let t = simd::tanh::<FMA>(c);
                is[j].write(i);
                fs[j].write(f);
                gs[j].write(g);
                os[j].write(o);
                cs[j].write(c);
                tcs[j].write(t);
                hs[j].write(o * t);
            }
        }
    }

    multiversion! {
        /// From the step's activations `i f g o | tanh c`, `dh` (reaching `h_t`) and `dc`
        /// (reaching `c_t` from step t + 1): the gate gradients `dz` (i, f, g, o), every value
        /// written, and `dc` becomes the gradient reaching `c_{t-1}`.
        pub fn backward_step(
            acts: [&[f32]; 5],
            c_prev: &[f32],
            dh: &[f32],
            dc: &mut [f32],
            dz: [&mut [MaybeUninit<f32>]; 4],
        ) {
            let n = c_prev.len();
            let [i, f, g, o, tc] = acts.map(|s| &s[..n]);
            let (dh, dc) = (&dh[..n], &mut dc[..n]);
            let [di, df, dg, do_] = dz.map(|s| &mut s[..n]);
            for j in 0..n {
                let c = dc[j] + dh[j] * o[j] * (1.0 - tc[j] * tc[j]);
                di[j].write(c * g[j] * i[j] * (1.0 - i[j]));
                df[j].write(c * c_prev[j] * f[j] * (1.0 - f[j]));
                dg[j].write(c * i[j] * (1.0 - g[j] * g[j]));
                do_[j].write(dh[j] * tc[j] * o[j] * (1.0 - o[j]));
                dc[j] = c * f[j];
            }
        }
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

    /// The split by hidden units gives what the split by batch rows gives: the same workspace
    /// and gradients up to the products' summation order (on two cores, uneven blocks: the
    /// backward's 40 units are 32 + 8 and its 100 are 64 + 36, the forward's 52 + 48).
    #[test]
    fn the_split_by_units_matches_the_split_by_rows() {
        let value = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                .collect()
        };
        for (steps, batch, h) in [(4, 3, 40), (3, 5, 100), (1, 1, 16)] {
            let d = Dims {
                steps,
                batch,
                hidden: h,
            };
            let projected = value(steps * batch * 4 * h, 1);
            let w_h: Vec<f32> = value(h * 4 * h, 2).iter().map(|v| v * 0.3).collect();
            let (h0, c0) = (value(batch * h, 3), value(batch * h, 4));
            let grad = value((steps + 1) * batch * h, 5);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                let err = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-5, "{steps}x{batch}x{h} {what}: {err}");
            };
            let rows = forward(d, &projected, &w_h, &h0, &c0, Split::Rows);
            let units = forward(d, &projected, &w_h, &h0, &c0, Split::Units);
            close(&rows, &units, "workspace");
            let a = backward(d, &rows, &w_h, &h0, &c0, &grad, Split::Rows);
            let b = backward(d, &rows, &w_h, &h0, &c0, &grad, Split::Units);
            close(&a.projected, &b.projected, "dz");
            close(&a.w_h, &b.w_h, "dW_h");
            close(&a.h0, &b.h0, "dh0");
            close(&a.c0, &b.c0, "dc0");
        }
        for multiple in [4, 16] {
            let blocks = unit_blocks(650, multiple);
            assert_eq!(blocks.first().map(|b| b.0), Some(0));
            assert_eq!(blocks.last().map(|b| b.1), Some(650));
            assert!(blocks
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && w[0].1 % multiple == 0 && w[0].1 > w[0].0));
        }
        // On two cores the forward's blocks are 328 + 322 units: 82 + 81 panels of the four
        // gates' columns, not 84 + 79 as blocks of 16 units would give.
        if rayon::current_num_threads() == 2 {
            assert_eq!(unit_blocks(650, 4), [(0, 328), (328, 650)]);
            assert_eq!(unit_blocks(650, 16), [(0, 336), (336, 650)]);
        }
    }

    #[test]
    fn blocks_cover_the_batch_once() {
        for batch in [1, 7, 8, 9, 20, 50, 61] {
            let d = Dims {
                steps: 1,
                batch,
                hidden: 1,
            };
            let blocks = d.blocks();
            assert_eq!(blocks[0].0, 0);
            assert_eq!(blocks.last().unwrap().1, batch);
            assert!(blocks
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && w[0].0 < w[0].1));
            assert!(blocks.len() <= rayon::current_num_threads());
        }
    }

    /// Every backend's layer checks its shapes here: 4 steps of a batch of 2, hidden 5.
    #[test]
    fn shapes_are_checked_for_every_backend() {
        let (w_h, h0) = ((5, 20), (2, 5));
        let d = Dims::backward((8, 35), w_h, h0, h0, (10, 5));
        assert_eq!((d.steps, d.batch, d.hidden), (4, 2, 5));
        let refused = |f: fn()| std::panic::catch_unwind(f).is_err();
        assert!(refused(|| {
            Dims::forward((8, 20), (5, 20), (2, 5), (3, 5));
        }));
        assert!(refused(|| {
            Dims::backward((8, 35), (5, 20), (2, 5), (2, 5), (8, 5));
        }));
        assert!(refused(|| {
            Dims::backward((8, 20), (5, 20), (2, 5), (2, 5), (10, 5));
        }));
    }
}
