//! Global gradient-norm clipping with PyTorch's `clip_grad_norm_` semantics.
//!
//! The norm is taken over all gradients of a module together (burn-optim's clipping works
//! per tensor); when it exceeds `max_norm`, every gradient is scaled by
//! `max_norm / (norm + 1e-6)`. On the CPU each gradient's sum of squares is one fused pass on
//! every core, accumulated in f64 ([`sum_of_squares`]). The scale is computed on the device;
//! on the CPU (flex, eager) it is read back: handed to an optimizer that applies it in its own
//! pass (plain SGD, see [`ClipScale`]), or applied here unless it is exactly 1 (the same result
//! bit for bit either way). On a GPU the scale stays on the device, so no host sync is added.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor};

use crate::model::fused::update::{sum_of_squares, ClipScale};
use crate::model::sparse::RowGrad;

/// Scales `grads` of `module`, and the embedding's row gradient `rows` when the step collected
/// one, so that their global L2 norm is at most `max_norm`; on the CPU, with `fold` given,
/// leaves them as they are and sets the scale there for the optimizer.
///
/// Returns the norm before clipping `[1]`.
pub fn clip_grad_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
    fold: Option<&ClipScale>,
    mut rows: Option<&mut RowGrad>,
) -> Option<Tensor<1>> {
    let mut squares = SumOfSquares {
        grads,
        parts: Vec::new(),
    };
    module.visit(&mut squares);
    let mut parts = squares.parts;
    if let Some(rows) = rows.as_deref() {
        parts.push(sum_of_squares(rows.rows.clone()));
    }
    if parts.is_empty() {
        return None;
    }
    let norm = Tensor::cat(parts, 0).sum().sqrt();
    let scale = (norm.clone() + 1e-6)
        .recip()
        .mul_scalar(max_norm)
        .clamp_max(1.0);
    let mut apply = |scale: Tensor<1>| {
        if let Some(rows) = rows.as_deref_mut() {
            rows.rows = rows.rows.clone() * scale.clone().reshape([1, 1]);
        }
        module.visit(&mut Scale { grads, scale });
    };
    if scale.device().without_autodiff() != Device::flex() {
        apply(scale);
        return Some(norm);
    }
    let host = scale.clone().into_scalar::<f32>();
    match fold {
        Some(fold) => fold.set(host),
        None if host != 1.0 => apply(scale),
        None => {}
    }
    Some(norm)
}

struct SumOfSquares<'a> {
    grads: &'a GradientsParams,
    parts: Vec<Tensor<1>>,
}

impl ModuleVisitor for SumOfSquares<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.parts.push(sum_of_squares(g));
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    scale: Tensor<1>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let scale = self.scale.clone().reshape([1; D]);
            self.grads.register::<D>(param.id, g * scale);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};

    fn grads_of(model: &Linear, scale_w: f32, scale_b: f32) -> GradientsParams {
        // loss = scale_w * sum(W) + scale_b * sum(b): dL/dW = scale_w, dL/db = scale_b.
        let w = model.weight.val().sum().mul_scalar(scale_w);
        let b = model.bias.as_ref().unwrap().val().sum().mul_scalar(scale_b);
        GradientsParams::from_grads((w + b).backward(), model)
    }

    fn values<const D: usize>(g: &GradientsParams, p: &Param<Tensor<D>>) -> Vec<f32> {
        g.get::<D>(p.id)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn scales_all_gradients_by_one_global_factor() {
        let device = Device::flex().autodiff();
        // W [3, 4] (12 entries) and b [4]: grads 1.0 and 2.0 -> norm sqrt(12 + 16) = sqrt(28).
        let model = LinearConfig::new(3, 4).init(&device);
        let mut grads = grads_of(&model, 1.0, 2.0);
        let norm = clip_grad_norm(&model, &mut grads, 1.0, None, None).unwrap();
        let norm = norm.into_data().try_into_vec::<f32>().unwrap()[0];
        assert!((norm - 28f32.sqrt()).abs() < 1e-5, "norm {norm}");
        let k = 1.0 / (28f32.sqrt() + 1e-6);
        let w = values(&grads, &model.weight);
        let b = values(&grads, model.bias.as_ref().unwrap());
        assert!(w.iter().all(|&x| (x - k).abs() < 1e-6), "{w:?}");
        assert!(b.iter().all(|&x| (x - 2.0 * k).abs() < 1e-6), "{b:?}");
        // The clipped gradients have norm max_norm (up to the 1e-6 guard).
        let clipped: f32 = w.iter().chain(&b).map(|x| x * x).sum::<f32>().sqrt();
        assert!((clipped - 1.0).abs() < 1e-5);
    }

    #[test]
    fn leaves_small_gradients_alone() {
        let device = Device::flex().autodiff();
        let model = LinearConfig::new(3, 4).init(&device);
        let mut grads = grads_of(&model, 0.1, -0.2);
        clip_grad_norm(&model, &mut grads, 5.0, None, None).unwrap();
        let w = values(&grads, &model.weight);
        let b = values(&grads, model.bias.as_ref().unwrap());
        assert!(w.iter().all(|&x| (x - 0.1).abs() < 1e-7));
        assert!(b.iter().all(|&x| (x + 0.2).abs() < 1e-7));
    }
}
