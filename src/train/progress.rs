//! burn-train's renderer interface turned into [`TrainEvent`]s: the progress of each split, and
//! each finished epoch, which the [`EpochRecorder`] records before the event is sent. It shows
//! nothing itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use burn::train::logger::{EvaluationProgressLogger, TrainingProgressLogger};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};
use burn::train::renderer::{
    EvaluationName, MetricState, MetricsRenderer, MetricsRendererEvaluation,
    MetricsRendererTraining,
};
use burn::train::LearnerSummary;

use crate::run::history::{bits_per_char, word_perplexity, EpochStats};
use crate::run::recorder::{EpochRates, EpochRecorder};

use super::events::{EventSink, Split, SplitProgress, TrainEvent};
use super::guard::DivergenceGuard;
use super::metrics::{PERPLEXITY, TOKENS_PER_SECOND};

/// A [`MetricsRenderer`] that reports progress and finished epochs as [`TrainEvent`]s.
pub struct ProgressTracker {
    names: HashMap<MetricId, String>,
    split: Split,
    epoch: usize,
    total_epochs: usize,
    items_total: usize,
    batches: usize,
    items_per_batch: usize,
    split_start: Instant,
    /// Items of the split done before this process served its first batch (a resumed epoch's
    /// skipped batches), so that the pace counts only the batches trained here.
    split_base: Option<usize>,
    valid_seconds: f64,
    running: HashMap<&'static str, f64>,
    train_ppl: f64,
    valid_ppl: f64,
    /// Tokens per character of the training and validation text, where counted.
    tokens_per_char: (Option<f64>, Option<f64>),
    /// Tokens per word of the validation text, for character and subword models.
    tokens_per_word: Option<f64>,
    tokens_per_second: f64,
    epoch_start: Instant,
    recorder: Arc<Mutex<EpochRecorder>>,
    rates: EpochRates,
    guard: DivergenceGuard,
    events: EventSink,
}

impl ProgressTracker {
    /// A tracker of batches of `batch_items` items (sentences, or stream columns) that records
    /// each finished epoch with `recorder` (unless `guard` has tripped: such an epoch ends
    /// without a checkpoint) and reports to `events`.
    pub fn new(
        batch_items: usize,
        recorder: Arc<Mutex<EpochRecorder>>,
        guard: DivergenceGuard,
        events: EventSink,
    ) -> Self {
        let rates = recorder.lock().expect("recorder lock").rates();
        Self {
            names: HashMap::new(),
            split: Split::Train,
            epoch: 1,
            total_epochs: 0,
            items_total: 0,
            batches: 0,
            items_per_batch: batch_items.max(1),
            split_start: Instant::now(),
            split_base: None,
            valid_seconds: 0.0,
            running: HashMap::new(),
            train_ppl: f64::NAN,
            valid_ppl: f64::NAN,
            tokens_per_char: (None, None),
            tokens_per_word: None,
            tokens_per_second: f64::NAN,
            epoch_start: Instant::now(),
            recorder,
            rates,
            guard,
            events,
        }
    }

    /// Also reports bits per character, given the training and validation texts' tokens per
    /// character, and the validation perplexity per word, given its tokens per word.
    pub fn with_text_ratios(
        mut self,
        per_char: (Option<f64>, Option<f64>),
        per_word: Option<f64>,
    ) -> Self {
        self.tokens_per_char = per_char;
        self.tokens_per_word = per_word;
        self
    }

    /// Batches in the current split, from its items.
    fn total_batches(&self) -> usize {
        self.items_total.div_ceil(self.items_per_batch)
    }

    /// Where the current split stands after `items` of its items.
    fn progress(&self, items: usize) -> SplitProgress {
        let train = self.split == Split::Train;
        SplitProgress {
            split: self.split,
            epoch: self.epoch,
            epochs: self.total_epochs,
            batch: self.batches,
            batches: self.total_batches(),
            perplexity: self.running.get(PERPLEXITY).copied(),
            tokens_per_second: self
                .running
                .get(TOKENS_PER_SECOND)
                .copied()
                .filter(|_| train),
            seconds_left: self.time_left(items).filter(|_| train),
        }
    }

    /// Seconds left in this epoch's training and in the whole run, projected from this epoch's
    /// pace (over the batches trained since the split started here) and the last validation's
    /// duration.
    fn time_left(&self, items: usize) -> Option<(f64, f64)> {
        let trained = items.saturating_sub(self.split_base.unwrap_or(0));
        if trained == 0 || self.items_total == 0 {
            return None;
        }
        let per_item = self.split_start.elapsed().as_secs_f64() / trained as f64;
        let epoch_train = per_item * self.items_total as f64;
        let epoch_left = per_item * self.items_total.saturating_sub(items) as f64;
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

impl MetricsRendererTraining for ProgressTracker {
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

impl TrainingProgressLogger for ProgressTracker {
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
        let stats = EpochStats {
            epoch,
            train_perplexity: self.train_ppl,
            valid_perplexity: self.valid_ppl,
            tokens_per_second: self.tokens_per_second,
            seconds: self.epoch_start.elapsed().as_secs_f64(),
            lr: self.rates.lr(epoch),
            train_bits_per_char: bits_per_char(self.train_ppl.ln(), self.tokens_per_char.0),
            valid_bits_per_char: bits_per_char(self.valid_ppl.ln(), self.tokens_per_char.1),
            valid_word_perplexity: word_perplexity(self.valid_ppl.ln(), self.tokens_per_word),
        };
        if self.guard.tripped().is_none() {
            let warnings = self.recorder.lock().expect("recorder lock").record(&stats);
            for w in warnings {
                self.events.warn(w);
            }
        }
        self.events.send(TrainEvent::EpochEnded {
            stats,
            epochs: self.total_epochs,
        });
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
        self.split_base = None;
        self.batches = 0;
        self.running.clear();
        self.events.send(TrainEvent::SplitStarted(self.progress(0)));
    }

    fn update_split(&mut self, items_processed: usize) {
        // From the items, so that a run resumed within an epoch counts from where it stopped.
        self.batches = items_processed.div_ceil(self.items_per_batch);
        self.split_base
            .get_or_insert(items_processed.saturating_sub(self.items_per_batch));
        self.events
            .send(TrainEvent::Batch(self.progress(items_processed)));
    }

    fn end_split(&mut self) {
        if self.split == Split::Valid {
            self.valid_seconds = self.split_start.elapsed().as_secs_f64();
        }
        self.events.send(TrainEvent::SplitEnded);
    }

    fn end(&mut self) {}

    fn log_event_training(&mut self, _event: String) {}
}

impl EvaluationProgressLogger for ProgressTracker {
    fn start_global_progress(&mut self, _total_tests: usize) {}
    fn start_test(&mut self, _name: &str, _total_items: usize) {}
    fn update_test_progress(&mut self, _items_processed: usize) {}
    fn end_test(&mut self) {}
    fn end_global_progress(&mut self) {}
    fn log_event_evaluation(&mut self, _event: String) {}
}

impl MetricsRendererEvaluation for ProgressTracker {
    fn update_test(&mut self, _name: EvaluationName, _state: MetricState) {}
}

impl MetricsRenderer for ProgressTracker {
    fn manual_close(&mut self) {}

    fn register_metric(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schedule::LrSchedule;

    #[test]
    fn a_resumed_epoch_projects_its_time_from_the_batches_trained_since() {
        let tmp = tempfile::tempdir().unwrap();
        let recorder = EpochRecorder::open(tmp.path(), LrSchedule::default(), 0.01);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let events = {
            let seen = seen.clone();
            EventSink::new(move |e| {
                if let TrainEvent::Batch(p) = e {
                    seen.lock().unwrap().push(p.seconds_left);
                }
            })
        };
        let guard = DivergenceGuard::new(Default::default());
        let mut t = ProgressTracker::new(10, Arc::new(Mutex::new(recorder)), guard, events);
        t.start_split("train", 1000);
        std::thread::sleep(std::time::Duration::from_millis(20));
        // The first batch trained after resuming past 600 items: 10 items took >= 20 ms, so the
        // 390 left take >= 0.78 s (counting the skipped items as trained said ~0.013 s).
        t.update_split(610);
        let (epoch_left, run_left) = seen.lock().unwrap()[0].expect("a projection");
        assert!(epoch_left >= 0.78, "{epoch_left}");
        assert!(run_left >= epoch_left);
    }
}
