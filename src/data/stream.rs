//! Contiguous-stream batching for truncated backpropagation through time.
//!
//! The sentences (end of sentence included) are concatenated into one stream of ids, cut into
//! `batch` equal columns (the tail that doesn't fill a row is dropped), and read in windows of
//! `bptt` steps: window `k` holds steps `k * bptt ..` of every column, its targets the next
//! step. Column `b` of window `k + 1` continues column `b` of window `k`, so the LSTM state at
//! the end of one window is the right start for the next (PyTorch's `batchify` + `get_batch`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::Device;

use crate::data::batcher::HostBatch;
use crate::data::epochs::Epochs;
use crate::data::store::Tokens;
use crate::model::carry::StateCarry;
use crate::model::LmBatch;

/// A token stream laid out as `batch` columns, read in place from a split's [`Tokens`].
#[derive(Debug, Clone)]
pub struct Stream {
    /// Number of columns (sequences carried in parallel).
    pub batch: usize,
    /// Steps per column.
    pub steps: usize,
    /// The split's ids, end to end: column `b` is ids `b * steps..(b + 1) * steps`.
    tokens: Arc<Tokens>,
}

impl Stream {
    /// The ids of `tokens` end to end, cut into `batch` columns (the tail that does not fill a
    /// row is left out).
    pub fn new(tokens: Arc<Tokens>, batch: usize) -> Self {
        let batch = batch.max(1);
        Self {
            batch,
            steps: tokens.len() / batch,
            tokens,
        }
    }

    /// Number of windows of `bptt` steps (the last one may be shorter).
    pub fn num_windows(&self, bptt: usize) -> usize {
        self.steps.saturating_sub(1).div_ceil(bptt.max(1))
    }

    /// Window `k` of at most `bptt` steps: inputs `[batch, t]` and the next ids as targets.
    pub fn window(&self, k: usize, bptt: usize) -> HostBatch {
        self.window_of_columns(k, bptt, 0..self.batch)
    }

    /// Window `k` of the given columns only: inputs `[columns, t]` and their targets.
    pub fn window_of_columns(
        &self,
        k: usize,
        bptt: usize,
        columns: std::ops::Range<usize>,
    ) -> HostBatch {
        let start = k * bptt;
        let t = bptt.min(self.steps - 1 - start);
        let n = columns.len();
        let mut inputs = Vec::with_capacity(n * t);
        let mut targets = Vec::with_capacity(n * t);
        let ids = self.tokens.ids();
        for b in columns {
            let row = b * self.steps + start;
            ids.extend_i64(row..row + t, &mut inputs);
            ids.extend_i64(row + 1..row + 1 + t, &mut targets);
        }
        HostBatch {
            batch: n,
            seq: t,
            inputs,
            targets,
        }
    }
}

/// A [`DataLoader`] over the windows of a [`Stream`], in order, each batch carrying the
/// [`CarryKey`](crate::model::carry::CarryKey) that hands the LSTM state from window to window (see
/// [`crate::model::carry`]).
///
/// Items are column-windows (one column over one window), `columns x windows` per epoch;
/// [`slice`](DataLoader::slice) splits by whole columns, so a device that gets a slice owns its
/// columns for the whole epoch. Training loaders also give each batch a dropout seed derived
/// from `(seed, epoch, window, first column)`, so masks are the same on every backend and after
/// a resume. The epoch advances on every call to `iter`, starting from `first_epoch`.
#[derive(Clone)]
pub struct StreamLoader {
    stream: Arc<Stream>,
    bptt: usize,
    epochs: Epochs,
    columns: std::ops::Range<usize>,
    dropout_seed: Option<u64>,
    next_epoch: Arc<AtomicUsize>,
    carry: StateCarry,
    device: Device,
}

impl StreamLoader {
    /// A training loader over `stream` in windows of `bptt`; `seed` seeds dropout masks and
    /// `first_epoch` is the 1-based epoch the first `iter` serves.
    pub fn training(
        stream: Stream,
        bptt: usize,
        seed: u64,
        first_epoch: usize,
        device: Device,
    ) -> Self {
        Self::new(stream, bptt, Some(seed), first_epoch, device)
    }

    /// An evaluation loader: the same windows, no dropout.
    pub fn evaluation(stream: Stream, bptt: usize, device: Device) -> Self {
        Self::new(stream, bptt, None, 1, device)
    }

    fn new(
        stream: Stream,
        bptt: usize,
        dropout_seed: Option<u64>,
        first_epoch: usize,
        device: Device,
    ) -> Self {
        let bptt = bptt.max(1);
        Self {
            epochs: Epochs::passes(stream.num_windows(bptt)),
            columns: 0..stream.batch,
            stream: Arc::new(stream),
            bptt,
            dropout_seed,
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            carry: StateCarry::new(),
            device,
        }
    }

    /// The states this loader's windows hand over (to save and restore them mid-epoch).
    pub fn carry(&self) -> StateCarry {
        self.carry.clone()
    }

    /// The same loader with epochs of `steps` windows, the passes over the stream read on end
    /// to end across them ([`Epochs`]).
    pub fn with_epoch_steps(mut self, steps: usize) -> Self {
        self.epochs = Epochs::of_steps(self.epochs.per_pass, steps);
        self
    }

    /// How the loader's epochs fall on passes over the stream.
    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// Windows per epoch: the number of optimizer steps of an epoch on one device.
    pub fn num_windows(&self) -> usize {
        self.epochs.per_epoch
    }

    /// Window `k` of `epoch`, as the loader serves it: the window of the stream that step
    /// falls on. Its state comes from the window before it in the same epoch and pass; the
    /// first window of an epoch, and of a pass, starts from zeros.
    pub fn batch(&self, epoch: usize, k: usize) -> LmBatch {
        let window = self.epochs.locate(epoch, k).step;
        let host = self
            .stream
            .window_of_columns(window, self.bptt, self.columns.clone());
        // The stream holds no padding, so every position is a real, counted token.
        let mut batch = host.to_device(&self.device);
        let run = self.epochs.run_before(epoch, k);
        batch.carry = Some(self.carry.key(self.columns.start, epoch, run));
        batch.dropout_seed = self.dropout_seed.map(|seed| {
            let mut h = seed ^ 0x5851_F42D_4C95_7F2D;
            for v in [epoch, k, self.columns.start] {
                h = (h ^ v as u64)
                    .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                    .rotate_left(29);
            }
            h
        });
        batch
    }
}

struct StreamIter<'a> {
    loader: &'a StreamLoader,
    epoch: usize,
    next: usize,
}

impl Iterator for StreamIter<'_> {
    type Item = Result<LmBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.loader.num_windows() || self.loader.columns.is_empty() {
            return None;
        }
        let batch = self.loader.batch(self.epoch, self.next);
        self.next += 1;
        Some(Ok(batch))
    }
}

impl DataLoaderIterator<LmBatch> for StreamIter<'_> {
    fn progress(&self) -> Progress {
        let columns = self.loader.columns.len();
        Progress::new(
            self.next * columns,
            self.loader.num_windows() * columns,
            Some("sequence windows".into()),
        )
    }
}

impl DataLoader<LmBatch> for StreamLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        Box::new(StreamIter {
            loader: self,
            epoch,
            next: 0,
        })
    }

    fn num_items(&self) -> usize {
        self.columns.len() * self.num_windows()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<LmBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    /// Items `start..end` rounded to whole columns (items are column-major: all windows of a
    /// column, then the next column).
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<LmBatch>> {
        let windows = self.num_windows().max(1);
        let column = |item: usize| {
            (self.columns.start + (item + windows / 2) / windows).min(self.columns.end)
        };
        // Each slice counts its own epochs: every device's loader calls `iter` once per epoch.
        Arc::new(Self {
            columns: column(start)..column(end.max(start)),
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_continue_across_windows() {
        // 0..=22 as one stream, 2 columns of 11 steps: column 0 = 0..11, column 1 = 11..22.
        let sentences = vec![(3..10).collect::<Vec<_>>(), (10..26).collect()];
        let s = Stream::new(Arc::new(Tokens::from_sentences(&sentences)), 2);
        assert_eq!((s.batch, s.steps), (2, 11));
        assert_eq!(s.num_windows(4), 3); // 10 target steps: 4 + 4 + 2
        let w0 = s.window(0, 4);
        assert_eq!(w0.inputs, vec![3, 4, 5, 6, 14, 15, 16, 17]);
        assert_eq!(w0.targets, vec![4, 5, 6, 7, 15, 16, 17, 18]);
        let w2 = s.window(2, 4);
        assert_eq!(w2.seq, 2);
        assert_eq!(w2.inputs, vec![11, 12, 22, 23]);
        assert_eq!(w2.targets, vec![12, 13, 23, 24]);
        // Every id of the stream but the last of each column is an input exactly once.
        let n: usize = (0..3).map(|k| s.window(k, 4).inputs.len()).sum();
        assert_eq!(n, 2 * 10);
    }

    #[test]
    fn the_loader_serves_windows_in_order_and_slices_by_whole_columns() {
        let sentences = vec![(3..43).collect::<Vec<_>>()]; // 40 ids, 4 columns of 10 steps
        let loader = StreamLoader::training(
            Stream::new(Arc::new(Tokens::from_sentences(&sentences)), 4),
            4,
            7,
            1,
            Device::flex(),
        );
        assert_eq!((loader.num_windows(), loader.num_items()), (3, 12));
        let batches: Vec<LmBatch> = loader.iter().map(|b| b.unwrap()).collect();
        let keys: Vec<(usize, usize)> = batches
            .iter()
            .map(|b| {
                let k = b.carry.as_ref().unwrap();
                (k.epoch, k.window)
            })
            .collect();
        assert_eq!(keys, vec![(1, 0), (1, 1), (1, 2)]);
        assert_eq!(batches[0].tokens, 16, "every position counts");
        assert_eq!(
            batches[2].tokens, 4,
            "9 targets per column: windows of 4, 4 and 1"
        );
        assert_ne!(batches[0].dropout_seed, batches[1].dropout_seed);
        assert_eq!(
            loader.iter().next().unwrap().unwrap().carry.unwrap().epoch,
            2
        );

        // burn-train's split for two devices: items 0..6 and 6..12 = columns 0..2 and 2..4.
        let halves = [loader.slice(0, 6), loader.slice(6, 12)];
        let firsts: Vec<usize> = halves
            .iter()
            .map(|h| {
                let b = h.iter().next().unwrap().unwrap();
                assert_eq!(b.inputs.dims(), [2, 4]);
                assert_eq!(h.num_items(), 6);
                b.carry.unwrap().first_column
            })
            .collect();
        assert_eq!(firsts, vec![0, 2]);
        // Epochs of 2 windows over passes of 3: epoch 2 is window 2 of pass 1, then window 0
        // of pass 2, which starts from zeros (carry window 0) and not from window 2's state.
        let short = StreamLoader::training(
            Stream::new(Arc::new(Tokens::from_sentences(&sentences)), 4),
            4,
            7,
            1,
            Device::flex(),
        )
        .with_epoch_steps(2);
        assert_eq!((short.num_windows(), short.num_items()), (2, 8));
        let epochs: Vec<Vec<LmBatch>> = (0..3)
            .map(|_| short.iter().map(|b| b.unwrap()).collect())
            .collect();
        let ids = |b: &LmBatch| {
            b.inputs
                .clone()
                .into_data()
                .iter::<i64>()
                .collect::<Vec<_>>()
        };
        let windows = [
            &batches[0],
            &batches[1],
            &batches[2],
            &batches[0],
            &batches[1],
        ];
        let served: Vec<&LmBatch> = epochs.iter().flatten().take(5).collect();
        for (got, want) in served.iter().zip(windows) {
            assert_eq!(ids(got), ids(want));
        }
        let carry: Vec<(usize, usize)> = epochs
            .iter()
            .flatten()
            .map(|b| {
                let k = b.carry.as_ref().unwrap();
                (k.epoch, k.window)
            })
            .collect();
        assert_eq!(carry, vec![(1, 0), (1, 1), (2, 0), (2, 0), (3, 0), (3, 1)]);
        assert!(StreamLoader::evaluation(
            Stream::new(Arc::new(Tokens::from_sentences(&sentences)), 4),
            4,
            Device::flex()
        )
        .batch(1, 0)
        .dropout_seed
        .is_none());
    }
}
