//! Perplexity of a model on a split: sentence by sentence in buckets, or as one stream with the
//! state carried through the whole text.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;

use crate::data::batcher::{BucketLoader, Buckets};
use crate::data::store::Tokens;
use crate::data::stream::Stream;
use crate::model::LanguageModel;

/// The result of an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Real tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood per token, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
    /// Sentences not scored because they are longer than the largest bucket.
    pub dropped_sentences: usize,
}

impl Evaluation {
    /// The evaluation of `tokens` tokens whose negative log-likelihoods sum to `nll`.
    pub fn from_sums(nll: f64, tokens: usize, dropped_sentences: usize) -> Self {
        let loss = if tokens == 0 {
            f64::NAN
        } else {
            nll / tokens as f64
        };
        Self {
            tokens,
            loss,
            perplexity: loss.exp(),
            dropped_sentences,
        }
    }
}

/// Scores every sentence of `sentences` that fits a bucket, each from a zero state, as the
/// bucketed training sees them.
pub fn evaluate_bucketed(
    model: &LanguageModel,
    sentences: &Arc<Tokens>,
    buckets: &[usize],
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    let buckets = Buckets::new(sentences.clone(), buckets);
    let dropped_sentences = buckets.dropped;
    let loader = BucketLoader::evaluation(buckets, batch_size, device.clone());
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    for batch in loader.iter() {
        let batch = batch.expect("in-memory batches cannot fail");
        let loss = model.loss(&batch);
        nll += loss.nll_sum.into_scalar::<f64>();
        tokens += loss.tokens;
    }
    Evaluation::from_sums(nll, tokens, dropped_sentences)
}

/// Scores `sentences` as one contiguous stream with full
/// context: the text is cut into `columns` parallel columns (1 = the whole file as one sequence)
/// and read in windows of `bptt` steps, each window starting from the state the previous one
/// ended in. Every position but the first of each column is scored; with `columns > 1` the tail
/// that does not fill a row is dropped (PyTorch's `batchify`).
pub fn evaluate_stream(
    model: &LanguageModel,
    sentences: &Arc<Tokens>,
    columns: usize,
    bptt: usize,
    device: &Device,
) -> Evaluation {
    let stream = Stream::new(sentences.clone(), columns);
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    let mut state = None;
    for k in 0..stream.num_windows(bptt) {
        let batch = stream.window(k, bptt).to_device(device);
        let (loss, last) = model.loss_with_state(&batch, state);
        nll += loss.nll_sum.into_scalar::<f64>();
        tokens += loss.tokens;
        state = Some(last);
    }
    Evaluation::from_sums(nll, tokens, 0)
}
