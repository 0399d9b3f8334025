//! The training flags that override a preset's values, and the defaults a switch brings with it
//! (a new optimizer's rate, a new schedule's parameters). The binary flattens [`Overrides`]
//! into its `train` arguments; [`Overrides::apply`] makes the config.

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::adaptive::DEFAULT_DIV_VALUE;
use crate::model::{InitScheme, LossNorm, Softmax};

use super::schedule::LrSchedule;
use super::{Batching, ExperimentConfig, OptimizerConfig};

/// SGD's rate after `--optimizer sgd` switches from Adam without `--lr`.
pub const SGD_DEFAULT_LR: f64 = 1.0;
/// Adam's rate after `--optimizer adam` switches from SGD without `--lr`.
pub const ADAM_DEFAULT_LR: f64 = 2e-3;
/// Epochs at the full rate of `--lr-schedule step` when the preset has no step schedule.
pub const DEFAULT_DECAY_START: usize = 4;
/// Factor per epoch of `--lr-schedule step` when the preset has no step schedule.
pub const DEFAULT_LR_DECAY: f64 = 0.5;
/// Divisor of `--lr-schedule plateau` when the preset has no plateau schedule.
pub const DEFAULT_LR_DIVISOR: f64 = 4.0;

/// An optimizer to switch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OptimizerChoice {
    /// Plain SGD (with the preset's momentum and weight decay when it uses SGD).
    Sgd,
    /// Adam.
    Adam,
}

/// A learning-rate schedule to switch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ScheduleChoice {
    /// The same rate every epoch.
    Constant,
    /// Constant, then geometric decay per epoch.
    Step,
    /// Divide when validation stops improving.
    Plateau,
}

/// An output softmax to switch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SoftmaxChoice {
    /// One softmax over the whole vocabulary.
    Full,
    /// The adaptive softmax (needs --cutoffs).
    Adaptive,
}

/// The config values the `train` command line can set; `None` keeps the preset's.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct Overrides {
    /// Total number of epochs (raise it to continue a finished run).
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Seed of initialisation and shuffling.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Sentences per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Embedding width.
    #[arg(long)]
    pub embed: Option<usize>,
    /// LSTM hidden width.
    #[arg(long)]
    pub hidden: Option<usize>,
    /// Number of LSTM layers.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Largest vocabulary, specials included, for every tokenizer (0 = every training token;
    /// for bpe, 8,000 pieces).
    #[arg(long)]
    pub max_vocab: Option<usize>,
    /// How lines become tokens: word (whitespace-separated, blank lines skipped), char
    /// (Unicode characters, spaces included, each line end an `<eos>`, blank lines kept) or bpe
    /// (byte-level BPE learned on the training text, --max-vocab pieces, 8,000 when 0; blank
    /// lines kept).
    #[arg(long, value_enum)]
    pub tokenizer: Option<Tokenizer>,
    /// Bucket lengths in tokens, comma-separated; longer sentences are dropped.
    #[arg(long, value_delimiter = ',')]
    pub buckets: Option<Vec<usize>>,
    /// Batches of padded sentences in buckets, or one contiguous stream with carried state.
    #[arg(long, value_enum)]
    pub batching: Option<Batching>,
    /// Steps per truncated-BPTT window (stream batching).
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Make an epoch about N training tokens (whole batches) instead of one pass over the text:
    /// validation, the learning-rate schedule, history and epoch checkpoints then come every N
    /// tokens, and the passes run on across epochs (0 = one pass an epoch).
    #[arg(long, value_name = "N")]
    pub epoch_tokens: Option<u64>,
    /// Dropout on embeddings, between layers and before the output layer (0 = none).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Tie the output layer to the embedding (needs --embed equal to --hidden).
    #[arg(long)]
    pub tied: bool,
    /// The output layer's softmax: full, or adaptive for large vocabularies (with --cutoffs;
    /// --cutoffs alone selects it too).
    #[arg(long, value_enum)]
    pub softmax: Option<SoftmaxChoice>,
    /// The adaptive softmax's cluster bounds, comma-separated and increasing: the first is the
    /// head's shortlist size, each next one where a tail cluster begins (ids are frequency
    /// ranks), e.g. 20000,60000.
    #[arg(long, value_delimiter = ',')]
    pub cutoffs: Option<Vec<usize>>,
    /// How much narrower each tail cluster's projection is than the one before [default: 4].
    #[arg(long)]
    pub div_value: Option<f64>,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long)]
    pub clip: Option<f64>,
    /// Optimizer; switching it resets the rate to its default (SGD 1.0, Adam 0.002) unless
    /// --lr is given.
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerChoice>,
    /// Learning-rate schedule: constant; step = constant for --decay-start epochs then
    /// x --lr-decay per epoch (Zaremba); plateau = divide by --lr-divisor after each epoch whose
    /// validation perplexity does not improve.
    #[arg(long, value_enum)]
    pub lr_schedule: Option<ScheduleChoice>,
    /// Epochs at the full rate before the step schedule decays [default: 4].
    #[arg(long)]
    pub decay_start: Option<usize>,
    /// Factor per epoch of the step schedule [default: 0.5].
    #[arg(long)]
    pub lr_decay: Option<f64>,
    /// Divisor of the plateau schedule [default: 4].
    #[arg(long)]
    pub lr_divisor: Option<f64>,
    /// Initialise every parameter uniformly in +-this (Zaremba: 0.1, 0.05, 0.04).
    #[arg(long)]
    pub init_range: Option<f64>,
    /// Loss reduction: sum over tokens / batch size, or mean per token.
    #[arg(long, value_enum)]
    pub loss_norm: Option<LossNorm>,
    /// Start from the model of this run folder (trained here or made by `lstm-lm import`):
    /// its sizes, output layer, tokenizer and vocabulary are kept, the vocabulary fixed (other
    /// words read as `<unk>`); the optimizer starts fresh. Needs another --artifact-dir.
    #[arg(long, value_name = "RUN")]
    pub init_from: Option<std::path::PathBuf>,
}

impl Overrides {
    /// `base` with these values set. Switching the optimizer resets its rate to the new one's
    /// default unless `lr` is given; switching the schedule keeps the parameters `base` has for
    /// it and takes the defaults above for the others.
    pub fn apply(&self, base: ExperimentConfig) -> ExperimentConfig {
        let mut c = base;
        macro_rules! set {
            ($flag:ident => $($field:tt)+) => {
                if let Some(v) = self.$flag.clone() {
                    c.$($field)+ = v;
                }
            };
        }
        set!(epochs => epochs);
        set!(seed => seed);
        set!(batch_size => data.batch_size);
        set!(embed => model.d_embed);
        set!(hidden => model.d_hidden);
        set!(layers => model.n_layers);
        set!(max_vocab => data.max_vocab);
        set!(tokenizer => data.tokenizer);
        set!(buckets => data.buckets);
        set!(loss_norm => model.loss_norm);
        set!(batching => data.batching);
        set!(bptt => data.bptt);
        set!(epoch_tokens => data.epoch_tokens);
        set!(dropout => model.dropout);
        set!(clip => clip);
        if self.tied {
            c.model.tied = true;
        }
        c.model.softmax = self.softmax(c.model.softmax);
        if let Some(range) = self.init_range {
            c.model.init = InitScheme::Uniform { range };
        }
        c.optimizer = self.optimizer(c.optimizer);
        c.lr_schedule = self.schedule(c.lr_schedule);
        if let Some(lr) = self.lr {
            c.optimizer = c.optimizer.with_lr(lr);
        }
        if let Some(run) = &self.init_from {
            c.init_from = Some(run.clone());
        }
        c
    }

    /// Refuses flags that would change the model `--init-from` takes whole.
    pub fn check_init_from(&self) -> Result<()> {
        let Some(run) = &self.init_from else {
            return Ok(());
        };
        let given = [
            ("--embed", self.embed.is_some()),
            ("--hidden", self.hidden.is_some()),
            ("--layers", self.layers.is_some()),
            ("--tied", self.tied),
            ("--softmax", self.softmax.is_some()),
            ("--cutoffs", self.cutoffs.is_some()),
            ("--div-value", self.div_value.is_some()),
            ("--tokenizer", self.tokenizer.is_some()),
            ("--max-vocab", self.max_vocab.is_some()),
            ("--init-range", self.init_range.is_some()),
        ];
        let flags: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if flags.is_empty() {
            return Ok(());
        }
        Err(Error::Config(format!(
            "{} cannot change a model started from --init-from {}: its sizes, output layer, \
             tokenizer and vocabulary are that run's; leave {} out",
            flags.join(", "),
            run.display(),
            if flags.len() == 1 { "it" } else { "them" }
        )))
    }

    /// `current`, or the softmax asked for: `--cutoffs` or `--div-value` select the adaptive
    /// one unless `--softmax full` is given; what they leave out keeps `current`'s values.
    fn softmax(&self, current: Softmax) -> Softmax {
        let adaptive = match self.softmax {
            Some(SoftmaxChoice::Full) => return Softmax::Full,
            Some(SoftmaxChoice::Adaptive) => true,
            None => self.cutoffs.is_some() || self.div_value.is_some(),
        };
        if !adaptive {
            return current;
        }
        let (cutoffs, div_value) = match current {
            Softmax::Adaptive { cutoffs, div_value } => (cutoffs, div_value),
            Softmax::Full => (Vec::new(), DEFAULT_DIV_VALUE),
        };
        Softmax::Adaptive {
            cutoffs: self.cutoffs.clone().unwrap_or(cutoffs),
            div_value: self.div_value.unwrap_or(div_value),
        }
    }

    /// `current`, or the optimizer switched to, at its default rate.
    fn optimizer(&self, current: OptimizerConfig) -> OptimizerConfig {
        match (self.optimizer, &current) {
            (Some(OptimizerChoice::Sgd), OptimizerConfig::Adam { .. }) => OptimizerConfig::Sgd {
                lr: SGD_DEFAULT_LR,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            (Some(OptimizerChoice::Adam), OptimizerConfig::Sgd { .. }) => OptimizerConfig::Adam {
                lr: ADAM_DEFAULT_LR,
                weight_decay: 0.0,
            },
            _ => current,
        }
    }

    /// The schedule asked for, with `current`'s parameters where it has them.
    fn schedule(&self, current: LrSchedule) -> LrSchedule {
        let (k, decay, divisor) = match current {
            LrSchedule::StepDecay {
                constant_epochs,
                decay,
            } => (constant_epochs, decay, DEFAULT_LR_DIVISOR),
            LrSchedule::Plateau { divisor } => (DEFAULT_DECAY_START, DEFAULT_LR_DECAY, divisor),
            LrSchedule::Constant => (DEFAULT_DECAY_START, DEFAULT_LR_DECAY, DEFAULT_LR_DIVISOR),
        };
        let kind = self.lr_schedule.unwrap_or(match current {
            LrSchedule::Constant => ScheduleChoice::Constant,
            LrSchedule::StepDecay { .. } => ScheduleChoice::Step,
            LrSchedule::Plateau { .. } => ScheduleChoice::Plateau,
        });
        match kind {
            ScheduleChoice::Constant => LrSchedule::Constant,
            ScheduleChoice::Step => LrSchedule::StepDecay {
                constant_epochs: self.decay_start.unwrap_or(k),
                decay: self.lr_decay.unwrap_or(decay),
            },
            ScheduleChoice::Plateau => LrSchedule::Plateau {
                divisor: self.lr_divisor.unwrap_or(divisor),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::presets::Preset;
    use super::*;

    #[test]
    fn no_overrides_keep_the_preset() {
        for p in [Preset::Default, Preset::Seed, Preset::ZarembaLarge] {
            assert_eq!(Overrides::default().apply(p.config()), p.config());
        }
    }

    #[test]
    fn switching_the_optimizer_resets_its_rate_unless_lr_is_given() {
        let seed = Preset::Seed.config(); // SGD 0.01, weight decay 1e-5
        let adam = Overrides {
            optimizer: Some(OptimizerChoice::Adam),
            ..Default::default()
        };
        assert_eq!(
            adam.apply(seed.clone()).optimizer,
            OptimizerConfig::Adam {
                lr: ADAM_DEFAULT_LR,
                weight_decay: 0.0
            }
        );
        let adam_at = Overrides {
            lr: Some(0.1),
            ..adam
        };
        assert_eq!(adam_at.apply(seed.clone()).optimizer.lr(), 0.1);
        // Naming the optimizer the preset has already changes nothing.
        let sgd = Overrides {
            optimizer: Some(OptimizerChoice::Sgd),
            ..Default::default()
        };
        assert_eq!(sgd.apply(seed.clone()).optimizer, seed.optimizer);
    }

    #[test]
    fn a_schedule_switch_keeps_the_presets_parameters_and_defaults_the_rest() {
        let small = Preset::ZarembaSmall.config(); // step: 4 epochs, x0.5
        let plateau = Overrides {
            lr_schedule: Some(ScheduleChoice::Plateau),
            ..Default::default()
        };
        assert_eq!(
            plateau.apply(small.clone()).lr_schedule,
            LrSchedule::Plateau {
                divisor: DEFAULT_LR_DIVISOR
            }
        );
        let later = Overrides {
            decay_start: Some(6),
            ..Default::default()
        };
        assert_eq!(
            later.apply(small).lr_schedule,
            LrSchedule::StepDecay {
                constant_epochs: 6,
                decay: 0.5
            }
        );
        let step = Overrides {
            lr_schedule: Some(ScheduleChoice::Step),
            lr_decay: Some(0.8),
            ..Default::default()
        };
        assert_eq!(
            step.apply(Preset::Default.config()).lr_schedule,
            LrSchedule::StepDecay {
                constant_epochs: DEFAULT_DECAY_START,
                decay: 0.8
            }
        );
    }

    #[test]
    fn values_land_in_their_fields() {
        let o = Overrides {
            hidden: Some(64),
            embed: Some(64),
            tied: true,
            init_range: Some(0.2),
            bptt: Some(7),
            batching: Some(Batching::Stream),
            clip: Some(1.5),
            ..Default::default()
        };
        let c = o.apply(Preset::Tiny.config());
        assert_eq!(
            (c.model.d_hidden, c.model.d_embed, c.model.tied),
            (64, 64, true)
        );
        assert_eq!(c.model.init, InitScheme::Uniform { range: 0.2 });
        assert_eq!(
            (c.data.bptt, c.data.batching, c.clip),
            (7, Batching::Stream, 1.5)
        );
    }
}
