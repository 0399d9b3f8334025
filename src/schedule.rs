//! Learning-rate schedules that change the rate from epoch to epoch.
//!
//! The rate of an epoch is a pure function of the base rate, the epoch number and the
//! validation perplexities of the epochs before it ([`LrSchedule::lr_for_epoch`]), so a resumed
//! run recomputes it from `history.jsonl` and lands on the rate the uninterrupted run had.
//! [`EpochLrScheduler`] plugs that function into burn-train, which steps schedulers once per
//! optimizer step.

use std::sync::{Arc, Mutex};

use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the learning rate changes from epoch to epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum LrSchedule {
    /// The base rate throughout.
    #[default]
    Constant,
    /// Zaremba et al.: the base rate for the first `constant_epochs` epochs, then multiplied by
    /// `decay` once per further epoch (epoch `e` trains at `lr * decay^max(0, e - k)`).
    StepDecay {
        /// Epochs at the base rate (`k`).
        constant_epochs: usize,
        /// Factor per epoch after those, e.g. 0.5.
        decay: f64,
    },
    /// PyTorch's word_language_model: divide the rate by `divisor` after every epoch whose
    /// validation perplexity is not lower than the best one before it.
    Plateau {
        /// 4 in PyTorch's example.
        divisor: f64,
    },
}

impl LrSchedule {
    /// Checks values a user can set by hand.
    pub fn validate(&self) -> Result<()> {
        match *self {
            LrSchedule::StepDecay { decay, .. } if !(decay > 0.0 && decay <= 1.0) => Err(
                Error::Config(format!("--lr-decay must be in (0, 1], got {decay}")),
            ),
            LrSchedule::Plateau { divisor } if !(divisor >= 1.0 && divisor.is_finite()) => Err(
                Error::Config(format!("--lr-divisor must be at least 1, got {divisor}")),
            ),
            _ => Ok(()),
        }
    }

    /// The rate of 1-based `epoch`, given `base` and the validation perplexities of epochs
    /// `1..epoch` (`valid[i]` is epoch `i + 1`'s; entries from `epoch` on are ignored).
    pub fn lr_for_epoch(&self, base: f64, epoch: usize, valid: &[f64]) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::StepDecay {
                constant_epochs,
                decay,
            } => base * decay.powi(epoch.saturating_sub(constant_epochs) as i32),
            LrSchedule::Plateau { divisor } => {
                let seen = &valid[..valid.len().min(epoch.saturating_sub(1))];
                let mut best = f64::INFINITY;
                let mut lr = base;
                for &ppl in seen {
                    if ppl < best {
                        best = ppl;
                    } else {
                        lr /= divisor;
                    }
                }
                lr
            }
        }
    }
}

/// A burn-train [`LrScheduler`] for an [`LrSchedule`].
///
/// burn-train calls [`step`](LrScheduler::step) once per optimizer step; the scheduler counts
/// them to know the epoch (`iterations_per_epoch` steps each). The validation perplexities come
/// from the run's epoch history, which the renderer appends to when an epoch ends; burn-train
/// flushes its event processor before the checkpoint that ends every epoch, so the entry of
/// epoch `e` is there before the first step of epoch `e + 1`. The record holds the step count
/// and the steps per epoch it was counted in, so a run resumed with another number of steps per
/// epoch (bucket batches on another number of devices) still starts at the right epoch.
#[derive(Clone)]
pub struct EpochLrScheduler {
    schedule: LrSchedule,
    base: f64,
    iterations_per_epoch: usize,
    iteration: usize,
    valid: Arc<Mutex<Vec<f64>>>,
}

impl EpochLrScheduler {
    /// A scheduler at the start of epoch 1; `valid` is the shared list of validation
    /// perplexities, one per finished epoch.
    pub fn new(
        schedule: LrSchedule,
        base: f64,
        iterations_per_epoch: usize,
        valid: Arc<Mutex<Vec<f64>>>,
    ) -> Self {
        Self {
            schedule,
            base,
            iterations_per_epoch: iterations_per_epoch.max(1),
            iteration: 0,
            valid,
        }
    }

    /// The 1-based epoch of the next step.
    fn epoch(&self) -> usize {
        self.iteration / self.iterations_per_epoch + 1
    }
}

impl LrScheduler for EpochLrScheduler {
    fn step(&mut self) -> LearningRate {
        let epoch = self.epoch();
        self.iteration += 1;
        let valid = self.valid.lock().expect("history lock");
        self.schedule.lr_for_epoch(self.base, epoch, &valid)
    }

    fn to_record(&self) -> LrSchedulerRecord {
        LrSchedulerRecord::new()
            .with_scalar("iteration", self.iteration as u64)
            .with_scalar("iterations_per_epoch", self.iterations_per_epoch as u64)
    }

    fn load_record(&mut self, record: LrSchedulerRecord) {
        let Some(i) = record.scalar::<u64>("iteration").map(|i| i as usize) else {
            return;
        };
        // Records written before the per-epoch count was saved counted in this run's.
        let per_epoch = record
            .scalar::<u64>("iterations_per_epoch")
            .map_or(self.iterations_per_epoch, |n| (n as usize).max(1));
        self.iteration = i / per_epoch * self.iterations_per_epoch + i % per_epoch;
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Constant => write!(f, "constant"),
            Self::StepDecay {
                constant_epochs,
                decay,
            } => write!(f, "step (x{decay} per epoch after epoch {constant_epochs})"),
            Self::Plateau { divisor } => write!(f, "plateau (/{divisor} when valid ppl stalls)"),
        }
    }
}

/// A learning rate for messages: plain decimals between 1e-4 and 1e4, else scientific
/// (`0.0025`, `20`, `1e30`).
pub fn format_rate(lr: f64) -> String {
    if lr != 0.0 && !(1e-4..1e4).contains(&lr.abs()) {
        format!("{lr:e}")
    } else {
        format!("{lr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_print_short() {
        assert_eq!(format_rate(0.0025), "0.0025");
        assert_eq!(format_rate(20.0), "20");
        assert_eq!(format_rate(1e30), "1e30");
        assert_eq!(format_rate(5e-6), "5e-6");
    }

    #[test]
    fn step_decay_is_constant_then_geometric() {
        let s = LrSchedule::StepDecay {
            constant_epochs: 4,
            decay: 0.5,
        };
        let lrs: Vec<f64> = (1..=7).map(|e| s.lr_for_epoch(1.0, e, &[])).collect();
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 1.0, 0.5, 0.25, 0.125]);
    }

    #[test]
    fn plateau_divides_after_each_epoch_that_does_not_improve() {
        let s = LrSchedule::Plateau { divisor: 4.0 };
        let valid = [300.0, 200.0, 210.0, 190.0, 195.0, 195.0];
        let lrs: Vec<f64> = (1..=7).map(|e| s.lr_for_epoch(20.0, e, &valid)).collect();
        // Epoch 3 (210) and 5 (195 > 190) and 6 (195) fail to improve on the best.
        assert_eq!(lrs, vec![20.0, 20.0, 20.0, 5.0, 5.0, 1.25, 0.3125]);
        // Only the epochs before the asked one count.
        assert_eq!(s.lr_for_epoch(20.0, 3, &valid), 20.0);
        assert_eq!(LrSchedule::Constant.lr_for_epoch(0.3, 9, &valid), 0.3);
    }

    #[test]
    fn the_scheduler_counts_steps_into_epochs_and_resumes_from_its_record() {
        let valid = Arc::new(Mutex::new(Vec::new()));
        let schedule = LrSchedule::StepDecay {
            constant_epochs: 1,
            decay: 0.5,
        };
        let mut s = EpochLrScheduler::new(schedule, 1.0, 3, valid.clone());
        let lrs: Vec<f64> = (0..7).map(|_| s.step()).collect();
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
        let mut resumed = EpochLrScheduler::new(schedule, 1.0, 3, valid);
        resumed.load_record(s.to_record());
        assert_eq!((resumed.step(), resumed.step()), (0.25, 0.25));
        assert_eq!(resumed.step(), 0.125);
    }

    #[test]
    fn a_run_resumed_with_other_steps_per_epoch_starts_at_the_next_epoch() {
        let valid = Arc::new(Mutex::new(Vec::new()));
        let schedule = LrSchedule::StepDecay {
            constant_epochs: 1,
            decay: 0.5,
        };
        // Two epochs of 3 steps (two devices), then resumed at 6 steps an epoch (one device).
        let mut s = EpochLrScheduler::new(schedule, 1.0, 3, valid.clone());
        for _ in 0..6 {
            s.step();
        }
        let mut resumed = EpochLrScheduler::new(schedule, 1.0, 6, valid);
        resumed.load_record(s.to_record());
        let epoch3: Vec<f64> = (0..6).map(|_| resumed.step()).collect();
        assert_eq!(epoch3, vec![0.25; 6]);
        assert_eq!(resumed.step(), 0.125);
    }
}
