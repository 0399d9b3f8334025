//! Project tasks that cargo can't do by itself. Run them as `cargo xtask <task>`.

mod bench;
mod corpus;
mod databench;
mod fetch;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Project tasks for lstm-lm.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Download the Penn Treebank splits and Tiny Shakespeare, checking every checksum.
    ///
    /// Files already present with the right checksum are skipped; a download is written to a
    /// temporary file and renamed into place only once its checksum is right, so no partial or
    /// corrupt file is ever left behind.
    FetchData {
        /// Which dataset to fetch.
        #[arg(long, value_enum, default_value_t = DatasetArg::All)]
        dataset: DatasetArg,
        /// Folder to write into (`ptb/` and `tinyshakespeare/` are created inside).
        #[arg(long, default_value = "data")]
        data_dir: PathBuf,
        /// A mirror laid out as `<url>/ptb/ptb.{train,valid,test}.txt` and
        /// `<url>/tinyshakespeare/input.txt`.
        #[arg(long, default_value = fetch::DEFAULT_BASE_URL)]
        base_url: String,
        /// Attempts per file for transient failures (timeouts, resets, 5xx).
        #[arg(long, default_value_t = 4)]
        attempts: u32,
        /// Seconds without data after which a download is abandoned and retried.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Time training steps of lstm-lm and of the PyTorch reference, alternating, on one machine.
    ///
    /// Builds `lstm-lm` in release mode, then runs `lstm-lm bench` and
    /// `reference/torch_lm.py` for each config, every run in its own process, and
    /// prints a table: tokens/s, samples/s, ms/step, peak RSS, and the ratio to PyTorch.
    /// Benchmark on a quiet machine: a second busy process skews both sides.
    Bench {
        /// Configs, comma-separated: seed, small, medium, zaremba-large.
        #[arg(long, value_delimiter = ',', default_value = "small,seed")]
        configs: Vec<String>,
        /// A/B rounds (the ratio is the median over rounds).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Timed training steps per run.
        #[arg(long, default_value_t = 40)]
        steps: usize,
        /// Untimed steps before timing, lstm-lm's and PyTorch's (use a few on a GPU: shader
        /// compilation and autotune; cuDNN's setup).
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        /// `lstm-lm bench --device`: flex, ndarray, wgpu.
        #[arg(long, default_value = "flex")]
        device: String,
        /// Text the batches are made of (PTB-format; `cargo xtask fetch-data --dataset ptb`
        /// writes this one).
        #[arg(long, default_value = "data/ptb/ptb.valid.txt")]
        text: PathBuf,
        /// Python with PyTorch (made by reference/setup.sh).
        #[arg(long, default_value = "/tmp/lstm-lm-ref/bin/python")]
        python: PathBuf,
        /// The PyTorch reference trainer.
        #[arg(long, default_value = "reference/torch_lm.py")]
        reference: PathBuf,
        /// Run lstm-lm only.
        #[arg(long)]
        no_reference: bool,
        /// PyTorch threads.
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Cargo features to build lstm-lm with (e.g. wgpu).
        #[arg(long)]
        features: Option<String>,
        /// A built lstm-lm binary to time instead of building one with cargo (for a machine
        /// without the Rust toolchain, such as a lent GPU machine).
        #[arg(long, value_name = "PATH", conflicts_with = "features")]
        binary: Option<PathBuf>,
        /// Where PyTorch runs: cpu, or cuda (cuDNN's LSTM) on a GPU machine.
        #[arg(long, default_value = "cpu")]
        reference_device: String,
        /// Time lstm-lm with Burn's composed ops instead of its fused ones, to see what they gain.
        #[arg(long)]
        composed: bool,
    },
    /// Time lstm-lm from start to its first training batch on a text, and its peak memory by
    /// then (resident, anonymous, file-backed); the first run from an empty run folder and token
    /// cache (it prepares the text), later ones with the text prepared.
    BenchData {
        /// The training text: files or folders, as `lstm-lm --train`.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Runs on the same run folder and cache.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// A built lstm-lm to run instead of building one with cargo.
        #[arg(long, value_name = "PATH")]
        binary: Option<PathBuf>,
        /// Flags passed on to lstm-lm, after `--` (default: the zaremba-small preset, a
        /// 50,000-word vocabulary, on the CPU).
        #[arg(last = true)]
        flags: Vec<String>,
    },
    /// Write a seeded corpus of Zipf-distributed words, one sentence a line, to benchmark data
    /// preparation and large vocabularies (the same seed writes the same file on every
    /// machine).
    GenCorpus {
        /// Tokens in all (sentence ends not counted), e.g. 100000000.
        #[arg(long)]
        tokens: u64,
        /// Distinct words at most; word k is drawn with probability proportional to 1 / k^s.
        #[arg(long, default_value_t = 250_000)]
        vocab: usize,
        /// Zipf exponent s.
        #[arg(long, default_value_t = 1.0)]
        exponent: f64,
        /// Mean sentence length in tokens (lengths are uniform on 1 ..= 2m - 1).
        #[arg(long, default_value_t = 21)]
        mean_length: usize,
        /// Seed.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// The file to write (atomically).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DatasetArg {
    /// Penn Treebank (Mikolov's preprocessing): train, valid, test.
    Ptb,
    /// Tiny Shakespeare.
    Tinyshakespeare,
    /// Both.
    All,
}

fn main() {
    let result = match Cli::parse().task {
        Task::FetchData {
            dataset,
            data_dir,
            base_url,
            attempts,
            timeout_secs,
        } => fetch_data(dataset, &data_dir, &base_url, attempts, timeout_secs),
        Task::Bench {
            configs,
            rounds,
            steps,
            warmup,
            device,
            text,
            python,
            reference,
            no_reference,
            threads,
            features,
            binary,
            reference_device,
            composed,
        } => bench::bench(&bench::Options {
            configs,
            rounds: rounds.max(1),
            steps: steps.max(1),
            warmup,
            device,
            text,
            python: (!no_reference).then_some(python),
            reference,
            threads,
            features,
            binary,
            reference_device,
            composed,
        }),
        Task::BenchData {
            text,
            runs,
            binary,
            flags,
        } => databench::bench(&databench::Options {
            text,
            flags: if flags.is_empty() {
                DEFAULT_BENCH_DATA_FLAGS.map(String::from).to_vec()
            } else {
                flags
            },
            runs,
            binary,
        }),
        Task::GenCorpus {
            tokens,
            vocab,
            exponent,
            mean_length,
            seed,
            out,
        } => {
            let spec = corpus::Spec {
                tokens,
                vocab,
                exponent,
                mean_length,
                seed,
            };
            corpus::generate(&spec, &out)
                .map(|()| println!("{tokens} tokens written to {}", out.display()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `cargo xtask bench-data`'s lstm-lm flags when none are given.
const DEFAULT_BENCH_DATA_FLAGS: [&str; 6] = [
    "--preset",
    "zaremba-small",
    "--max-vocab",
    "50000",
    "--device",
    "flex",
];

/// Downloads `dataset`'s files into `data_dir` (see `Task::FetchData`).
fn fetch_data(
    dataset: DatasetArg,
    data_dir: &Path,
    base_url: &str,
    attempts: u32,
    timeout_secs: u64,
) -> anyhow::Result<()> {
    let files: Vec<fetch::FileSpec> = fetch::catalogue()
        .into_iter()
        .filter(|f| match dataset {
            DatasetArg::All => true,
            DatasetArg::Ptb => f.dataset == "ptb",
            DatasetArg::Tinyshakespeare => f.dataset == "tinyshakespeare",
        })
        .collect();
    let options = fetch::Options {
        attempts: attempts.max(1),
        timeout: Duration::from_secs(timeout_secs.max(1)),
        first_backoff: Duration::from_millis(500),
        progress: true,
    };
    fetch::fetch_all(&files, base_url, data_dir, &options)?;
    println!("all files present and verified in {}", data_dir.display());
    Ok(())
}
