//! What training records of each finished epoch ([`EpochRecorder`]), and [`EpochRates`], the
//! one source of each epoch's learning rate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::config::schedule::LrSchedule;

use super::files;
use super::history::{append_history, read_history, EpochStats};
use super::plot::{run_title, write_curves};

/// The learning rate of every epoch, from one source: the schedule, the base rate and the
/// validation perplexities of the epochs recorded so far ([`LrSchedule::lr_for_epoch`]). The
/// burn-train scheduler, the recorded history and the divergence message all read it; clones
/// share the recorded perplexities.
#[derive(Debug, Clone)]
pub struct EpochRates {
    schedule: LrSchedule,
    base: f64,
    valid: Arc<Mutex<Vec<f64>>>,
}

impl EpochRates {
    /// The rates of `schedule` from `base`, after epochs whose validation perplexities are
    /// `valid` (epoch 1's first).
    pub fn new(schedule: LrSchedule, base: f64, valid: Vec<f64>) -> Self {
        Self {
            schedule,
            base,
            valid: Arc::new(Mutex::new(valid)),
        }
    }

    /// The learning rate of 1-based `epoch`.
    pub fn lr(&self, epoch: usize) -> f64 {
        let valid = self.valid.lock().expect("rates lock");
        self.schedule.lr_for_epoch(self.base, epoch, &valid)
    }

    fn push(&self, valid_perplexity: f64) {
        self.valid
            .lock()
            .expect("rates lock")
            .push(valid_perplexity);
    }
}

/// Records each finished epoch of a training run: appends it to `history.jsonl`, redraws
/// `curves.svg`, and hands its validation perplexity to the [`EpochRates`] the schedule reads.
#[derive(Debug)]
pub struct EpochRecorder {
    dir: PathBuf,
    rates: EpochRates,
    recorded: Vec<EpochStats>,
}

impl EpochRecorder {
    /// A recorder for the run in `run_dir` trained with `schedule` from `base`; a resumed run
    /// starts from the epochs its history holds.
    pub fn open(run_dir: &Path, schedule: LrSchedule, base: f64) -> Self {
        let earlier = read_history(run_dir);
        Self {
            dir: run_dir.to_path_buf(),
            rates: EpochRates::new(
                schedule,
                base,
                earlier.iter().map(|s| s.valid_perplexity).collect(),
            ),
            recorded: Vec::new(),
        }
    }

    /// The rates, shared with this recorder.
    pub fn rates(&self) -> EpochRates {
        self.rates.clone()
    }

    /// Records `stats` (its `lr` read from [`EpochRates::lr`]). Returns the warnings of what could
    /// not be written (training goes on: the checkpoint decides what is kept).
    pub fn record(&mut self, stats: &EpochStats) -> Vec<String> {
        let mut warnings = Vec::new();
        self.rates.push(stats.valid_perplexity);
        self.recorded.push(stats.clone());
        if let Err(e) = append_history(&self.dir.join(files::HISTORY), stats) {
            warnings.push(format!("cannot record epoch {}: {e}", stats.epoch));
        }
        if let Err(e) = write_curves(&self.dir, &run_title(&self.dir), &read_history(&self.dir)) {
            warnings.push(e.to_string());
        }
        warnings
    }

    /// The epochs recorded by this recorder, in order.
    pub fn recorded(&self) -> &[EpochStats] {
        &self.recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(epoch: usize, valid: f64) -> EpochStats {
        EpochStats {
            epoch,
            train_perplexity: 2.0 * valid,
            valid_perplexity: valid,
            tokens_per_second: 100.0,
            seconds: 1.0,
            lr: 1.0,
            train_bits_per_char: None,
            valid_bits_per_char: None,
            valid_word_perplexity: None,
        }
    }

    #[test]
    fn the_recorder_feeds_the_plateau_rates_and_writes_history_and_curves() {
        let dir = tempfile::tempdir().unwrap();
        let plateau = LrSchedule::Plateau { divisor: 4.0 };
        let mut recorder = EpochRecorder::open(dir.path(), plateau, 1.0);
        let rates = recorder.rates();
        assert_eq!(rates.lr(2), 1.0);
        assert!(recorder.record(&stats(1, 300.0)).is_empty());
        assert!(recorder.record(&stats(2, 310.0)).is_empty());
        // Epoch 2 did not improve on epoch 1, so epoch 3 trains at a quarter.
        assert_eq!(rates.lr(3), 0.25);
        let written: Vec<(usize, f64)> = read_history(dir.path())
            .iter()
            .map(|s| (s.epoch, s.valid_perplexity))
            .collect();
        assert_eq!(written, [(1, 300.0), (2, 310.0)]);
        assert!(dir.path().join(crate::run::plot::CURVES).is_file());
        // A resumed run's recorder starts from the recorded epochs.
        let again = EpochRecorder::open(dir.path(), plateau, 1.0);
        assert_eq!(again.rates().lr(3), 0.25);
        assert_eq!(again.recorded().len(), 0);
    }
}
