//! `lstm-lm`: the command line. It parses flags, picks devices, calls the library and prints
//! what it returns or reports.

mod cli;

use anyhow::Context;
use clap::Parser;

use std::io::Write;

use cli::args::{
    BenchArgs, Cli, Command, EvalArgs, ExportArgs, GenerateArgs, ImportArgs, ReportArgs, RunsArgs,
    ScoreArgs, TokenizeArgs, TrainArgs,
};
use cli::display::Display;
use cli::memory;
use lstm_lm::commands::{bench, eval, export, generate, import, score};
use lstm_lm::data::corpus::{self, CorpusSource, LinePieces, TextLines};
use lstm_lm::device::{self, DeviceChoice};
use lstm_lm::model::Softmax;
use lstm_lm::run::{self, summary, Run};
use lstm_lm::train::{self, events::EventSink};

/// Ends the process quietly when the reader of its output goes away (`lstm-lm score ... |
/// head`), as Unix tools do: Rust ignores SIGPIPE, so `println!` would panic instead.
fn die_on_closed_pipe() {
    // SAFETY: called once at the start of `main`, before any other thread exists.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() {
    #[cfg(not(target_os = "linux"))]
    memory::small_arenas();
    memory::keep_freed_memory();
    die_on_closed_pipe();
    lstm_lm::model::fused::pin_pool_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Train(args)) => run_train(args),
        Some(Command::Bench(args)) => run_bench(args),
        Some(Command::Eval(args)) => run_eval(args),
        Some(Command::Generate(args)) => run_generate(args),
        Some(Command::Report(args)) => run_report(args),
        Some(Command::Runs(args)) => run_runs(args),
        Some(Command::Tokenize(args)) => run_tokenize(args),
        Some(Command::Export(args)) => run_export(args),
        Some(Command::Import(args)) => run_import(args),
        Some(Command::Score(args)) => run_score(args),
        None => run_train(cli.train),
    };
    if let Err(e) = result {
        // Each cause once: our errors already print their source in their own message.
        let mut message = e.to_string();
        for cause in e.chain().skip(1) {
            let cause = cause.to_string();
            if !message.contains(&cause) {
                message = format!("{message}: {cause}");
            }
        }
        eprintln!("error: {message}");
        std::process::exit(1);
    }
}

/// The device for `choice`, printing why `auto` took the CPU when it did.
fn choose_device(choice: DeviceChoice) -> anyhow::Result<burn::tensor::Device> {
    let chosen = device::choose(choice)?;
    if let Some(line) = chosen.fallback {
        println!("{line}");
    }
    Ok(chosen.device)
}

/// An interrupter that the first Ctrl-C stops (after the batch in progress); the second one
/// quits at once.
fn stop_on_ctrl_c() -> anyhow::Result<burn::train::Interrupter> {
    let interrupter = burn::train::Interrupter::new();
    let on_signal = interrupter.clone();
    let mut pressed = false;
    ctrlc::set_handler(move || {
        if pressed {
            std::process::exit(130);
        }
        pressed = true;
        eprintln!("\nstopping after this batch (Ctrl-C again to quit at once)");
        on_signal.stop(Some("Ctrl-C"));
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(interrupter)
}

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    if args.list_devices {
        for line in device::adapter_lines() {
            println!("{line}");
        }
        return Ok(());
    }
    args.overrides.check_init_from()?;
    let config = args.overrides.apply(args.preset.config());
    let files = (!args.train.is_empty())
        .then(|| (args.train.clone(), args.valid.clone(), args.test.clone()));
    let (corpus, data_name) =
        CorpusSource::from_flags(files, args.dataset, &args.data_dir, args.train_fraction)?;
    let run_dir = args
        .artifact_dir
        .clone()
        .unwrap_or_else(|| run::default_run_dir(&data_name, args.preset));
    let checkpoint_every = train::checkpoint_interval(args.checkpoint_minutes)?;
    let devices = match &args.devices {
        Some(list) => device::parse_devices(list)?,
        None => vec![choose_device(args.device)?],
    };

    let interrupter = stop_on_ctrl_c()?;
    let mut display = Display::new(args.progress, args.log_every);
    memory::purge_freed_memory();
    let report = train::train(train::TrainRequest {
        config,
        corpus,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(lstm_lm::data::prepare::default_cache_dir),
        run_dir,
        fresh: args.fresh,
        devices,
        events: EventSink::new(move |event| {
            if matches!(event, train::events::TrainEvent::SplitStarted(_)) {
                memory::keep_freed_memory();
            }
            display.show(event)
        }),
        interrupter,
        checkpoint_every,
    })?;
    if report.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let text = match &args.text {
        Some(path) => corpus::read_corpus(path)?,
        None => corpus::parse_text(
            corpus::EMBEDDED_TINY_SHAKESPEARE,
            std::path::Path::new("<embedded>"),
        )?,
    };
    let report = bench::run(&bench::BenchRequest {
        config: args.config,
        text,
        min_vocab: args.min_vocab,
        warmup: args.warmup,
        steps: args.steps,
        device: choose_device(args.device)?,
        seed: args.seed,
        composed: args.composed,
        softmax: args.cutoffs.map(|cutoffs| Softmax::Adaptive {
            cutoffs,
            div_value: args.div_value,
        }),
        ceiling: !args.no_ceiling,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let request = eval::EvalRequest {
        text: vec![args.text.clone()],
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(lstm_lm::data::prepare::default_cache_dir),
        device: choose_device(args.device)?,
        run_dir: args.run,
        epoch: args.epoch,
        context: if args.sentences {
            eval::EvalContext::Buckets
        } else {
            args.context
        },
        columns: args.columns,
        bptt: args.bptt,
    };
    let result = eval::evaluate_run(&request)?;
    if args.json {
        let e = &result.evaluation;
        let json = serde_json::json!({
            "epoch": result.epoch,
            "tokens": e.tokens,
            "unknown_tokens": result.unknown_tokens,
            "loss": e.loss,
            "perplexity": e.perplexity,
            "bits_per_char": result.bits_per_char,
            "word_perplexity": result.word_perplexity,
        });
        println!("{json}");
    } else {
        println!(
            "{}",
            result.describe(&request, &args.text.display().to_string())
        );
    }
    Ok(())
}

fn run_score(args: ScoreArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let lines = if args.text.as_os_str() == "-" {
        TextLines::new(Box::new(std::io::stdin().lock()) as Box<_>, &args.text)
    } else {
        TextLines::open(&args.text)?
    };
    let device = choose_device(args.device)?;
    let (model, _) = run.load_model(args.epoch, &device)?;
    let scorer = score::Scorer::new(&run, &model, args.context, args.batch, &device);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for s in scorer.score_text(lines) {
        writeln!(out, "{}", serde_json::to_string(&s?)?)?;
    }
    Ok(())
}

fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let done = export::export(&export::ExportRequest {
        run_dir: args.run,
        epoch: args.epoch,
        out: args.out,
    })?;
    println!(
        "exported epoch {}: {} tensors in {}",
        done.epoch,
        done.tensors,
        done.dir.display()
    );
    Ok(())
}

fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    let done = import::import(&import::ImportRequest {
        model: args.model,
        vocab: args.vocab,
        out: args.out,
    })?;
    let m = &done.model;
    println!(
        "imported {} ({} naming, {} tensors): {} x {} LSTM, embedding {}, {} ids{}{}",
        done.file.display(),
        done.naming,
        done.tensors,
        m.n_layers,
        m.d_hidden,
        m.d_embed,
        m.vocab_size,
        if m.tied { ", tied output layer" } else { "" },
        match &m.softmax {
            Softmax::Adaptive { cutoffs, .. } =>
                format!(", adaptive softmax (cutoffs {cutoffs:?})"),
            Softmax::Full => String::new(),
        }
    );
    if !done.missing.is_empty() {
        println!(
            "rows the model did not have: {} (probability 0: never generated, not in any \
             perplexity)",
            done.missing.join(", ")
        );
    }
    println!(
        "run folder {}: eval, generate and score use it (as epoch 0); train further with \
         `lstm-lm train --init-from {} --artifact-dir NEW --train FILE` (vocabulary fixed, \
         fresh optimizer state)",
        done.dir.display(),
        done.dir.display()
    );
    Ok(())
}

/// How much of a line `tokenize` reads at a time: a text on one line is not held whole.
const TOKENIZE_READ_BYTES: usize = 1 << 20;

fn run_tokenize(args: TokenizeArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let pieces = LinePieces::open(&args.text, TOKENIZE_READ_BYTES)?;
    run.codec()
        .write_spaced_lines(run.vocab(), pieces, &mut out)?;
    out.flush()?;
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let device = choose_device(args.device)?;
    let tokenizer = run.config().data.tokenizer;
    let prompt = run.codec().tokens_of(run.vocab(), &args.prompt);
    let request = generate::GenerateRequest {
        prompt,
        length: args.length,
        temperature: args.temperature,
        top_k: args.top_k,
        seed: args.seed,
        no_unk: args.no_unk,
        fresh_sentences: false,
        tokenizer,
    };
    let mut out = std::io::stdout().lock();
    let generation = generate::write_run(&run, args.epoch, &device, &request, &mut out)?;
    if !generation.unknown_prompt_words.is_empty() {
        eprintln!(
            "warning: not in the run's vocabulary, fed as <unk>: {}",
            generation.unknown_prompt_words.join(" ")
        );
    }
    Ok(())
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let run = Run::open(&args.run)?;
    let summary = summary::summarize(&run);
    print!("{}", summary.report());
    let plot = run::plot::write_curves(run.dir(), &run.title(), &summary.history)?;
    println!("\ncurves: {}", plot.display());
    Ok(())
}

fn run_runs(args: RunsArgs) -> anyhow::Result<()> {
    let list = summary::list_runs(&args.root)?;
    for (dir, e) in &list.skipped {
        eprintln!("warning: skipping {}: {e}", dir.display());
    }
    if list.runs.is_empty() {
        println!(
            "no runs under {} (a run folder holds config.json; train one with `lstm-lm`)",
            args.root.display()
        );
    } else {
        print!("{}", summary::runs_table(&list.runs));
    }
    Ok(())
}
