//! The experiment config: everything a run depends on, saved as `config.json` in the run folder
//! and compared on resume.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::{InitScheme, LmConfig, LossNorm};

/// The reference's sentence buckets (MXNet `lstm_bucketing.py`).
pub const REFERENCE_BUCKETS: [usize; 5] = [10, 20, 40, 60, 80];

/// How batches are formed from the corpus.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// Bucket lengths in tokens (end of sentence included); longer sentences are dropped.
    pub buckets: Vec<usize>,
    /// Sentences per batch.
    pub batch_size: usize,
    /// Largest vocabulary, specials included; 0 keeps every training word.
    pub max_vocab: usize,
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
    /// Seed of parameter init and shuffling.
    pub seed: u64,
}

/// Named starting points for a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A good general default: 2 x 256 LSTM, Adam, 10,000-word vocabulary, 3 epochs.
    Default,
    /// The reference, MXNet's bucketing PTB example: 2 x 256 LSTM, embed 256, batch 50,
    /// SGD lr 0.01, weight decay 1e-5, Xavier(in, 2.34) init, forget bias 1, 2 epochs.
    Seed,
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
        let model = |e, h, l, loss_norm| LmConfig {
            vocab_size: 0,
            d_embed: e,
            d_hidden: h,
            n_layers: l,
            init: xavier,
            loss_norm,
        };
        let data = |batch_size, max_vocab| DataConfig {
            buckets: REFERENCE_BUCKETS.to_vec(),
            batch_size,
            max_vocab,
        };
        match self {
            Preset::Default => ExperimentConfig {
                model: model(256, 256, 2, LossNorm::Token),
                data: data(32, 10_000),
                optimizer: OptimizerConfig::Adam {
                    lr: 2e-3,
                    weight_decay: 0.0,
                },
                epochs: 3,
                seed: 1,
            },
            Preset::Seed => ExperimentConfig {
                model: model(256, 256, 2, LossNorm::Batch),
                data: data(50, 0),
                optimizer: OptimizerConfig::Sgd {
                    lr: 0.01,
                    momentum: 0.0,
                    weight_decay: 1e-5,
                },
                epochs: 2,
                seed: 1,
            },
            Preset::Tiny => ExperimentConfig {
                model: model(32, 32, 1, LossNorm::Token),
                data: data(16, 2_000),
                optimizer: OptimizerConfig::Adam {
                    lr: 1e-2,
                    weight_decay: 0.0,
                },
                epochs: 1,
                seed: 1,
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
        if !(self.optimizer.lr() > 0.0 && self.optimizer.lr().is_finite()) {
            return bad("--lr must be a positive number");
        }
        if self.epochs == 0 {
            return bad("--epochs must be at least 1");
        }
        Ok(())
    }

    /// Whether a run saved with `saved` can be continued by this config: everything but the
    /// number of epochs must match. Returns the differences, `section.field: run has X, this
    /// command has Y`, or an empty list.
    pub fn resume_differences(&self, saved: &ExperimentConfig) -> Vec<String> {
        let mut mine = serde_json::to_value(self).expect("config serialises");
        let mut theirs = serde_json::to_value(saved).expect("config serialises");
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
        b.model.d_hidden = 128;
        b.optimizer = b.optimizer.with_lr(0.5);
        let d = b.resume_differences(&a);
        assert_eq!(
            d,
            vec![
                "model.d_hidden: run has 256, this command has 128",
                "optimizer.lr: run has 0.01, this command has 0.5"
            ]
        );
    }
}
