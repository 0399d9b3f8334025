//! The errors a user can cause: bad files, bad flags, an incompatible run folder.
//!
//! Every message names the problem and the remedy. Internal invariants use `expect` instead.

use std::path::PathBuf;

/// An error caused by input the user controls (files, flags, run folders).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done, e.g. "cannot read corpus file".
        action: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A corpus file is not usable as training or evaluation text.
    #[error("corpus {path}: {problem}")]
    Corpus {
        /// The corpus file.
        path: PathBuf,
        /// What is wrong with it and what to do.
        problem: String,
    },

    /// A data split the user asked for is not on disk.
    #[error("{what} not found at {path}; {remedy}")]
    MissingData {
        /// Which data, e.g. "PTB train split".
        what: String,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that provides it.
        remedy: String,
    },

    /// A run folder holds a run that this command cannot continue.
    #[error("cannot resume the run in {dir}: {problem}. Start over with --fresh, or pick another --artifact-dir")]
    IncompatibleRun {
        /// The run folder.
        dir: PathBuf,
        /// What differs.
        problem: String,
    },

    /// A run folder's files could not be parsed.
    #[error("run folder {dir}: {problem}")]
    BadRun {
        /// The run folder.
        dir: PathBuf,
        /// What is wrong.
        problem: String,
    },

    /// A model file to import (or its vocabulary) that cannot be used.
    #[error("cannot import {path}: {problem}")]
    BadModel {
        /// The file.
        path: PathBuf,
        /// What is wrong, and what to do.
        problem: String,
    },

    /// An invalid combination of settings.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The device asked for does not exist or cannot be used.
    #[error("{0}")]
    Device(String),

    /// The training curves could not be drawn.
    #[error("cannot draw the training curves: {0}")]
    Plot(String),

    /// Another process is training in the run folder.
    #[error("another lstm-lm process{pid} is training in {dir}; wait for it to finish or stop it, or pick another --artifact-dir")]
    RunInUse {
        /// The run folder.
        dir: PathBuf,
        /// " (pid N)" when the lock file names it, else empty.
        pid: String,
    },

    /// The loss became NaN or infinite; training stopped without saving the broken weights.
    #[error("the {split} loss became {loss} at epoch {epoch}, batch {batch}, so training stopped; no checkpoint of the broken weights was written ({kept}). A learning rate too high for the model is the usual cause (this epoch's: {lr}): run the same command with a lower --lr (a run may resume with another rate), or clip the gradients with --clip 5")]
    Diverged {
        /// "training" or "validation".
        split: &'static str,
        /// "NaN" or "infinite".
        loss: &'static str,
        /// 1-based epoch.
        epoch: usize,
        /// 1-based batch of the epoch's split.
        batch: usize,
        /// The epoch's learning rate, formatted.
        lr: String,
        /// Which checkpoint a rerun resumes from.
        kept: String,
    },

    /// Training stopped because the framework reported an error.
    #[error("training failed: {0}")]
    Training(String),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
