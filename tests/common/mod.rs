//! Test devices and fixtures. The only place besides main.rs that names concrete backends.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use lstm_lm::config::presets::Preset;
use lstm_lm::config::ExperimentConfig;
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::data::corpus::EMBEDDED_TINY_SHAKESPEARE;
use lstm_lm::error::Error;
use lstm_lm::train::events::EventSink;
use lstm_lm::train::{train, TrainReport, TrainRequest};

/// The CPU backends every test runs on: flex (the default) and ndarray (deprecated, kept).
#[allow(deprecated)]
pub fn cpu_devices() -> Vec<(&'static str, Device)> {
    vec![("flex", Device::flex()), ("ndarray", Device::ndarray())]
}

/// Writes the first `train` lines of Tiny Shakespeare as a training file and the next `valid`
/// lines as a validation file into `dir`; returns their paths.
pub fn tiny_corpus(dir: &Path, train: usize, valid: usize) -> (PathBuf, PathBuf) {
    let lines: Vec<&str> = EMBEDDED_TINY_SHAKESPEARE.lines().collect();
    let t = dir.join("train.txt");
    let v = dir.join("valid.txt");
    std::fs::write(&t, lines[..train].join("\n")).unwrap();
    std::fs::write(&v, lines[train..train + valid].join("\n")).unwrap();
    (t, v)
}

/// [`tiny_corpus`] as a training source: `train` lines to train on, the next `valid` to
/// validate on, no test split.
pub fn tiny_files(dir: &Path, train: usize, valid: usize) -> CorpusSource {
    let (train, valid) = tiny_corpus(dir, train, valid);
    CorpusSource::Files {
        train,
        valid: Some(valid),
        test: None,
        train_fraction: 0.9,
    }
}

/// Trains (or resumes) `config` on `corpus` in `dir` on `devices`, quietly, checkpointing at
/// epoch ends.
pub fn train_quietly(
    config: ExperimentConfig,
    corpus: &CorpusSource,
    dir: &Path,
    devices: Vec<Device>,
) -> Result<TrainReport, Error> {
    train(TrainRequest {
        config,
        corpus: corpus.clone(),
        cache_dir: dir.with_extension("cache"),
        run_dir: dir.to_path_buf(),
        fresh: false,
        devices,
        events: EventSink::quiet(),
        interrupter: Default::default(),
        checkpoint_every: None,
    })
}

/// A model small enough that an epoch over a few thousand lines takes about a second.
pub fn tiny_config(epochs: usize) -> ExperimentConfig {
    let mut c = Preset::Tiny.config();
    c.epochs = epochs;
    c.data.max_vocab = 500;
    c.model.d_embed = 16;
    c.model.d_hidden = 24;
    c
}

/// The standard output of `command`, which must succeed (its output in the panic otherwise).
pub fn stdout_of(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The standard error of `command`, which must fail (its output in the panic otherwise).
pub fn stderr_of_failure(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "succeeded: {err}");
    err
}
