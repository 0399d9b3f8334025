//! `lstm-lm score`: the log-probability of every line of a text, to rank sentences.
//!
//! Each line is cut by the run's tokenizer and ends with `<eos>`; its first token is predicted
//! after `<eos>`, as in a stream, and its `<eos>` is scored too. With [`Context::Sentence`]
//! every line starts from the zero state and many lines run as one padded batch; with
//! [`Context::Carry`] each line starts from the state the previous line ended in (the text read
//! as one stream, one line at a time). A blank line is one `<eos>` for character and BPE
//! models and nothing for word models (their training skipped blank lines). A text is scored
//! as it is read, some thousands of lines at a time ([`Scorer::score_text`]).

use std::f64::consts::LN_2;
use std::io::BufRead;

use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::Serialize;

use crate::data::corpus::TextLines;
use crate::data::vocab::{EOS_ID, PAD_ID, UNK};
use crate::error::{Error, Result};
use crate::model::lstm::LstmState;
use crate::model::LanguageModel;
use crate::run::Run;

/// Where each line's state starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Context {
    /// From zeros: each line on its own (lines are batched).
    Sentence,
    /// From the state the previous line ended in.
    Carry,
}

/// The score of one line.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LineScore {
    /// Line number, from 1.
    pub line: usize,
    /// The line as read.
    pub text: String,
    /// Its tokens as the run cuts them (`<unk>` for words outside the vocabulary), then
    /// `<eos>`.
    pub tokens: Vec<String>,
    /// Summed log-probability of the tokens, natural log.
    pub logprob: f64,
    /// The same in bits (`logprob / ln 2`).
    pub log2prob: f64,
    /// Tokens scored (`<eos>` included).
    pub scored: usize,
    /// Tokens not in the vocabulary (scored as `<unk>`).
    pub unknown: usize,
    /// `exp(-logprob / scored)`; `None` for a line with nothing to score.
    pub perplexity: Option<f64>,
}

/// A line's ids (without the leading `<eos>`), and its score so far.
#[derive(Default)]
struct Line {
    ids: Vec<u32>,
    score: LineScore,
}

/// Scores `lines` with `model` (non-autodiff, on `device`), `batch` lines at a time in
/// sentence context.
pub fn score_lines(
    run: &Run,
    model: &LanguageModel,
    lines: &[String],
    context: Context,
    batch: usize,
    device: &Device,
) -> Vec<LineScore> {
    Scorer::new(run, model, context, batch, device).score(lines)
}

/// Scores a text's lines in turn, numbering them on and, in carry context, carrying the state
/// from one call to the next.
pub struct Scorer<'a> {
    run: &'a Run,
    model: &'a LanguageModel,
    context: Context,
    batch: usize,
    device: &'a Device,
    state: Option<Vec<LstmState>>,
    lines: usize,
}

impl<'a> Scorer<'a> {
    /// Scores with `model` (non-autodiff, on `device`), `batch` lines at a time in sentence
    /// context.
    pub fn new(
        run: &'a Run,
        model: &'a LanguageModel,
        context: Context,
        batch: usize,
        device: &'a Device,
    ) -> Self {
        Self {
            run,
            model,
            context,
            batch: batch.max(1),
            device,
            state: None,
            lines: 0,
        }
    }

    /// Scores the next `lines` of the text.
    pub fn score(&mut self, lines: &[String]) -> Vec<LineScore> {
        let first = self.lines + 1;
        self.lines += lines.len();
        let mut prepared: Vec<Line> = lines
            .iter()
            .enumerate()
            .map(|(k, text)| prepare(self.run, first + k, text))
            .collect();
        match self.context {
            Context::Sentence => {
                // Lines of similar length batched together: little padding. Output keeps the
                // input order.
                let mut order: Vec<usize> = (0..prepared.len()).collect();
                order.sort_by_key(|&k| prepared[k].ids.len());
                let mut sorted: Vec<Line> = order
                    .iter()
                    .map(|&k| std::mem::take(&mut prepared[k]))
                    .collect();
                for chunk in sorted.chunks_mut(self.batch) {
                    score_batch(self.model, chunk, None, self.device);
                }
                for (line, k) in sorted.into_iter().zip(order) {
                    prepared[k] = line;
                }
            }
            Context::Carry => {
                for line in prepared.iter_mut().filter(|l| !l.ids.is_empty()) {
                    let state = self.state.take();
                    let one = std::slice::from_mut(line);
                    self.state = Some(score_batch(self.model, one, state, self.device));
                }
            }
        }
        prepared.into_iter().map(|l| l.score).collect()
    }

    /// The scores of a text's `lines`, read and scored [`CHUNK_BATCHES`] batches of lines at
    /// a time, so a text of any size is scored in bounded memory and its first scores come at
    /// once.
    pub fn score_text<R: BufRead>(self, lines: TextLines<R>) -> ScoredLines<'a, R> {
        ScoredLines {
            scorer: self,
            lines,
            ready: Vec::new().into_iter(),
            error: None,
            done: false,
        }
    }
}

/// Batches of lines read and scored at a time by [`Scorer::score_text`] (lines of similar
/// length are batched together within them).
pub const CHUNK_BATCHES: usize = 256;

/// The scores of a text's lines, in order, as they are read (see [`Scorer::score_text`]); a
/// line that is not UTF-8 or a read error ends them with an error naming the line, after the
/// scores of the lines before it.
pub struct ScoredLines<'a, R> {
    scorer: Scorer<'a>,
    lines: TextLines<R>,
    ready: std::vec::IntoIter<LineScore>,
    /// What ended the reading, given after the scores of the lines read before it.
    error: Option<Error>,
    done: bool,
}

impl<R: BufRead> ScoredLines<'_, R> {
    /// The next lines of the text; none at its end. What stops the reading early is kept in
    /// `error`.
    fn read_chunk(&mut self) -> Vec<String> {
        let want = self.scorer.batch.saturating_mul(CHUNK_BATCHES);
        let mut lines = Vec::with_capacity(want.min(1 << 16));
        while lines.len() < want {
            match self.lines.next() {
                Some(Ok(line)) => lines.push(line),
                Some(Err(e)) => {
                    self.error = Some(e);
                    break;
                }
                None => break,
            }
        }
        lines
    }
}

impl<R: BufRead> Iterator for ScoredLines<'_, R> {
    type Item = Result<LineScore>;

    fn next(&mut self) -> Option<Result<LineScore>> {
        loop {
            if let Some(score) = self.ready.next() {
                return Some(Ok(score));
            }
            if let Some(e) = self.error.take() {
                self.done = true;
                return Some(Err(e));
            }
            if self.done {
                return None;
            }
            let lines = self.read_chunk();
            self.done = lines.is_empty();
            self.ready = self.scorer.score(&lines).into_iter();
        }
    }
}

fn prepare(run: &Run, number: usize, text: &str) -> Line {
    let (vocab, codec) = (run.vocab(), run.codec());
    let mut ids = Vec::new();
    let (sentence, unknown) = codec.encode_line(vocab, text, &mut ids);
    if sentence {
        ids.push(EOS_ID as u32);
    }
    let tokens = ids
        .iter()
        .map(|&i| vocab.token(i as usize).unwrap_or(UNK).to_string())
        .collect();
    Line {
        score: LineScore {
            line: number,
            text: text.to_string(),
            tokens,
            logprob: 0.0,
            log2prob: 0.0,
            scored: ids.len(),
            unknown,
            perplexity: None,
        },
        ids,
    }
}

/// Scores `lines` (their ids non-empty, or skipped) as one padded batch from `state`; returns
/// the state after the last line's last token (carry mode passes one line).
fn score_batch(
    model: &LanguageModel,
    lines: &mut [Line],
    state: Option<Vec<LstmState>>,
    device: &Device,
) -> Vec<LstmState> {
    let rows: Vec<&mut Line> = lines.iter_mut().filter(|l| !l.ids.is_empty()).collect();
    if rows.is_empty() {
        return state.unwrap_or_default();
    }
    let seq = rows.iter().map(|l| l.ids.len()).max().unwrap_or(0);
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    for line in &rows {
        let n = line.ids.len();
        inputs.push(EOS_ID as i64);
        inputs.extend(line.ids[..n - 1].iter().map(|&i| i64::from(i)));
        targets.extend(line.ids.iter().map(|&i| i64::from(i)));
        for _ in n..seq {
            inputs.push(PAD_ID as i64);
            targets.push(PAD_ID as i64);
        }
    }
    let shape = [rows.len(), seq];
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(inputs, shape), device);
    let targets = Tensor::<2, Int>::from_data(TensorData::new(targets, shape), device);
    let (nll, state) = model.token_nll(inputs, targets, state);
    let nll: Vec<f64> = nll.into_data().iter::<f64>().collect();
    for (r, line) in rows.into_iter().enumerate() {
        let sum: f64 = nll[r * seq..r * seq + line.ids.len()].iter().sum();
        let s = &mut line.score;
        s.logprob = -sum;
        s.log2prob = -sum / LN_2;
        s.perplexity = Some((sum / s.scored as f64).exp());
    }
    state
}
