//! The training and validation steps burn-train runs (and `lstm-lm bench` times), and the
//! optimizer of a config.

use burn::module::ParamGroup;
use burn::optim::decay::WeightDecayConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLearningRate;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{
    AdamConfig, GradientsParams, LearningRate, ModuleOptimizer, Optimizer, SgdConfig, SgdState,
};
use burn::tensor::{Device, ExecutionError, Tensor};
use burn::train::metric::Adaptor;
use burn::train::{InferenceStep, ItemLazy, TrainOutput, TrainStep};

use crate::config::OptimizerConfig;
use crate::model::fused::has_fused_kernels;
use crate::model::fused::update::{sgd_rows, sgd_step, ClipScale};
use crate::model::sparse::SparseEmbedding;
use crate::model::{LanguageModel, LmBatch};

use super::clip::clip_grad_norm;
use super::metrics::{NllInput, TokenCountInput};

/// What one step reports to the metrics.
pub struct LmOutput {
    /// The differentiated loss `[1]`.
    pub loss: Tensor<1>,
    /// Summed negative log-likelihood over real tokens `[1]`.
    pub nll_sum: Tensor<1>,
    /// Number of real tokens.
    pub tokens: usize,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> std::result::Result<Self, ExecutionError> {
        Ok(Self {
            loss: self.loss.without_autodiff(),
            nll_sum: self.nll_sum.without_autodiff(),
            tokens: self.tokens,
        })
    }
}

impl Adaptor<NllInput> for LmOutput {
    fn adapt(&self) -> NllInput {
        NllInput {
            nll_sum: self.nll_sum.clone(),
            tokens: self.tokens,
        }
    }
}

impl Adaptor<TokenCountInput> for LmOutput {
    fn adapt(&self) -> TokenCountInput {
        TokenCountInput {
            tokens: self.tokens,
        }
    }
}

/// A training step: forward from the carried state (stream windows) or zeros, backward. The
/// final state is left for the next window before the backward pass; it is detached, so the
/// next window's graph stops there (truncated BPTT).
///
/// On `n` devices each computes `1 / n` of the gradient of its own batch: the sum burn-train
/// forms on the first device is the mean of the devices' gradients. Clipping happens in
/// [`optimize`](TrainStep::optimize), on that sum, so several devices clip the global norm
/// of the same gradient one device would clip.
impl TrainStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        let loss = self.loss_carried(&batch);
        let share = 1.0 / self.devices.max(1) as f64;
        let differentiated = if self.devices > 1 {
            loss.loss.clone() * share as f32
        } else {
            loss.loss.clone()
        };
        let grads = differentiated.backward();
        if let Some(sparse) = &self.sparse_embedding {
            sparse.collect(&grads);
        }
        let grads = GradientsParams::from_grads(grads, self);
        TrainOutput {
            grads,
            item: LmOutput {
                loss: loss.loss.detach(),
                nll_sum: loss.nll_sum.detach(),
                tokens: loss.tokens,
            },
        }
    }

    /// Clips the global gradient norm (PyTorch's `clip_grad_norm_`) of the step's gradient,
    /// summed over the devices, then steps the optimizer; an embedding gradient collected as
    /// rows is clipped with the rest and applied to those rows (plain SGD).
    fn optimize(
        self,
        optim: &mut ModuleOptimizer,
        lr: ModuleLearningRate,
        mut grads: GradientsParams,
    ) -> Self {
        let mut rows = self
            .sparse_embedding
            .as_ref()
            .and_then(SparseEmbedding::take);
        if self.max_grad_norm > 0.0 {
            clip_grad_norm(
                &self,
                &mut grads,
                self.max_grad_norm,
                self.clip_scale.as_ref(),
                rows.as_mut(),
            );
        }
        let embedding_lr = lr.lr_from_param(self.embedding.weight.id, Some("embedding.weight"));
        let mut model = optim.step(lr, self, grads);
        if let Some(rows) = rows {
            // The scale the optimizer applied (1 where clipping scaled the rows itself).
            let scale = model.clip_scale.as_ref().map_or(1.0, ClipScale::get);
            model.embedding.weight = model.embedding.weight.map(|weight| {
                Tensor::from_inner(sgd_rows(weight.inner(), rows, scale, embedding_lr as f32))
                    .require_grad()
            });
        }
        model
    }
}

/// A validation step: the same loss, carrying the state between windows of a stream.
impl InferenceStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> LmOutput {
        let loss = self.loss_carried(&batch);
        LmOutput {
            loss: loss.loss,
            nll_sum: loss.nll_sum,
            tokens: loss.tokens,
        }
    }
}

/// The optimizer of `config` for `model`; biases are never weight-decayed (MXNet's `wd_mult`
/// is 0 on biases). Plain SGD (no momentum, no weight decay) is [`PlainSgd`]: on the CPU it
/// takes the clipping scale from the training step and applies it in its own pass, so `model`
/// is given the [`ClipScale`] they share; on one device an adaptive-softmax model, and on the
/// CPU any untied one, also gets a [`SparseEmbedding`], so its embedding is updated only in the
/// rows a batch looked up.
pub fn optimizer(config: &OptimizerConfig, model: &mut LanguageModel) -> ModuleOptimizer {
    let decay = |wd: f64| (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32));
    let biases = ParamGroup::from_predicate("bias");
    model.clip_scale = None;
    model.sparse_embedding = None;
    match *config {
        OptimizerConfig::Sgd {
            momentum: 0.0,
            weight_decay: 0.0,
            ..
        } => {
            let scale = ClipScale::default();
            model.clip_scale = Some(scale.clone());
            // Adaptive models everywhere (large vocabularies); other untied models on the CPU,
            // where the dense gradient is zeroed, filled and walked on the host every step
            // (a tied model's output layer uses every row of the embedding).
            let on_cpu = has_fused_kernels(&model.embedding.weight.device());
            let untied = model.output.is_some();
            if model.devices == 1 && (model.adaptive.is_some() || (untied && on_cpu)) {
                model.sparse_embedding = Some(SparseEmbedding::default());
            }
            ModuleOptimizer::from(PlainSgd { scale })
        }
        OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            ..
        } => {
            let momentum = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0)
            });
            let sgd = SgdConfig::new().with_momentum(momentum);
            sgd.clone()
                .with_weight_decay(decay(weight_decay))
                .init()
                .with_group(biases, sgd.build(), None)
        }
        OptimizerConfig::Adam { weight_decay, .. } => AdamConfig::new()
            .with_weight_decay(decay(weight_decay))
            .init()
            .with_group(biases, AdamConfig::new().build(), None),
    }
}

/// SGD without momentum or weight decay, `param - (grad * scale) * lr`, where `scale` is the
/// clipping scale the training step left in the shared [`ClipScale`] (1 where clipping scaled
/// the gradients itself). Bit for bit Burn's `Sgd` on clipped gradients, in one in-place pass
/// instead of three (see [`sgd_step`]). Its per-parameter state is `Sgd`'s, empty, so
/// checkpoints of either load into the other.
#[derive(Clone, Debug)]
pub struct PlainSgd {
    scale: ClipScale,
}

impl Optimizer for PlainSgd {
    type State<const D: usize> = SgdState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        _state: Option<SgdState<D>>,
    ) -> (Tensor<D>, Option<SgdState<D>>) {
        let stepped = sgd_step(tensor, grad, self.scale.get(), lr as f32);
        (stepped, Some(SgdState { momentum: None }))
    }

    fn to_device<const D: usize>(state: SgdState<D>, _device: &Device) -> SgdState<D> {
        state
    }
}
