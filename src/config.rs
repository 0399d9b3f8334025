//! The experiment config: everything a run depends on, saved as `config.json` in the run folder
//! and compared on resume.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{InitScheme, LmConfig, LossNorm};
use crate::schedule::LrSchedule;

/// The reference's sentence buckets (MXNet `lstm_bucketing.py`).
pub const REFERENCE_BUCKETS: [usize; 5] = [10, 20, 40, 60, 80];

/// How the corpus is cut into batches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Batching {
    /// Sentences padded into length buckets, each from a zero state (the reference).
    #[default]
    Buckets,
    /// One contiguous stream cut into `batch_size` columns and windows of `bptt` steps; each
    /// window starts from the state the previous window ended in (truncated BPTT, Zaremba).
    Stream,
}

/// How batches are formed from the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Buckets or a contiguous stream.
    #[serde(default)]
    pub batching: Batching,
    /// Bucket lengths in tokens (end of sentence included); longer sentences are dropped.
    /// Used by [`Batching::Buckets`].
    pub buckets: Vec<usize>,
    /// Steps per window of truncated backpropagation through time ([`Batching::Stream`]).
    #[serde(default = "default_bptt")]
    pub bptt: usize,
    /// Sentences per batch (buckets) or parallel columns of the stream.
    pub batch_size: usize,
    /// Largest vocabulary, specials included; 0 keeps every training word.
    pub max_vocab: usize,
}

fn default_bptt() -> usize {
    35
}

/// The optimizer and its settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum (0 = none).
        momentum: f64,
        /// L2 weight decay on weight matrices; biases are not decayed.
        weight_decay: f64,
    },
    /// Adam.
    Adam {
        /// Learning rate.
        lr: f64,
        /// L2 weight decay on weight matrices; biases are not decayed.
        weight_decay: f64,
    },
}

impl std::fmt::Display for OptimizerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rate = crate::schedule::format_rate;
        match *self {
            Self::Sgd {
                lr,
                momentum,
                weight_decay,
            } => write!(
                f,
                "SGD lr {}, momentum {momentum}, weight decay {weight_decay}",
                rate(lr)
            ),
            Self::Adam { lr, weight_decay } => {
                write!(f, "Adam lr {}, weight decay {weight_decay}", rate(lr))
            }
        }
    }
}

impl OptimizerConfig {
    /// The learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } => *lr,
        }
    }

    /// The same optimizer with learning rate `lr`.
    pub fn with_lr(mut self, new: f64) -> Self {
        match &mut self {
            Self::Sgd { lr, .. } | Self::Adam { lr, .. } => *lr = new,
        }
        self
    }
}

/// Everything a training run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentConfig {
    /// Model sizes; `vocab_size` is set from the training data.
    pub model: LmConfig,
    /// Batching.
    pub data: DataConfig,
    /// Optimizer.
    pub optimizer: OptimizerConfig,
    /// Number of epochs to train in total (a resumed run may raise it).
    pub epochs: usize,
    /// Seed of parameter init, shuffling and dropout masks.
    pub seed: u64,
    /// Largest global L2 norm of the gradients (PyTorch's `clip_grad_norm_`); 0 = no clipping.
    #[serde(default)]
    pub clip: f64,
    /// How the learning rate changes from epoch to epoch.
    #[serde(default)]
    pub lr_schedule: LrSchedule,
}

/// Named starting points for a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A good general default: 2 x 256 LSTM, Adam, 10,000-word vocabulary, 3 epochs.
    Default,
    /// The reference, MXNet's bucketing PTB example: 2 x 256 LSTM, embed 256, batch 50,
    /// SGD lr 0.01, weight decay 1e-5, Xavier(in, 2.34) init, forget bias 1, 2 epochs.
    Seed,
    /// Zaremba et al. 2014, small: 2 x 200, stream batch 20, bptt 20, uniform init 0.1, SGD lr 1
    /// for 4 epochs then x0.5 per epoch, 13 epochs, clip 5, no dropout (114.5 test ppl on PTB).
    ZarembaSmall,
    /// Zaremba et al. 2014, medium: 2 x 650, bptt 35, uniform 0.05, dropout 0.5, SGD lr 1 for
    /// 6 epochs then x0.8 per epoch, 39 epochs, clip 5 (82.7 test ppl on PTB).
    ZarembaMedium,
    /// Zaremba et al. 2014, large: 2 x 1500, bptt 35, uniform 0.04, dropout 0.65, SGD lr 1 for
    /// 14 epochs then /1.15 per epoch, 55 epochs, clip 10 (78.4 test ppl on PTB).
    ZarembaLarge,
    /// A tiny model for smoke tests: 1 x 32 LSTM, 2,000-word vocabulary, 1 epoch.
    Tiny,
}

impl Preset {
    /// The config of this preset.
    pub fn config(self) -> ExperimentConfig {
        let xavier = InitScheme::MxXavier {
            magnitude: 2.34,
            forget_bias: 1.0,
        };
        let model = |e, h, l, init, loss_norm| LmConfig {
            vocab_size: 0,
            d_embed: e,
            d_hidden: h,
            n_layers: l,
            init,
            loss_norm,
            dropout: 0.0,
            tied: false,
        };
        let data = |batching, bptt, batch_size, max_vocab| DataConfig {
            batching,
            buckets: REFERENCE_BUCKETS.to_vec(),
            bptt,
            batch_size,
            max_vocab,
        };
        let sgd = |lr| OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        // Zaremba et al. (and TensorFlow's ptb_word_lm that reproduces them): a stream of batch
        // 20, loss summed over time and averaged over the batch, SGD lr 1 with a step decay.
        let zaremba = |h, bptt, range, dropout, epochs, constant_epochs, decay, clip| {
            let mut m = model(h, h, 2, InitScheme::Uniform { range }, LossNorm::Batch);
            m.dropout = dropout;
            ExperimentConfig {
                model: m,
                data: data(Batching::Stream, bptt, 20, 0),
                optimizer: sgd(1.0),
                epochs,
                seed: 1,
                clip,
                lr_schedule: LrSchedule::StepDecay {
                    constant_epochs,
                    decay,
                },
            }
        };
        match self {
            Preset::Default => ExperimentConfig {
                model: model(256, 256, 2, xavier, LossNorm::Token),
                data: data(Batching::Buckets, 35, 32, 10_000),
                optimizer: OptimizerConfig::Adam {
                    lr: 2e-3,
                    weight_decay: 0.0,
                },
                epochs: 3,
                seed: 1,
                clip: 0.0,
                lr_schedule: LrSchedule::Constant,
            },
            Preset::Seed => ExperimentConfig {
                model: model(256, 256, 2, xavier, LossNorm::Batch),
                data: data(Batching::Buckets, 35, 50, 0),
                optimizer: OptimizerConfig::Sgd {
                    lr: 0.01,
                    momentum: 0.0,
                    weight_decay: 1e-5,
                },
                epochs: 2,
                seed: 1,
                clip: 0.0,
                lr_schedule: LrSchedule::Constant,
            },
            Preset::ZarembaSmall => zaremba(200, 20, 0.1, 0.0, 13, 4, 0.5, 5.0),
            Preset::ZarembaMedium => zaremba(650, 35, 0.05, 0.5, 39, 6, 0.8, 5.0),
            Preset::ZarembaLarge => zaremba(1500, 35, 0.04, 0.65, 55, 14, 1.0 / 1.15, 10.0),
            Preset::Tiny => ExperimentConfig {
                model: model(32, 32, 1, xavier, LossNorm::Token),
                data: data(Batching::Buckets, 35, 16, 2_000),
                optimizer: OptimizerConfig::Adam {
                    lr: 1e-2,
                    weight_decay: 0.0,
                },
                epochs: 1,
                seed: 1,
                clip: 0.0,
                lr_schedule: LrSchedule::Constant,
            },
        }
    }
}

impl ExperimentConfig {
    /// Checks values a user can set by hand.
    pub fn validate(&self) -> Result<()> {
        let m = &self.model;
        let bad = |what: &str| Err(Error::Config(what.to_string()));
        if m.d_embed == 0 || m.d_hidden == 0 || m.n_layers == 0 {
            return bad("embedding size, hidden size and layer count must be at least 1");
        }
        if self.data.batch_size == 0 {
            return bad("--batch-size must be at least 1");
        }
        if self.data.buckets.is_empty() || self.data.buckets.contains(&0) {
            return bad("--buckets needs at least one positive length, e.g. 10,20,40,60,80");
        }
        if self.data.bptt == 0 {
            return bad("--bptt must be at least 1");
        }
        if !(0.0..1.0).contains(&m.dropout) {
            return bad("--dropout must be in [0, 1), e.g. 0.5");
        }
        if m.tied && m.d_embed != m.d_hidden {
            return bad(
                "--tied shares the embedding with the output layer, so it needs --embed \
                        equal to --hidden",
            );
        }
        if !(self.clip >= 0.0 && self.clip.is_finite()) {
            return bad("--clip must be 0 (off) or a positive number, e.g. 5");
        }
        self.lr_schedule.validate()?;
        if !(self.optimizer.lr() > 0.0 && self.optimizer.lr().is_finite()) {
            return bad("--lr must be a positive number");
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        Ok(())
    }

    /// Whether a run saved with `saved` can be continued by this config: everything but the
    /// number of epochs and the learning rate must match (a run that diverged continues from its
    /// last checkpoint with a lower `--lr`). Returns the differences, `section.field: run has X,
    /// this command has Y`, or an empty list.
    pub fn resume_differences(&self, saved: &ExperimentConfig) -> Vec<String> {
        let mut mine = self.clone();
        let mut theirs = saved.clone();
        mine.optimizer = mine.optimizer.with_lr(0.0);
        theirs.optimizer = theirs.optimizer.with_lr(0.0);
        let mut mine = serde_json::to_value(&mine).expect("config serialises");
        let mut theirs = serde_json::to_value(&theirs).expect("config serialises");
        mine["epochs"] = serde_json::Value::Null;
        theirs["epochs"] = serde_json::Value::Null;
        let mut out = Vec::new();
        diff("", &theirs, &mine, &mut out);
        out
    }
}

fn diff(path: &str, run: &serde_json::Value, now: &serde_json::Value, out: &mut Vec<String>) {
    use serde_json::Value::Object;
    match (run, now) {
        (Object(a), Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let null = serde_json::Value::Null;
                diff(
                    &p,
                    a.get(k).unwrap_or(&null),
                    b.get(k).unwrap_or(&null),
                    out,
                );
            }
        }
        (a, b) if a != b => out.push(format!("{path}: run has {a}, this command has {b}")),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_preset_is_the_reference() {
        let c = Preset::Seed.config();
        assert_eq!(
            (c.model.d_embed, c.model.d_hidden, c.model.n_layers),
            (256, 256, 2)
        );
        assert_eq!(c.data.batch_size, 50);
        assert_eq!(c.data.buckets, vec![10, 20, 40, 60, 80]);
        assert_eq!(
            c.optimizer,
            OptimizerConfig::Sgd {
                lr: 0.01,
                momentum: 0.0,
                weight_decay: 1e-5
            }
        );
        assert_eq!(c.epochs, 2);
    }

    #[test]
    fn resume_allows_more_epochs_but_names_other_changes() {
        let a = Preset::Seed.config();
        let mut b = a.clone();
        b.epochs = 10;
        assert!(b.resume_differences(&a).is_empty());
        b.optimizer = b.optimizer.with_lr(0.5);
        assert!(b.resume_differences(&a).is_empty(), "the rate may change");
        b.model.d_hidden = 128;
        b.clip = 1.0;
        let d = b.resume_differences(&a);
        assert_eq!(
            d,
            vec![
                "clip: run has 0.0, this command has 1.0",
                "model.d_hidden: run has 256, this command has 128",
            ]
        );
    }
}
