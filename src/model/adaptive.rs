//! The adaptive softmax (Grave et al. 2017, as PyTorch's `nn.AdaptiveLogSoftmaxWithLoss`): the
//! output layer for vocabularies of hundreds of thousands of words.
//!
//! Vocabulary ids are ranked by frequency, so clusters are id ranges. With cutoffs
//! `c_0 < c_1 < ... < c_k` and `V` words, the head is a softmax over the shortlist `0..c_0` plus
//! one entry per tail cluster; tail cluster `i` holds the ids `c_i..c_{i+1}` (the last one up to
//! `V`) behind a projection to `d_hidden / div_value^(i+1)` units. A word's log-probability is
//! its head log-probability in the shortlist, else its cluster's head log-probability plus its
//! log-probability within the cluster. PyTorch's layout: no biases.
//!
//! In training only the rows whose target falls in a cluster go through that cluster's tail,
//! and every part is the fused output op ([`linear_nll`]) where it exists, so no `[tokens,
//! vocab]` logits are ever formed. [`AdaptiveSoftmax::log_probs`] forms all `V` of them for
//! generation and for the tests' reference.

use std::ops::Range;

use burn::module::{Module, Param};
use burn::tensor::activation::log_softmax;
use burn::tensor::{Device, IndexingUpdateOp, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::fused::output::linear_nll;
use super::fused::{has_fused_kernels, max_rel_err};

/// The output layer's softmax, saved in `config.json` (`model.softmax`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Softmax {
    /// One softmax over the whole vocabulary, with a bias (the default).
    #[default]
    Full,
    /// The adaptive softmax.
    Adaptive {
        /// The first id of each tail cluster, increasing, the first the shortlist's size.
        cutoffs: Vec<usize>,
        /// Each cluster's projection is `div_value` times narrower than the one before it
        /// (PyTorch's default 4).
        div_value: f64,
    },
}

/// PyTorch's default `div_value`.
pub const DEFAULT_DIV_VALUE: f64 = 4.0;

impl Softmax {
    /// Checks what can be checked before the vocabulary is known: cutoffs increasing and
    /// positive, every projection at least one unit wide, no tied weights.
    pub fn check(&self, d_hidden: usize, tied: bool) -> Result<(), String> {
        let Softmax::Adaptive { cutoffs, div_value } = self else {
            return Ok(());
        };
        if cutoffs.is_empty() {
            return Err(
                "the adaptive softmax needs --cutoffs, the first id of each tail \
                        cluster, e.g. --cutoffs 20000,60000"
                    .into(),
            );
        }
        if cutoffs[0] == 0 || cutoffs.windows(2).any(|w| w[0] >= w[1]) {
            return Err(format!(
                "--cutoffs {} must be positive and increasing, e.g. 20000,60000",
                join(cutoffs)
            ));
        }
        if !(*div_value >= 1.0 && div_value.is_finite()) {
            return Err(format!(
                "--div-value {div_value} must be a number of at least 1 (PyTorch's default: 4)"
            ));
        }
        if tail_width(d_hidden, *div_value, cutoffs.len() - 1) == 0 {
            return Err(format!(
                "with --hidden {d_hidden} and --div-value {div_value}, tail cluster {} would \
                 have a projection 0 units wide; use fewer --cutoffs or a smaller --div-value",
                cutoffs.len()
            ));
        }
        if tied {
            return Err(
                "--tied shares the embedding with a full output layer; the adaptive \
                        softmax has no such matrix, so use one or the other"
                    .into(),
            );
        }
        Ok(())
    }

    /// Checks the cutoffs against the vocabulary: the last must leave its cluster a word.
    pub fn check_vocab(&self, vocab: usize) -> Result<(), String> {
        match self {
            Softmax::Adaptive { cutoffs, .. } if cutoffs.last().is_some_and(|&c| c >= vocab) => {
                Err(format!(
                    "--cutoffs {}: every cutoff must be below the vocabulary size ({vocab} \
                     here, specials included); lower them or raise --max-vocab",
                    join(cutoffs)
                ))
            }
            _ => Ok(()),
        }
    }
}

fn join(cutoffs: &[usize]) -> String {
    cutoffs
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// Width of tail cluster `i`'s projection: PyTorch's `in_features // div_value ** (i + 1)`.
pub fn tail_width(d_hidden: usize, div_value: f64, i: usize) -> usize {
    (d_hidden as f64 / div_value.powi(i as i32 + 1)).floor() as usize
}

/// One tail cluster's shape: its ids and its projection's width.
#[derive(Debug, Clone, PartialEq)]
pub struct TailShape {
    /// The ids it holds, `c_i..c_{i+1}` (the last one up to the vocabulary size).
    pub ids: Range<usize>,
    /// Its projection's width ([`tail_width`]).
    pub width: usize,
}

/// The ids of each tail cluster of an adaptive softmax over `vocab` ids, in order: `c_i..c_{i+1}`,
/// the last one up to `vocab`.
pub fn tail_ranges(cutoffs: &[usize], vocab: usize) -> Vec<Range<usize>> {
    let ends = cutoffs[1..].iter().copied().chain([vocab]);
    cutoffs
        .iter()
        .zip(ends)
        .map(|(&start, end)| start..end)
        .collect()
}

/// The tail clusters of an adaptive softmax over `vocab` ids, in order.
pub fn tail_shapes(
    d_hidden: usize,
    vocab: usize,
    cutoffs: &[usize],
    div_value: f64,
) -> Vec<TailShape> {
    tail_ranges(cutoffs, vocab)
        .into_iter()
        .enumerate()
        .map(|(i, ids)| TailShape {
            ids,
            width: tail_width(d_hidden, div_value, i),
        })
        .collect()
}

/// One tail cluster: a projection to fewer units, then a softmax over the cluster's ids.
#[derive(Module, Debug)]
pub struct TailCluster {
    /// Projection `[d_hidden, d_tail]`.
    pub proj: Param<Tensor<2>>,
    /// Output weight `[d_tail, cluster_size]`.
    pub out: Param<Tensor<2>>,
}

/// The adaptive softmax layer (see the module docs).
#[derive(Module, Debug)]
pub struct AdaptiveSoftmax {
    /// Head weight `[d_hidden, shortlist + clusters]`: the shortlist's words, then one column
    /// per tail cluster.
    pub head: Param<Tensor<2>>,
    /// The tail clusters, in id order.
    pub tails: Vec<TailCluster>,
    /// `[c_0, c_1, ..., vocab]`: tail cluster `i` holds the ids `bounds[i]..bounds[i + 1]`.
    #[module(skip)]
    pub bounds: Vec<usize>,
}

impl AdaptiveSoftmax {
    /// The layer for `vocab` ids from its parameters; `matrix(rows, cols)` draws each weight
    /// `[rows, cols]` (head, then each cluster's projection and output).
    pub fn new(
        d_hidden: usize,
        vocab: usize,
        cutoffs: &[usize],
        div_value: f64,
        mut matrix: impl FnMut(usize, usize) -> Param<Tensor<2>>,
    ) -> Self {
        let head = matrix(d_hidden, cutoffs[0] + cutoffs.len());
        let tails = tail_shapes(d_hidden, vocab, cutoffs, div_value)
            .into_iter()
            .map(|tail| TailCluster {
                proj: matrix(d_hidden, tail.width),
                out: matrix(tail.width, tail.ids.len()),
            })
            .collect();
        let mut bounds = cutoffs.to_vec();
        bounds.push(vocab);
        Self {
            head,
            tails,
            bounds,
        }
    }

    /// Number of parameters of a layer with these sizes.
    pub fn num_params(d_hidden: usize, vocab: usize, cutoffs: &[usize], div_value: f64) -> usize {
        let tails: usize = tail_shapes(d_hidden, vocab, cutoffs, div_value)
            .iter()
            .map(|tail| tail.width * (d_hidden + tail.ids.len()))
            .sum();
        d_hidden * (cutoffs[0] + cutoffs.len()) + tails
    }

    /// The size of the shortlist (the head's words).
    fn shortlist(&self) -> usize {
        self.bounds[0]
    }

    /// The cluster of `id` (`None` in the shortlist).
    fn cluster_of(&self, id: usize) -> Option<usize> {
        (id >= self.shortlist()).then(|| self.bounds[1..].partition_point(|&b| b <= id))
    }

    /// Negative log-likelihood of each row's target `[tokens, 1]`.
    ///
    /// - `x`: hidden states `[tokens, d_hidden]`
    /// - `targets`: ids `[tokens, 1]`; read back to the host to sort the rows into clusters
    ///   (a device sync on a GPU).
    pub fn nll(&self, x: Tensor<2>, targets: Tensor<2, Int>) -> Tensor<2> {
        let device = x.device();
        let ids: Vec<usize> = targets
            .into_data()
            .iter::<i64>()
            .map(|id| id as usize)
            .collect();
        let shortlist = self.shortlist();
        let mut head_targets = Vec::with_capacity(ids.len());
        let mut rows: Vec<Vec<i64>> = vec![Vec::new(); self.tails.len()];
        let mut local: Vec<Vec<i64>> = vec![Vec::new(); self.tails.len()];
        for (row, &id) in ids.iter().enumerate() {
            match self.cluster_of(id) {
                None => head_targets.push(id as i64),
                Some(c) => {
                    head_targets.push((shortlist + c) as i64);
                    rows[c].push(row as i64);
                    local[c].push((id - self.bounds[c]) as i64);
                }
            }
        }
        let head = self.head.val();
        let head_cols = head.dims()[1];
        let mut nll = linear_nll(
            x.clone(),
            head,
            Tensor::zeros([head_cols], &device),
            int_column(head_targets, &device),
        );
        // Off the CPU every new row count is a new shape to compile and tune kernels for:
        // there each cluster's rows are padded to a power of two, the padding masked out.
        let pad = !has_fused_kernels(&device);
        for ((tail, mut rows), mut local) in self.tails.iter().zip(rows).zip(local) {
            let real = rows.len();
            if real == 0 {
                continue;
            }
            let n = if pad { real.next_power_of_two() } else { real };
            rows.resize(n, rows[0]);
            local.resize(n, 0);
            let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
            let projected = x.clone().select(0, rows.clone()).matmul(tail.proj.val());
            let out = tail.out.val();
            let size = out.dims()[1];
            let mut tail_nll = linear_nll(
                projected,
                out,
                Tensor::zeros([size], &device),
                int_column(local, &device),
            );
            if n > real {
                let mask: Vec<f32> = (0..n).map(|i| if i < real { 1.0 } else { 0.0 }).collect();
                tail_nll = tail_nll * Tensor::from_data(TensorData::new(mask, [n, 1]), &device);
            }
            nll = nll.select_assign(0, rows, tail_nll, IndexingUpdateOp::Add);
        }
        nll
    }

    /// Log-probabilities of every id `[tokens, vocab]` for hidden states `x`
    /// `[tokens, d_hidden]`, from Burn's ops (for sampling and as the reference in tests).
    pub fn log_probs(&self, x: Tensor<2>) -> Tensor<2> {
        let shortlist = self.shortlist();
        let head = log_softmax(x.clone().matmul(self.head.val()), 1);
        let [n, _] = head.dims();
        let mut parts = vec![head.clone().slice([0..n, 0..shortlist])];
        for (c, tail) in self.tails.iter().enumerate() {
            let within = log_softmax(x.clone().matmul(tail.proj.val()).matmul(tail.out.val()), 1);
            let cluster = head.clone().slice([0..n, shortlist + c..shortlist + c + 1]);
            parts.push(within + cluster);
        }
        Tensor::cat(parts, 1)
    }
}

/// `ids` as an id column `[n, 1]` on `device`.
fn int_column(ids: Vec<i64>, device: &Device) -> Tensor<2, Int> {
    let n = ids.len();
    Tensor::from_data(TensorData::new(ids, [n, 1]), device)
}

/// The training loss ([`AdaptiveSoftmax::nll`]: fused parts on flex, Burn's ops elsewhere,
/// tails only on their rows) against the full log-probabilities ([`AdaptiveSoftmax::log_probs`])
/// gathered at the targets, on `device`, for a small layer (16 hidden units, 50 ids, cutoffs
/// 10, 25, 40) and targets in every part: the largest relative error ([`max_rel_err`]) of the
/// values, then of the gradients in the input and in every weight. What the tests of both
/// backends (flex, wgpu) assert on.
pub fn errors_against_reference(device: &Device) -> Vec<(&'static str, f32)> {
    let device = device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(3);
    let mut normal = |rows: usize, cols: usize, scale: f32| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| (rng.random::<f32>() - 0.5) * 2.0 * scale)
            .collect();
        Tensor::<2>::from_data(TensorData::new(values, [rows, cols]), &device)
    };
    let mut k = 0.0;
    let layer = AdaptiveSoftmax::new(16, 50, &[10, 25, 40], 2.0, |rows, cols| {
        k += 0.1;
        Param::from_tensor(normal(rows, cols, 0.8 + k))
    });
    let mut targets: Vec<i64> = vec![0, 9, 10, 24, 25, 39, 40, 49];
    targets.extend((0..40).map(|i| (i * 37 + 11) % 50));
    let n = targets.len();
    let x = normal(n, 16, 1.5).require_grad();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let ours = layer.nll(x.clone(), ids.clone());
    let reference = -layer.log_probs(x.clone()).gather(1, ids);
    let mut errors = vec![(
        "values",
        max_rel_err(ours.clone().inner(), reference.clone().inner()),
    )];
    let (g1, g2) = (ours.sum().backward(), reference.sum().backward());
    let mut grad = |name, t: Tensor<2>| {
        errors.push((
            name,
            max_rel_err(t.grad(&g1).unwrap(), t.grad(&g2).unwrap()),
        ));
    };
    grad("d input", x);
    grad("d head", layer.head.val());
    for tail in &layer.tails {
        grad("d tail projection", tail.proj.val());
        grad("d tail output", tail.out.val());
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn layer(device: &Device) -> AdaptiveSoftmax {
        let mut k = 0;
        AdaptiveSoftmax::new(16, 50, &[10, 25, 40], 2.0, |rows, cols| {
            k += 1;
            let t = Tensor::<2>::random([rows, cols], Distribution::Normal(0.0, 0.5), device);
            Param::from_tensor(t.mul_scalar(1.0 + k as f32 / 10.0))
        })
    }

    #[test]
    fn sizes_follow_pytorchs_layout() {
        let l = layer(&Device::flex());
        assert_eq!(l.head.val().dims(), [16, 13]);
        let dims: Vec<_> = l
            .tails
            .iter()
            .map(|t| (t.proj.val().dims(), t.out.val().dims()))
            .collect();
        assert_eq!(
            dims,
            [([16, 8], [8, 15]), ([16, 4], [4, 15]), ([16, 2], [2, 10])]
        );
        assert_eq!(
            l.num_params(),
            AdaptiveSoftmax::num_params(16, 50, &[10, 25, 40], 2.0)
        );
    }

    #[test]
    fn log_probabilities_sum_to_one_over_the_whole_vocabulary() {
        let device = Device::flex();
        let l = layer(&device);
        let x = Tensor::<2>::random([5, 16], Distribution::Normal(0.0, 1.0), &device);
        let total = l.log_probs(x).exp().sum_dim(1);
        for p in total.into_data().iter::<f32>() {
            assert!((p - 1.0).abs() < 1e-5, "{p}");
        }
    }

    #[test]
    fn the_fused_loss_matches_the_composed_reference() {
        for (what, err) in errors_against_reference(&Device::flex()) {
            let bound = if what == "values" { 1e-5 } else { 1e-4 };
            assert!(err < bound, "{what}: {err}");
        }
    }

    #[test]
    fn bad_cutoffs_are_refused_with_the_remedy() {
        let adaptive = |cutoffs: Vec<usize>, div_value| Softmax::Adaptive { cutoffs, div_value };
        assert!(adaptive(vec![2000, 10000], 4.0).check(200, false).is_ok());
        let e = adaptive(vec![], 4.0).check(200, false).unwrap_err();
        assert!(e.contains("--cutoffs"), "{e}");
        let e = adaptive(vec![10000, 2000], 4.0)
            .check(200, false)
            .unwrap_err();
        assert!(e.contains("increasing"), "{e}");
        let e = adaptive(vec![0, 10], 4.0).check(200, false).unwrap_err();
        assert!(e.contains("positive"), "{e}");
        let e = adaptive(vec![10, 20, 30, 40], 4.0)
            .check(200, false)
            .unwrap_err();
        assert!(e.contains("0 units"), "{e}");
        let e = adaptive(vec![10, 20], 4.0).check(200, true).unwrap_err();
        assert!(e.contains("--tied"), "{e}");
        let e = adaptive(vec![10, 20], 0.5).check(200, false).unwrap_err();
        assert!(e.contains("--div-value"), "{e}");
        let e = adaptive(vec![10, 20], 4.0).check_vocab(20).unwrap_err();
        assert!(e.contains("below the vocabulary size (20"), "{e}");
        assert!(adaptive(vec![10, 20], 4.0).check_vocab(21).is_ok());
        assert!(Softmax::Full.check_vocab(1).is_ok());
    }
}
