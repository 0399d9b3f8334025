//! Sentence buckets (the reference's `BucketSentenceIter`) as a Burn [`DataLoader`].
//!
//! Each sentence (its ids, end of sentence included) goes into the smallest bucket that holds
//! it; longer sentences are dropped. A batch holds `batch_size` sentences of one bucket, padded
//! with [`PAD_ID`]; its targets are the inputs shifted left by one. Each bucket's last
//! incomplete batch is dropped. With shuffling, the sentences of each bucket and the order of
//! the batches are shuffled every epoch by a generator seeded from `(seed, epoch)`, so a resumed
//! run sees exactly the order the uninterrupted run would have seen. An epoch is held as that
//! order of sentence indices ([`EpochOrder`], 4 bytes a sentence); each batch's padded ids are
//! built when the loader serves it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::data::dataloader::{DataLoader, DataLoaderIterator, Progress};
use burn::data::dataset::DatasetError;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::epochs::Epochs;
use crate::data::store::Tokens;
use crate::data::vocab::PAD_ID;
use crate::model::LmBatch;

/// Sentences sorted into length buckets: how many each bucket holds; their indices in the
/// split's [`Tokens`] are listed when a pass's order is made ([`Buckets::in_order`]), so that
/// only that order is held (4 bytes a sentence), not a second list beside it.
#[derive(Debug, Clone)]
pub struct Buckets {
    /// Bucket lengths, ascending.
    pub lengths: Vec<usize>,
    /// The split's ids.
    pub tokens: Arc<Tokens>,
    /// Sentences in each bucket.
    pub counts: Vec<usize>,
    /// Ids of the sentences in the buckets (end of sentence included).
    pub ids: usize,
    /// Sentences dropped because they are longer than the largest bucket.
    pub dropped: usize,
}

impl Buckets {
    /// Sorts the sentences of `tokens` into buckets of the given `lengths`.
    pub fn new(tokens: Arc<Tokens>, lengths: &[usize]) -> Self {
        let mut lengths = lengths.to_vec();
        lengths.sort_unstable();
        lengths.dedup();
        let mut counts = vec![0; lengths.len()];
        let (mut ids, mut dropped) = (0, 0);
        for len in sentence_lengths(&tokens) {
            match bucket_of(&lengths, len) {
                Some(b) => {
                    counts[b] += 1;
                    ids += len;
                }
                None => dropped += 1,
            }
        }
        Self {
            lengths,
            tokens,
            counts,
            ids,
            dropped,
        }
    }

    /// Number of full batches of `batch_size` per epoch.
    pub fn num_batches(&self, batch_size: usize) -> usize {
        self.counts.iter().map(|n| n / batch_size).sum()
    }

    /// Sentences in all buckets.
    pub fn len(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Whether no bucket holds a sentence.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every bucket's sentence indices, bucket after bucket (bucket `b` from the sum of the
    /// counts before it), in corpus order within each: one pass over the sentence lengths.
    pub fn in_order(&self) -> Vec<u32> {
        let mut next: Vec<usize> = self
            .counts
            .iter()
            .scan(0, |start, &n| {
                let first = *start;
                *start += n;
                Some(first)
            })
            .collect();
        let mut out = vec![0u32; self.len()];
        for (k, len) in sentence_lengths(&self.tokens).enumerate() {
            if let Some(b) = bucket_of(&self.lengths, len) {
                out[next[b]] = u32::try_from(k).expect("under 2^32 sentences");
                next[b] += 1;
            }
        }
        out
    }
}

/// The length in ids of each sentence of `tokens`.
fn sentence_lengths(tokens: &Tokens) -> impl Iterator<Item = usize> + '_ {
    tokens.offsets().windows(2).map(|w| (w[1] - w[0]) as usize)
}

/// The smallest of the ascending bucket `lengths` that holds a sentence of `len` ids.
fn bucket_of(lengths: &[usize], len: usize) -> Option<usize> {
    lengths.iter().position(|&l| l >= len)
}

/// One batch on the host: `[batch, seq]` row-major ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostBatch {
    /// Number of sentences.
    pub batch: usize,
    /// Padded length.
    pub seq: usize,
    /// Input ids `[batch, seq]`.
    pub inputs: Vec<i64>,
    /// Target ids `[batch, seq]`: inputs shifted left by one, [`PAD_ID`] after the end.
    pub targets: Vec<i64>,
}

impl HostBatch {
    /// Sentences `sentences` of `tokens`, padded to `seq`, and their targets.
    pub fn new(tokens: &Tokens, sentences: &[u32], seq: usize) -> Self {
        let ids = tokens.ids();
        let mut inputs = vec![PAD_ID as i64; sentences.len() * seq];
        let mut targets = inputs.clone();
        for (row, &k) in sentences.iter().enumerate() {
            for (j, i) in tokens.sentence(k as usize).enumerate() {
                let id = ids.get(i) as i64;
                inputs[row * seq + j] = id;
                if j > 0 {
                    targets[row * seq + j - 1] = id;
                }
            }
        }
        Self {
            batch: sentences.len(),
            seq,
            inputs,
            targets,
        }
    }

    /// The batch as tensors on `device`.
    pub fn to_device(&self, device: &Device) -> LmBatch {
        let shape = [self.batch, self.seq];
        let real: Vec<i64> = (0..self.targets.len() as i64)
            .filter(|&i| self.targets[i as usize] != PAD_ID as i64)
            .collect();
        let tokens = real.len();
        let real_rows = (tokens < self.targets.len())
            .then(|| Tensor::<1, Int>::from_data(TensorData::new(real, [tokens]), device));
        LmBatch {
            inputs: Tensor::<2, Int>::from_data(
                TensorData::new(self.inputs.clone(), shape),
                device,
            ),
            targets: Tensor::<2, Int>::from_data(
                TensorData::new(self.targets.clone(), shape),
                device,
            ),
            real_rows,
            tokens,
            carry: None,
            dropout_seed: None,
        }
    }
}

/// One epoch's batches in order, as the sentences each holds: 4 bytes a sentence, where its
/// padded batches would take 16 bytes a position; a batch's ids are built when it is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochOrder {
    /// Sentence indices, each bucket's in its shuffled order.
    sentences: Vec<u32>,
    /// The batches in the epoch's order.
    batches: Vec<BatchSlot>,
}

/// A batch of an [`EpochOrder`]: `count` sentences from `start` of its list, padded to `seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSlot {
    start: usize,
    count: usize,
    seq: usize,
}

impl EpochOrder {
    /// Number of batches.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Whether the epoch has no batch.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Number of sentences in batch `k`.
    pub fn batch_len(&self, k: usize) -> usize {
        self.batches[k].count
    }

    /// Batch `k`, padded, with its targets: `[batch, seq]` ids of `tokens`.
    pub fn batch(&self, tokens: &Tokens, k: usize) -> HostBatch {
        let slot = self.batches[k];
        HostBatch::new(
            tokens,
            &self.sentences[slot.start..slot.start + slot.count],
            slot.seq,
        )
    }
}

/// A [`DataLoader`] over bucketed batches.
///
/// Shuffling is a function of `(seed, pass)`; the epoch advances on every call to `iter`,
/// starting from `first_epoch`, and is shared by the loaders made with `to_device` and `slice`.
/// An epoch is one pass (pass `e` in epoch `e`) unless [`with_epoch_steps`](Self::with_epoch_steps)
/// sets its length ([`Epochs`]).
#[derive(Clone)]
pub struct BucketLoader {
    buckets: Arc<Buckets>,
    batch_size: usize,
    shuffle: Option<u64>,
    drop_last: bool,
    epochs: Epochs,
    next_epoch: Arc<AtomicUsize>,
    range: Option<(usize, usize)>,
    device: Device,
    /// The order of the pass read last, shared by the epochs (and the loaders made with
    /// `to_device` and `slice`) that read it: with epochs shorter than a pass
    /// ([`with_epoch_steps`](Self::with_epoch_steps)), each epoch made its pass's order again,
    /// a scan and a shuffle of every sentence (about a second at a billion tokens).
    last_order: Arc<Mutex<LastOrder>>,
}

/// [`BucketLoader::last_order`]: the pass and its order (and, for the tests, how many orders
/// were made).
#[derive(Default)]
struct LastOrder {
    order: Option<(usize, Arc<EpochOrder>)>,
    #[cfg(test)]
    made: usize,
}

impl BucketLoader {
    /// A training loader: batches of `batch_size` sentences, each bucket's incomplete last batch
    /// dropped, shuffled with `seed`; `first_epoch` is the 1-based epoch the first `iter` serves.
    pub fn training(
        buckets: Buckets,
        batch_size: usize,
        seed: u64,
        first_epoch: usize,
        device: Device,
    ) -> Self {
        Self::new(buckets, batch_size, Some(seed), true, first_epoch, device)
    }

    /// An evaluation loader: every sentence once, in corpus order within each bucket.
    pub fn evaluation(buckets: Buckets, batch_size: usize, device: Device) -> Self {
        Self::new(buckets, batch_size, None, false, 1, device)
    }

    fn new(
        buckets: Buckets,
        batch_size: usize,
        shuffle: Option<u64>,
        drop_last: bool,
        first_epoch: usize,
        device: Device,
    ) -> Self {
        let batch_size = batch_size.max(1);
        let per_pass = buckets
            .counts
            .iter()
            .map(|n| match drop_last {
                true => n / batch_size,
                false => n.div_ceil(batch_size),
            })
            .sum();
        Self {
            buckets: Arc::new(buckets),
            batch_size,
            shuffle,
            drop_last,
            epochs: Epochs::passes(per_pass),
            next_epoch: Arc::new(AtomicUsize::new(first_epoch)),
            range: None,
            device,
            last_order: Arc::default(),
        }
    }

    /// The order of pass `pass`: the one made last when it is that pass's, otherwise made now
    /// (the last one let go first, so that two are never held at once by the loader).
    fn shared_order(&self, pass: usize) -> Arc<EpochOrder> {
        let mut last = self.last_order.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, order)) = &last.order {
            if *p == pass {
                return order.clone();
            }
        }
        last.order = None;
        let order = Arc::new(self.pass_order(pass));
        last.order = Some((pass, order.clone()));
        #[cfg(test)]
        {
            last.made += 1;
        }
        order
    }

    /// The same loader with epochs of `steps` batches, the passes read on end to end across
    /// them ([`Epochs`]).
    pub fn with_epoch_steps(mut self, steps: usize) -> Self {
        self.epochs = Epochs::of_steps(self.epochs.per_pass, steps);
        self
    }

    /// How the loader's epochs fall on passes over its sentences.
    pub fn epochs(&self) -> Epochs {
        self.epochs
    }

    /// The batches of pass `pass` (1-based), in order, as the sentences each holds.
    pub fn pass_order(&self, pass: usize) -> EpochOrder {
        let mut rng = self.shuffle.map(|seed| {
            StdRng::seed_from_u64(seed ^ (pass as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        });
        let mut sentences = self.buckets.in_order();
        let mut batches = Vec::new();
        let mut first = 0;
        for (&n, &len) in self.buckets.counts.iter().zip(&self.buckets.lengths) {
            let end = first + n;
            if let Some(rng) = rng.as_mut() {
                sentences[first..end].shuffle(rng);
            }
            for start in (first..end).step_by(self.batch_size) {
                let count = self.batch_size.min(end - start);
                if count == self.batch_size || !self.drop_last {
                    batches.push(BatchSlot {
                        start,
                        count,
                        seq: len,
                    });
                }
            }
            first = end;
        }
        if let Some(rng) = rng.as_mut() {
            batches.shuffle(rng);
        }
        EpochOrder { sentences, batches }
    }

    /// The batches of `epoch`, in order, padded on the host all at once (for small sets: an
    /// epoch's batches take 16 bytes a padded position).
    pub fn epoch_batches(&self, epoch: usize) -> Vec<HostBatch> {
        std::iter::from_fn({
            let mut batches = self.epoch_iter(epoch);
            move || batches.next_host()
        })
        .collect()
    }

    fn epoch_iter(&self, epoch: usize) -> BucketIter<'_> {
        let (first, end) = self.range.unwrap_or((0, self.epochs.per_epoch));
        let mut iter = BucketIter {
            loader: self,
            epoch,
            next: first,
            end,
            order: None,
            done: 0,
            total: (end - first) * self.batch_size,
        };
        if !self.drop_last {
            // Evaluation: one pass an epoch, its last batch of each bucket short.
            let order = iter.order_of(self.epochs.locate(epoch, first).pass);
            iter.total = (first..end).map(|k| order.batch_len(k)).sum();
        }
        iter
    }

    fn num_batches(&self) -> usize {
        match self.range {
            Some((start, end)) => end - start,
            None => self.epochs.per_epoch,
        }
    }

    /// Number of sentences served per epoch.
    pub fn num_sentences(&self) -> usize {
        match (self.range, self.drop_last) {
            (None, false) => self.buckets.len(),
            _ => self.num_batches() * self.batch_size,
        }
    }
}

/// The batches of one epoch as they are served, the order of each pass made when its first
/// batch is.
struct BucketIter<'a> {
    loader: &'a BucketLoader,
    epoch: usize,
    /// The next step of the epoch, and the end of this loader's steps.
    next: usize,
    end: usize,
    /// The pass being read and its order.
    order: Option<(usize, Arc<EpochOrder>)>,
    done: usize,
    total: usize,
}

impl BucketIter<'_> {
    /// The order of pass `pass`, made when it is first asked for.
    fn order_of(&mut self, pass: usize) -> &EpochOrder {
        if self.order.as_ref().is_none_or(|(p, _)| *p != pass) {
            // The last pass's order let go before the next is made.
            self.order = None;
            self.order = Some((pass, self.loader.shared_order(pass)));
        }
        &self.order.as_ref().expect("just made").1
    }

    fn next_host(&mut self) -> Option<HostBatch> {
        if self.next >= self.end {
            return None;
        }
        let at = self.loader.epochs.locate(self.epoch, self.next);
        let tokens = self.loader.buckets.tokens.clone();
        let batch = self.order_of(at.pass).batch(&tokens, at.step);
        self.next += 1;
        self.done += batch.batch;
        Some(batch)
    }
}

impl Iterator for BucketIter<'_> {
    type Item = Result<LmBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.next_host()?;
        Some(Ok(batch.to_device(&self.loader.device)))
    }
}

impl DataLoaderIterator<LmBatch> for BucketIter<'_> {
    fn progress(&self) -> Progress {
        Progress::new(self.done, self.total, Some("sentences".into()))
    }
}

impl DataLoader<LmBatch> for BucketLoader {
    fn iter<'a>(&'a self) -> Box<dyn DataLoaderIterator<LmBatch> + 'a> {
        let epoch = self.next_epoch.fetch_add(1, Ordering::SeqCst);
        Box::new(self.epoch_iter(epoch))
    }

    fn num_items(&self) -> usize {
        self.num_sentences()
    }

    fn to_device(&self, device: &Device) -> Arc<dyn DataLoader<LmBatch>> {
        Arc::new(Self {
            device: device.clone(),
            ..self.clone()
        })
    }

    /// Items `start..end` (sentences, as [`num_items`](DataLoader::num_items) counts them)
    /// rounded to whole batches of the epoch's shuffled order.
    fn slice(&self, start: usize, end: usize) -> Arc<dyn DataLoader<LmBatch>> {
        let offset = self.range.map_or(0, |r| r.0);
        let batches = self.num_batches();
        let batch = |item: usize| ((item + self.batch_size / 2) / self.batch_size).min(batches);
        let (start, end) = (batch(start), batch(end.max(start)));
        // Each slice counts its own epochs: every device's loader calls `iter` once per epoch.
        Arc::new(Self {
            range: Some((offset + start, offset + end)),
            next_epoch: Arc::new(AtomicUsize::new(self.next_epoch.load(Ordering::SeqCst))),
            ..self.clone()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(sentences: &[Vec<usize>]) -> Arc<Tokens> {
        Arc::new(Tokens::from_sentences(sentences))
    }

    #[test]
    fn sentences_go_to_the_smallest_bucket_that_holds_them_and_long_ones_are_dropped() {
        let s: Vec<Vec<usize>> = [3, 4, 5, 9, 10, 11].iter().map(|&n| vec![7; n]).collect();
        let b = Buckets::new(tokens(&s), &[10, 4]);
        assert_eq!(b.lengths, vec![4, 10]);
        assert_eq!(b.counts, vec![2, 3]);
        assert_eq!(b.in_order(), vec![0, 1, 2, 3, 4]);
        assert_eq!(b.ids, 3 + 4 + 5 + 9 + 10);
        assert_eq!(b.dropped, 1);
    }

    #[test]
    fn padding_and_shifted_targets() {
        let t = Tokens::from_sentences(&[vec![5, 6, 7, 1], vec![8, 1]]);
        let hb = HostBatch::new(&t, &[0, 1], 5);
        assert_eq!(hb.inputs, vec![5, 6, 7, 1, 0, 8, 1, 0, 0, 0]);
        assert_eq!(hb.targets, vec![6, 7, 1, 0, 0, 1, 0, 0, 0, 0]);
        // Only the real targets' positions reach the output layer and the count.
        let batch = hb.to_device(&Device::flex());
        assert_eq!(batch.tokens, 4);
        let rows = batch.real_rows.expect("the batch has padding");
        assert_eq!(
            rows.into_data().iter::<i64>().collect::<Vec<_>>(),
            vec![0, 1, 2, 5]
        );
    }

    #[test]
    fn incomplete_batches_are_dropped_and_shuffling_depends_on_seed_and_epoch() {
        let s: Vec<Vec<usize>> = (0..23).map(|i| vec![i + 3, 1]).collect();
        let loader = |seed: Option<u64>| match seed {
            Some(seed) => {
                BucketLoader::training(Buckets::new(tokens(&s), &[4]), 5, seed, 1, Device::flex())
            }
            None => BucketLoader::evaluation(Buckets::new(tokens(&s), &[4]), 5, Device::flex()),
        };
        let l = loader(Some(1));
        assert_eq!(l.num_items(), 20);
        let e1 = l.epoch_batches(1);
        assert_eq!(e1.len(), 4);
        assert_eq!(
            e1,
            loader(Some(1)).epoch_batches(1),
            "same seed, same order"
        );
        assert_ne!(e1, l.epoch_batches(2), "a new order each epoch");
        assert_ne!(e1, loader(Some(2)).epoch_batches(1));
        let plain = loader(None).epoch_batches(1);
        assert_eq!(plain[0].inputs[0], 3, "evaluation keeps the corpus order");
        assert_eq!(plain.len(), 5, "and keeps the incomplete last batch");
        assert_eq!(loader(None).num_items(), 23);
        // iter() serves the epoch's batches, built as they are served, and advances the epoch.
        let first: Vec<Vec<i64>> = l
            .iter()
            .map(|b| b.unwrap().inputs.into_data().iter::<i64>().collect())
            .collect();
        let eager: Vec<Vec<i64>> = e1.iter().map(|b| b.inputs.clone()).collect();
        assert_eq!(first, eager);
        assert_eq!(l.epoch_batches(2), loader(Some(1)).epoch_batches(2));
    }

    #[test]
    fn epochs_of_a_set_length_read_the_passes_on_end_to_end() {
        // 23 sentences, batches of 5: 4 full batches a pass; epochs of 3 batches.
        let s: Vec<Vec<usize>> = (0..23).map(|i| vec![i + 3, 1]).collect();
        let loader =
            || BucketLoader::training(Buckets::new(tokens(&s), &[4]), 5, 7, 1, Device::flex());
        let passes: Vec<HostBatch> = [1, 2]
            .iter()
            .flat_map(|&p| loader().epoch_batches(p))
            .collect();
        let short = loader().with_epoch_steps(3);
        assert_eq!(short.num_items(), 15);
        let epochs: Vec<HostBatch> = (1..=2).flat_map(|e| short.epoch_batches(e)).collect();
        assert_eq!(epochs, passes[..6], "pass 1, then pass 2 in its own order");
        // iter() serves the same, epoch after epoch.
        let served: Vec<i64> = (0..2)
            .flat_map(|_| {
                short
                    .iter()
                    .map(|b| b.unwrap().inputs.into_data().iter::<i64>().next())
            })
            .map(Option::unwrap)
            .collect();
        let expected: Vec<i64> = passes[..6].iter().map(|b| b.inputs[0]).collect();
        assert_eq!(served, expected);
        // Each pass's order is made once, however many epochs read it: epochs 1 - 3 read
        // passes 1, 1 and 2, 2 and 3 (three orders, where each epoch making its own made five).
        let fresh = loader().with_epoch_steps(3);
        for _ in 0..3 {
            assert_eq!(fresh.iter().count(), 3);
        }
        let made = fresh.last_order.lock().unwrap().made;
        assert_eq!(made, 3, "orders made for three passes");
        // A pass's length keeps the default order.
        assert_eq!(
            loader().with_epoch_steps(4).epoch_batches(2),
            loader().epoch_batches(2)
        );
    }

    #[test]
    fn burn_trains_split_gives_each_device_whole_batches_of_the_same_epoch_order() {
        let s: Vec<Vec<usize>> = (0..35).map(|i| vec![i + 3, 1]).collect();
        let whole = BucketLoader::training(Buckets::new(tokens(&s), &[4]), 5, 9, 1, Device::flex());
        let epoch: Vec<Vec<i64>> = whole
            .epoch_batches(1)
            .into_iter()
            .map(|b| b.inputs)
            .collect();
        assert_eq!(epoch.len(), 7);
        for devices in [2, 3] {
            let parts = burn::data::dataloader::split::split_dataloader(
                Arc::new(whole.clone()),
                &vec![Device::flex(); devices],
            );
            let mut served = Vec::new();
            for part in &parts {
                let batches: Vec<LmBatch> = part.iter().map(|b| b.unwrap()).collect();
                assert!(
                    !batches.is_empty(),
                    "{devices} devices: every device gets batches"
                );
                assert_eq!(part.num_items(), batches.len() * 5);
                served.extend(
                    batches
                        .into_iter()
                        .map(|b| b.inputs.into_data().iter::<i64>().collect::<Vec<_>>()),
                );
            }
            assert_eq!(
                served, epoch,
                "{devices} devices: the epoch's batches, each once, in order"
            );
        }
    }
}
