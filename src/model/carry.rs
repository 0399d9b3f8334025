//! Carrying the LSTM state from one window of a stream to the next, inside burn-train.
//!
//! burn-train's `TrainStep::step` takes `&self` and sees one batch, so the state cannot live in
//! the model or in a loop of ours. It travels with the data instead: the stream loader puts a
//! [`CarryKey`] into every batch, naming the columns the batch holds, its epoch and its window
//! index; the step takes the state that window `k - 1` of the same columns left in the shared
//! [`StateCarry`], trains from it, and leaves its own final state there, detached from the graph.
//!
//! Why this is sound with burn-train:
//! - Data loading may run ahead of training (the loader can build window `k + 1` before step
//!   `k` ends), which is harmless: the state is looked up when the step runs, not when the batch
//!   is built.
//! - Within one device, steps run one after another in loader order, so window `k - 1` has
//!   stored its state before window `k` asks for it.
//! - The multi-device strategies split a loader with `slice`; the stream loader slices by
//!   columns, so each device owns a fixed set of columns for the whole epoch and each column's
//!   windows stay on one device, in order. Slots are keyed by the first column, so devices never
//!   touch each other's state.
//! - Window 0 of every epoch starts from zeros (as PyTorch's and Zaremba's trainers do), so a
//!   run resumed from an epoch checkpoint needs no saved state to continue exactly. With epochs
//!   shorter than a pass (`--epoch-tokens`), so does the first window of a pass that
//!   begins inside an epoch: keys count the windows of one pass within one epoch.
//! - Training and validation use separate loaders, hence separate carries.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::lstm::LstmState;

/// The state each group of stream columns ended its last window in.
#[derive(Clone, Default)]
pub struct StateCarry {
    slots: Arc<Mutex<HashMap<usize, Slot>>>,
    warned: Arc<AtomicBool>,
}

struct Slot {
    epoch: usize,
    window: usize,
    state: Vec<LstmState>,
}

impl StateCarry {
    /// An empty carry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The key of window `window` of `epoch` for the columns starting at `first_column`.
    pub fn key(&self, first_column: usize, epoch: usize, window: usize) -> CarryKey {
        CarryKey {
            carry: self.clone(),
            first_column,
            epoch,
            window,
        }
    }
}

/// The carried states at one moment, on the host: what a checkpoint within an epoch saves so
/// that the next window still starts from the right state after a resume.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CarrySnapshot {
    slots: Vec<SavedSlot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct SavedSlot {
    first_column: usize,
    epoch: usize,
    window: usize,
    /// Per layer: `[batch, hidden]` hidden and cell states, row-major.
    layers: Vec<(Vec<usize>, Vec<f32>, Vec<f32>)>,
}

impl StateCarry {
    /// The states left now, copied to the host.
    pub fn snapshot(&self) -> CarrySnapshot {
        let slots = self.slots.lock().expect("carry lock");
        let values = |t: &Tensor<2>| {
            t.clone()
                .into_data()
                .try_into_vec::<f32>()
                .expect("states are f32")
        };
        let mut saved: Vec<SavedSlot> = slots
            .iter()
            .map(|(&first_column, slot)| SavedSlot {
                first_column,
                epoch: slot.epoch,
                window: slot.window,
                layers: slot
                    .state
                    .iter()
                    .map(|s| (s.hidden.dims().to_vec(), values(&s.hidden), values(&s.cell)))
                    .collect(),
            })
            .collect();
        saved.sort_by_key(|s| s.first_column);
        CarrySnapshot { slots: saved }
    }

    /// Replaces the states with `snapshot`'s, on `device`.
    pub fn restore(&self, snapshot: &CarrySnapshot, device: &Device) {
        let tensor = |shape: &[usize], v: &[f32]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape.to_vec()), device)
        };
        let mut slots = self.slots.lock().expect("carry lock");
        slots.clear();
        for s in &snapshot.slots {
            let state = s
                .layers
                .iter()
                .map(|(shape, h, c)| LstmState {
                    hidden: tensor(shape, h),
                    cell: tensor(shape, c),
                })
                .collect();
            slots.insert(
                s.first_column,
                Slot {
                    epoch: s.epoch,
                    window: s.window,
                    state,
                },
            );
        }
    }
}

/// Where a batch sits in its stream; see the [module docs](self).
#[derive(Clone)]
pub struct CarryKey {
    carry: StateCarry,
    /// First column of the stream the batch holds.
    pub first_column: usize,
    /// 1-based epoch.
    pub epoch: usize,
    /// 0-based window index within the epoch (within its part of one pass, when epochs are not
    /// passes); window 0 starts from zeros.
    pub window: usize,
}

impl std::fmt::Debug for CarryKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CarryKey")
            .field("first_column", &self.first_column)
            .field("epoch", &self.epoch)
            .field("window", &self.window)
            .finish()
    }
}

impl CarryKey {
    /// The state to start this window from: the final state of the previous window of the same
    /// columns and epoch, or `None` (zeros) for window 0.
    ///
    /// A missing state for a later window means windows ran out of order, which the loaders
    /// never produce; the window then starts from zeros and a warning is printed once.
    pub fn take(&self) -> Option<Vec<LstmState>> {
        if self.window == 0 {
            return None;
        }
        let mut slots = self.carry.slots.lock().expect("carry lock");
        match slots.remove(&self.first_column) {
            Some(s) if s.epoch == self.epoch && s.window + 1 == self.window => Some(s.state),
            _ => {
                if !self.carry.warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "warning: window {} of columns from {} found no state from window {}; \
                         it starts from zeros",
                        self.window,
                        self.first_column,
                        self.window - 1
                    );
                }
                None
            }
        }
    }

    /// Leaves this window's final state for the next window, cut from the autodiff graph.
    pub fn put(&self, state: Vec<LstmState>) {
        let state = state.into_iter().map(LstmState::detach).collect();
        self.carry.slots.lock().expect("carry lock").insert(
            self.first_column,
            Slot {
                epoch: self.epoch,
                window: self.window,
                state,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    fn state(v: f32) -> Vec<LstmState> {
        let mut s = LstmState::zeros(1, 2, &Device::flex());
        s.hidden = s.hidden.add_scalar(v);
        vec![s]
    }

    fn hidden(s: &[LstmState]) -> f32 {
        s[0].hidden.clone().into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn a_snapshot_restores_the_same_states() {
        let carry = StateCarry::new();
        carry.key(0, 2, 4).put(state(1.5));
        carry.key(10, 2, 4).put(state(-0.25));
        let snap = carry.snapshot();
        let json = serde_json::to_string(&snap).unwrap();
        let back: CarrySnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snap);
        let other = StateCarry::new();
        other.restore(&back, &Device::flex());
        assert_eq!(hidden(&other.key(0, 2, 5).take().unwrap()), 1.5);
        assert_eq!(hidden(&other.key(10, 2, 5).take().unwrap()), -0.25);
    }

    #[test]
    fn each_window_gets_the_state_its_predecessor_left() {
        let carry = StateCarry::new();
        assert!(
            carry.key(0, 1, 0).take().is_none(),
            "window 0 starts from zeros"
        );
        carry.key(0, 1, 0).put(state(1.0));
        carry.key(10, 1, 0).put(state(2.0));
        assert_eq!(hidden(&carry.key(0, 1, 1).take().unwrap()), 1.0);
        assert_eq!(hidden(&carry.key(10, 1, 1).take().unwrap()), 2.0);
        // A stale state (other epoch, or not the previous window) is never used.
        carry.key(0, 1, 5).put(state(3.0));
        assert!(carry.key(0, 2, 6).take().is_none());
        carry.key(0, 2, 3).put(state(4.0));
        assert!(carry.key(0, 2, 5).take().is_none());
    }
}
