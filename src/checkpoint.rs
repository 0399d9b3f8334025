//! Checkpoints written atomically, and finding the newest complete one.
//!
//! A checkpoint of epoch `N` is three files in `<run>/checkpoint/`: `model-N.bpk`,
//! `optim-N.bpk` and `scheduler-N.bpk`. Each is written to a temporary file, synced and renamed,
//! so a file that exists is whole; the checkpoint is complete when all three exist.

use std::path::{Path, PathBuf};

use burn::tensor::Bytes;
use burn::train::checkpoint::{Checkpoint, Checkpointer, CheckpointerError};

/// The three record kinds of a checkpoint, as named by burn-train.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// Folder of the checkpoints inside a run folder.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

/// Path of one record of epoch `epoch`.
pub fn record_path(dir: &Path, name: &str, epoch: usize) -> PathBuf {
    dir.join(format!("{name}-{epoch}.bpk"))
}

/// The newest epoch whose three records all exist, if any.
pub fn last_complete_checkpoint(run_dir: &Path) -> Option<usize> {
    let dir = checkpoint_dir(run_dir);
    let entries = std::fs::read_dir(&dir).ok()?;
    entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let epoch = name.strip_prefix("model-")?.strip_suffix(".bpk")?;
            epoch.parse::<usize>().ok()
        })
        .filter(|&epoch| {
            RECORDS
                .iter()
                .all(|r| record_path(&dir, r, epoch).is_file())
        })
        .max()
}

/// A burn-train [`Checkpointer`] that writes each record atomically (temp file, fsync, rename).
pub struct AtomicFileCheckpointer {
    dir: PathBuf,
    name: String,
}

impl AtomicFileCheckpointer {
    /// Records named `name-<epoch>.bpk` in `dir`.
    pub fn new(dir: impl Into<PathBuf>, name: &str) -> Self {
        Self {
            dir: dir.into(),
            name: name.to_string(),
        }
    }
}

impl<R: Checkpoint> Checkpointer<R> for AtomicFileCheckpointer {
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let bytes = record
            .checkpoint_into_bytes()
            .map_err(CheckpointerError::Record)?;
        crate::fsutil::write_atomic(&record_path(&self.dir, &self.name, epoch), &bytes)
            .map_err(|e| CheckpointerError::Unknown(e.to_string()))
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        let path = record_path(&self.dir, &self.name, epoch);
        let bytes = std::fs::read(&path).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(Bytes::from_bytes_vec(bytes)).map_err(CheckpointerError::Record)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        match std::fs::remove_file(record_path(&self.dir, &self.name, epoch)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(CheckpointerError::IOError(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_epochs_with_all_three_records_count() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        assert_eq!(last_complete_checkpoint(run.path()), None);
        std::fs::create_dir_all(&dir).unwrap();
        for r in RECORDS {
            std::fs::write(record_path(&dir, r, 1), b"x").unwrap();
        }
        std::fs::write(record_path(&dir, "model", 2), b"x").unwrap();
        std::fs::write(record_path(&dir, "optim", 2), b"x").unwrap();
        assert_eq!(last_complete_checkpoint(run.path()), Some(1));
        std::fs::write(record_path(&dir, "scheduler", 2), b"x").unwrap();
        assert_eq!(last_complete_checkpoint(run.path()), Some(2));
    }
}
