//! Progress display for burn-train: a live bar in a terminal, plain log lines otherwise, and one
//! summary line per epoch either way.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::LearnerSummary;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::metrics::{PERPLEXITY, TOKENS_PER_SECOND};

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Training perplexity over the epoch (padding excluded).
    pub train_perplexity: f64,
    /// Validation perplexity after the epoch (padding excluded).
    pub valid_perplexity: f64,
    /// Real training tokens per second.
    pub tokens_per_second: f64,
    /// Wall time of the epoch, training and validation, in seconds.
    pub seconds: f64,
    /// Learning rate the epoch trained at (0 in histories written before it was recorded).
    #[serde(default)]
    pub lr: f64,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live bar when stdout is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines (see [`Progress::log_every`]).
    Plain,
    /// Only the per-epoch summary lines.
    Quiet,
}

/// How progress is shown, and how often in plain mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bar, plain lines or quiet.
    pub mode: ProgressMode,
    /// In plain mode, one line every this many training batches; 0 = about ten per epoch.
    pub log_every: usize,
}

impl From<ProgressMode> for Progress {
    fn from(mode: ProgressMode) -> Self {
        Self { mode, log_every: 0 }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Split {
    Train,
    Valid,
}

/// A [`MetricsRenderer`] that prints progress and hands each finished epoch to a callback.
pub struct Renderer {
    names: HashMap<MetricId, String>,
    mode: ProgressMode,
    log_every: usize,
    split: Split,
    epoch: usize,
    total_epochs: usize,
    items_total: usize,
    batches: usize,
    items_per_batch: usize,
    split_start: Instant,
    valid_seconds: f64,
    running: HashMap<&'static str, f64>,
    train_ppl: f64,
    valid_ppl: f64,
    tokens_per_second: f64,
    epoch_start: Instant,
    bar: Option<ProgressBar>,
    on_epoch: Box<dyn FnMut(&mut EpochStats) + Send + Sync>,
}

impl Renderer {
    /// A renderer showing `progress` of batches of `batch_items` items (sentences, or stream
    /// columns); `on_epoch` receives every finished epoch before its summary line is printed,
    /// and fills in what the renderer does not know (the learning rate).
    pub fn new(
        progress: Progress,
        batch_items: usize,
        on_epoch: Box<dyn FnMut(&mut EpochStats) + Send + Sync>,
    ) -> Self {
        let mode = match progress.mode {
            ProgressMode::Auto if !std::io::stdout().is_terminal() => ProgressMode::Plain,
            m => m,
        };
        Self {
            names: HashMap::new(),
            mode,
            log_every: progress.log_every,
            split: Split::Train,
            epoch: 1,
            total_epochs: 0,
            items_total: 0,
            batches: 0,
            items_per_batch: batch_items.max(1),
            split_start: Instant::now(),
            valid_seconds: 0.0,
            running: HashMap::new(),
            train_ppl: f64::NAN,
            valid_ppl: f64::NAN,
            tokens_per_second: f64::NAN,
            epoch_start: Instant::now(),
            bar: None,
            on_epoch,
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    /// Batches in the current split, from its items.
    fn total_batches(&self) -> usize {
        self.items_total.div_ceil(self.items_per_batch)
    }

    /// The progress line: epoch, batch, running loss and perplexity, tokens/s, time left.
    fn status(&self, items: usize) -> String {
        let split = match self.split {
            Split::Train => "train",
            Split::Valid => "valid",
        };
        let mut s = format!(
            "epoch {}/{} {split} batch {}/{}",
            self.epoch,
            self.total_epochs,
            self.batches,
            self.total_batches()
        );
        if let Some(&p) = self.running.get(PERPLEXITY) {
            // The running perplexity is exp(mean loss per token) over the epoch so far.
            s += &format!(" | loss {:.4} | ppl {p:.2}", p.ln());
        }
        if self.split == Split::Train {
            if let Some(t) = self.running.get(TOKENS_PER_SECOND) {
                s += &format!(" | {t:.0} tok/s");
            }
            if let Some((epoch_left, run_left)) = self.time_left(items) {
                s += &format!(
                    " | epoch left {} | run left {}",
                    crate::summary::format_duration(epoch_left),
                    crate::summary::format_duration(run_left)
                );
            }
        }
        s
    }

    /// Seconds left in this epoch's training and in the whole run, projected from this epoch's
    /// pace and the last validation's duration.
    fn time_left(&self, items: usize) -> Option<(f64, f64)> {
        if items == 0 || self.items_total == 0 {
            return None;
        }
        let done = items as f64 / self.items_total as f64;
        let elapsed = self.split_start.elapsed().as_secs_f64();
        let epoch_train = elapsed / done;
        let epoch_left = epoch_train - elapsed;
        let later_epochs = self.total_epochs.saturating_sub(self.epoch) as f64;
        let run_left =
            epoch_left + self.valid_seconds + later_epochs * (epoch_train + self.valid_seconds);
        Some((epoch_left, run_left))
    }

    fn record(&mut self, split: Split, state: MetricState) {
        let MetricState::Numeric(entry, Some(value)) = state else {
            return;
        };
        let Some(name) = self.names.get(&entry.metric_id) else {
            return;
        };
        let key = match name.as_str() {
            PERPLEXITY => PERPLEXITY,
            TOKENS_PER_SECOND => TOKENS_PER_SECOND,
            _ => return,
        };
        match value {
            NumericEntry::Final(v) => match (split, key) {
                (Split::Train, PERPLEXITY) => self.train_ppl = v,
                (Split::Valid, PERPLEXITY) => self.valid_ppl = v,
                (Split::Train, TOKENS_PER_SECOND) => self.tokens_per_second = v,
                _ => {}
            },
            other => {
                self.running.insert(key, other.current());
            }
        }
    }
}

impl MetricsRendererTraining for Renderer {
    fn update_train(&mut self, state: MetricState) {
        self.record(Split::Train, state);
    }

    fn update_valid(&mut self, state: MetricState) {
        self.record(Split::Valid, state);
    }

    fn on_train_end(
        &mut self,
        _summary: Option<LearnerSummary>,
    ) -> Result<(), Box<dyn std::error::Error>> {
        Ok(())
    }
}

impl TrainingProgressLogger for Renderer {
    fn start(
        &mut self,
        total_epochs: usize,
        starting_epoch: usize,
        _total_items: Option<usize>,
        _label: Option<&str>,
    ) {
        self.total_epochs = total_epochs;
        self.epoch = starting_epoch;
    }

    fn update_epoch(&mut self, epoch: usize) {
        let mut stats = EpochStats {
            epoch,
            train_perplexity: self.train_ppl,
            valid_perplexity: self.valid_ppl,
            tokens_per_second: self.tokens_per_second,
            seconds: self.epoch_start.elapsed().as_secs_f64(),
            lr: f64::NAN,
        };
        (self.on_epoch)(&mut stats);
        self.println(format!(
            "epoch {}/{}: train ppl {:.2} | valid ppl {:.2} | lr {} | {:.0} tok/s | {:.1} s",
            stats.epoch,
            self.total_epochs,
            stats.train_perplexity,
            stats.valid_perplexity,
            stats.lr,
            stats.tokens_per_second,
            stats.seconds
        ));
        self.epoch = epoch + 1;
    }

    fn start_split(&mut self, split: &str, total_items: usize) {
        self.split_start = Instant::now();
        self.split = if split.eq_ignore_ascii_case("valid") {
            Split::Valid
        } else {
            self.epoch_start = Instant::now();
            self.train_ppl = f64::NAN;
            self.valid_ppl = f64::NAN;
            self.tokens_per_second = f64::NAN;
            Split::Train
        };
        self.items_total = total_items;
        self.batches = 0;
        self.running.clear();
        if self.mode == ProgressMode::Auto {
            let bar = ProgressBar::new(total_items as u64);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar}")
                    .expect("static template"),
            );
            bar.set_message(self.status(0));
            self.bar = Some(bar);
        }
    }

    fn update_split(&mut self, items_processed: usize) {
        // From the items, so that a run resumed within an epoch counts from where it stopped.
        self.batches = items_processed.div_ceil(self.items_per_batch);
        if let Some(bar) = &self.bar {
            bar.set_position(items_processed as u64);
            bar.set_message(self.status(items_processed));
        } else if self.mode == ProgressMode::Plain && self.split == Split::Train {
            let every = match self.log_every {
                0 => (self.total_batches() / 10).max(1),
                n => n,
            };
            if self.batches.is_multiple_of(every) && items_processed < self.items_total {
                println!("{}", self.status(items_processed));
            }
        }
    }

    fn end_split(&mut self) {
        if self.split == Split::Valid {
            self.valid_seconds = self.split_start.elapsed().as_secs_f64();
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn end(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for Renderer {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for Renderer {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for Renderer {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}
