//! The LSTM layer on flex (the CPU).
//!
//! - below 512 hidden units the batch rows, independent sequences, are cut into one block per
//!   core and each block runs all its steps on its own core, with no synchronisation between
//!   steps; from 512 on (where `W_h` streams from L3 at every step) each core takes all batch
//!   rows and its own hidden units' gate columns instead, so that it streams only its part of
//!   `W_h`, and the cores wait for each other's previous step ([`Split`], `threads.rs`);
//! - each step's product `h_{t-1} W_h` runs on the weight packed once a call (`panels.rs`), the
//!   gate math on one batch row at a time (`kernels`);
//! - the backward runs the steps in reverse the same way, keeping only `dh` and `dc` per block,
//!   fetching each next row of the gate gradients `dz` for writing while it computes one, and
//!   computes the recurrent weight's gradient after the loop as one product
//!   `[hidden, steps * batch] x [steps * batch, 4 * hidden]`.

use burn::backend::tensor::FloatTensor;
use burn::backend::Flex;
use rayon::prelude::*;
use std::mem::MaybeUninit;

use super::{Dims, LayerGradTensors, LstmLayerOps};
use crate::model::fused::matmul::{equal_spans, product, Mat};
use crate::model::fused::panels::{PackedWeight, Sweep};
use crate::model::fused::simd::{self, multiversion};
use crate::model::fused::threads::{on_threads, Progress, SpinBarrier};
use crate::model::fused::xent::PARALLEL_MIN;
use crate::model::fused::{host_f32, to_flex, values};

impl Dims {
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

multiversion! {
    /// `z = p + b`, value by value (all three of one length), in the widest vectors the CPU
    /// has (it replaced a `copy_from_slice`, a `memcpy` in them).
    fn add_into(z: &mut [f32], p: &[f32], b: &[f32]) {
        for ((z, &p), &b) in z.iter_mut().zip(p).zip(b) {
            *z = p + b;
        }
    }
}

/// The four gates' segments of `n` values each of a `[4n]` buffer.
fn gates(v: &mut [f32], n: usize) -> [&mut [f32]; 4] {
    let (i, rest) = v.split_at_mut(n);
    let (f, rest) = rest.split_at_mut(n);
    let (g, o) = rest.split_at_mut(n);
    [i, f, g, &mut o[..n]]
}

/// The rows of a row-major `[rows, n]` buffer added in order.
fn sum_rows(v: Vec<f32>, n: usize) -> Vec<f32> {
    let mut rows = v.chunks_exact(n);
    let mut sum = rows.next().map(<[f32]>::to_vec).unwrap_or_default();
    for row in rows {
        sum.iter_mut().zip(row).for_each(|(a, &b)| *a += b);
    }
    sum
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
        bias: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (projected, [pr, pc]) = host_f32(projected, "projected inputs");
        let (w_h, [wr, wc]) = host_f32(w_h, "recurrent weights");
        let (bias, [bl]) = host_f32(bias, "bias");
        let (h0, [b, h]) = host_f32(h0, "h0");
        let (c0, [cr, cc]) = host_f32(c0, "c0");
        let d = Dims::forward((pr, pc), (wr, wc), bl, (b, h), (cr, cc));
        let inputs = Inputs {
            projected: values(&projected),
            bias: values(&bias),
            w_h: values(&w_h),
            h0: values(&h0),
            c0: values(&c0),
        };
        let ws = forward(d, inputs, Split::for_dims(&d));
        let rows = d.steps * b;
        // The hidden states of every step, then the last step's cell states, gathered on every
        // core (the rows are independent) unless they are few (a generation step's).
        let w7 = 7 * h;
        let out = gather_rows(rows + b, h, |r| {
            if r < rows {
                &ws[r * w7..][..h]
            } else {
                &ws[(r - b) * w7 + h..][..h]
            }
        });
        (to_flex(out, &[rows + b, h]), to_flex(ws, &[rows, w7]))
    }

    fn lstm_layer_backward(
        ws: FloatTensor<Self>,
        w_h: FloatTensor<Self>,
        h0: FloatTensor<Self>,
        c0: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state_grads: bool,
    ) -> LayerGradTensors<Self> {
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
            state_grads,
        );
        (
            to_flex(g.projected, &[rows, 4 * h]),
            to_flex(g.w_h, &[h, 4 * h]),
            to_flex(g.bias, &[4 * h]),
            to_flex(g.h0, &[b, h]),
            to_flex(g.c0, &[b, h]),
        )
    }
}

/// A forward call's inputs: `projected` `[T * B, 4H]`, `bias` `[4H]`, `w_h` `[H, 4H]`, `h0`
/// and `c0` `[B, H]`, row-major.
#[derive(Clone, Copy)]
struct Inputs<'a> {
    projected: &'a [f32],
    bias: &'a [f32],
    w_h: &'a [f32],
    h0: &'a [f32],
    c0: &'a [f32],
}

/// Runs the recurrence, its work cut between the cores as `split` says; returns the workspace
/// `[T * B, 7H]`. Each step's `z` starts as its projections plus `bias`, in the copy it is
/// accumulated in.
fn forward(d: Dims, x: Inputs, split: Split) -> Vec<f32> {
    let len = d.steps * d.batch * 7 * d.hidden;
    // SAFETY: both splits write every workspace row whole: `kernels::forward` writes all 7h
    // values of a row, and the blocks of rows (or of units) cover the batch (or the units).
    unsafe {
        written_once(len, |out| match split {
            Split::Rows => forward_by_rows(d, x, out),
            Split::Units => forward_by_units(d, x, out),
        })
    }
}

/// [`forward`] with the batch rows split between the cores: each block of rows runs every
/// step on its own, writing its rows of the workspace `out`.
fn forward_by_rows(d: Dims, x: Inputs, out: Rows) {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7) = (4 * h, 7 * h);
    let w = PackedWeight::new(&[Mat::new(x.w_h, h, g4, g4)]);
    d.blocks().into_par_iter().for_each(|(r0, r1)| {
        let nb = r1 - r0;
        let mut z = vec![0.0f32; nb * g4];
        for t in 0..steps {
            let first = t * batch + r0;
            let p = &x.projected[first * g4..(first + nb) * g4];
            for (z, p) in z.chunks_exact_mut(g4).zip(p.chunks_exact(g4)) {
                add_into(z, p, x.bias);
            }
            // SAFETY: this block's rows of step t - 1, written at the last step; nothing writes
            // them now.
            let prev: &[f32] = if t == 0 {
                &[]
            } else {
                unsafe { read(out, (first - batch) * w7, nb * w7) }
            };
            let (h_prev, c_prev, c_stride) = if t == 0 {
                (
                    Mat::new(&x.h0[r0 * h..], nb, h, h),
                    &x.c0[r0 * h..r1 * h],
                    h,
                )
            } else {
                (Mat::new(prev, nb, h, w7), &prev[h..], w7)
            };
            w.mul(&mut z, g4, true, h_prev, Sweep::of_step(t));
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

/// A new `[rows, n]` buffer whose row `r` is `row(r)` (`n` values), copied on every core unless
/// it is small, written once (not zeroed first).
fn gather_rows<'a>(rows: usize, n: usize, row: impl Fn(usize) -> &'a [f32] + Sync) -> Vec<f32> {
    let mut out = Vec::with_capacity(rows * n);
    let copy = |(r, dst): (usize, &mut [MaybeUninit<f32>])| {
        for (d, &v) in dst.iter_mut().zip(&row(r)[..n]) {
            d.write(v);
        }
    };
    let dst = &mut out.spare_capacity_mut()[..rows * n];
    if dst.len() >= PARALLEL_MIN {
        dst.par_chunks_mut(n.max(1)).enumerate().for_each(copy);
    } else {
        dst.chunks_mut(n.max(1)).enumerate().for_each(copy);
    }
    // SAFETY: each of the `rows` rows of `n` values was written above (`row(r)` holds `n`).
    unsafe { out.set_len(rows * n) };
    out
}

/// The five gradients of [`backward`].
struct LayerGrads {
    projected: Vec<f32>,
    w_h: Vec<f32>,
    bias: Vec<f32>,
    h0: Vec<f32>,
    c0: Vec<f32>,
}

/// `dW_h = Σ_t h_{t-1}ᵀ dz_t` as one product `[hidden, steps * batch] x [steps * batch, 4 *
/// hidden]` over `h_{t-1}` gathered into one buffer: `h0`, then the workspace's h columns of all
/// steps but the last. As two products (`h0`'s rows, then the workspace's onto it), the first,
/// with only `batch` rows to sum over, still wrote the whole `[hidden, 4 * hidden]` result and
/// the second read it back: `medium`'s took 0.9 - 1.2 ms a step for 1% of the arithmetic
/// (docs/BENCHMARKS.md).
fn recurrent_weight_grad(d: Dims, ws: &[f32], h0: &[f32], dz: &[f32]) -> Vec<f32> {
    let Dims {
        steps,
        batch,
        hidden: h,
    } = d;
    let (g4, w7, rows) = (4 * h, 7 * h, steps * batch);
    let h_prev = gather_rows(rows, h, |r| {
        if r < batch {
            &h0[r * h..][..h]
        } else {
            &ws[(r - batch) * w7..][..h]
        }
    });
    product(
        Mat::new(&h_prev, rows, h, h).t(),
        Mat::new(dz, rows, g4, g4),
        true,
    )
}

/// Where the backward loops write: `dz` `[T * B, 4H]`, `dh0` and `dc0` `[B, H]`, and the bias's
/// gradient summed by each block of batch rows (row `k` of `db` `[blocks, 4H]`, [`Split::Rows`])
/// or by each core's units (their columns of `db` `[1, 4H]`, [`Split::Units`]). `dh0` is `None`
/// when nobody reads the gradient in `h0`, and the loops then skip the last step's product
/// `dz_0 W_hᵀ` that gives it (one of `T` in the backward recurrence's products).
#[derive(Clone, Copy)]
struct GradRows {
    dz: Rows,
    dh0: Option<Rows>,
    dc0: Rows,
    db: Rows,
}

/// Backpropagates `grad` `[(T + 1) * B, H]` (hidden states, then the last cell state), the
/// steps' work cut between the cores as `split` says; `h0`'s gradient only with `state_grads`
/// (zeros without, see [`GradRows`]).
#[allow(clippy::too_many_arguments)]
fn backward(
    d: Dims,
    ws: &[f32],
    w_h: &[f32],
    h0: &[f32],
    c0: &[f32],
    grad: &[f32],
    split: Split,
    state_grads: bool,
) -> LayerGrads {
    let (b, h) = (d.batch, d.hidden);
    let mut dh0 = vec![0.0f32; b * h];
    let mut dc0 = vec![0.0f32; b * h];
    let dh0_rows = state_grads.then_some(Rows(dh0.as_mut_ptr()));
    let dc0_rows = Rows(dc0.as_mut_ptr());
    let parts = match split {
        Split::Rows => d.blocks().len(),
        Split::Units => 1,
    };
    let mut db = vec![0.0f32; parts * 4 * h];
    let db_rows = Rows(db.as_mut_ptr());
    // SAFETY: both splits write every row of `dz` whole (`kernels::backward_step` writes all
    // 4h values of a row; the blocks cover the batch or the units).
    let dz = unsafe {
        written_once(d.steps * b * 4 * h, |dz| {
            let out = GradRows {
                dz,
                dh0: dh0_rows,
                dc0: dc0_rows,
                db: db_rows,
            };
            match split {
                Split::Rows => backward_by_rows(d, ws, w_h, c0, grad, out),
                Split::Units => backward_by_units(d, ws, w_h, c0, grad, out),
            }
        })
    };
    LayerGrads {
        w_h: recurrent_weight_grad(d, ws, h0, &dz),
        bias: sum_rows(db, 4 * h),
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
        db: db_rows,
    } = out;
    // W_hᵀ `[4H, H]`, packed once for all steps.
    let w_t = PackedWeight::new(&[Mat::new(w_h, h, g4, g4).t()]);
    d.blocks()
        .into_par_iter()
        .enumerate()
        .for_each(|(k, (r0, r1))| {
            let nb = r1 - r0;
            let mut db = vec![0.0f32; g4];
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
                    // The next row of `dz`, fetched for writing (as in `backward_by_units`).
                    if r + 1 < nb {
                        simd::prefetch_for_write(
                            dz_rows.ptr().wrapping_add((first + r + 1) * g4),
                            g4,
                        );
                    }
                    kernels::backward_step(
                        segments(cur, r * w7 + 2 * h, h, h),
                        &c_prev[r * c_stride..][..h],
                        &dh[r * h..][..h],
                        &mut dc[r * h..][..h],
                        // SAFETY: this block's row (t, r) of `dz`, touched by no other reference.
                        unsafe { dz_rows.segments((first + r) * g4, h, h) },
                        gates(&mut db, h),
                    );
                }
                if t == 0 && dh0_rows.is_none() {
                    break;
                }
                // SAFETY: the rows just written, of this block only.
                let dz_t = unsafe { read(dz_rows, first * g4, nb * g4) };
                w_t.mul(
                    &mut dh,
                    h,
                    false,
                    Mat::new(dz_t, nb, g4, g4),
                    Sweep::of_step(t),
                );
            }
            // SAFETY: rows of this block only.
            unsafe {
                if let Some(dh0_rows) = dh0_rows {
                    write_at(dh0_rows, r0 * h, &dh);
                }
                write_at(dc0_rows, r0 * h, &dc);
                write_at(db_rows, k * g4, &db);
            }
        });
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
/// previous `h` and its units' cell and hidden states. On even steps its own units' part of the
/// product comes first: it needs only what this core wrote, so a core that finished the last
/// step early works on it instead of waiting, and only the other cores' parts wait for them
/// ([`Progress`]). Odd steps take the parts, and each part's panels, in the reverse order
/// ([`Sweep::of_step`]): each step then starts on the part the last one ended on, which is still
/// in the core's L2 (a part is half the core's 3.4 MB of `medium`'s `W_h`, the L2 2 MiB on the
/// Xeon of docs/BENCHMARKS.md), instead of on the part it evicted first.
fn forward_by_units(d: Dims, x: Inputs, out: Rows) {
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
        let whole = Mat::new(x.w_h, h, g4, g4);
        let gates: Vec<Mat> = (0..4).map(|s| whole.cols(s * h + u0, s * h + u1)).collect();
        let parts: Vec<PackedWeight> = blocks
            .iter()
            .map(|&(v0, v1)| {
                PackedWeight::new(&gates.iter().map(|g| g.rows(v0, v1)).collect::<Vec<_>>())
            })
            .collect();
        // This core's units of `h_{t-1}`, `[batch, n]`: read by this core only.
        let mut own: Vec<f32> = (0..batch)
            .flat_map(|r| x.h0[r * h + u0..r * h + u1].iter().copied())
            .collect();
        let mut z = vec![0.0f32; batch * 4 * n];
        for t in 0..steps {
            for r in 0..batch {
                let src = &x.projected[(t * batch + r) * g4..][..g4];
                for s in 0..4 {
                    let (p, b) = (
                        &src[s * h + u0..s * h + u1],
                        &x.bias[s * h + u0..s * h + u1],
                    );
                    add_into(&mut z[(r * 4 + s) * n..][..n], p, b);
                }
            }
            let sweep = Sweep::of_step(t);
            let own_first = sweep == Sweep::Forward;
            let own_part = |z: &mut [f32]| {
                parts[i].mul(z, 4 * n, true, Mat::new(&own, batch, n, n), sweep);
            };
            if own_first {
                own_part(&mut z);
            }
            progress.wait_for_others(i, t);
            // SAFETY: every core finished step t - 1 (the wait above) and nothing writes its
            // rows any more (this step writes step t's rows).
            let prev = (t > 0).then(|| unsafe { read(out, (t - 1) * batch * w7, batch * w7) });
            let h_prev = match prev {
                Some(prev) => Mat::new(prev, batch, h, w7),
                None => Mat::new(x.h0, batch, h, h),
            };
            let others = blocks.iter().zip(&parts).enumerate();
            let others: Vec<_> = match sweep {
                Sweep::Forward => others.filter(|&(j, _)| j != i).collect(),
                Sweep::Backward => others.rev().filter(|&(j, _)| j != i).collect(),
            };
            for (_, (&(v0, v1), w)) in others {
                w.mul(&mut z, 4 * n, true, h_prev.cols(v0, v1), sweep);
            }
            if !own_first {
                own_part(&mut z);
            }
            for r in 0..batch {
                let c_prev = match prev {
                    Some(prev) => &prev[r * w7 + h + u0..][..n],
                    None => &x.c0[r * h + u0..][..n],
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
        db: db_rows,
    } = out;
    let blocks = unit_blocks(h, 16);
    let barrier = SpinBarrier::new(blocks.len());
    on_threads(&blocks, |_, (u0, u1)| {
        let n = u1 - u0;
        // `W_hᵀ` `[4h, h]`, this block's units' columns: `[4h, n]`.
        let w_t = PackedWeight::new(&[Mat::new(w_h, h, g4, g4).t().cols(u0, u1)]);
        let mut dh = vec![0.0f32; batch * n];
        let mut db = vec![0.0f32; 4 * n];
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
                // The next row's `dz` segments, fetched for writing while this row is computed
                // (docs/BENCHMARKS.md: without, each store waited for its line).
                if r + 1 < batch {
                    let next = (t * batch + r + 1) * g4 + u0;
                    for s in 0..4 {
                        simd::prefetch_for_write(dz_rows.ptr().wrapping_add(next + s * h), n);
                    }
                }
                kernels::backward_step(
                    segments(ws, (t * batch + r) * w7 + 2 * h + u0, h, n),
                    c_prev,
                    &dh[r * n..][..n],
                    &mut dc[r * n..][..n],
                    // SAFETY: this block's units of dz's row (t, r): no other thread touches
                    // them.
                    unsafe { dz_rows.segments((t * batch + r) * g4 + u0, h, n) },
                    gates(&mut db, n),
                );
            }
            if t == 0 && dh0_rows.is_none() {
                break;
            }
            barrier.wait();
            // SAFETY: dz's rows of step t are complete (the barrier) and no thread writes them
            // any more (the steps go down).
            let dz_t = unsafe { read(dz_rows, t * batch * g4, batch * g4) };
            w_t.mul(
                &mut dh,
                n,
                false,
                Mat::new(dz_t, batch, g4, g4),
                Sweep::of_step(t),
            );
        }
        for r in 0..batch {
            // SAFETY: this block's units of row r, touched by no other thread.
            unsafe {
                if let Some(dh0_rows) = dh0_rows {
                    write_at(dh0_rows, r * h + u0, &dh[r * n..][..n]);
                }
                write_at(dc0_rows, r * h + u0, &dc[r * n..][..n]);
            }
        }
        for (s, sums) in db.chunks_exact(n).enumerate() {
            // SAFETY: this block's units of gate s, touched by no other thread.
            unsafe { write_at(db_rows, s * h + u0, sums) };
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
        /// written and added to the bias's gradient `db` (the same four gates), and `dc`
        /// becomes the gradient reaching `c_{t-1}`.
        pub fn backward_step(
            acts: [&[f32]; 5],
            c_prev: &[f32],
            dh: &[f32],
            dc: &mut [f32],
            dz: [&mut [MaybeUninit<f32>]; 4],
            db: [&mut [f32]; 4],
        ) {
            let n = c_prev.len();
            let [i, f, g, o, tc] = acts.map(|s| &s[..n]);
            let (dh, dc) = (&dh[..n], &mut dc[..n]);
            let [di, df, dg, do_] = dz.map(|s| &mut s[..n]);
            let [bi, bf, bg, bo] = db.map(|s| &mut s[..n]);
            for j in 0..n {
                let c = dc[j] + dh[j] * o[j] * (1.0 - tc[j] * tc[j]);
                let z = [
                    c * g[j] * i[j] * (1.0 - i[j]),
                    c * c_prev[j] * f[j] * (1.0 - f[j]),
                    c * i[j] * (1.0 - g[j] * g[j]),
                    dh[j] * tc[j] * o[j] * (1.0 - o[j]),
                ];
                di[j].write(z[0]);
                df[j].write(z[1]);
                dg[j].write(z[2]);
                do_[j].write(z[3]);
                bi[j] += z[0];
                bf[j] += z[1];
                bg[j] += z[2];
                bo[j] += z[3];
                dc[j] = c * f[j];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer's inputs and output gradient of the given sizes, with values spread over [-1, 1)
    /// (`w_h` over [-0.3, 0.3)).
    struct Case {
        d: Dims,
        projected: Vec<f32>,
        bias: Vec<f32>,
        w_h: Vec<f32>,
        h0: Vec<f32>,
        c0: Vec<f32>,
        grad: Vec<f32>,
    }

    impl Case {
        fn new(steps: usize, batch: usize, h: usize) -> Self {
            let value = |n: usize, seed: usize| -> Vec<f32> {
                (0..n)
                    .map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0 - 1.0)
                    .collect()
            };
            Self {
                d: Dims {
                    steps,
                    batch,
                    hidden: h,
                },
                projected: value(steps * batch * 4 * h, 1),
                bias: value(4 * h, 6),
                w_h: value(h * 4 * h, 2).iter().map(|v| v * 0.3).collect(),
                h0: value(batch * h, 3),
                c0: value(batch * h, 4),
                grad: value((steps + 1) * batch * h, 5),
            }
        }

        /// The forward's workspace, cut as `split` says.
        fn forward(&self, split: Split) -> Vec<f32> {
            let x = Inputs {
                projected: &self.projected,
                bias: &self.bias,
                w_h: &self.w_h,
                h0: &self.h0,
                c0: &self.c0,
            };
            forward(self.d, x, split)
        }

        /// The backward from the workspace `ws`.
        fn backward(&self, ws: &[f32], split: Split, state_grads: bool) -> LayerGrads {
            let (w_h, h0, c0, grad) = (&self.w_h, &self.h0, &self.c0, &self.grad);
            backward(self.d, ws, w_h, h0, c0, grad, split, state_grads)
        }
    }

    /// The split by hidden units gives what the split by batch rows gives: the same workspace
    /// and gradients up to the products' summation order (on two cores, uneven blocks: the
    /// backward's 40 units are 32 + 8 and its 100 are 64 + 36, the forward's 52 + 48).
    #[test]
    fn the_split_by_units_matches_the_split_by_rows() {
        for (steps, batch, h) in [(4, 3, 40), (3, 5, 100), (1, 1, 16)] {
            let case = Case::new(steps, batch, h);
            let close = |a: &[f32], b: &[f32], what: &str| {
                assert_eq!(a.len(), b.len());
                let err = a
                    .iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-5, "{steps}x{batch}x{h} {what}: {err}");
            };
            let rows = case.forward(Split::Rows);
            close(&rows, &case.forward(Split::Units), "workspace");
            let a = case.backward(&rows, Split::Rows, true);
            let b = case.backward(&rows, Split::Units, true);
            close(&a.projected, &b.projected, "dz");
            close(&a.w_h, &b.w_h, "dW_h");
            close(&a.bias, &b.bias, "d bias");
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

    /// Without `state_grads` (a detached carried state) the backward skips the product that
    /// gives `h0`'s gradient: every other gradient is the same bit for bit, on either split,
    /// and `h0`'s is zeros (it is not, with the product).
    #[test]
    fn skipping_h0s_gradient_changes_no_other_gradient() {
        for (steps, batch, h) in [(4, 3, 40), (3, 5, 100), (1, 1, 16)] {
            let case = Case::new(steps, batch, h);
            let ws = case.forward(Split::Rows);
            for split in [Split::Rows, Split::Units] {
                let all = case.backward(&ws, split, true);
                let some = case.backward(&ws, split, false);
                let case = format!("{steps}x{batch}x{h} {split:?}");
                assert_eq!(all.projected, some.projected, "{case}: dz");
                assert_eq!(all.w_h, some.w_h, "{case}: dW_h");
                assert_eq!(all.bias, some.bias, "{case}: d bias");
                assert_eq!(all.c0, some.c0, "{case}: dc0");
                assert!(all.h0.iter().any(|&v| v != 0.0), "{case}: dh0 computed");
                assert!(some.h0.iter().all(|&v| v == 0.0), "{case}: dh0 skipped");
            }
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
}
