//! The lock a trainer holds on its run folder.

use std::io::Write;
use std::path::Path;

use crate::error::{Error, Result};

use super::files;

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
