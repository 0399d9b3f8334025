//! Fused CPU kernels with their own backward passes, as Burn backend extensions.
//!
//! Profiling the `small` benchmark config on flex showed two places where Burn's composition of
//! primitive ops costs far more than the arithmetic: the output layer and softmax cross-entropy
//! over the `[tokens, vocab]` logits ([`output`], with [`xent`]'s row kernels) and the LSTM
//! recurrence ([`lstm_layer`]), where every
//! step was a small single-core matmul plus ~17 tiny ops, each a separate pass, allocation and
//! autodiff node.
//! Each op here is implemented for flex and for autodiff over flex, with a hand-written
//! backward; on every other device the callers use Burn's own ops, so the model code stays
//! backend-agnostic. Tests compare values and gradients with Burn's reference ops.

pub mod lstm_layer;
mod matmul;
pub mod output;
mod simd;
mod xent;

use burn::tensor::Device;

/// Whether `device` (with or without autodiff) runs the fused kernels of this module.
pub fn has_fused_kernels(device: &Device) -> bool {
    device.clone().without_autodiff() == Device::flex()
}

/// Largest `|a - b|` relative to the largest `|b|`: how tests compare a fused op with Burn's.
#[cfg(test)]
pub(crate) fn max_rel_err(a: burn::tensor::Tensor<2>, b: burn::tensor::Tensor<2>) -> f32 {
    let a = a.into_data().try_into_vec::<f32>().unwrap();
    let b = b.into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let norm = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / norm)
        .fold(0.0, f32::max)
}
