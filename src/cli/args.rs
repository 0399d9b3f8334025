//! The command line's flags (clap derive; each doc comment is its `--help` text).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use lstm_lm::commands::bench::BenchConfig;
use lstm_lm::commands::eval::EvalContext;
use lstm_lm::config::overrides::Overrides;
use lstm_lm::config::presets::Preset;
use lstm_lm::device::DeviceChoice;

use super::display::ProgressMode;

/// Train word-, character- and subword-level LSTM language models, on a GPU (wgpu) or a CPU.
///
/// With no arguments it trains on the embedded Tiny Shakespeare. Rerunning the same command
/// after an interruption continues from the last complete epoch.
#[derive(Parser, Debug)]
#[command(version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once
pub enum Command {
    /// Train a model (the default when no subcommand is given).
    Train(TrainArgs),
    /// Time the trainer's own training step on a named config and print tokens/s, ms/step and
    /// peak memory.
    ///
    /// The configs are presets with overrides, named as in earlier measurements: `seed` is
    /// `--preset seed`; `small`, `medium` and `zaremba-large` are `--preset zaremba-small` with
    /// `--embed`/`--hidden` 256, 650 and 1500 and `--bptt 35` (so `small` is not the preset
    /// `zaremba-small`, 2 x 200 with bptt 20, and `medium` has no dropout). `cargo xtask bench`
    /// runs it side by side with the PyTorch reference.
    Bench(BenchArgs),
    /// Perplexity of a saved run on a text: with full context (the state carried through the
    /// whole file), or line by line (--context sentence, buckets).
    Eval(EvalArgs),
    /// Sample text from a saved run (on the CPU by default, wherever it was trained).
    Generate(GenerateArgs),
    /// Print a run's summary and per-epoch table, and redraw its curves.svg.
    Report(ReportArgs),
    /// List the runs under a folder with their status, epochs and best perplexity.
    Runs(RunsArgs),
    /// Print a text as a run's tokenizer cuts it: each line's tokens separated by spaces (a
    /// whitespace character inside a token written <U+XXXX>), blank lines kept; what the
    /// PyTorch reference reads to train on the same tokens.
    Tokenize(TokenizeArgs),
    /// Write a run's model in PyTorch's layout: model.safetensors (nn.Embedding, nn.LSTM,
    /// nn.Linear or nn.AdaptiveLogSoftmaxWithLoss names and shapes), vocab.txt and config.json.
    Export(ExportArgs),
    /// Make a run folder from a model trained elsewhere: a PyTorch state dict (.pt, .pth) or a
    /// safetensors file of an Embedding -> LSTM -> Linear model, with its vocabulary. eval,
    /// generate and score use it; `train --init-from` trains it further.
    Import(ImportArgs),
    /// The log-probability of every line of a text, one JSON line each (blank lines included):
    /// to rank sentences.
    Score(ScoreArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ScoreArgs {
    /// The run folder.
    pub run: PathBuf,
    /// The text, one sentence per line; `-` reads standard input.
    #[arg(long, value_name = "FILE|-")]
    pub text: PathBuf,
    /// sentence: each line from the zero state (many lines in one batch); carry: each line
    /// from the state the previous one ended in.
    #[arg(long, value_enum, default_value_t = lstm_lm::commands::score::Context::Sentence)]
    pub context: lstm_lm::commands::score::Context,
    /// Lines per batch in sentence context.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    pub epoch: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// The run folder.
    pub run: PathBuf,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    pub epoch: Option<usize>,
    /// The folder to write (must not exist yet).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// The model: a .safetensors, .pt or .pth file, or a folder holding model.safetensors or
    /// model.pt (from `lstm-lm export` or torch_lm.py --save).
    pub model: PathBuf,
    /// The vocabulary, one token per line, the line number being the model's id
    /// [default: vocab.txt next to the model].
    #[arg(long)]
    pub vocab: Option<PathBuf>,
    /// The run folder to create (must not exist yet).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    /// The run folder whose tokenizer cuts the text.
    pub run: PathBuf,
    /// The text: one sentence per line, UTF-8.
    #[arg(long)]
    pub text: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// The run folder (the --artifact-dir it was trained with).
    pub run: PathBuf,
    /// Words to start from; words outside the run's vocabulary are fed as <unk>.
    #[arg(long, default_value = "")]
    pub prompt: String,
    /// Tokens to generate; each sentence end starts a new line.
    #[arg(long, default_value_t = 100)]
    pub length: usize,
    /// Softmax temperature: 1 samples the model's distribution, lower is more conservative,
    /// 0 is greedy (always the most likely word).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f64,
    /// Sample among the K most likely words only (0 = all).
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub top_k: usize,
    /// Seed of the sampler: the same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Never generate <unk> (its probability goes to the other words).
    #[arg(long)]
    pub no_unk: bool,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    pub epoch: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
pub struct ReportArgs {
    /// The run folder (the --artifact-dir it was trained with).
    pub run: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct RunsArgs {
    /// The folder the runs are under.
    #[arg(default_value = "runs")]
    pub root: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// The run folder (the --artifact-dir it was trained with).
    pub run: PathBuf,
    /// The text to score: one sentence per line, whitespace-separated tokens.
    #[arg(long, value_name = "FILE")]
    pub text: PathBuf,
    /// Token cache the text is encoded into once (see `train --cache-dir`).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Checkpoint epoch [default: the newest complete one].
    #[arg(long)]
    pub epoch: Option<usize>,
    /// Where each token's context starts (the names `score --context` uses).
    #[arg(long, value_enum, default_value_t = EvalContext::Carry)]
    pub context: EvalContext,
    /// The same as --context buckets (kept for scripts written before --context).
    #[arg(long, hide = true)]
    pub sentences: bool,
    /// Print one JSON object (full precision) instead of the sentence.
    #[arg(long)]
    pub json: bool,
    /// Parallel columns of the stream; 1 = the whole text as one sequence (full context).
    #[arg(long, default_value_t = 1)]
    pub columns: usize,
    /// Window length [default: the run's --bptt]; the state crosses windows either way.
    #[arg(long)]
    pub bptt: Option<usize>,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model and batching config to time (see `lstm-lm bench --help` for what each is).
    #[arg(long, value_enum, default_value_t = BenchConfig::Small)]
    pub config: BenchConfig,
    /// Text the batches are made of [default: the embedded Tiny Shakespeare].
    #[arg(long, value_name = "FILE")]
    pub text: Option<PathBuf>,
    /// Pad the output layer to at least this many rows (PTB's vocabulary is 10,000).
    #[arg(long, default_value_t = 10_000)]
    pub min_vocab: usize,
    /// Untimed steps before timing (GPU backends compile and autotune here); above 0, plus one
    /// untimed step of each batch shape the timed steps meet (`seed`'s five bucket lengths), and
    /// with `--features openblas` up to 16 more while product shapes are still timed through
    /// both libraries (`LSTM_LM_SGEMM`).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 30)]
    pub steps: usize,
    /// Where to run.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Flex)]
    pub device: DeviceChoice,
    /// Seed of initialisation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Print the report as one JSON line.
    #[arg(long)]
    pub json: bool,
    /// Run Burn's composed ops instead of the fused ones (the LSTM layer, and on the CPU the
    /// output layer with its loss), to time what the fused ops replace.
    #[arg(long)]
    pub composed: bool,
    /// Time the adaptive softmax with these cluster bounds (as `train --cutoffs`) instead of
    /// the full softmax.
    #[arg(long, value_delimiter = ',')]
    pub cutoffs: Option<Vec<usize>>,
    /// The adaptive softmax's `div_value` (as `train --div-value`).
    #[arg(long, default_value_t = lstm_lm::model::adaptive::DEFAULT_DIV_VALUE, requires = "cutoffs")]
    pub div_value: f64,
    /// Skip measuring this machine's sgemm ceiling (a [2048, 2048] product on every core, by
    /// each path this build has, about 3 s), against which the report puts the step's GFLOP/s.
    #[arg(long)]
    pub no_ceiling: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    /// Starting config; the flags below override its values.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// A fetched dataset: tinyshakespeare (embedded) or ptb (see `cargo xtask fetch-data`);
    /// ignored when --train is given.
    #[arg(long, default_value = "tinyshakespeare", value_parser = parse_dataset)]
    pub dataset: datasets::Dataset,
    /// Folder that `cargo xtask fetch-data` wrote to.
    #[arg(long, default_value = "data")]
    pub data_dir: PathBuf,
    /// Training text, UTF-8: for words one sentence per line, whitespace-separated tokens; any
    /// text for characters and BPE. Several files
    /// (`--train a.txt b.txt`) or folders of shards (their files, sorted by name) are read in
    /// the order given.
    #[arg(long, value_name = "FILE|DIR", num_args = 1..)]
    pub train: Vec<PathBuf>,
    /// Validation text (files or folders, as --train); without it, the last lines of the
    /// training files taken together are held out, and the run says from where.
    #[arg(long, value_name = "FILE|DIR", num_args = 1.., requires = "train")]
    pub valid: Vec<PathBuf>,
    /// Test text (files or folders, as --train), scored once when training ends.
    #[arg(long, value_name = "FILE|DIR", num_args = 1.., requires = "train")]
    pub test: Vec<PathBuf>,
    /// Share of training lines kept for training when no --valid is given.
    #[arg(long, default_value_t = 0.9)]
    pub train_fraction: f64,
    /// Token cache: the text is prepared into it once (vocabulary and ids) and reused by
    /// every run on the same files and settings; delete the folder to clear it
    /// [default: $LSTM_LM_CACHE_DIR, else ~/.cache/lstm-lm/tokens].
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Where to train: auto picks a GPU when wgpu finds one, else the CPU (flex).
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
    /// Run folder for config, vocabulary, metrics and checkpoints [default: runs/<data>-<preset>].
    #[arg(long, value_name = "DIR")]
    pub artifact_dir: Option<PathBuf>,
    /// Start over, discarding the run in the run folder.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub overrides: Overrides,
    /// Progress display: auto = live bar in a terminal, plain lines otherwise.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,
    /// Also save a checkpoint within an epoch at most every M minutes, so that a kill loses at
    /// most that much work (0 = at epoch ends only).
    #[arg(long, value_name = "M", default_value_t = 10.0)]
    pub checkpoint_minutes: f64,
    /// With plain progress, one line every N training batches [default: about ten per epoch].
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub log_every: usize,
    /// Train data-parallel on several devices at once, comma-separated: gpu:N (the N-th
    /// discrete GPU), wgpu, flex (or cpu), ndarray; e.g. gpu:0,gpu:1. burn-train's multi-device
    /// strategy splits each epoch's batches across them and steps the optimizer on the first.
    #[arg(long, value_name = "LIST", conflicts_with = "device")]
    pub devices: Option<String>,
    /// List the adapters wgpu sees (name, type, graphics API) and exit.
    #[arg(long)]
    pub list_devices: bool,
}

/// `--dataset NAME`, as the datasets crate names them.
fn parse_dataset(name: &str) -> Result<datasets::Dataset, String> {
    datasets::Dataset::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = datasets::Dataset::ALL.iter().map(|d| d.name()).collect();
        format!("unknown dataset `{name}`; known: {}", names.join(", "))
    })
}
