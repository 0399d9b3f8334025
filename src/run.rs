//! A run folder: its files, and reading and writing them.
//!
//! A run folder holds `config.json`, `vocab.txt`, `history.jsonl` (one line per finished epoch),
//! the per-batch metric logs (`train/`, `valid/`, see [`crate::metric_log`]), burn-train's
//! `experiment.log` and `checkpoint/`.

use std::io::Write;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{checkpoint_dir, newest_sound_checkpoint, verify_checkpoint};
use crate::config::ExperimentConfig;
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::model::LanguageModel;
use crate::render::EpochStats;

/// File names inside a run folder.
pub mod files {
    /// The experiment config.
    pub const CONFIG: &str = "config.json";
    /// The vocabulary, one token per line.
    pub const VOCAB: &str = "vocab.txt";
    /// One JSON [`EpochStats`](crate::render::EpochStats) per finished epoch.
    pub const HISTORY: &str = "history.jsonl";
    /// The test split's score at the end of training, a [`TestScore`](crate::run::TestScore).
    pub const TEST: &str = "test.json";
    /// Held locked by the process training in the folder; holds its pid.
    pub const LOCK: &str = "lock";
}

/// The test split's score recorded at the end of training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TestScore {
    /// The epoch of the model that was scored.
    pub epoch: usize,
    /// Tokens scored.
    pub tokens: usize,
    /// Mean negative log-likelihood per token, in nats.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
}

/// Writes `score` as the run's `test.json`.
pub(crate) fn save_test_score(run_dir: &Path, score: &TestScore) -> Result<()> {
    let json = serde_json::to_string_pretty(score).expect("score serialises");
    crate::fsutil::write_atomic(&run_dir.join(files::TEST), json.as_bytes())
}

/// The run's recorded test score, if training recorded one.
pub fn read_test_score(run_dir: &Path) -> Option<TestScore> {
    let text = std::fs::read_to_string(run_dir.join(files::TEST)).ok()?;
    serde_json::from_str(&text).ok()
}

/// An exclusive lock on a run folder, held while a process trains in it; the operating system
/// releases it when the process ends, however it ends (`kill -9` included).
#[derive(Debug)]
pub struct RunLock {
    _file: std::fs::File,
}

impl RunLock {
    /// Takes the lock of `run_dir` (creating the folder), or fails with [`Error::RunInUse`]
    /// naming the pid that holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(run_dir)
            .map_err(|e| Error::io("cannot create run folder", run_dir, e))?;
        let path = run_dir.join(files::LOCK);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("cannot open", &path, e))?;
        // `lstm-lm runs` holds a shared lock for an instant while it looks: try a few times.
        let mut tries = 0;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    let pid = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|t| t.trim().parse::<u32>().ok())
                        .map_or(String::new(), |p| format!(" (pid {p})"));
                    return Err(Error::RunInUse {
                        dir: run_dir.to_path_buf(),
                        pid,
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", &path, e))
                }
            }
        }
        let pid = std::process::id().to_string();
        file.set_len(0)
            .and_then(|()| file.write_all(pid.as_bytes()))
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io("cannot write", &path, e))?;
        Ok(Self { _file: file })
    }

    /// Whether a process is training in `run_dir` now.
    pub fn is_held(run_dir: &Path) -> bool {
        let Ok(file) = std::fs::File::open(run_dir.join(files::LOCK)) else {
            return false;
        };
        matches!(
            file.try_lock_shared(),
            Err(std::fs::TryLockError::WouldBlock)
        )
    }
}

/// Removes what a run writes into `run_dir`, and nothing else.
pub(crate) fn clear_run(run_dir: &Path) -> Result<()> {
    for name in ["checkpoint", "train", "valid"] {
        let p = run_dir.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
        }
    }
    for name in [
        files::CONFIG,
        files::VOCAB,
        files::HISTORY,
        files::TEST,
        crate::plot::CURVES,
        "experiment.log",
    ] {
        let p = run_dir.join(name);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
        }
    }
    Ok(())
}

/// The epoch to resume from, after checking that the run in `run_dir` (if any) was made by the
/// same config and vocabulary.
pub(crate) fn check_resume(
    run_dir: &Path,
    config: &ExperimentConfig,
    vocab: &Vocab,
) -> Result<Option<usize>> {
    let config_path = run_dir.join(files::CONFIG);
    if !config_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::io("cannot read", &config_path, e))?;
    let saved: ExperimentConfig = serde_json::from_str(&text).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!(
            "{} is not a valid config ({e}); pass --fresh to start over",
            files::CONFIG
        ),
    })?;
    let differences = config.resume_differences(&saved);
    if differences.is_empty() && saved.optimizer.lr() != config.optimizer.lr() {
        println!(
            "the learning rate changes from {} to {} as the run continues",
            crate::schedule::format_rate(saved.optimizer.lr()),
            crate::schedule::format_rate(config.optimizer.lr())
        );
    }
    if !differences.is_empty() {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: format!("its config differs: {}", differences.join("; ")),
        });
    }
    let saved_vocab = Vocab::load(&run_dir.join(files::VOCAB))?;
    if &saved_vocab != vocab {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: "the training data gives a different vocabulary than the run's vocab.txt \
                      (the training text changed)"
                .into(),
        });
    }
    Ok(newest_sound_checkpoint(run_dir))
}

/// Writes config and vocabulary, and cuts the history back to the epochs the checkpoint holds.
pub(crate) fn save_run(
    run_dir: &Path,
    config: &ExperimentConfig,
    vocab: &Vocab,
    epochs_kept: usize,
) -> Result<()> {
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io("cannot create run folder", run_dir, e))?;
    let json = serde_json::to_string_pretty(config).expect("config serialises");
    crate::fsutil::write_atomic(&run_dir.join(files::CONFIG), json.as_bytes())?;
    vocab.save(&run_dir.join(files::VOCAB))?;
    let kept: Vec<EpochStats> = read_history(run_dir)
        .into_iter()
        .filter(|s| s.epoch <= epochs_kept)
        .collect();
    let mut text = String::new();
    for s in &kept {
        text += &serde_json::to_string(s).expect("stats serialise");
        text.push('\n');
    }
    crate::fsutil::write_atomic(&run_dir.join(files::HISTORY), text.as_bytes())
}

/// The finished epochs recorded in a run folder (unreadable lines are skipped).
pub fn read_history(run_dir: &Path) -> Vec<EpochStats> {
    std::fs::read_to_string(run_dir.join(files::HISTORY))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub(crate) fn append_history(path: &Path, stats: &EpochStats) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(stats).expect("stats serialise")
    )?;
    f.sync_data()
}

/// Fails unless `run_dir` holds a run (its `config.json`), with an error saying how to find one.
pub fn require_run(run_dir: &Path) -> Result<()> {
    if run_dir.join(files::CONFIG).is_file() {
        return Ok(());
    }
    let problem = if run_dir.is_dir() {
        format!("no {} here, so it is not a run folder", files::CONFIG)
    } else {
        "no such folder".to_string()
    };
    Err(Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!(
            "{problem}; `lstm-lm runs` lists the runs under runs/, or pass the --artifact-dir a \
             run was trained with"
        ),
    })
}

/// The config saved in a run folder.
pub fn load_config(run_dir: &Path) -> Result<ExperimentConfig> {
    require_run(run_dir)?;
    let path = run_dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!("{} is not a valid config: {e}", files::CONFIG),
    })
}

/// The model of a run folder's checkpoint `epoch` (the newest complete one when `None`), on
/// `device`; the checkpoint may come from any backend.
pub fn load_model(run_dir: &Path, epoch: Option<usize>, device: &Device) -> Result<LanguageModel> {
    let config = load_config(run_dir)?;
    let epoch = match epoch {
        Some(e) => {
            verify_checkpoint(run_dir, e).map_err(|why| Error::BadRun {
                dir: run_dir.to_path_buf(),
                problem: format!("the checkpoint of epoch {e} cannot be used: {why}"),
            })?;
            e
        }
        None => newest_sound_checkpoint(run_dir).ok_or_else(|| Error::BadRun {
            dir: run_dir.to_path_buf(),
            problem: "no complete checkpoint yet; train at least one epoch".into(),
        })?,
    };
    let path = crate::checkpoint::record_path(&checkpoint_dir(run_dir), "model", epoch);
    let record = burn::store::ModuleRecord::load(&path).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!("cannot load {}: {e}", path.display()),
    })?;
    Ok(config.model.init(config.seed, device).load_record(record))
}
