//! Perplexity of a model on a split.

use burn::tensor::Device;

use crate::data::batcher::{BucketLoader, Buckets};
use crate::model::LanguageModel;
use burn::data::dataloader::DataLoader;

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

/// Scores every sentence of `sentences` (ids, end of sentence included) that fits a bucket,
/// each from a zero state, as the bucketed training sees them.
pub fn evaluate_bucketed(
    model: &LanguageModel,
    sentences: &[Vec<usize>],
    buckets: &[usize],
    batch_size: usize,
    device: &Device,
) -> Evaluation {
    let buckets = Buckets::new(sentences, buckets);
    let dropped_sentences = buckets.dropped;
    let loader = BucketLoader::evaluation(buckets, batch_size, device.clone());
    let (mut nll, mut tokens) = (0.0f64, 0usize);
    for batch in loader.iter() {
        let batch = batch.expect("in-memory batches cannot fail");
        let loss = model.loss(&batch);
        nll += loss.nll_sum.into_scalar::<f64>();
        tokens += loss.tokens;
    }
    let loss = if tokens == 0 {
        f64::NAN
    } else {
        nll / tokens as f64
    };
    Evaluation {
        tokens,
        loss,
        perplexity: loss.exp(),
        dropped_sentences,
    }
}
