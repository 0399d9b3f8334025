//! Text generation from a trained model: a seeded [`Sampler`] (temperature, top-k),
//! [`generate`], which feeds a prompt and then samples one token at a time, carrying the LSTM
//! state, so each new token costs one step of the network, [`generate_run`], which does it
//! for a saved run the way the run was trained, and [`write_run`], which writes the text as
//! it is drawn (`lstm-lm generate`).

use std::io::Write;
use std::ops::ControlFlow;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::config::Batching;
use crate::data::tokenizer::{Codec, TextStream, Tokenizer};
use crate::data::vocab::{Vocab, EOS_ID, PAD_ID, UNK_ID};
use crate::error::{Error, Result};
use crate::model::lstm::LstmState;
use crate::model::LanguageModel;
use crate::run::Run;

/// Draws the next token from a vector of logits: greedy at temperature 0, otherwise from the
/// softmax of `logits / temperature` restricted to the `top_k` most likely tokens.
///
/// The same seed draws the same tokens from the same logits. Token [`PAD_ID`] (`<pad>`, never a
/// training target) is never drawn.
#[derive(Debug)]
pub struct Sampler {
    temperature: f64,
    top_k: usize,
    excluded: Vec<usize>,
    rng: StdRng,
}

impl Sampler {
    /// A sampler; `temperature` 0 is greedy (argmax), `top_k` 0 keeps every token.
    pub fn new(temperature: f64, top_k: usize, seed: u64) -> Self {
        Self {
            temperature: temperature.max(0.0),
            top_k,
            excluded: vec![PAD_ID],
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Never draws `id` either (for example `<unk>`); its probability goes to the others.
    pub fn excluding(mut self, id: usize) -> Self {
        self.excluded.push(id);
        self
    }

    /// The id of the next token given the logits `[vocab]` of the model's last step.
    pub fn sample(&mut self, logits: &[f32]) -> usize {
        self.sample_except(logits, &[])
    }

    /// Like [`sample`](Self::sample), never drawing the ids in `also` either (this draw only).
    pub fn sample_except(&mut self, logits: &[f32], also: &[usize]) -> usize {
        // Candidates by decreasing logit (ties: lower id first), <pad> left out.
        let mut order: Vec<usize> = (0..logits.len())
            .filter(|i| !self.excluded.contains(i) && !also.contains(i))
            .collect();
        order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if self.temperature == 0.0 || order.len() == 1 {
            return order[0];
        }
        if self.top_k > 0 {
            order.truncate(self.top_k);
        }
        // Softmax in f64 from the largest logit, so that no weight overflows.
        let top = logits[order[0]] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i] as f64 - top) / self.temperature).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut u = self.rng.random::<f64>() * total;
        for (&id, &w) in order.iter().zip(&weights) {
            if u < w {
                return id;
            }
            u -= w;
        }
        // Rounding left `u` past the last weight: the least likely candidate.
        *order.last().expect("at least one candidate")
    }
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateRequest {
    /// Tokens to start from (may be empty), as the run's tokenizer cuts the prompt; tokens
    /// outside the vocabulary are fed as `<unk>`.
    pub prompt: Vec<String>,
    /// Number of tokens to generate after the prompt, sentence ends included.
    pub length: usize,
    /// Softmax temperature; 0 = greedy.
    pub temperature: f64,
    /// Sample among the `top_k` most likely tokens only; 0 = all.
    pub top_k: usize,
    /// Seed of the sampler.
    pub seed: u64,
    /// Never generate `<unk>`.
    pub no_unk: bool,
    /// Start every sentence from the zero state, as bucket training does: the prompt is read
    /// from zeros without a leading `<eos>`, and after each `<eos>` the next word is drawn from
    /// the state so far but fed from zeros. False for stream-trained runs, which carry the
    /// state across sentences.
    pub fresh_sentences: bool,
    /// The run's tokenizer: whether a sentence may be empty (a blank line, for characters and
    /// BPE).
    pub tokenizer: Tokenizer,
}

/// The result of [`generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The generated tokens (the prompt not included); `<eos>` marks a sentence end.
    pub tokens: Vec<String>,
    /// Prompt words that are not in the vocabulary (fed as `<unk>`), in order.
    pub unknown_prompt_words: Vec<String>,
}

impl Generation {
    /// `prompt` followed by the generated text, one sentence per line (`<eos>` becomes a line
    /// break), put together as `codec` cut it: words joined by spaces, characters as they
    /// are, BPE pieces decoded.
    pub fn text(&self, prompt: &[String], codec: &Codec, vocab: &Vocab) -> String {
        let mut stream = TextStream::new(codec, vocab);
        let mut out: String = prompt
            .iter()
            .chain(&self.tokens)
            .map(|t| stream.push(t))
            .collect();
        out += &stream.finish_line();
        out
    }
}

/// Generates `request.length` tokens after `request.prompt`.
///
/// The model first reads `<eos>` (the boundary it saw before every sentence of a stream) and the
/// prompt in one forward pass (just the prompt, from zeros, with
/// [`fresh_sentences`](GenerateRequest::fresh_sentences)), then feeds each drawn token back with
/// the carried state. Runs on whatever device `model` lives on; deterministic for a seed on a
/// given backend.
pub fn generate(model: &LanguageModel, vocab: &Vocab, request: &GenerateRequest) -> Generation {
    generate_each(model, vocab, request, &mut |_| ControlFlow::Continue(()))
}

/// [`generate`], handing each token to `on_token` as soon as it is drawn; a
/// [`ControlFlow::Break`] ends the generation there.
pub fn generate_each(
    model: &LanguageModel,
    vocab: &Vocab,
    request: &GenerateRequest,
    on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Generation {
    let device = model.embedding.weight.device();
    let unknown_prompt_words = request
        .prompt
        .iter()
        .filter(|w| !vocab.contains(w))
        .cloned()
        .collect();
    // A stream-trained model read <eos> before every sentence; a bucket-trained one started each
    // sentence from zeros with its first word (it never read <eos>), so a prompt needs no <eos>.
    let prompt: Vec<usize> = request.prompt.iter().map(|w| vocab.id(w)).collect();
    let context: Vec<usize> = if request.fresh_sentences && !prompt.is_empty() {
        prompt
    } else {
        std::iter::once(EOS_ID).chain(prompt).collect()
    };
    let mut sampler = Sampler::new(request.temperature, request.top_k, request.seed);
    if request.no_unk {
        sampler = sampler.excluding(UNK_ID);
    }
    let (mut logits, mut state) = last_logits(model, &context, None, &device);
    let mut tokens = Vec::with_capacity(request.length);
    let mut last = *context.last().expect("the context is never empty");
    for i in 0..request.length {
        // No word-level sentence is empty (blank lines are skipped), so one never ends before
        // its first word; a character model learned blank lines as sentences of `<eos>`.
        let empty_sentence: &[usize] = if last == EOS_ID && request.tokenizer == Tokenizer::Word {
            &[EOS_ID]
        } else {
            &[]
        };
        let id = sampler.sample_except(&logits, empty_sentence);
        tokens.push(vocab.token(id).unwrap_or("<?>").to_string());
        if on_token(&tokens[i]).is_break() {
            break;
        }
        if i + 1 < request.length {
            let state_in = if request.fresh_sentences && last == EOS_ID {
                None // the first word of a sentence, fed from zeros
            } else {
                Some(state)
            };
            (logits, state) = last_logits(model, &[id], state_in, &device);
        }
        last = id;
    }
    Generation {
        tokens,
        unknown_prompt_words,
    }
}

/// Generates from checkpoint `epoch` (the newest sound one when `None`) of `run` on `device`.
/// A bucket-trained run starts every sentence from the zero state, as it was trained
/// ([`GenerateRequest::fresh_sentences`] is set from the run's config); the temperature must be
/// 0 (greedy) or positive.
pub fn generate_run(
    run: &Run,
    epoch: Option<usize>,
    device: &Device,
    request: &GenerateRequest,
) -> Result<Generation> {
    generate_run_each(run, epoch, device, request, &mut |_| {
        ControlFlow::Continue(())
    })
}

/// [`generate_run`], handing each token to `on_token` as soon as it is drawn (see
/// [`generate_each`]).
pub fn generate_run_each(
    run: &Run,
    epoch: Option<usize>,
    device: &Device,
    request: &GenerateRequest,
    on_token: &mut dyn FnMut(&str) -> ControlFlow<()>,
) -> Result<Generation> {
    if !(request.temperature >= 0.0 && request.temperature.is_finite()) {
        return Err(Error::Config(format!(
            "--temperature {} is not allowed: pass 0 (greedy) or a positive number such as 0.8",
            request.temperature
        )));
    }
    let (model, _) = run.load_model(epoch, device)?;
    let request = GenerateRequest {
        fresh_sentences: run.config().data.batching == Batching::Buckets,
        tokenizer: run.config().data.tokenizer,
        ..request.clone()
    };
    Ok(generate_each(&model, run.vocab(), &request, on_token))
}

/// [`generate_run`], writing the text to `out` as it is drawn: the prompt with the first token,
/// then each token's text, flushed, and a line end at the end ([`Generation::text`] in pieces).
/// A write that fails because the reader left (a closed pipe, as `| head` does) ends the
/// generation without an error; any other is returned.
pub fn write_run(
    run: &Run,
    epoch: Option<usize>,
    device: &Device,
    request: &GenerateRequest,
    out: &mut dyn Write,
) -> Result<Generation> {
    let mut stream = TextStream::new(run.codec(), run.vocab());
    let mut text: String = request.prompt.iter().map(|t| stream.push(t)).collect();
    let mut failed = None;
    let mut write = |text: &mut String| {
        let written = out.write_all(text.as_bytes()).and_then(|()| out.flush());
        text.clear();
        written
    };
    let generation = generate_run_each(run, epoch, device, request, &mut |token| {
        text += &stream.push(token);
        match write(&mut text) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        }
    })?;
    if failed.is_none() {
        text += &stream.finish_line();
        failed = write(&mut text).err();
    }
    match failed {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(Error::Io {
            action: "cannot write the generated text to",
            path: "standard output".into(),
            source: e,
        }),
        _ => Ok(generation),
    }
}

/// Runs `ids` as one sequence from `state` and returns the logits `[vocab]` of its last step and
/// the state after it.
fn last_logits(
    model: &LanguageModel,
    ids: &[usize],
    state: Option<Vec<LstmState>>,
    device: &Device,
) -> (Vec<f32>, Vec<LstmState>) {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = ids.len();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let (logits, state) = model.forward(inputs, state);
    let v = logits.dims()[2];
    let last = logits.slice([0..1, n - 1..n, 0..v]).reshape([v]);
    let values = last
        .into_data()
        .try_to_vec::<f32>()
        .expect("logits are f32 on every backend");
    (values, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_zero_is_argmax_and_never_pad() {
        let mut s = Sampler::new(0.0, 0, 1);
        assert_eq!(s.sample(&[0.0, 3.0, 1.0, 2.5]), 1);
        // <pad> (id 0) is never drawn even when it scores highest.
        assert_eq!(s.sample(&[9.0, 1.0, 2.0, 0.5]), 2);
        // Ties go to the lower id.
        assert_eq!(s.sample(&[0.0, 1.0, 2.0, 2.0]), 2);
        // An id left out for one draw.
        assert_eq!(s.sample_except(&[0.0, 1.0, 2.0, 0.5], &[2]), 1);
        assert_eq!(s.sample(&[0.0, 1.0, 2.0, 0.5]), 2);
        // An excluded id is never drawn, greedy or not.
        let mut s = Sampler::new(0.0, 0, 1).excluding(2);
        assert_eq!(s.sample(&[0.0, 1.0, 2.0, 0.5]), 1);
        let mut s = Sampler::new(1.0, 0, 1).excluding(2);
        assert!((0..500).all(|_| s.sample(&[0.0, 1.0, 5.0, 0.5]) != 2));
    }

    #[test]
    fn same_seed_same_draws() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let draw = |seed| {
            let mut s = Sampler::new(1.0, 0, seed);
            (0..40).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_draws_only_the_k_most_likely() {
        // Ids 5, 2 and 7 hold the three largest logits.
        let mut logits = vec![0.0_f32; 10];
        logits[5] = 3.0;
        logits[2] = 2.9;
        logits[7] = 2.8;
        let mut s = Sampler::new(5.0, 3, 3);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            seen.insert(s.sample(&logits));
        }
        assert_eq!(seen, [2, 5, 7].into_iter().collect());
        // top-k 1 is greedy whatever the temperature.
        let mut s = Sampler::new(10.0, 1, 3);
        assert!((0..100).all(|_| s.sample(&logits) == 5));
    }

    #[test]
    fn draws_follow_the_softmax() {
        // Logits ln 1, ln 2, ln 3 (after <pad>): probabilities 1/6, 2/6, 3/6 at temperature 1;
        // at temperature 2 they are proportional to sqrt(1), sqrt(2), sqrt(3).
        let logits = [0.0, 0.0, 2f32.ln(), 3f32.ln()];
        for (temperature, expected) in [
            (1.0, [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0]),
            (2.0, {
                let t = 1.0 + 2f64.sqrt() + 3f64.sqrt();
                [1.0 / t, 2f64.sqrt() / t, 3f64.sqrt() / t]
            }),
        ] {
            let mut s = Sampler::new(temperature, 0, 11);
            let n = 60_000;
            let mut counts = [0usize; 4];
            for _ in 0..n {
                counts[s.sample(&logits)] += 1;
            }
            assert_eq!(counts[0], 0);
            for (id, p) in (1..4).zip(expected) {
                let freq = counts[id] as f64 / n as f64;
                // 5 standard deviations of a binomial frequency.
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!((freq - p).abs() < 5.0 * sd, "id {id}: {freq} vs {p}");
            }
        }
    }

    #[test]
    fn text_breaks_lines_at_sentence_ends() {
        let words = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let vocab = Vocab::build([words("hello world").as_slice()], 0);
        let g = Generation {
            tokens: words("world <eos> the end <eos> more"),
            unknown_prompt_words: vec![],
        };
        assert_eq!(
            g.text(&words("hello"), &Codec::Word, &vocab),
            "hello world\nthe end\nmore\n"
        );
        assert_eq!(g.text(&[], &Codec::Word, &vocab), "world\nthe end\nmore\n");
        let chars = Generation {
            tokens: words("l o , <eos> <eos> w"),
            unknown_prompt_words: vec![],
        };
        assert_eq!(
            chars.text(&words("H e l"), &Codec::Char, &vocab),
            "Hello,\n\nw\n",
            "characters are not spaced out; a blank line stays"
        );
    }

    #[test]
    fn a_negative_temperature_is_refused_before_the_run_is_loaded() {
        let tmp = tempfile::tempdir().unwrap();
        let config = crate::config::presets::Preset::Tiny.config();
        let text: Vec<String> = ["a", "b"].map(String::from).to_vec();
        let vocab = Vocab::build([text.as_slice()], 0);
        crate::run::save_run(tmp.path(), &config, &vocab, 0).unwrap();
        let run = Run::open(tmp.path()).unwrap();
        let request = |temperature| GenerateRequest {
            prompt: Vec::new(),
            length: 3,
            temperature,
            top_k: 0,
            seed: 1,
            no_unk: false,
            fresh_sentences: false,
            tokenizer: Tokenizer::Word,
        };
        let e = generate_run(&run, None, &Device::flex(), &request(-1.0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--temperature -1 is not allowed"), "{e}");
        // A valid temperature gets as far as the checkpoint, which this run does not have.
        let e = generate_run(&run, None, &Device::flex(), &request(0.8))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no complete checkpoint yet"), "{e}");
    }
}
