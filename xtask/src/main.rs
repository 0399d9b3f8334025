//! Project tasks that cargo can't do by itself. Run them as `cargo xtask <task>`.

mod fetch;

use std::path::PathBuf;
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
    let Task::FetchData {
        dataset,
        data_dir,
        base_url,
        attempts,
        timeout_secs,
    } = Cli::parse().task;
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
    match fetch::fetch_all(&files, &base_url, &data_dir, &options) {
        Ok(()) => println!("all files present and verified in {}", data_dir.display()),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
