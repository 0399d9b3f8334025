//! Fused CPU kernels with their own backward passes, as Burn backend extensions.
//!
//! Profiling the `small` benchmark config on flex showed two places where Burn's composition of
//! primitive ops costs far more than the arithmetic: the output layer and softmax cross-entropy
//! over the `[tokens, vocab]` logits ([`output`], with `xent`'s row kernels) and the LSTM
//! recurrence ([`lstm_layer`]), where every
//! step was a small single-core matmul plus ~17 tiny ops, each a separate pass, allocation and
//! autodiff node. The LSTM layers' input projections ([`linear`]) and the clipped SGD step
//! ([`update`]) followed, for the zeroed buffers and single-core passes around their products.
//! Each op here is implemented for flex and for autodiff over flex, with a hand-written
//! backward (the LSTM layer's flex loops in `lstm_layer/cpu.rs`); the LSTM layer also for wgpu
//! (`lstm_layer/cube.rs`, GPU kernels, where per-step kernel launches were the cost). On every
//! other device the callers use Burn's own ops, so the model code stays backend-agnostic. Tests
//! compare values and gradients with Burn's reference ops.

pub mod linear;
pub mod lstm_layer;
pub(crate) mod matmul;
pub mod output;
mod panels;
mod simd;
mod threads;
pub mod update;

pub use threads::pin_pool_threads;
mod xent;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, Device, TensorData};
use burn_flex::FlexTensor;

/// Whether the fused ops run where they exist (the default); see [`set_enabled`].
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Turns the fused ops on or off for the whole process: off, every device runs Burn's composed
/// ops, so `lstm-lm bench --composed` times what the fused ops replace on the same build. Set it
/// before the first op; it is not meant to change during training.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether the fused ops are on (see [`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Whether `device` (with or without autodiff) runs the fused kernels of this module.
pub fn has_fused_kernels(device: &Device) -> bool {
    enabled() && device.clone().without_autodiff() == Device::flex()
}

/// Registers each gradient of `each` for its parent in `parents` (`None`: a parent autodiff does
/// not track): the end of every fused op's backward.
fn register_grads<B: burn::backend::Backend, const N: usize>(
    grads: &mut burn::backend::autodiff::grads::Gradients,
    parents: [Option<burn::backend::autodiff::NodeId>; N],
    each: [burn::backend::tensor::FloatTensor<B>; N],
) {
    for (parent, g) in parents.into_iter().zip(each) {
        if let Some(id) = parent {
            grads.register::<B>(id, g);
        }
    }
}

/// `t` as a contiguous f32 tensor and its shape; panics, naming `what`, unless it has `D`
/// dimensions and dtype f32. A contiguous view into a bigger buffer stays a view (read through
/// [`values`]): the LSTM layer's outputs are such views (its hidden states, then its last states,
/// in one buffer), and copying them on the calling thread for the next layer and the output
/// layer took 2 copies of 1.8 MB a `medium` step. Only strided views are copied.
fn host_f32<const D: usize>(t: FlexTensor, what: &str) -> (FlexTensor, [usize; D]) {
    let shape = t.layout().shape();
    assert_eq!(
        shape.num_dims(),
        D,
        "the fused ops take {what} with {D} dimensions"
    );
    assert_eq!(t.dtype(), DType::F32, "the fused ops are f32 only ({what})");
    let dims = std::array::from_fn(|d| shape[d]);
    if t.is_contiguous() {
        (t, dims)
    } else {
        (t.to_contiguous(), dims)
    }
}

/// The values of a contiguous f32 tensor from [`host_f32`].
fn values(t: &FlexTensor) -> &[f32] {
    t.as_slice().expect("a contiguous f32 tensor")
}

/// A flex tensor of `shape` holding `values`.
fn to_flex(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

/// Largest `|a - b|` relative to the largest `|b|`: how tests compare a fused op with Burn's.
pub fn max_rel_err(a: burn::tensor::Tensor<2>, b: burn::tensor::Tensor<2>) -> f32 {
    let a = a.into_data().try_into_vec::<f32>().unwrap();
    let b = b.into_data().try_into_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    let norm = b.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-30);
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs() / norm)
        .fold(0.0, f32::max)
}

/// Asserts that every tensor of `fused` is within 1e-4 ([`max_rel_err`]) of the same one of
/// `reference`, naming it (`names`) and the case (`case`) when not: the fused ops' tests.
#[cfg(test)]
fn assert_close<const N: usize>(
    names: [&str; N],
    fused: [burn::tensor::Tensor<2>; N],
    reference: [burn::tensor::Tensor<2>; N],
    case: &str,
) {
    for ((name, a), b) in names.iter().zip(fused).zip(reference) {
        let e = max_rel_err(a, b);
        assert!(e < 1e-4, "{name}: relative error {e} ({case})");
    }
}
