//! Perplexity of a saved run on any text (`lstm-lm eval`).

use std::path::PathBuf;

use burn::tensor::Device;

use crate::commands::score::{Context, Scorer};
use crate::data::corpus::TextLines;
use crate::data::prepare::encode_text;
use crate::data::vocab::UNK;
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::run::history::{bits_per_char, bpc_text, word_perplexity, word_ppl_text};
use crate::run::Run;
use crate::train::evaluate::{evaluate_bucketed, evaluate_stream, Evaluation};

/// What `lstm-lm eval` scores and how.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The text files, read in turn: one sentence per line, whitespace-separated tokens; words
    /// outside the run's vocabulary count as `<unk>`.
    pub text: Vec<PathBuf>,
    /// The token cache the text is encoded into once (see [`crate::data::prepare`]).
    pub cache_dir: PathBuf,
    /// The checkpoint's epoch (the newest complete one when `None`).
    pub epoch: Option<usize>,
    /// Where each token's context starts.
    pub context: EvalContext,
    /// Parallel columns of the stream ([`EvalContext::Carry`]); 1 scores the whole text as one
    /// sequence.
    pub columns: usize,
    /// Window length (the run's `bptt` when `None`); the state is carried across windows, so
    /// it changes speed, not the context.
    pub bptt: Option<usize>,
    /// Where to run.
    pub device: Device,
}

/// How `eval` reads the text. `carry` and `sentence` mean what they mean for `lstm-lm score`
/// ([`Context`]), whose per-line figures they sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalContext {
    /// The text as one stream with the state carried through it (in `columns` parallel
    /// columns); every token but the first is predicted (PyTorch's evaluation).
    Carry,
    /// Each line from the zero state, its first token predicted after `<eos>` and its `<eos>`
    /// scored: the sum of `score --context sentence` over the lines.
    Sentence,
    /// Each sentence from the zero state in the run's buckets, as bucket training validates:
    /// sentences longer than the largest bucket are not scored, first tokens are not predicted.
    Buckets,
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
    /// Bits per character of the text.
    pub bits_per_char: Option<f64>,
    /// Perplexity per word of the text (character and subword models).
    pub word_perplexity: Option<f64>,
}

/// Perplexity of a saved run on `request.text`; the checkpoint may come from any backend.
pub fn evaluate_run(request: &EvalRequest) -> Result<RunEvaluation> {
    let run = Run::open(&request.run_dir)?;
    let (config, vocab) = (run.config(), run.vocab());
    let (model, epoch) = run.load_model(request.epoch, &request.device)?;
    let text = encode_text(
        &request.text,
        run.codec(),
        vocab,
        &request.cache_dir,
        &mut |_| {},
    )?;
    let (ids, unknown_tokens) = (text.tokens, text.unknown);
    if unknown_tokens > 0 && epoch == 0 && run.missing_rows().iter().any(|t| t == UNK) {
        return Err(Error::Config(format!(
            "{unknown_tokens} tokens of the text are not in the vocabulary, and the imported \
             model has no {UNK} (their probability is 0, the perplexity infinite): score text \
             within its vocabulary, or train from it with --init-from, which learns {UNK}"
        )));
    }
    let tokens_per_char = ids.tokens_per_char();
    let tokens_per_word = crate::train::per_word(config, &ids);
    let evaluation = match request.context {
        EvalContext::Buckets => evaluate_bucketed(
            &model,
            &ids,
            &config.data.buckets,
            config.data.batch_size,
            &request.device,
        ),
        EvalContext::Sentence => evaluate_lines(&run, &model, &request.text, &request.device)?,
        EvalContext::Carry => {
            let bptt = request.bptt.unwrap_or(config.data.bptt).max(1);
            evaluate_stream(&model, &ids, request.columns.max(1), bptt, &request.device)
        }
    };
    if evaluation.tokens == 0 {
        return Err(Error::Config(format!(
            "the text gives no token to score with {} columns; pass --columns 1 or a longer text",
            request.columns
        )));
    }
    Ok(RunEvaluation {
        bits_per_char: bits_per_char(evaluation.loss, tokens_per_char),
        word_perplexity: word_perplexity(evaluation.loss, tokens_per_word),
        evaluation,
        epoch,
        unknown_tokens,
    })
}

/// Lines scored from the zero state in batches as they are read, summed
/// ([`Scorer::score_text`]).
fn evaluate_lines(
    run: &Run,
    model: &LanguageModel,
    text: &[PathBuf],
    device: &Device,
) -> Result<Evaluation> {
    let (mut nll, mut tokens) = (0.0, 0);
    for path in text {
        let scorer = Scorer::new(run, model, Context::Sentence, 64, device);
        for line in scorer.score_text(TextLines::open(path)?) {
            let line = line?;
            nll -= line.logprob;
            tokens += line.scored;
        }
    }
    Ok(Evaluation::from_sums(nll, tokens, 0))
}

impl RunEvaluation {
    /// The result in one line, for the text called `text_name`, scored as `request` asked.
    pub fn describe(&self, request: &EvalRequest, text_name: &str) -> String {
        let e = &self.evaluation;
        let how = match request.context {
            EvalContext::Buckets => format!(
                "sentence by sentence in the run's buckets, {} longer than the largest bucket \
                 not scored",
                e.dropped_sentences
            ),
            EvalContext::Sentence => "sentence by sentence, each line after <eos>".to_string(),
            EvalContext::Carry if request.columns <= 1 => "full context".to_string(),
            EvalContext::Carry => format!("{} columns", request.columns),
        };
        format!(
            "{} (epoch {}) on {text_name} ({how}): {} tokens ({} not in the vocabulary, scored \
             as <unk>), loss {:.4}, perplexity {:.2}{}{}",
            request.run_dir.display(),
            self.epoch,
            e.tokens,
            self.unknown_tokens,
            e.loss,
            e.perplexity,
            bpc_text(self.bits_per_char),
            word_ppl_text(self.word_perplexity)
        )
    }
}
