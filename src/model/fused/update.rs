//! The plain SGD step with the gradient-clipping scale folded in: one pass, in place, on every
//! core.
//!
//! Composed from Burn ops, a clipped SGD step over the `medium` config's 40 M parameters was
//! three single-core passes over every gradient (`g * scale`, `* lr`, `param - delta`), each a
//! full read and write of up to 160 MB. Here `param[i] - (grad[i] * scale) * lr` is computed in
//! the same order, in f32, so the result is bit for bit the composed ops' (Rust never contracts
//! the multiply and subtract into a fused multiply-add).

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Backend, Dispatch, Flex};
use burn::tensor::{DType, IndexingUpdateOp, Tensor};

use crate::model::sparse::RowGrad;
use rayon::prelude::*;

use super::simd::multiversion;
use super::{has_fused_kernels, host_f32, to_flex, values};

/// The clipping scale of the current step, shared by whoever computes it (the training step's
/// clipping) and whoever applies it (the optimizer's [`sgd_step`]); 1 until set. Clones share
/// the value.
#[derive(Clone, Debug)]
pub struct ClipScale(Arc<AtomicU32>);

impl Default for ClipScale {
    fn default() -> Self {
        Self(Arc::new(AtomicU32::new(1f32.to_bits())))
    }
}

impl ClipScale {
    /// Sets the scale for the next update.
    pub fn set(&self, scale: f32) {
        self.0.store(scale.to_bits(), Ordering::Relaxed);
    }

    /// The scale last set (1 before any).
    pub fn get(&self) -> f32 {
        f32::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// Values per task of the parallel update: large enough that a task's overhead is noise.
const CHUNK: usize = 1 << 16;

/// `param - (grad * scale) * lr`, elementwise: a plain SGD step (no momentum, no weight decay)
/// on a gradient clipped by `scale`. `param` and `grad` have the same shape, any rank.
///
/// On flex (f32) this is the fused in-place pass; elsewhere Burn's ops in the same order.
pub fn sgd_step<const D: usize>(
    param: Tensor<D>,
    grad: Tensor<D>,
    scale: f32,
    lr: f32,
) -> Tensor<D> {
    if has_fused_kernels(&param.device()) && param.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as UpdateOps>::sgd_step(
            param.into_dispatch(),
            grad.into_dispatch(),
            scale,
            lr,
        ))
    } else if scale == 1.0 {
        param - grad.mul_scalar(lr)
    } else {
        param - grad.mul_scalar(scale).mul_scalar(lr)
    }
}

/// `param[ids[k]] -= (rows[k] * scale) * lr` for every `k`: plain SGD on the rows of
/// `param` `[vocab, d]` that a row gradient `rows` `[ids, d]` covers (distinct `ids`), the
/// others untouched; bit for bit [`sgd_step`] on the dense gradient. In place on flex when
/// nothing else holds `param` (otherwise Burn copies it first).
pub fn sgd_rows(param: Tensor<2>, rows: RowGrad, scale: f32, lr: f32) -> Tensor<2> {
    let step = if scale == 1.0 {
        rows.rows.mul_scalar(lr)
    } else {
        rows.rows.mul_scalar(scale).mul_scalar(lr)
    };
    param.select_assign(0, rows.ids, step.neg(), IndexingUpdateOp::Add)
}

/// The sum of the squares of `t`'s values `[1]`: one term of a gradient's global L2 norm.
///
/// On flex (f32) one pass on every core, accumulated in f64 by fixed blocks of values added in
/// order, so the result does not depend on the number of cores; elsewhere Burn's
/// `square().sum()`.
pub fn sum_of_squares<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    if has_fused_kernels(&t.device()) && t.dtype() == DType::F32 {
        Tensor::from_dispatch(<Dispatch as UpdateOps>::sum_of_squares(t.into_dispatch()))
    } else {
        t.square().sum()
    }
}

/// The fused SGD step and norm as a Burn backend extension (no autodiff: optimizers step the
/// inner tensors).
#[backend_extension(Flex)]
pub trait UpdateOps: Backend {
    /// The sum of the squares of the values of `t` (any shape), `[1]`.
    fn sum_of_squares(t: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `param - (grad * scale) * lr`, elementwise; `param` and `grad` of the same shape.
    fn sgd_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        lr: f32,
    ) -> FloatTensor<Self>;
}

impl UpdateOps for Flex {
    fn sum_of_squares(t: FloatTensor<Self>) -> FloatTensor<Self> {
        let n = t.layout().shape().num_elements();
        let (t, _) = host_f32::<1>(t.reshape([n].into()), "grad");
        let blocks: Vec<f64> = values(&t).par_chunks(CHUNK).map(squares).collect();
        to_flex(vec![blocks.iter().sum::<f64>() as f32], &[1])
    }

    fn sgd_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        scale: f32,
        lr: f32,
    ) -> FloatTensor<Self> {
        let shape = param.layout().shape().clone();
        assert_eq!(
            shape,
            *grad.layout().shape(),
            "parameter and gradient shapes differ"
        );
        let n = shape.num_elements();
        let (grad, _) = host_f32::<1>(grad.reshape([n].into()), "grad");
        let g = values(&grad);
        assert_eq!(
            param.dtype(),
            DType::F32,
            "the fused ops are f32 only (param)"
        );
        if param.is_unique() && param.is_contiguous() {
            // Nothing else holds the parameter: written in place.
            let mut param = param;
            let p: &mut [f32] = param.storage_mut();
            p.par_chunks_mut(CHUNK)
                .zip(g.par_chunks(CHUNK))
                .for_each(|(p, g)| step(p, g, scale, lr));
            return param;
        }
        // Someone else still holds it (burn-train's Learner keeps the model it cloned for the
        // update until the update returns): one pass into a new buffer, not a copy then a pass.
        let (param, _) = host_f32::<1>(param.reshape([n].into()), "param");
        let p = values(&param);
        // Written once by the pass, not zeroed first (a serial pass over every parameter).
        let mut out: Vec<f32> = Vec::with_capacity(n);
        out.spare_capacity_mut()[..n]
            .par_chunks_mut(CHUNK)
            .zip(p.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(out, (p, g))| step_into(out, p, g, scale, lr));
        // SAFETY: the chunks above cover `out[..n]`, and `step_into` writes every value.
        unsafe { out.set_len(n) };
        to_flex(out, shape.as_slice())
    }
}

multiversion! {
    /// `sum(v[i]^2)` in f64, read as four streams side by side (the four quarters of `v`),
    /// each summed in its own vector of 8 f64 lanes, the 32 lanes added at the end. Four
    /// streams, because a core reading one stream from memory waited on it: over `medium`'s
    /// gradients, alternating in training, 14 - 16 GB/s from one stream against 18 - 21 GB/s from
    /// four (eight were no faster); four vectors, so that four additions are under way at a
    /// time (with one, each waited for the last: 4 cycles for 8 values).
    fn squares(v: &[f32]) -> f64 {
        const STREAMS: usize = 4;
        const LANES: usize = 8;
        let quarter = v.len() / (STREAMS * LANES) * LANES;
        let (body, rest) = v.split_at(quarter * STREAMS);
        let mut lanes = [[0.0f64; LANES]; STREAMS];
        for i in (0..quarter).step_by(LANES) {
            for (s, lanes) in lanes.iter_mut().enumerate() {
                let block = &body[s * quarter + i..][..LANES];
                for (lane, &x) in lanes.iter_mut().zip(block) {
                    *lane += f64::from(x) * f64::from(x);
                }
            }
        }
        let rest: f64 = rest.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
        lanes.iter().flatten().sum::<f64>() + rest
    }
}

multiversion! {
    /// `out[i] = p[i] - (g[i] * scale) * lr`, every `out[i]` written (`out`, `p` and `g` have
    /// the same length).
    fn step_into(out: &mut [MaybeUninit<f32>], p: &[f32], g: &[f32], scale: f32, lr: f32) {
        assert!(out.len() == p.len() && p.len() == g.len(), "step_into: lengths differ");
        for ((out, &p), &g) in out.iter_mut().zip(p).zip(g) {
            out.write(p - (g * scale) * lr);
        }
    }
}

multiversion! {
    /// `p[i] -= (g[i] * scale) * lr`.
    fn step(p: &mut [f32], g: &[f32], scale: f32, lr: f32) {
        for (p, &g) in p.iter_mut().zip(g) {
            *p -= (g * scale) * lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Distribution};

    /// The fused sum of squares is Burn's `square().sum()` up to f32 rounding (it is closer to
    /// the exact sum: accumulated in f64), on a size split across tasks.
    #[test]
    fn sums_squares_as_burn_does() {
        let device = Device::flex();
        let t = Tensor::<2>::random(
            [3 * CHUNK / 100 + 7, 100],
            Distribution::Normal(0.0, 2.0),
            &device,
        );
        let exact: f64 = t
            .clone()
            .into_data()
            .iter::<f32>()
            .map(|x| f64::from(x) * f64::from(x))
            .sum();
        let fused = sum_of_squares(t.clone()).into_scalar::<f32>() as f64;
        let burn = t.square().sum().into_scalar::<f32>() as f64;
        assert!((fused - exact).abs() < 1e-6 * exact, "{fused} vs {exact}");
        assert!((burn - exact).abs() < 1e-4 * exact, "{burn} vs {exact}");
    }

    /// The fused step equals Burn's composed ops bit for bit, on a size split across tasks.
    #[test]
    fn equals_the_composed_step_bit_for_bit() {
        let device = Device::flex();
        let shape = [3 * CHUNK / 100 + 7, 100];
        let param = Tensor::<2>::random(shape, Distribution::Default, &device);
        let grad = Tensor::<2>::random(shape, Distribution::Normal(0.0, 3.0), &device);
        let (scale, lr) = (0.123_456_7f32, 0.7f32);
        let before = param.clone().into_data();
        let composed = param.clone() - grad.clone().mul_scalar(scale).mul_scalar(lr);
        // Held elsewhere too (a clone): a new buffer, the clone untouched.
        let fused = sgd_step(param.clone(), grad.clone(), scale, lr);
        let (a, b) = (fused.into_data(), composed.into_data());
        assert_eq!(a.as_slice::<f32>().unwrap(), b.as_slice::<f32>().unwrap());
        assert_ne!(a, before, "the step moved the parameter");
        assert_eq!(param.into_data(), before);
        // Held by nobody else: in place, the same values.
        let unique = Tensor::<2>::from_data(before, &device);
        let in_place = sgd_step(unique, grad, scale, lr).into_data();
        assert_eq!(
            in_place.as_slice::<f32>().unwrap(),
            b.as_slice::<f32>().unwrap()
        );
    }
}
