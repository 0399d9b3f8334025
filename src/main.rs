//! `lstm-lm`: the command line. It parses flags and picks a device; the library does the rest.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use lstm_lm::bench::BenchConfig;
use lstm_lm::device::{self, DeviceChoice};

/// mimalloc keeps freed pages for reuse: glibc's malloc returns the large per-step buffers
/// (28 MB logits and their gradients) to the OS and page-faults them back in every step.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its place in `mi_option_e`, which the bindings leave
/// unnamed): how long freed memory waits before it is returned to the OS, in ms.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Never purge freed memory: a training step frees and reallocates the same large buffers
/// (logits, gradients, workspaces), and with mimalloc's default 10 ms delay the pages went back
/// to the OS between steps and were zeroed again on the next: 6% of a `medium` step's samples
/// were the kernel's `clear_page`. With this, a 16-step `medium` bench takes ~480 page faults
/// instead of 19,000 - 27,000, and ran 3 - 11% faster in alternating runs (README, "Speed").
fn keep_freed_memory() {
    // SAFETY: called once at the start of `main`, before any other thread exists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
use lstm_lm::config::{Batching, ExperimentConfig, OptimizerConfig, Preset};
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::model::InitScheme;
use lstm_lm::model::LossNorm;
use lstm_lm::render::{Progress, ProgressMode};
use lstm_lm::schedule::LrSchedule;
use lstm_lm::training::{train, TrainRequest};

/// Train word-level LSTM language models, on a GPU (wgpu) or a CPU.
///
/// With no arguments it trains on the embedded Tiny Shakespeare. Rerunning the same command
/// after an interruption continues from the last complete epoch.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once
enum Command {
    /// Train a model (the default when no subcommand is given).
    Train(TrainArgs),
    /// Time real training steps of a named config and print tokens/s, ms/step and peak memory.
    ///
    /// `cargo xtask bench` runs it side by side with the PyTorch reference.
    Bench(BenchArgs),
    /// Perplexity of a saved run on a text, with full context (the state carried through the
    /// whole file) unless --sentences is given.
    Eval(EvalArgs),
    /// Sample text from a saved run (on the CPU by default, wherever it was trained).
    Generate(GenerateArgs),
    /// Print a run's summary and per-epoch table, and redraw its curves.svg.
    Report(ReportArgs),
    /// List the runs under a folder with their status, epochs and best perplexity.
    Runs(RunsArgs),
}

#[derive(Args, Debug, Clone)]
struct GenerateArgs {
    /// The run folder (the --artifact-dir it was trained with).
    run: PathBuf,
    /// Words to start from; words outside the run's vocabulary are fed as <unk>.
    #[arg(long, default_value = "")]
    prompt: String,
    /// Tokens to generate; each sentence end starts a new line.
    #[arg(long, default_value_t = 100)]
    length: usize,
    /// Softmax temperature: 1 samples the model's distribution, lower is more conservative,
    /// 0 is greedy (always the most likely word).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Sample among the K most likely words only (0 = all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    top_k: usize,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Never generate <unk> (its probability goes to the other words).
    #[arg(long)]
    no_unk: bool,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    epoch: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
struct ReportArgs {
    /// The run folder (the --artifact-dir it was trained with).
    run: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct RunsArgs {
    /// The folder the runs are under.
    #[arg(default_value = "runs")]
    root: PathBuf,
}

#[derive(Args, Debug, Clone)]
struct EvalArgs {
    /// The run folder (the --artifact-dir it was trained with).
    run: PathBuf,
    /// The text to score: one sentence per line, whitespace-separated tokens.
    #[arg(long, value_name = "FILE")]
    text: PathBuf,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    epoch: Option<usize>,
    /// Score each sentence from a zero state in the run's buckets, as bucket training saw them.
    #[arg(long)]
    sentences: bool,
    /// Parallel columns of the stream; 1 = the whole text as one sequence (full context).
    #[arg(long, default_value_t = 1)]
    columns: usize,
    /// Window length [default: the run's --bptt]; the state crosses windows either way.
    #[arg(long)]
    bptt: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
struct BenchArgs {
    /// Model and batching config to time.
    #[arg(long, value_enum, default_value_t = BenchConfig::Small)]
    config: BenchConfig,
    /// Text the batches are made of [default: the embedded Tiny Shakespeare].
    #[arg(long, value_name = "FILE")]
    text: Option<PathBuf>,
    /// Pad the output layer to at least this many rows (PTB's vocabulary is 10,000).
    #[arg(long, default_value_t = 10_000)]
    min_vocab: usize,
    /// Untimed steps before timing (GPU backends compile and autotune here); above 0, plus one
    /// untimed step of each batch shape the timed steps meet (`seed`'s five bucket lengths).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 30)]
    steps: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    device: DeviceChoice,
    /// Seed of initialisation.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the report as one JSON line.
    #[arg(long)]
    json: bool,
    /// Run Burn's composed ops instead of the fused ones (the LSTM layer, and on the CPU the
    /// output layer with its loss), to time what the fused ops replace.
    #[arg(long)]
    composed: bool,
}

#[derive(Args, Debug, Clone)]
struct TrainArgs {
    /// Starting config; the flags below override its values.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    preset: Preset,
    /// A fetched dataset (see `cargo xtask fetch-data`); ignored when --train is given.
    #[arg(long, value_enum, default_value_t = Dataset::Tinyshakespeare)]
    dataset: Dataset,
    /// Folder that `cargo xtask fetch-data` wrote to.
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Training text: one sentence per line, whitespace-separated tokens, UTF-8.
    #[arg(long, value_name = "FILE")]
    train: Option<PathBuf>,
    /// Validation text; without it, the last lines of --train are held out.
    #[arg(long, value_name = "FILE", requires = "train")]
    valid: Option<PathBuf>,
    /// Test text, scored once when training ends.
    #[arg(long, value_name = "FILE", requires = "train")]
    test: Option<PathBuf>,
    /// Share of training lines kept for training when no --valid is given.
    #[arg(long, default_value_t = 0.9)]
    train_fraction: f64,
    /// Where to train: auto picks a GPU when wgpu finds one, else the CPU (flex).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    device: DeviceChoice,
    /// Run folder for config, vocabulary, metrics and checkpoints [default: runs/<data>-<preset>].
    #[arg(long, value_name = "DIR")]
    artifact_dir: Option<PathBuf>,
    /// Start over, discarding the run in the run folder.
    #[arg(long)]
    fresh: bool,
    /// Total number of epochs (raise it to continue a finished run).
    #[arg(long)]
    epochs: Option<usize>,
    /// Seed of initialisation and shuffling.
    #[arg(long)]
    seed: Option<u64>,
    /// Sentences per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Embedding width.
    #[arg(long)]
    embed: Option<usize>,
    /// LSTM hidden width.
    #[arg(long)]
    hidden: Option<usize>,
    /// Number of LSTM layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Largest vocabulary, specials included (0 = every training word).
    #[arg(long)]
    max_vocab: Option<usize>,
    /// Bucket lengths in tokens, comma-separated; longer sentences are dropped.
    #[arg(long, value_delimiter = ',')]
    buckets: Option<Vec<usize>>,
    /// Batches of padded sentences in buckets, or one contiguous stream with carried state.
    #[arg(long, value_enum)]
    batching: Option<Batching>,
    /// Steps per truncated-BPTT window (stream batching).
    #[arg(long)]
    bptt: Option<usize>,
    /// Dropout on embeddings, between layers and before the output layer (0 = none).
    #[arg(long)]
    dropout: Option<f64>,
    /// Tie the output layer to the embedding (needs --embed equal to --hidden).
    #[arg(long)]
    tied: bool,
    /// Clip the global gradient norm to this value (0 = off).
    #[arg(long)]
    clip: Option<f64>,
    /// Optimizer; switching it resets the rate to its default (SGD 1.0, Adam 0.002) unless
    /// --lr is given.
    #[arg(long, value_enum)]
    optimizer: Option<OptimizerChoice>,
    /// Learning-rate schedule: constant; step = constant for --decay-start epochs then
    /// x --lr-decay per epoch (Zaremba); plateau = divide by --lr-divisor after each epoch whose
    /// validation perplexity does not improve.
    #[arg(long, value_enum)]
    lr_schedule: Option<ScheduleChoice>,
    /// Epochs at the full rate before the step schedule decays [default: 4].
    #[arg(long)]
    decay_start: Option<usize>,
    /// Factor per epoch of the step schedule [default: 0.5].
    #[arg(long)]
    lr_decay: Option<f64>,
    /// Divisor of the plateau schedule [default: 4].
    #[arg(long)]
    lr_divisor: Option<f64>,
    /// Initialise every parameter uniformly in +-this (Zaremba: 0.1, 0.05, 0.04).
    #[arg(long)]
    init_range: Option<f64>,
    /// Loss reduction: sum over tokens / batch size, or mean per token.
    #[arg(long, value_enum)]
    loss_norm: Option<LossNorm>,
    /// Progress display: auto = live bar in a terminal, plain lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Also save a checkpoint within an epoch at most every M minutes, so that a kill loses at
    /// most that much work (0 = at epoch ends only).
    #[arg(long, value_name = "M", default_value_t = 10.0)]
    checkpoint_minutes: f64,
    /// With plain progress, one line every N training batches [default: about ten per epoch].
    #[arg(long, value_name = "N", default_value_t = 0)]
    log_every: usize,
    /// Train data-parallel on several devices at once, comma-separated: gpu:N (the N-th
    /// discrete GPU), wgpu, flex (or cpu), ndarray; e.g. gpu:0,gpu:1. burn-train's multi-device
    /// strategy splits each epoch's batches across them and steps the optimizer on the first.
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    devices: Option<String>,
    /// List the adapters wgpu sees (name, type, graphics API) and exit.
    #[arg(long)]
    list_devices: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum OptimizerChoice {
    /// Plain SGD (with the preset's momentum and weight decay when it uses SGD).
    Sgd,
    /// Adam.
    Adam,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScheduleChoice {
    /// The same rate every epoch.
    Constant,
    /// Constant, then geometric decay per epoch.
    Step,
    /// Divide when validation stops improving.
    Plateau,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Dataset {
    /// Tiny Shakespeare, embedded in the binary (90/10 split by lines).
    Tinyshakespeare,
    /// Penn Treebank (Mikolov), from `cargo xtask fetch-data --dataset ptb`.
    Ptb,
}

fn main() {
    keep_freed_memory();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Train(args)) => run_train(args),
        Some(Command::Bench(args)) => run_bench(args),
        Some(Command::Eval(args)) => run_eval(args),
        Some(Command::Generate(args)) => run_generate(args),
        Some(Command::Report(args)) => run_report(args),
        Some(Command::Runs(args)) => run_runs(args),
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

fn run_train(args: TrainArgs) -> anyhow::Result<()> {
    if args.list_devices {
        let found = device::adapters();
        if !cfg!(feature = "wgpu") {
            println!("this build has no GPU support (rebuild with `--features wgpu`); CPU: flex");
        } else if found.is_empty() {
            println!("wgpu sees no adapter; CPU: flex");
        }
        for a in found {
            println!(
                "{} ({}, {}){}",
                a.name,
                a.kind,
                a.api,
                if a.is_gpu {
                    ""
                } else {
                    ": software, not used by --device auto"
                }
            );
        }
        return Ok(());
    }
    let config = build_config(&args);
    let (corpus, data_name) = corpus(&args)?;
    let preset = args
        .preset
        .to_possible_value()
        .map_or_else(|| "run".to_string(), |v| v.get_name().to_string());
    let run_dir = args
        .artifact_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(format!("{data_name}-{preset}")));
    let devices = match &args.devices {
        Some(list) => device::parse_devices(list)?,
        None => vec![device::choose_device(args.device)?],
    };

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

    let report = train(TrainRequest {
        config,
        corpus,
        run_dir,
        fresh: args.fresh,
        devices,
        progress: Progress {
            mode: args.progress,
            log_every: args.log_every,
        },
        interrupter,
        checkpoint_every: checkpoint_every(args.checkpoint_minutes)?,
    })?;
    if report.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

/// `--checkpoint-minutes` as a duration; 0 = none.
fn checkpoint_every(minutes: f64) -> anyhow::Result<Option<std::time::Duration>> {
    if !(minutes >= 0.0 && minutes.is_finite()) {
        anyhow::bail!("--checkpoint-minutes must be 0 (off) or a positive number, got {minutes}");
    }
    Ok((minutes > 0.0).then(|| std::time::Duration::from_secs_f64(minutes * 60.0)))
}

fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let text = match &args.text {
        Some(path) => lstm_lm::data::corpus::read_corpus(path)?,
        None => lstm_lm::data::corpus::parse_text(
            lstm_lm::data::corpus::EMBEDDED_TINY_SHAKESPEARE,
            std::path::Path::new("<embedded>"),
        )?,
    };
    let device = device::choose_device(args.device)?;
    lstm_lm::fused::set_enabled(!args.composed);
    let report = lstm_lm::bench::run(&lstm_lm::bench::BenchRequest {
        config: args.config,
        text,
        min_vocab: args.min_vocab,
        warmup: args.warmup,
        steps: args.steps,
        device,
        seed: args.seed,
    })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "{} on {}{}: {:.0} tokens/s, {:.0} positions/s, {:.1} samples/s, {:.1} ms/step \
             (forward {:.1}, backward {:.1}, update {:.1}), peak RSS {} ({} steps, V={}, {} params, last loss {:.3})",
            report.config,
            report.device,
            if report.fused { "" } else { " (composed ops)" },
            report.tokens_per_sec,
            report.positions_per_sec,
            report.samples_per_sec,
            report.ms_per_step,
            report.phase_ms[0],
            report.phase_ms[1],
            report.phase_ms[2],
            report
                .peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.0} MiB")),
            report.steps,
            report.vocab,
            report.params,
            report.last_loss,
        );
    }
    Ok(())
}

fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
    let text = lstm_lm::data::corpus::read_corpus(&args.text)?;
    let device = device::choose_device(args.device)?;
    let r = lstm_lm::eval::evaluate_run(&lstm_lm::eval::EvalRequest {
        run_dir: args.run.clone(),
        text,
        epoch: args.epoch,
        sentences: args.sentences,
        columns: args.columns,
        bptt: args.bptt,
        device,
    })?;
    let e = r.evaluation;
    let how = if args.sentences {
        format!(
            "sentence by sentence, {} longer than the largest bucket not scored",
            e.dropped_sentences
        )
    } else if args.columns == 1 {
        "full context".to_string()
    } else {
        format!("{} columns", args.columns)
    };
    println!(
        "{} (epoch {}) on {} ({how}): {} tokens ({} not in the vocabulary, scored as <unk>), \
         loss {:.4}, perplexity {:.2}",
        args.run.display(),
        r.epoch,
        args.text.display(),
        e.tokens,
        r.unknown_tokens,
        e.loss,
        e.perplexity
    );
    Ok(())
}

fn run_generate(args: GenerateArgs) -> anyhow::Result<()> {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        anyhow::bail!(
            "--temperature {} is not allowed: pass 0 (greedy) or a positive number such as 0.8",
            args.temperature
        );
    }
    // Also says so when the folder is not a run.
    let batching = lstm_lm::run::load_config(&args.run)?.data.batching;
    let device = device::choose_device(args.device)?;
    let vocab = lstm_lm::data::vocab::Vocab::load(&args.run.join(lstm_lm::run::files::VOCAB))?;
    let model = lstm_lm::run::load_model(&args.run, args.epoch, &device)?;
    let prompt: Vec<String> = args.prompt.split_whitespace().map(String::from).collect();
    let generation = lstm_lm::generate::generate(
        &model,
        &vocab,
        &lstm_lm::generate::GenerateRequest {
            prompt: prompt.clone(),
            length: args.length,
            temperature: args.temperature,
            top_k: args.top_k,
            seed: args.seed,
            no_unk: args.no_unk,
            fresh_sentences: batching == Batching::Buckets,
        },
    );
    if !generation.unknown_prompt_words.is_empty() {
        eprintln!(
            "warning: not in the run's vocabulary, fed as <unk>: {}",
            generation.unknown_prompt_words.join(" ")
        );
    }
    print!("{}", generation.text(&prompt));
    Ok(())
}

fn run_report(args: ReportArgs) -> anyhow::Result<()> {
    let summary = lstm_lm::summary::summarize(&args.run)?;
    print!("{}", summary.report());
    let title = lstm_lm::training::run_title(&args.run);
    let plot = lstm_lm::plot::write_curves(&args.run, &title, &summary.history)?;
    println!("\ncurves: {}", plot.display());
    Ok(())
}

fn run_runs(args: RunsArgs) -> anyhow::Result<()> {
    let runs = lstm_lm::summary::list_runs(&args.root)?;
    if runs.is_empty() {
        println!(
            "no runs under {} (a run folder holds config.json; train one with `lstm-lm`)",
            args.root.display()
        );
    } else {
        print!("{}", lstm_lm::summary::runs_table(&runs));
    }
    Ok(())
}

fn build_config(args: &TrainArgs) -> ExperimentConfig {
    let mut c = args.preset.config();
    macro_rules! set {
        ($flag:ident => $($field:tt)+) => {
            if let Some(v) = args.$flag.clone() {
                c.$($field)+ = v;
            }
        };
    }
    set!(epochs => epochs);
    set!(seed => seed);
    set!(batch_size => data.batch_size);
    set!(embed => model.d_embed);
    set!(hidden => model.d_hidden);
    set!(layers => model.n_layers);
    set!(max_vocab => data.max_vocab);
    set!(buckets => data.buckets);
    set!(loss_norm => model.loss_norm);
    set!(batching => data.batching);
    set!(bptt => data.bptt);
    set!(dropout => model.dropout);
    set!(clip => clip);
    if args.tied {
        c.model.tied = true;
    }
    if let Some(range) = args.init_range {
        c.model.init = InitScheme::Uniform { range };
    }
    match (args.optimizer, &c.optimizer) {
        (Some(OptimizerChoice::Sgd), OptimizerConfig::Adam { .. }) => {
            c.optimizer = OptimizerConfig::Sgd {
                lr: 1.0,
                momentum: 0.0,
                weight_decay: 0.0,
            }
        }
        (Some(OptimizerChoice::Adam), OptimizerConfig::Sgd { .. }) => {
            c.optimizer = OptimizerConfig::Adam {
                lr: 2e-3,
                weight_decay: 0.0,
            }
        }
        _ => {}
    }
    let (k, decay, divisor) = match c.lr_schedule {
        LrSchedule::StepDecay {
            constant_epochs,
            decay,
        } => (constant_epochs, decay, 4.0),
        LrSchedule::Plateau { divisor } => (4, 0.5, divisor),
        LrSchedule::Constant => (4, 0.5, 4.0),
    };
    let kind = args.lr_schedule.unwrap_or(match c.lr_schedule {
        LrSchedule::Constant => ScheduleChoice::Constant,
        LrSchedule::StepDecay { .. } => ScheduleChoice::Step,
        LrSchedule::Plateau { .. } => ScheduleChoice::Plateau,
    });
    c.lr_schedule = match kind {
        ScheduleChoice::Constant => LrSchedule::Constant,
        ScheduleChoice::Step => LrSchedule::StepDecay {
            constant_epochs: args.decay_start.unwrap_or(k),
            decay: args.lr_decay.unwrap_or(decay),
        },
        ScheduleChoice::Plateau => LrSchedule::Plateau {
            divisor: args.lr_divisor.unwrap_or(divisor),
        },
    };
    if let Some(lr) = args.lr {
        c.optimizer = c.optimizer.with_lr(lr);
    }
    c
}

fn corpus(args: &TrainArgs) -> anyhow::Result<(CorpusSource, String)> {
    if let Some(train) = &args.train {
        let name = train
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        return Ok((
            CorpusSource::Files {
                train: train.clone(),
                valid: args.valid.clone(),
                test: args.test.clone(),
                train_fraction: args.train_fraction,
            },
            name,
        ));
    }
    match args.dataset {
        Dataset::Tinyshakespeare => Ok((
            CorpusSource::Embedded {
                train_fraction: args.train_fraction,
            },
            "tinyshakespeare".into(),
        )),
        Dataset::Ptb => {
            let dir = args.data_dir.join("ptb");
            let split = |s: &str| dir.join(format!("ptb.{s}.txt"));
            for s in ["train", "valid", "test"] {
                if !split(s).is_file() {
                    return Err(lstm_lm::error::Error::MissingData {
                        what: format!("the PTB {s} split"),
                        path: split(s),
                        remedy: "download it with `cargo xtask fetch-data --dataset ptb` \
                                 (or pass --data-dir)"
                            .into(),
                    }
                    .into());
                }
            }
            Ok((
                CorpusSource::Files {
                    train: split("train"),
                    valid: Some(split("valid")),
                    test: Some(split("test")),
                    train_fraction: args.train_fraction,
                },
                "ptb".into(),
            ))
        }
    }
}
