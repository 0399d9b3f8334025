//! lstm-lm as a library: train a tiny model, open the run, rank sentences by probability and
//! sample text, without the command line.
//!
//!     cargo run --release --example score_and_generate [RUN_DIR]
//!
//! Trains (or resumes) a 1 x 32 LSTM on the embedded Tiny Shakespeare for one epoch (about
//! 10 s on 2 cores) into RUN_DIR (default: a temporary folder), then uses the run.

use burn::tensor::Device;
use lstm_lm::commands::generate::{generate_run, GenerateRequest};
use lstm_lm::commands::score::{score_lines, Context};
use lstm_lm::config::presets::Preset;
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::run::Run;
use lstm_lm::train::events::EventSink;
use lstm_lm::train::{train, TrainRequest};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let run_dir = std::env::args()
        .nth(1)
        .map(Into::into)
        .unwrap_or_else(|| scratch.path().join("run"));
    let device = Device::flex();

    // 1. Train: a preset's config, a corpus, a run folder; events go where you send them.
    let mut config = Preset::Tiny.config();
    config.epochs = 1;
    let report = train(TrainRequest {
        config,
        corpus: CorpusSource::Embedded {
            train_fraction: 0.9,
        },
        cache_dir: scratch.path().join("cache"),
        run_dir: run_dir.clone(),
        fresh: false,
        devices: vec![device.clone()],
        events: EventSink::quiet(),
        interrupter: Default::default(),
        checkpoint_every: None,
    })?;
    let last = report.epochs.last().expect("one epoch");
    println!(
        "trained: validation perplexity {:.1}",
        last.valid_perplexity
    );

    // 2. Open the run and score sentences: the more probable, the higher the log-probability.
    let run = Run::open(&run_dir)?;
    let (model, epoch) = run.load_model(None, &device)?;
    let sentences: Vec<String> = [
        "What say you to my suit?",
        "suit my you to say What?",
        "KING RICHARD III:",
    ]
    .map(String::from)
    .to_vec();
    let mut scores = score_lines(&run, &model, &sentences, Context::Sentence, 64, &device);
    scores.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    println!("epoch {epoch}, most probable first:");
    for s in &scores {
        println!("  {:8.2} nats  {}", s.logprob, s.text);
    }

    // 3. Generate: a prompt cut by the run's tokenizer, then sampled tokens.
    let prompt = run.codec().tokens_of(run.vocab(), "ROMEO:");
    let request = GenerateRequest {
        prompt: prompt.clone(),
        length: 40,
        temperature: 0.8,
        top_k: 40,
        seed: 7,
        no_unk: true,
        fresh_sentences: false,
        tokenizer: run.config().data.tokenizer,
    };
    let generation = generate_run(&run, None, &device, &request)?;
    println!("{}", generation.text(&prompt, run.codec(), run.vocab()));
    Ok(())
}
