//! What a run folder says about its run: status, epochs, best and test perplexity, speed, wall
//! time (`lstm-lm report`), and the list of runs under a folder (`lstm-lm runs`).

use super::history::{bpc_text, word_ppl_text};
use std::path::{Path, PathBuf};

use crate::config::{Batching, ExperimentConfig};
use crate::error::{Error, Result};
use crate::format::format_duration;

use super::files;
use super::history::EpochStats;
use super::{Run, TestScore};

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    /// A process is training in the folder now.
    Running,
    /// Every epoch the config asks for has a checkpoint.
    Complete,
    /// Stopped before its last epoch; the same command continues it.
    Interrupted,
    /// Made by `lstm-lm import` from a model trained elsewhere; nothing trained here.
    Imported,
}

impl std::fmt::Display for RunStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Self::Running => "running",
            Self::Complete => "complete",
            Self::Interrupted => "interrupted",
            Self::Imported => "imported",
        })
    }
}

/// The facts of one run folder.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The run folder.
    pub dir: PathBuf,
    /// Where it stands.
    pub status: RunStatus,
    /// Its config.
    pub config: ExperimentConfig,
    /// Epochs with a complete checkpoint (what a resume starts from).
    pub epochs_done: usize,
    /// The finished epochs of those, as recorded in `history.jsonl`.
    pub history: Vec<EpochStats>,
    /// `(epoch, perplexity)` of the lowest validation perplexity.
    pub best_valid: Option<(usize, f64)>,
    /// The test score recorded when training ended, if a test split was given.
    pub test: Option<TestScore>,
    /// Training tokens per second over the recorded epochs: total tokens / total training time
    /// (the harmonic mean of the epochs' rates, as every epoch trains the same tokens).
    pub tokens_per_second: Option<f64>,
    /// Wall time of the recorded epochs, in seconds.
    pub wall_seconds: f64,
}

/// What `run` says about itself.
pub fn summarize(run: &Run) -> RunSummary {
    let config = run.config().clone();
    let epochs_done = run.epochs_done();
    let history: Vec<EpochStats> = run
        .history()
        .into_iter()
        .filter(|s| s.epoch <= epochs_done)
        .collect();
    let best_valid = history
        .iter()
        .filter(|s| s.valid_perplexity.is_finite())
        .min_by(|a, b| a.valid_perplexity.total_cmp(&b.valid_perplexity))
        .map(|s| (s.epoch, s.valid_perplexity));
    let wall_seconds = history.iter().map(|s| s.seconds).sum();
    let timed: Vec<&EpochStats> = history
        .iter()
        .filter(|s| s.tokens_per_second.is_finite() && s.tokens_per_second > 0.0)
        .collect();
    // Every epoch trains the same tokens, so total tokens / total training time is the
    // harmonic mean of the epochs' rates.
    let tokens_per_second = (!timed.is_empty())
        .then(|| timed.len() as f64 / timed.iter().map(|s| 1.0 / s.tokens_per_second).sum::<f64>());
    let status = if run.is_training() {
        RunStatus::Running
    } else if epochs_done == 0 && run.is_imported() {
        RunStatus::Imported
    } else if epochs_done >= config.epochs {
        RunStatus::Complete
    } else {
        RunStatus::Interrupted
    };
    RunSummary {
        dir: run.dir().to_path_buf(),
        status,
        test: run.test_score().filter(|t| t.epoch <= epochs_done),
        config,
        epochs_done,
        history,
        best_valid,
        tokens_per_second,
        wall_seconds,
    }
}

/// The runs found under a folder, and the folders that look like runs but cannot be read.
#[derive(Debug)]
pub struct RunList {
    /// The readable runs, sorted by path.
    pub runs: Vec<RunSummary>,
    /// Folders holding a `config.json` that could not be opened, with the reason.
    pub skipped: Vec<(PathBuf, Error)>,
}

/// The runs in `root`: `root` itself when it is a run folder, and every sub-folder (at any
/// depth) holding a `config.json`, sorted by path; unreadable ones are listed as skipped.
pub fn list_runs(root: &Path) -> Result<RunList> {
    if !root.is_dir() {
        return Err(Error::BadRun {
            dir: root.to_path_buf(),
            problem: "no such folder; training writes its runs under runs/ (or --artifact-dir)"
                .into(),
        });
    }
    let mut found = Vec::new();
    let mut skipped = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        if dir.join(files::CONFIG).is_file() {
            match Run::open(&dir) {
                Ok(run) => found.push(summarize(&run)),
                Err(e) => skipped.push((dir, e)),
            }
            continue;
        }
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("cannot list", &dir, e))?;
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pending.push(entry.path());
            }
        }
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(RunList {
        runs: found,
        skipped,
    })
}

impl RunSummary {
    /// The `lstm-lm report` text: a summary, one row per epoch, and the config.
    pub fn report(&self) -> String {
        let c = &self.config;
        let mut out = format!("run {} ({})\n", self.dir.display(), self.status);
        out += &format!("  epochs           {} of {}\n", self.epochs_done, c.epochs);
        out += &format!(
            "  best valid ppl   {}\n",
            self.best_valid
                .map_or("-".into(), |(e, p)| format!("{p:.2} (epoch {e})"))
        );
        out += &format!(
            "  test ppl         {}\n",
            self.test
                .map_or("- (no test split scored)".into(), |t| format!(
                    "{:.2} (epoch {}, {} tokens){}{}",
                    t.perplexity,
                    t.epoch,
                    t.tokens,
                    bpc_text(t.bits_per_char),
                    word_ppl_text(t.word_perplexity)
                ))
        );
        out += &format!(
            "  tokens/s         {}\n",
            self.tokens_per_second
                .map_or("-".into(), |t| format!("{t:.0}"))
        );
        out += &format!(
            "  wall time        {}\n",
            format_duration(self.wall_seconds)
        );
        out += &format!(
            "  model            {} x {} LSTM, embedding {}, vocabulary {}, dropout {}{}\n",
            c.model.n_layers,
            c.model.d_hidden,
            c.model.d_embed,
            c.model.vocab_size,
            c.model.dropout,
            if c.model.tied { ", tied" } else { "" }
        );
        let mut batching = match c.data.batching {
            Batching::Buckets => format!("buckets {:?}", c.data.buckets),
            Batching::Stream => format!("stream, bptt {}", c.data.bptt),
        };
        if c.data.epoch_tokens > 0 {
            batching += &format!(", epochs of {} tokens", c.data.epoch_tokens);
        }
        out += &format!(
            "  training         {batching}, batch {}; {}; schedule {}; clip {}; seed {}\n",
            c.data.batch_size, c.optimizer, c.lr_schedule, c.clip, c.seed
        );
        if !self.history.is_empty() {
            out += "\n  epoch  train ppl  valid ppl  valid bpc        lr   tokens/s      time\n";
            for s in &self.history {
                out += &format!(
                    "  {:>5} {:>10.2} {:>10.2} {:>10} {:>9} {:>10.0} {:>9}\n",
                    s.epoch,
                    s.train_perplexity,
                    s.valid_perplexity,
                    s.valid_bits_per_char
                        .map_or("-".into(), |b| format!("{b:.4}")),
                    format!("{:.4}", s.lr),
                    s.tokens_per_second,
                    format_duration(s.seconds)
                );
            }
        }
        out
    }
}

/// The `lstm-lm runs` table of `runs`.
pub fn runs_table(runs: &[RunSummary]) -> String {
    let mut out = format!(
        "{:<40} {:<12} {:>9} {:>16} {:>9}\n",
        "run", "status", "epochs", "best valid ppl", "test ppl"
    );
    for r in runs {
        out += &format!(
            "{:<40} {:<12} {:>9} {:>16} {:>9}\n",
            r.dir.display(),
            r.status,
            format!("{}/{}", r.epochs_done, r.config.epochs),
            r.best_valid
                .map_or("-".into(), |(e, p)| format!("{p:.2} (ep {e})")),
            r.test
                .map_or("-".into(), |t| format!("{:.2}", t.perplexity)),
        );
    }
    out
}
