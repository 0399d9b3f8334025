//! A run folder: its files, the handle that opens it ([`Run`]), and preparing it for training.
//!
//! A run folder holds `config.json`, `vocab.txt`, `history.jsonl` (one line per finished epoch),
//! `curves.svg`, `test.json`, the per-batch metric logs (`train/`, `valid/`), burn-train's
//! `experiment.log` and `checkpoint/` (see [`files`]).

use crate::data::tokenizer::Codec;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

pub mod checkpoint;
pub mod files;
pub mod history;
pub mod lock;
pub mod plot;
pub mod recorder;
pub mod summary;

pub use lock::RunLock;

use crate::config::presets::Preset;
use crate::config::ExperimentConfig;
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::format::format_rate;
use crate::model::LanguageModel;
use checkpoint::{
    checkpoint_dir, last_complete_checkpoint, newest_sound_checkpoint, record_path,
    verify_checkpoint,
};
use history::{read_history, EpochStats};

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
    /// Bits per character, where the text's characters were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bits_per_char: Option<f64>,
    /// Perplexity per word, for character and subword models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub word_perplexity: Option<f64>,
}

/// Writes `score` as the run's `test.json`.
pub(crate) fn save_test_score(run_dir: &Path, score: &TestScore) -> Result<()> {
    let json = serde_json::to_string_pretty(score).expect("score serialises");
    crate::fsutil::write_atomic(&run_dir.join(files::TEST), json.as_bytes())
}

/// The run's recorded test score, if training recorded one.
fn read_test_score(run_dir: &Path) -> Option<TestScore> {
    let text = std::fs::read_to_string(run_dir.join(files::TEST)).ok()?;
    serde_json::from_str(&text).ok()
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
        files::IMPORTED,
        files::IMPORT_RECORD,
        plot::CURVES,
        "experiment.log",
    ] {
        let p = run_dir.join(name);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
        }
    }
    Ok(())
}

/// The folder a run is trained in when none is given: `runs/<data>-<preset>`.
pub fn default_run_dir(data_name: &str, preset: Preset) -> PathBuf {
    PathBuf::from("runs").join(format!("{data_name}-{}", preset.name()))
}

/// Where a trainer continues a run folder from.
#[derive(Debug, Clone, PartialEq)]
pub struct ResumePoint {
    /// The newest sound checkpoint's epoch; `None`: a new run.
    pub epoch: Option<usize>,
    /// `(saved, asked)` when the learning rate differs from the saved run's (allowed).
    pub lr_change: Option<(f64, f64)>,
}

/// Checks that the run in `run_dir` (if any) was made by the same config and vocabulary, and
/// says where it continues from.
pub fn check_resume(
    run_dir: &Path,
    config: &ExperimentConfig,
    vocab: &Vocab,
) -> Result<ResumePoint> {
    if !run_dir.join(files::CONFIG).is_file() {
        return Ok(ResumePoint {
            epoch: None,
            lr_change: None,
        });
    }
    let saved = Run::open(run_dir).map_err(|e| match e {
        Error::BadRun { dir, problem } => Error::BadRun {
            dir,
            problem: format!("{problem}; pass --fresh to start over"),
        },
        other => other,
    })?;
    if saved.is_imported() && newest_sound_checkpoint(run_dir).is_none() {
        return Err(Error::Config(format!(
            "{} holds an imported model; train from it into another folder with --init-from {} \
             --artifact-dir NEW",
            run_dir.display(),
            run_dir.display()
        )));
    }
    let differences = config.resume_differences(saved.config());
    if !differences.is_empty() {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: format!("its config differs: {}", differences.join("; ")),
        });
    }
    if saved.vocab() != vocab {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: "the training data gives a different vocabulary than the run's vocab.txt \
                      (the training text changed)"
                .into(),
        });
    }
    let (was, now) = (saved.config().optimizer.lr(), config.optimizer.lr());
    Ok(ResumePoint {
        epoch: newest_sound_checkpoint(run_dir),
        lr_change: (was != now).then_some((was, now)),
    })
}

impl ResumePoint {
    /// The learning-rate change in words, when there is one.
    pub fn lr_note(&self) -> Option<String> {
        self.lr_change.map(|(was, now)| {
            format!(
                "the learning rate changes from {} to {} as the run continues",
                format_rate(was),
                format_rate(now)
            )
        })
    }
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
    history::write_history(run_dir, &kept)
}

/// Fails unless `run_dir` holds a run (its `config.json`), with an error saying how to find one.
fn require_run(run_dir: &Path) -> Result<()> {
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

/// A saved run, opened once: its folder, config and vocabulary. Resume, `eval`, `generate`,
/// `report` and `runs` all read a run through it.
#[derive(Debug, Clone)]
pub struct Run {
    dir: PathBuf,
    config: ExperimentConfig,
    vocab: Vocab,
    codec: Codec,
}

impl Run {
    /// Opens the run in `dir`: reads `config.json` and `vocab.txt`, or says why it cannot.
    pub fn open(dir: &Path) -> Result<Self> {
        require_run(dir)?;
        let path = dir.join(files::CONFIG);
        let text =
            std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        let config: ExperimentConfig = serde_json::from_str(&text).map_err(|e| Error::BadRun {
            dir: dir.to_path_buf(),
            problem: if text.contains("\"lstm-lm-export\"") {
                format!(
                    "an export in PyTorch's layout, not a run folder; `lstm-lm import {} --out \
                     RUN` makes a run of it",
                    dir.display()
                )
            } else {
                format!("{} is not a valid config ({e})", files::CONFIG)
            },
        })?;
        let vocab = Vocab::load(&dir.join(files::VOCAB))?;
        let codec = Codec::load(config.data.tokenizer, dir)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            vocab,
            codec,
        })
    }

    /// The run folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The experiment config it was trained with.
    pub fn config(&self) -> &ExperimentConfig {
        &self.config
    }

    /// Its vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Its tokenizer (for BPE, the model kept in the run folder).
    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Its name for titles: the folder's name.
    pub fn title(&self) -> String {
        plot::run_title(&self.dir)
    }

    /// The checkpoint to use: `epoch` once verified, or the newest sound one; epoch 0 is an
    /// imported run's model ([`files::IMPORTED`]), used when no epoch was trained.
    pub fn checkpoint(&self, epoch: Option<usize>) -> Result<usize> {
        let imported = self.is_imported();
        match epoch {
            Some(0) if imported => Ok(0),
            Some(e) => {
                verify_checkpoint(&self.dir, e).map_err(|why| Error::BadRun {
                    dir: self.dir.clone(),
                    problem: format!("the checkpoint of epoch {e} cannot be used: {why}"),
                })?;
                Ok(e)
            }
            None => newest_sound_checkpoint(&self.dir)
                .or(imported.then_some(0))
                .ok_or_else(|| Error::BadRun {
                    dir: self.dir.clone(),
                    problem: "no complete checkpoint yet; train at least one epoch".into(),
                }),
        }
    }

    /// Whether the run's model was imported (`lstm-lm import`) rather than trained here.
    pub fn is_imported(&self) -> bool {
        self.dir.join(files::IMPORTED).is_file()
    }

    /// The special tokens an imported model never had (`missing` in its
    /// [`files::IMPORT_RECORD`]): their probability is 0 until training from it learns them.
    pub fn missing_rows(&self) -> Vec<String> {
        let path = self.dir.join(files::IMPORT_RECORD);
        let Ok(text) = std::fs::read_to_string(path) else {
            return Vec::new();
        };
        let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        serde_json::from_value(value["missing"].clone()).unwrap_or_default()
    }

    /// The model of checkpoint `epoch` (the newest sound one when `None`) on `device`, and the
    /// epoch it is; the checkpoint may come from any backend.
    pub fn load_model(
        &self,
        epoch: Option<usize>,
        device: &Device,
    ) -> Result<(LanguageModel, usize)> {
        let epoch = self.checkpoint(epoch)?;
        let path = match epoch {
            0 => self.dir.join(files::IMPORTED),
            _ => record_path(&checkpoint_dir(&self.dir), "model", epoch),
        };
        let record = burn::store::ModuleRecord::load(&path).map_err(|e| Error::BadRun {
            dir: self.dir.clone(),
            problem: format!("cannot load {}: {e}", path.display()),
        })?;
        let model = self
            .config
            .model
            .init(self.config.seed, device)
            .load_record(record);
        Ok((model, epoch))
    }

    /// Epochs with a complete checkpoint (what a resume starts from).
    pub fn epochs_done(&self) -> usize {
        last_complete_checkpoint(&self.dir).unwrap_or(0)
    }

    /// The finished epochs recorded in `history.jsonl`.
    pub fn history(&self) -> Vec<EpochStats> {
        read_history(&self.dir)
    }

    /// The test score recorded when training ended, if a test split was given.
    pub fn test_score(&self) -> Option<TestScore> {
        read_test_score(&self.dir)
    }

    /// Whether a process is training in the folder now.
    pub fn is_training(&self) -> bool {
        RunLock::is_held(&self.dir)
    }
}

/// The model of a run folder's checkpoint `epoch` (the newest sound one when `None`), on
/// `device`: [`Run::open`] then [`Run::load_model`].
pub fn load_model(run_dir: &Path, epoch: Option<usize>, device: &Device) -> Result<LanguageModel> {
    Ok(Run::open(run_dir)?.load_model(epoch, device)?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_named_after_their_data_and_preset() {
        assert_eq!(
            default_run_dir("ptb", Preset::ZarembaSmall),
            Path::new("runs/ptb-zaremba-small")
        );
    }

    #[test]
    fn a_folder_without_a_config_is_not_a_run_and_the_error_says_how_to_find_one() {
        let tmp = tempfile::tempdir().unwrap();
        let e = Run::open(tmp.path()).unwrap_err().to_string();
        assert!(
            e.contains("not a run folder") && e.contains("lstm-lm runs"),
            "{e}"
        );
        let e = Run::open(&tmp.path().join("missing"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such folder"), "{e}");
    }

    #[test]
    fn resuming_names_a_changed_learning_rate_and_refuses_a_changed_vocabulary() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Preset::Tiny.config();
        let words: Vec<String> = ["a", "b", "a"].map(String::from).to_vec();
        let vocab = Vocab::build([words.as_slice()], 0);
        save_run(tmp.path(), &config, &vocab, 0).unwrap();
        let faster = ExperimentConfig {
            optimizer: config.optimizer.clone().with_lr(0.1),
            ..config.clone()
        };
        let point = check_resume(tmp.path(), &faster, &vocab).unwrap();
        assert_eq!(point.epoch, None, "no checkpoint yet");
        assert_eq!(
            point.lr_note().unwrap(),
            "the learning rate changes from 0.01 to 0.1 as the run continues"
        );
        let other: Vec<String> = ["c"].map(String::from).to_vec();
        let e = check_resume(tmp.path(), &config, &Vocab::build([other.as_slice()], 0))
            .unwrap_err()
            .to_string();
        assert!(e.contains("different vocabulary"), "{e}");
    }
}
