//! [`EpochLrScheduler`] plugs [`EpochRates`], the one source of an epoch's learning rate, into
//! burn-train, which steps schedulers once per optimizer step.

use burn::optim::lr_scheduler::{LrScheduler, LrSchedulerRecord};
use burn::optim::LearningRate;

use crate::run::recorder::EpochRates;

/// A burn-train [`LrScheduler`] for a run's [`EpochRates`].
///
/// burn-train calls [`step`](LrScheduler::step) once per optimizer step; the scheduler counts
/// them to know the epoch (`iterations_per_epoch` steps each). The validation perplexities come
/// from the run's epoch recorder, which records each epoch when it ends; burn-train
/// flushes its event processor before the checkpoint that ends every epoch, so the entry of
/// epoch `e` is there before the first step of epoch `e + 1`. The record holds the step count
/// and the steps per epoch it was counted in, so a run resumed with another number of steps per
/// epoch (bucket batches on another number of devices) still starts at the right epoch.
#[derive(Clone)]
pub struct EpochLrScheduler {
    rates: EpochRates,
    iterations_per_epoch: usize,
    iteration: usize,
}

impl EpochLrScheduler {
    /// A scheduler at the start of epoch 1 of `iterations_per_epoch` steps each.
    pub fn new(rates: EpochRates, iterations_per_epoch: usize) -> Self {
        Self {
            rates,
            iterations_per_epoch: iterations_per_epoch.max(1),
            iteration: 0,
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
        self.rates.lr(epoch)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schedule::LrSchedule;

    #[test]
    fn the_scheduler_counts_steps_into_epochs_and_resumes_from_its_record() {
        let rates = EpochRates::new(
            LrSchedule::StepDecay {
                constant_epochs: 1,
                decay: 0.5,
            },
            1.0,
            Vec::new(),
        );
        let mut s = EpochLrScheduler::new(rates.clone(), 3);
        let lrs: Vec<f64> = (0..7).map(|_| s.step()).collect();
        assert_eq!(lrs, vec![1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]);
        let mut resumed = EpochLrScheduler::new(rates, 3);
        resumed.load_record(s.to_record());
        assert_eq!((resumed.step(), resumed.step()), (0.25, 0.25));
        assert_eq!(resumed.step(), 0.125);
    }

    #[test]
    fn a_run_resumed_with_other_steps_per_epoch_starts_at_the_next_epoch() {
        let rates = EpochRates::new(
            LrSchedule::StepDecay {
                constant_epochs: 1,
                decay: 0.5,
            },
            1.0,
            Vec::new(),
        );
        // Two epochs of 3 steps (two devices), then resumed at 6 steps an epoch (one device).
        let mut s = EpochLrScheduler::new(rates.clone(), 3);
        for _ in 0..6 {
            s.step();
        }
        let mut resumed = EpochLrScheduler::new(rates, 6);
        resumed.load_record(s.to_record());
        let epoch3: Vec<f64> = (0..6).map(|_| resumed.step()).collect();
        assert_eq!(epoch3, vec![0.25; 6]);
        assert_eq!(resumed.step(), 0.125);
    }
}
