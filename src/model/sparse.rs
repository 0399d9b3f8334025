//! Row-sparse embedding gradients for large vocabularies.
//!
//! Burn differentiates the embedding lookup into a dense `[vocab, d_embed]` gradient: at 250,000
//! words and 200 units that is 200 MB to zero, fill, square for the clipping norm and walk in the
//! update, every step, for the few hundred rows a batch touches. Here the looked-up rows are a
//! leaf of the graph instead: after the backward pass their gradient `[tokens, d_embed]` is
//! summed per distinct id into `[ids, d_embed]` ([`RowGrad`]), which the training step clips
//! with the other gradients and applies to those rows only (plain SGD, the only optimizer
//! for which that is the same step as the dense one). Enabled by the training step's optimizer
//! setup for models trained with plain SGD on one device: adaptive-softmax models, and on the
//! CPU every untied model (`medium`'s 26 MB embedding gradient cost ~5 ms a step there).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use burn::module::Param;
use burn::tensor::module::embedding;
use burn::tensor::Gradients;
use burn::tensor::{IndexingUpdateOp, Int, Tensor, TensorData};

/// An embedding gradient as rows: `rows[k]` is the gradient of row `ids[k]` of the embedding
/// matrix; every other row's is zero.
#[derive(Debug, Clone)]
pub struct RowGrad {
    /// Distinct ids `[ids]`.
    pub ids: Tensor<1, Int>,
    /// Their gradients `[ids, d_embed]`, summed over the positions that looked each up.
    pub rows: Tensor<2>,
}

/// What a training step leaves between its forward pass, its backward pass and its update.
#[derive(Debug, Default)]
struct Slot {
    /// The looked-up rows as a leaf `[batch, seq, d_embed]` and the ids `[batch * seq]`.
    leaf: Option<(Tensor<3>, Vec<i64>)>,
    /// The gradient collected after the backward pass.
    rows: Option<RowGrad>,
}

/// The shared slot of a model's row-sparse embedding gradient (clones share it).
#[derive(Debug, Clone, Default)]
pub struct SparseEmbedding(Arc<Mutex<Slot>>);

impl SparseEmbedding {
    /// Rows of `weight` `[vocab, d_embed]` for `inputs` `[batch, seq]` -> `[batch, seq,
    /// d_embed]`, as a leaf whose gradient [`collect`](Self::collect) gathers; the weight
    /// itself receives no gradient from the graph.
    pub fn lookup(&self, weight: &Param<Tensor<2>>, inputs: Tensor<2, Int>) -> Tensor<3> {
        let ids: Vec<i64> = inputs.to_data().iter::<i64>().collect();
        let rows = embedding(weight.val().inner(), inputs.inner());
        let leaf = Tensor::from_inner(rows).require_grad();
        self.slot().leaf = Some((leaf.clone(), ids));
        leaf
    }

    /// After the backward pass: sums the leaf's gradient per distinct id for
    /// [`take`](Self::take). Nothing happens when the step made no lookup.
    pub fn collect(&self, grads: &Gradients) {
        let mut slot = self.slot();
        let Some((leaf, ids)) = slot.leaf.take() else {
            return;
        };
        let Some(grad) = leaf.grad(grads) else {
            return;
        };
        let [b, t, e] = grad.dims();
        let device = grad.device();
        let mut distinct: Vec<i64> = Vec::new();
        let mut index: HashMap<i64, i64> = HashMap::new();
        let inverse: Vec<i64> = ids
            .iter()
            .map(|&id| {
                *index.entry(id).or_insert_with(|| {
                    distinct.push(id);
                    distinct.len() as i64 - 1
                })
            })
            .collect();
        let u = distinct.len();
        let inverse = Tensor::<1, Int>::from_data(TensorData::new(inverse, [b * t]), &device);
        let rows = Tensor::<2>::zeros([u, e], &device).select_assign(
            0,
            inverse,
            grad.reshape([b * t, e]),
            IndexingUpdateOp::Add,
        );
        slot.rows = Some(RowGrad {
            ids: Tensor::from_data(TensorData::new(distinct, [u]), &device),
            rows,
        });
    }

    /// The gradient [`collect`](Self::collect) gathered, once.
    pub fn take(&self) -> Option<RowGrad> {
        self.slot().rows.take()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.0
            .lock()
            .expect("the sparse embedding slot is never poisoned")
    }
}
