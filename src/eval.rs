//! Perplexity of a model on a split, and of a saved run on any text (`lstm-lm eval`).

use std::path::{Path, PathBuf};

use burn::tensor::Device;

use crate::checkpoint::newest_sound_checkpoint;
use crate::data::corpus::Sentence;
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::run::{files, load_config, load_model};

use crate::data::batcher::{BucketLoader, Buckets};
use crate::data::stream::Stream;
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

impl Evaluation {
    /// The evaluation of `tokens` tokens whose negative log-likelihoods sum to `nll`.
    fn from_sums(nll: f64, tokens: usize, dropped_sentences: usize) -> Self {
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
    Evaluation::from_sums(nll, tokens, dropped_sentences)
}

/// Scores `sentences` (ids, end of sentence included) as one contiguous stream with full
/// context: the text is cut into `columns` parallel columns (1 = the whole file as one sequence)
/// and read in windows of `bptt` steps, each window starting from the state the previous one
/// ended in. Every position but the first of each column is scored; with `columns > 1` the tail
/// that does not fill a row is dropped (PyTorch's `batchify`).
pub fn evaluate_stream(
    model: &LanguageModel,
    sentences: &[Vec<usize>],
    columns: usize,
    bptt: usize,
    device: &Device,
) -> Evaluation {
    let stream = Stream::new(sentences, columns);
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

/// What `lstm-lm eval` scores and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The text, as sentences of tokens; words outside the run's vocabulary count as `<unk>`.
    pub text: Vec<Sentence>,
    /// The checkpoint's epoch (the newest complete one when `None`).
    pub epoch: Option<usize>,
    /// Score each sentence from a zero state in the run's buckets instead of one stream.
    pub sentences: bool,
    /// Parallel columns of the stream; 1 scores the whole text as one sequence.
    pub columns: usize,
    /// Window length (the run's `bptt` when `None`); the state is carried across windows, so
    /// it changes speed, not the context.
    pub bptt: Option<usize>,
    /// Where to run.
    pub device: Device,
}

/// The result of [`evaluate_run`].
#[derive(Debug, Clone, Copy)]
pub struct RunEvaluation {
    /// Tokens, loss and perplexity.
    pub evaluation: Evaluation,
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// Tokens of the text not in the vocabulary (scored as `<unk>`).
    pub unknown_tokens: usize,
}

/// Perplexity of a saved run on `request.text`; the checkpoint may come from any backend.
pub fn evaluate_run(request: &EvalRequest) -> Result<RunEvaluation> {
    let dir = &request.run_dir;
    let config = load_config(dir)?;
    let vocab = Vocab::load(&dir.join(files::VOCAB))?;
    let epoch = request
        .epoch
        .or_else(|| newest_sound_checkpoint(dir))
        .ok_or_else(|| no_checkpoint(dir))?;
    let model = load_model(dir, Some(epoch), &request.device)?;
    let unknown_tokens = request
        .text
        .iter()
        .flatten()
        .filter(|w| !vocab.contains(w))
        .count();
    let ids: Vec<Vec<usize>> = request.text.iter().map(|s| vocab.encode(s)).collect();
    let evaluation = if request.sentences {
        evaluate_bucketed(
            &model,
            &ids,
            &config.data.buckets,
            config.data.batch_size,
            &request.device,
        )
    } else {
        let bptt = request.bptt.unwrap_or(config.data.bptt).max(1);
        evaluate_stream(&model, &ids, request.columns.max(1), bptt, &request.device)
    };
    if evaluation.tokens == 0 {
        return Err(Error::Config(format!(
            "the text gives no token to score with {} columns; pass --columns 1 or a longer text",
            request.columns
        )));
    }
    Ok(RunEvaluation {
        evaluation,
        epoch,
        unknown_tokens,
    })
}

fn no_checkpoint(dir: &Path) -> Error {
    Error::BadRun {
        dir: dir.to_path_buf(),
        problem: "no complete checkpoint yet; train at least one epoch".into(),
    }
}
