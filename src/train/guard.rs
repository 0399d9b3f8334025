//! Stopping a run whose loss blew up, before its broken weights reach a checkpoint.
//!
//! The perplexity metric already reads each batch's summed loss on the host, so it hands the
//! value to a [`DivergenceGuard`]; the first non-finite one records where it happened and stops
//! burn-train through its [`Interrupter`]. burn-train checks the interrupter after every batch
//! and again before it writes the epoch's checkpoint, so a NaN met in training or in validation
//! never reaches a checkpoint.

use std::sync::{Arc, Mutex};

use burn::train::Interrupter;

/// Where a loss first became non-finite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Divergence {
    /// `"training"` or `"validation"`.
    pub split: &'static str,
    /// 1-based epoch.
    pub epoch: usize,
    /// 1-based batch within the epoch's split.
    pub batch: usize,
    /// The batch's summed loss: NaN or infinite.
    pub loss: f64,
}

/// Stops training at the first non-finite batch loss and remembers where it was.
#[derive(Clone)]
pub struct DivergenceGuard {
    interrupter: Interrupter,
    tripped: Arc<Mutex<Option<Divergence>>>,
}

impl DivergenceGuard {
    /// A guard that stops training through `interrupter`.
    pub fn new(interrupter: Interrupter) -> Self {
        Self {
            interrupter,
            tripped: Arc::default(),
        }
    }

    /// Checks one batch's summed loss; a non-finite one stops training (the first is kept).
    pub fn check(&self, split: &'static str, epoch: usize, batch: usize, loss: f64) {
        if loss.is_finite() {
            return;
        }
        let mut tripped = self.tripped.lock().expect("guard lock");
        if tripped.is_none() {
            *tripped = Some(Divergence {
                split,
                epoch,
                batch,
                loss,
            });
            self.interrupter
                .stop(Some("the loss is not finite (NaN or infinite)"));
        }
    }

    /// Where the loss first became non-finite, if it did.
    pub fn tripped(&self) -> Option<Divergence> {
        *self.tripped.lock().expect("guard lock")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_non_finite_loss_stops_training() {
        let interrupter = Interrupter::new();
        let guard = DivergenceGuard::new(interrupter.clone());
        guard.check("training", 1, 1, 12.5);
        assert!(!interrupter.should_stop());
        assert_eq!(guard.tripped(), None);
        guard.check("training", 2, 7, f64::INFINITY);
        guard.check("validation", 2, 1, f64::NAN);
        assert!(interrupter.should_stop());
        let d = guard.tripped().unwrap();
        assert_eq!((d.split, d.epoch, d.batch), ("training", 2, 7));
        assert_eq!(d.loss, f64::INFINITY);
    }
}
