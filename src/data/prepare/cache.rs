//! The cache's folders: each built under a temporary name and renamed into place when whole,
//! one left by a killed run removed by the next, and a manifest written last that says what the
//! folder was made from.

use std::path::Path;

use super::report::PrepareEvent;
use crate::error::{Error, Result};

/// The prepared folder's description of itself.
const MANIFEST: &str = "prepared.json";

/// Writes a cache folder's files into the given folder, reporting as it goes.
pub(super) type BuildFn<'a> = dyn FnMut(&Path, &mut dyn FnMut(PrepareEvent)) -> Result<()> + 'a;

/// Opens the folder `name` of the cache, or builds it first: `build` writes into a temporary
/// folder that is renamed into place when whole. A folder that does not open is built again,
/// with a note. Returns what `open` made of it and whether it was there before.
pub(super) fn in_cache<T>(
    cache: &Path,
    name: &str,
    report: &mut dyn FnMut(PrepareEvent),
    build: &mut BuildFn,
    open: &dyn Fn(&Path) -> Result<T>,
) -> Result<(T, bool)> {
    std::fs::create_dir_all(cache).map_err(|e| Error::io("cannot create", cache, e))?;
    remove_abandoned(cache);
    let dir = cache.join(name);
    if dir.exists() {
        match open(&dir) {
            Ok(found) => return Ok((found, true)),
            Err(e) => {
                report(PrepareEvent::Note(format!(
                    "token cache {}: {e}; preparing it again",
                    dir.display()
                )));
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot remove", &dir, e))?;
            }
        }
    }
    let tmp = cache.join(format!(
        "{}.partial-{}-{}",
        name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::io("cannot create", &tmp, e))?;
    if let Err(e) = build(&tmp, report) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process prepared the same text meanwhile: use its folder.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((open(&dir)?, false))
}

/// Removes the temporary folders of preparations whose process is gone.
fn remove_abandoned(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, rest)) = name.split_once(".partial-") else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` runs (where `/proc` says; elsewhere it is assumed to).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// The manifest of the folder `dir`, checked to be made from `material`.
pub(super) fn read_manifest(dir: &Path, material: &serde_json::Value) -> Result<serde_json::Value> {
    let manifest = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| Error::io("cannot read", &manifest, e))?;
    let stored: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Corpus {
        path: manifest.clone(),
        problem: format!("not a prepared corpus ({e})"),
    })?;
    if stored.get("key") != Some(material) {
        return Err(Error::Corpus {
            path: manifest,
            problem: "made from other files or settings".into(),
        });
    }
    Ok(stored)
}

/// Writes the folder's manifest (last: a folder with one is whole).
pub(super) fn write_manifest(dir: &Path, manifest: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).expect("a JSON value");
    crate::fsutil::write_atomic(&dir.join(MANIFEST), text.as_bytes())
}
