//! Epochs shorter (or longer) than one pass over the training text.
//!
//! By default an epoch is one pass: its batches are the pass's batches in the order of that
//! epoch. On a large text a pass can take days, and validation, the learning-rate schedule,
//! `history.jsonl` and epoch checkpoints all come once an epoch; `--epoch-tokens` makes an
//! epoch a fixed number of steps instead. The passes then run on end to end across epochs: step
//! `k` of epoch `e` (both counted from where training began) is step `(e - 1) * per_epoch + k`
//! of that sequence, so every batch of a pass is served once before the next pass begins, and
//! pass `p` is shuffled as epoch `p` would be without the flag.

/// How the steps of an epoch map onto passes over the training text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epochs {
    /// Steps in one pass over the text.
    pub per_pass: usize,
    /// Steps in one epoch.
    pub per_epoch: usize,
}

/// Where a step of an epoch falls: which pass over the text, and which step of that pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassStep {
    /// 1-based pass.
    pub pass: usize,
    /// 0-based step within the pass.
    pub step: usize,
}

impl Epochs {
    /// Epochs of one pass each (the default).
    pub fn passes(per_pass: usize) -> Self {
        Self {
            per_pass,
            per_epoch: per_pass,
        }
    }

    /// Epochs of `per_epoch` steps over passes of `per_pass` (both at least 1).
    pub fn of_steps(per_pass: usize, per_epoch: usize) -> Self {
        Self {
            per_pass: per_pass.max(1),
            per_epoch: per_epoch.max(1),
        }
    }

    /// Where step `k` (0-based) of `epoch` (1-based) falls.
    pub fn locate(&self, epoch: usize, k: usize) -> PassStep {
        let per_pass = self.per_pass.max(1);
        let global = (epoch.max(1) - 1) * self.per_epoch + k;
        PassStep {
            pass: global / per_pass + 1,
            step: global % per_pass,
        }
    }

    /// How many steps before step `k` of an epoch continue the same pass without a break: `k`
    /// itself, unless a pass began inside the epoch at or before `k`. With a carried state, the
    /// window at step `k` continues the one before it when this is not 0.
    pub fn run_before(&self, epoch: usize, k: usize) -> usize {
        k.min(self.locate(epoch, k).step)
    }

    /// The steps of an epoch as a share of a pass.
    pub fn share_of_pass(&self) -> f64 {
        self.per_epoch as f64 / self.per_pass.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pass, step) of each step of `epoch`.
    fn steps(e: &Epochs, epoch: usize) -> Vec<(usize, usize)> {
        (0..e.per_epoch)
            .map(|k| e.locate(epoch, k))
            .map(|p| (p.pass, p.step))
            .collect()
    }

    #[test]
    fn an_epoch_of_one_pass_is_the_pass_in_the_epochs_order() {
        let e = Epochs::passes(7);
        assert_eq!(e.locate(1, 0), PassStep { pass: 1, step: 0 });
        assert_eq!(e.locate(3, 6), PassStep { pass: 3, step: 6 });
        assert_eq!(e.run_before(3, 6), 6);
    }

    #[test]
    fn short_epochs_read_the_passes_on_end_to_end() {
        // Passes of 10 steps, epochs of 4: epoch 3 is steps 8, 9 of pass 1, then 0, 1 of pass 2.
        let e = Epochs::of_steps(10, 4);
        assert_eq!(steps(&e, 3), vec![(1, 8), (1, 9), (2, 0), (2, 1)]);
        // Every step of the first two passes is served once, in order.
        let served: Vec<PassStep> = (1..=5)
            .flat_map(|epoch| (0..4).map(move |k| e.locate(epoch, k)))
            .collect();
        let expected: Vec<PassStep> = (0..20)
            .map(|g| PassStep {
                pass: g / 10 + 1,
                step: g % 10,
            })
            .collect();
        assert_eq!(served, expected);
        // The state carries within a pass, from epoch to epoch's start excepted, and starts
        // afresh where a pass begins.
        let runs: Vec<usize> = (0..4).map(|k| e.run_before(3, k)).collect();
        assert_eq!(runs, vec![0, 1, 0, 1]);
        assert_eq!(e.share_of_pass(), 0.4);
    }

    #[test]
    fn long_epochs_span_passes() {
        let e = Epochs::of_steps(3, 7);
        assert_eq!(
            steps(&e, 2),
            vec![(3, 1), (3, 2), (4, 0), (4, 1), (4, 2), (5, 0), (5, 1)]
        );
    }
}
