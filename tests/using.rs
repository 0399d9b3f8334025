//! Using a trained model: generation (determinism, greedy = argmax, top-k), the run summary,
//! the curves plot, and run status.

mod common;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};
use lstm_lm::commands::eval::{evaluate_run, EvalContext, EvalRequest};
use lstm_lm::commands::generate::{generate, GenerateRequest};
use lstm_lm::commands::score::LineScore;
use lstm_lm::data::corpus::{CorpusSource, TextLines};
use lstm_lm::data::vocab::{Vocab, EOS_ID, PAD_ID, UNK_ID};
use lstm_lm::error::Error;
use lstm_lm::model::LanguageModel;
use lstm_lm::run::summary::{list_runs, summarize, RunStatus};
use lstm_lm::run::{files, load_model, Run, RunLock};
use lstm_lm::train::events::EventSink;
use lstm_lm::train::{train, TrainReport, TrainRequest};

/// Trains a tiny run of `epochs` (of `total` asked for, when interrupted) with a test split.
fn tiny_run(dir: &Path, epochs: usize, device: &Device) -> TrainReport {
    let (train_file, valid) = common::tiny_corpus(dir, 800, 200);
    let interrupter = burn::train::Interrupter::new();
    train(TrainRequest {
        config: common::tiny_config(epochs),
        corpus: CorpusSource::Files {
            train: train_file,
            valid: Some(valid.clone()),
            test: Some(valid),
            train_fraction: 0.9,
        },
        cache_dir: dir.join("cache"),
        run_dir: dir.join("run"),
        fresh: false,
        devices: vec![device.clone()],
        events: EventSink::quiet(),
        interrupter,
        checkpoint_every: None,
    })
    .unwrap()
}

/// The logits `[vocab]` after reading `<eos>` followed by `ids`, in one forward pass from zeros.
fn logits_after(model: &LanguageModel, ids: &[usize]) -> Vec<f32> {
    let seq: Vec<usize> = std::iter::once(EOS_ID).chain(ids.iter().copied()).collect();
    logits_of(model, &seq)
}

/// The logits `[vocab]` after reading `ids` in one forward pass from zeros.
/// log p(`next` | `prefix`) by hand, in f64, from the model's logits.
fn log_prob_after(model: &LanguageModel, prefix: &[usize], next: usize) -> f64 {
    let logits = logits_of(model, prefix);
    let max = logits.iter().cloned().fold(f32::MIN, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    logits[next] as f64 - max - sum.ln()
}

fn logits_of(model: &LanguageModel, ids: &[usize]) -> Vec<f32> {
    let seq: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let n = seq.len();
    let device = model.embedding.weight.device();
    let inputs = Tensor::<2, Int>::from_data(TensorData::new(seq, [1, n]), &device);
    let (logits, _) = model.forward(inputs, None);
    let v = logits.dims()[2];
    logits
        .slice([0..1, n - 1..n, 0..v])
        .reshape([v])
        .into_data()
        .try_into_vec::<f32>()
        .unwrap()
}

/// Whether the sampler may draw `id` after `seen`: never `<pad>`, and never `<eos>` right
/// after `<eos>` (or first).
fn drawable(id: usize, seen: &[usize]) -> bool {
    id != PAD_ID && !(id == EOS_ID && seen.last().is_none_or(|&l| l == EOS_ID))
}

fn request(prompt: &str, temperature: f64, top_k: usize, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.split_whitespace().map(String::from).collect(),
        length: 30,
        temperature,
        top_k,
        seed,
        no_unk: false,
        fresh_sentences: false,
        tokenizer: Default::default(),
    }
}

/// A trained run on ndarray samples on flex (the checkpoint is backend-neutral); the same seed
/// gives the same text, temperature 0 picks the argmax of a full-sequence forward pass at every
/// step, and top-k draws only among the k highest logits.
#[test]
fn generation_from_a_saved_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, trained_on) = common::cpu_devices().remove(1);
    tiny_run(tmp.path(), 1, &trained_on);
    let run = tmp.path().join("run");
    let vocab = Vocab::load(&run.join(files::VOCAB)).unwrap();
    let model = load_model(&run, None, &Device::flex()).unwrap();
    let ids = |tokens: &[String]| tokens.iter().map(|t| vocab.id(t)).collect::<Vec<_>>();

    let a = generate(&model, &vocab, &request("the king", 1.0, 0, 7));
    assert_eq!(a.tokens.len(), 30);
    // No empty sentence: never <eos> first or right after <eos>.
    for seed in 0..5 {
        let mut r = request("", 1.0, 0, seed);
        r.length = 200;
        let t = generate(&model, &vocab, &r).tokens;
        assert_ne!(t[0], "<eos>");
        assert!(t.windows(2).all(|w| w != ["<eos>", "<eos>"]), "{t:?}");
    }
    assert_eq!(a, generate(&model, &vocab, &request("the king", 1.0, 0, 7)));
    assert_ne!(
        a.tokens,
        generate(&model, &vocab, &request("the king", 1.0, 0, 8)).tokens
    );

    let prompt = ["the".to_string(), "zzzunknownzzz".to_string()];
    let greedy = generate(&model, &vocab, &request(&prompt.join(" "), 0.0, 0, 1));
    assert_eq!(greedy.unknown_prompt_words, ["zzzunknownzzz"]);
    let mut seen = ids(&prompt);
    for token in &greedy.tokens {
        let logits = logits_after(&model, &seen);
        let best = (0..logits.len())
            .filter(|&i| drawable(i, &seen))
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(vocab.id(token), best, "greedy step after {seen:?}");
        seen.push(best);
    }
    // The seed does not matter when greedy.
    assert_eq!(
        greedy,
        generate(&model, &vocab, &request(&prompt.join(" "), 0.0, 0, 99))
    );

    // As bucket training: each sentence from zeros. The first word after <eos> comes from the
    // previous sentence + <eos>; every other word from the current sentence alone.
    let mut fresh = request("the", 0.0, 0, 1);
    fresh.fresh_sentences = true;
    fresh.no_unk = true; // a 1-epoch model's greedy choice is mostly <unk>
    fresh.length = 80;
    let text = generate(&model, &vocab, &fresh).tokens;
    assert!(text.contains(&"<eos>".to_string()), "{text:?}");
    let mut sentence = ids(&["the".to_string()]);
    let mut previous: Option<Vec<usize>> = None; // the sentence just ended, with its <eos>
    for token in &text {
        let segment = previous.clone().unwrap_or_else(|| sentence.clone());
        let logits = logits_of(&model, &segment);
        let best = (0..logits.len())
            .filter(|&i| drawable(i, &segment) && i != UNK_ID)
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)))
            .unwrap();
        assert_eq!(vocab.id(token), best, "after {segment:?}");
        if best == EOS_ID {
            sentence.push(EOS_ID);
            previous = Some(std::mem::take(&mut sentence));
        } else {
            previous = None;
            sentence.push(best);
        }
    }

    // --no-unk: never <unk>, even where it is the argmax.
    let mut free = request("the", 1.0, 0, 2);
    free.length = 300;
    assert!(generate(&model, &vocab, &free)
        .tokens
        .iter()
        .any(|t| t == "<unk>"));
    free.no_unk = true;
    assert!(generate(&model, &vocab, &free)
        .tokens
        .iter()
        .all(|t| t != "<unk>"));

    let k = 3;
    let sampled = generate(&model, &vocab, &request("the", 1.5, k, 5));
    let mut seen = ids(&["the".to_string()]);
    for token in &sampled.tokens {
        let logits = logits_after(&model, &seen);
        let id = vocab.id(token);
        let higher = (0..logits.len())
            .filter(|&i| drawable(i, &seen) && logits[i] > logits[id])
            .count();
        assert!(
            higher < k,
            "{token:?} has {higher} tokens above it; top-{k}"
        );
        seen.push(id);
    }
}

/// `summarize` reports what the training returned, the plot is written every epoch, and the
/// status follows the checkpoints and the run lock.
#[test]
fn summary_plot_and_status_of_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let report = tiny_run(tmp.path(), 2, &Device::flex());
    let run = tmp.path().join("run");
    let s = summarize(&Run::open(&run).unwrap());
    assert_eq!(s.status, RunStatus::Complete);
    assert_eq!(s.epochs_done, 2);
    assert_eq!(s.history, report.epochs);
    let best = report
        .epochs
        .iter()
        .min_by(|a, b| a.valid_perplexity.total_cmp(&b.valid_perplexity))
        .unwrap();
    assert_eq!(s.best_valid, Some((best.epoch, best.valid_perplexity)));
    let test = report.test.unwrap();
    let recorded = s.test.unwrap();
    assert_eq!(
        (recorded.epoch, recorded.tokens, recorded.perplexity),
        (2, test.tokens, test.perplexity)
    );
    let seconds: f64 = report.epochs.iter().map(|e| e.seconds).sum();
    assert!((s.wall_seconds - seconds).abs() < 1e-9);
    let rates: Vec<f64> = report.epochs.iter().map(|e| e.tokens_per_second).collect();
    let harmonic = 2.0 / (1.0 / rates[0] + 1.0 / rates[1]);
    assert!((s.tokens_per_second.unwrap() - harmonic).abs() < 1e-6);
    let text = s.report();
    assert!(
        text.contains(&format!(
            "{:.2} (epoch {})",
            best.valid_perplexity, best.epoch
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{:.2}", test.perplexity)), "{text}");
    assert!(
        text.contains("buckets [10, 20, 40, 60, 80], batch 16; Adam lr 0.01"),
        "{text}"
    );

    let svg = std::fs::read_to_string(run.join(lstm_lm::run::plot::CURVES)).unwrap();
    assert!(svg.len() > 1000);
    assert!(svg.contains("train perplexity") && svg.contains("valid perplexity"));
    // The train, valid and rate lines, each through the two epochs' points.
    for color in ["#1F77B4", "#D62728", "#2CA02C"] {
        let lines: Vec<&str> = svg
            .lines()
            .filter(|l| l.starts_with("<polyline") && l.contains(color))
            .collect();
        assert!(
            lines.iter().any(|l| l.matches(',').count() == 2),
            "{color}: {lines:?}"
        );
    }

    // While a process holds the lock the run is running, and a second trainer is refused.
    {
        let _lock = RunLock::acquire(&run).unwrap();
        assert_eq!(
            summarize(&Run::open(&run).unwrap()).status,
            RunStatus::Running
        );
        let err = RunLock::acquire(&run).unwrap_err();
        assert!(matches!(err, Error::RunInUse { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id())),
            "{message}"
        );
    }
    // Asking for more epochs than the checkpoints hold: interrupted until trained.
    let mut config: lstm_lm::config::ExperimentConfig =
        serde_json::from_str(&std::fs::read_to_string(run.join(files::CONFIG)).unwrap()).unwrap();
    config.epochs = 3;
    std::fs::write(
        run.join(files::CONFIG),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    let listed = list_runs(tmp.path()).unwrap().runs;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].dir, run);
    assert_eq!(listed[0].status, RunStatus::Interrupted);
    assert_eq!(listed[0].epochs_done, 2);

    let err = Run::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("not a run folder"), "{err}");
}

/// `score`: one result per line, blank lines included; sentence context is the same batched or
/// one line at a time (padding does not leak) and for the first line equals carry context;
/// carry context for a later line uses what came before; every line's log-probability is the
/// sum over its tokens of the model's own log-softmax, `<eos>` included.
#[test]
fn scores_of_lines_in_sentence_and_carry_context() {
    use lstm_lm::commands::score::{score_lines, Context};
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    tiny_run(tmp.path(), 1, &device);
    let run = Run::open(&tmp.path().join("run")).unwrap();
    let (model, _) = run.load_model(None, &device).unwrap();
    let lines: Vec<String> = [
        "First Citizen:",
        "",
        "Before we proceed any further , hear me speak .",
        "zzzunknown words here",
        "All :",
    ]
    .map(String::from)
    .to_vec();
    let batched = score_lines(&run, &model, &lines, Context::Sentence, 64, &device);
    let single = score_lines(&run, &model, &lines, Context::Sentence, 1, &device);
    let carried = score_lines(&run, &model, &lines, Context::Carry, 64, &device);
    assert_eq!(batched.len(), lines.len());
    assert_eq!(batched[1].scored, 0, "a word model skips blank lines");
    assert_eq!(batched[1].perplexity, None);
    assert!(batched[3].unknown >= 1);
    assert_eq!(batched[3].tokens[0], "<unk>");
    assert_eq!(batched[0].tokens.last().map(String::as_str), Some("<eos>"));
    for (a, b) in batched.iter().zip(&single) {
        assert!(
            (a.logprob - b.logprob).abs() < 1e-4 * b.logprob.abs().max(1.0),
            "{a:?} {b:?}"
        );
    }
    assert!((batched[0].logprob - carried[0].logprob).abs() < 1e-5);
    assert!(
        (batched[2].logprob - carried[2].logprob).abs() > 1e-3,
        "carry uses the context"
    );
    // Line 1 by hand: <eos> then each token, summing log-softmax at the next token.
    let ids: Vec<usize> = batched[0]
        .tokens
        .iter()
        .map(|t| run.vocab().get(t).unwrap())
        .collect();
    let mut expected = 0.0f64;
    for k in 0..ids.len() {
        let mut prefix = vec![EOS_ID];
        prefix.extend(&ids[..k]);
        expected += log_prob_after(&model, &prefix, ids[k]);
    }
    let got = batched[0].logprob;
    assert!(
        (got - expected).abs() < 1e-4 * expected.abs(),
        "{got} vs {expected}"
    );
    assert!((batched[0].log2prob - got / std::f64::consts::LN_2).abs() < 1e-9);

    // `eval` says the same with the same names: sentence context is the sum of the lines'
    // scores; carry reads the text as one stream and leaves out only the first token.
    let file = tmp.path().join("lines.txt");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let eval = |context| {
        evaluate_run(&EvalRequest {
            run_dir: tmp.path().join("run"),
            text: vec![file.clone()],
            cache_dir: tmp.path().join("cache"),
            epoch: None,
            context,
            columns: 1,
            bptt: None,
            device: device.clone(),
        })
        .unwrap()
        .evaluation
    };
    let sums = |s: &[LineScore]| {
        let nll: f64 = s.iter().map(|l| -l.logprob).sum();
        (nll, s.iter().map(|l| l.scored).sum::<usize>())
    };
    let (nll, tokens) = sums(&batched);
    let sentence = eval(EvalContext::Sentence);
    assert_eq!(sentence.tokens, tokens);
    assert!(
        (sentence.loss * tokens as f64 - nll).abs() < 1e-6 * nll,
        "{sentence:?}"
    );
    let (nll, tokens) = sums(&carried);
    let carry = eval(EvalContext::Carry);
    assert_eq!(
        carry.tokens,
        tokens - 1,
        "the first token has no context in a stream"
    );
    let expected = nll + log_prob_after(&model, &[EOS_ID], ids[0]);
    assert!(
        (carry.loss * carry.tokens as f64 - expected).abs() < 1e-4 * expected,
        "{carry:?} vs {expected}"
    );
}

/// A text scored as it is read, in chunks (`score` and `eval --context sentence` on a text of
/// any size): the same scores, numbers and carried state as scoring all its lines at once,
/// CRLF and a last line without its end read as `str::lines` reads them; a line that is not
/// UTF-8 ends the scores with an error naming it, after the lines before it.
#[test]
fn a_text_scored_as_it_is_read_matches_its_lines_scored_at_once() {
    use lstm_lm::commands::score::{score_lines, Context, Scorer, CHUNK_BATCHES};
    let tmp = tempfile::tempdir().unwrap();
    let device = Device::flex();
    tiny_run(tmp.path(), 1, &device);
    let run = Run::open(&tmp.path().join("run")).unwrap();
    let (model, _) = run.load_model(None, &device).unwrap();
    let shapes = [
        "First Citizen :",
        "",
        "hear me speak .",
        "All :",
        "zzz unknown",
    ];
    // Batches of one line: chunks of CHUNK_BATCHES lines, so the text spans three.
    let n = 2 * CHUNK_BATCHES + 7;
    let lines: Vec<String> = (0..n)
        .map(|k| shapes[k % shapes.len()].to_string())
        .collect();
    let text = lines.join("\r\n");
    let source = tmp.path().join("lines.txt");
    for context in [Context::Sentence, Context::Carry] {
        let whole = score_lines(&run, &model, &lines, context, 1, &device);
        let scorer = Scorer::new(&run, &model, context, 1, &device);
        let read: Vec<LineScore> = scorer
            .score_text(TextLines::new(text.as_bytes(), &source))
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(read.len(), n, "{context:?}");
        for (k, (a, b)) in read.iter().zip(&whole).enumerate() {
            assert_eq!((a.line, &a.text, &a.tokens), (k + 1, &b.text, &b.tokens));
            assert!(
                (a.logprob - b.logprob).abs() < 1e-9,
                "{context:?} line {}",
                k + 1
            );
        }
    }

    let mut bad = b"hear me\nAll :\nhe\xffar\nnot reached\n".to_vec();
    bad.extend_from_slice(text.as_bytes());
    let scorer = Scorer::new(&run, &model, Context::Sentence, 64, &device);
    let got: Vec<_> = scorer
        .score_text(TextLines::new(&bad[..], &source))
        .collect();
    assert_eq!(got.len(), 3, "two lines, then the error");
    assert_eq!(got[1].as_ref().unwrap().text, "All :");
    let e = got[2].as_ref().unwrap_err().to_string();
    assert!(
        e.contains("lines.txt") && e.contains("line 3: not valid UTF-8"),
        "{e}"
    );
}
