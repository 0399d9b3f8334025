//! Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never a
//! partial one, even after `kill -9` or a power loss.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` to `path` through a temporary file in the same folder, `fsync`, and `rename`.
///
/// The folder is synced after the rename so that the new name survives a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io("cannot create folder", dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        // Make the rename durable; not every platform can open a folder for syncing.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("cannot write", path, e)
    })
}

/// Creates the folder `out` whole or not at all: `fill` writes its files into a temporary
/// sibling folder, which is renamed to `out` when `fill` succeeds and removed when it fails.
/// `out` must not exist.
pub fn write_folder(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let partial = partial_dir(out);
    let result = (|| {
        std::fs::create_dir_all(&partial)
            .map_err(|e| Error::io("cannot create folder", &partial, e))?;
        fill(&partial)?;
        std::fs::rename(&partial, out).map_err(|e| Error::io("cannot rename into place", out, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result
}

/// The temporary folder [`write_folder`] fills before its rename.
fn partial_dir(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into());
    out.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the target file remains");
    }

    #[test]
    fn a_folder_appears_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("run");
        let e = write_folder(&out, |d| {
            write_atomic(&d.join("a"), b"1")?;
            Err(crate::error::Error::Config("stop".into()))
        });
        assert!(e.is_err() && !out.exists());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no partial folder"
        );
        write_folder(&out, |d| write_atomic(&d.join("a"), b"1")).unwrap();
        assert_eq!(std::fs::read(out.join("a")).unwrap(), b"1");
    }
}
