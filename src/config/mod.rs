//! The experiment config: everything a run depends on, saved as `config.json` in the run folder
//! and compared on resume; the [`presets`] it starts from and the command line's [`overrides`].

use serde::{Deserialize, Serialize};

pub mod overrides;
pub mod presets;
pub mod schedule;

use crate::data::tokenizer::Tokenizer;
use crate::error::{Error, Result};
use crate::model::LmConfig;
use schedule::LrSchedule;

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
    /// How lines become tokens (configs written before it existed read as words).
    #[serde(default)]
    pub tokenizer: Tokenizer,
    /// Training tokens per epoch, in whole batches, the passes over the text read on end to end
    /// across epochs; 0 = an epoch is one pass (see [`crate::data::epochs`]).
    #[serde(default)]
    pub epoch_tokens: u64,
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
        let rate = crate::format::format_rate;
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
    /// A run folder (trained here or imported) whose model a new run starts from
    /// (`--init-from`): its sizes, output layer, tokenizer and vocabulary are taken and the
    /// vocabulary stays fixed (other words read as `<unk>`); the optimizer starts fresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<std::path::PathBuf>,
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
        m.softmax.check(m.d_hidden, m.tied).map_err(Error::Config)?;
        if self.data.max_vocab > 0 {
            // Caught here before preparing the data when the cap already rules it out.
            m.softmax
                .check_vocab(self.data.max_vocab)
                .map_err(Error::Config)?;
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
    use super::presets::Preset;

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
