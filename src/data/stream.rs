//! Contiguous-stream batching for truncated backpropagation through time.
//!
//! The sentences (end of sentence included) are concatenated into one stream of ids, cut into
//! `batch` equal columns (the tail that doesn't fill a row is dropped), and read in windows of
//! `bptt` steps: window `k` holds steps `k * bptt ..` of every column, its targets the next
//! step. Column `b` of window `k + 1` continues column `b` of window `k`, so the LSTM state at
//! the end of one window is the right start for the next (PyTorch's `batchify` + `get_batch`).

use crate::data::batcher::HostBatch;

/// A token stream laid out as `batch` columns.
#[derive(Debug, Clone)]
pub struct Stream {
    /// Number of columns (sequences carried in parallel).
    pub batch: usize,
    /// Steps per column.
    pub steps: usize,
    /// Ids `[batch, steps]`, row-major: row `b` is column `b` of the stream.
    ids: Vec<i64>,
}

impl Stream {
    /// Concatenates `sentences` and cuts the stream into `batch` columns.
    pub fn new(sentences: &[Vec<usize>], batch: usize) -> Self {
        let flat: Vec<i64> = sentences.iter().flatten().map(|&id| id as i64).collect();
        let batch = batch.max(1);
        let steps = flat.len() / batch;
        Self {
            batch,
            steps,
            ids: flat[..steps * batch].to_vec(),
        }
    }

    /// Number of windows of `bptt` steps (the last one may be shorter).
    pub fn num_windows(&self, bptt: usize) -> usize {
        self.steps.saturating_sub(1).div_ceil(bptt.max(1))
    }

    /// Window `k` of at most `bptt` steps: inputs `[batch, t]` and the next ids as targets.
    pub fn window(&self, k: usize, bptt: usize) -> HostBatch {
        let start = k * bptt;
        let t = bptt.min(self.steps - 1 - start);
        let mut inputs = Vec::with_capacity(self.batch * t);
        let mut targets = Vec::with_capacity(self.batch * t);
        for b in 0..self.batch {
            let row = &self.ids[b * self.steps..(b + 1) * self.steps];
            inputs.extend_from_slice(&row[start..start + t]);
            targets.extend_from_slice(&row[start + 1..start + 1 + t]);
        }
        HostBatch {
            batch: self.batch,
            seq: t,
            inputs,
            targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_continue_across_windows() {
        // 0..=22 as one stream, 2 columns of 11 steps: column 0 = 0..11, column 1 = 11..22.
        let sentences = vec![(3..10).collect::<Vec<_>>(), (10..26).collect()];
        let s = Stream::new(&sentences, 2);
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
}
