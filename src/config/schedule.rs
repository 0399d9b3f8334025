//! Learning-rate schedules that change the rate from epoch to epoch.
//!
//! The rate of an epoch is a pure function of the base rate, the epoch number and the
//! validation perplexities of the epochs before it ([`LrSchedule::lr_for_epoch`]), so a resumed
//! run recomputes it from `history.jsonl` and lands on the rate the uninterrupted run had.

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
