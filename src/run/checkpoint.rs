//! Checkpoints written atomically with a checksummed manifest, and finding the newest sound one.
//!
//! A checkpoint of epoch `N` is three files in `<run>/checkpoint/`: `model-N.bpk`,
//! `optim-N.bpk` and `scheduler-N.bpk`, and `manifest-N.json`, which lists each file's size and
//! SHA-256. Each file is written to a temporary file, synced and renamed, so a file that exists
//! is whole; the manifest is created (empty) before the first record appears and lists each
//! record once it is in place. An epoch is
//! *complete* when its manifest lists all three records and their files have the listed sizes,
//! and *sound* when their checksums match too. Resuming and loading use the newest sound epoch
//! and say so when a newer one is damaged. (Checkpoints written before manifests existed count
//! as complete and sound when all three files exist.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::tensor::Bytes;
use burn::train::checkpoint::{
    Checkpoint, Checkpointer, CheckpointerError, CheckpointingAction, CheckpointingStrategy,
};
use burn::train::metric::store::EventStoreClient;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The three record kinds of a checkpoint, as named by burn-train.
pub const RECORDS: [&str; 3] = ["model", "optim", "scheduler"];

/// burn-train saves the three records from three threads; their manifest updates take turns.
static MANIFEST_LOCK: Mutex<()> = Mutex::new(());

/// Folder of the checkpoints inside a run folder.
pub fn checkpoint_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoint")
}

/// Path of one record of epoch `epoch`.
pub fn record_path(dir: &Path, name: &str, epoch: usize) -> PathBuf {
    dir.join(format!("{name}-{epoch}.bpk"))
}

/// Path of the manifest of epoch `epoch`.
pub fn manifest_path(dir: &Path, epoch: usize) -> PathBuf {
    dir.join(format!("manifest-{epoch}.json"))
}

/// Size and checksum of one record file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RecordSum {
    bytes: u64,
    sha256: String,
}

impl RecordSum {
    #[cfg(test)]
    fn of(bytes: &[u8]) -> Self {
        Self::from_digest(bytes.len() as u64, Sha256::digest(bytes).as_slice())
    }

    /// The size and checksum of the file at `path`, read in pieces: a record is never held
    /// in memory whole.
    fn of_file(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let bytes = std::io::copy(&mut file, &mut hasher)?;
        Ok(Self::from_digest(bytes, hasher.finalize().as_slice()))
    }

    fn from_digest(bytes: u64, digest: &[u8]) -> Self {
        Self {
            bytes,
            sha256: digest.iter().map(|b| format!("{b:02x}")).collect(),
        }
    }
}

/// The manifest of one epoch's checkpoint.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    records: BTreeMap<String, RecordSum>,
}

fn read_manifest(dir: &Path, epoch: usize) -> Option<Result<Manifest, String>> {
    let path = manifest_path(dir, epoch);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => return Some(Err(format!("cannot read {}: {e}", path.display()))),
    };
    Some(serde_json::from_str(&text).map_err(|e| format!("{} is damaged: {e}", path.display())))
}

/// Why epoch `epoch` cannot be used, or `Ok` when it is complete (and, with `verify`, sound).
fn check_epoch(dir: &Path, epoch: usize, verify: bool) -> Result<(), String> {
    let Some(manifest) = read_manifest(dir, epoch) else {
        // Written before manifests: whole files (atomic renames), no checksums.
        return match RECORDS
            .iter()
            .find(|r| !record_path(dir, r, epoch).is_file())
        {
            Some(r) => Err(format!(
                "{} is missing",
                record_path(dir, r, epoch).display()
            )),
            None => Ok(()),
        };
    };
    let manifest = manifest?;
    for name in RECORDS {
        let path = record_path(dir, name, epoch);
        let Some(sum) = manifest.records.get(name) else {
            return Err(format!("the {name} record was never finished"));
        };
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .len();
        if size != sum.bytes {
            return Err(format!(
                "{} has {size} bytes, its manifest says {}",
                path.display(),
                sum.bytes
            ));
        }
        if verify {
            let found =
                RecordSum::of_file(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if found != *sum {
                return Err(format!("{} does not match its checksum", path.display()));
            }
        }
    }
    Ok(())
}

/// Epochs (or generations) that have any checkpoint file in `dir`, newest first.
pub(crate) fn candidate_epochs(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut epochs: Vec<usize> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            let stem = name
                .strip_suffix(".bpk")
                .or_else(|| name.strip_suffix(".json"))?;
            let (_, epoch) = stem.rsplit_once('-')?;
            epoch.parse::<usize>().ok()
        })
        .collect();
    epochs.sort_unstable_by(|a, b| b.cmp(a));
    epochs.dedup();
    epochs
}

/// The newest complete epoch (its three records listed in its manifest, at the listed sizes).
/// Cheap: no checksums are computed; see [`newest_sound_checkpoint`].
pub fn last_complete_checkpoint(run_dir: &Path) -> Option<usize> {
    let dir = checkpoint_dir(run_dir);
    candidate_epochs(&dir)
        .into_iter()
        .find(|&e| check_epoch(&dir, e, false).is_ok())
}

/// The newest epoch whose checkpoint is complete and matches its checksums. Each newer epoch
/// that is complete but damaged is named in a warning on stderr.
pub fn newest_sound_checkpoint(run_dir: &Path) -> Option<usize> {
    let dir = checkpoint_dir(run_dir);
    first_sound(&dir, candidate_epochs(&dir), |e| {
        format!("the checkpoint of epoch {e}")
    })
}

/// The first of `candidates` (newest first) whose checkpoint in the folder `dir` is complete and
/// sound. An unfinished one (a kill while it was being written) is passed over in silence; a
/// damaged one is named in a warning on stderr, as `describe(candidate)`.
pub(crate) fn first_sound(
    dir: &Path,
    candidates: impl IntoIterator<Item = usize>,
    describe: impl Fn(usize) -> String,
) -> Option<usize> {
    candidates.into_iter().find(|&c| {
        if check_epoch(dir, c, false).is_err() {
            return false;
        }
        match check_epoch(dir, c, true) {
            Ok(()) => true,
            Err(why) => {
                eprintln!(
                    "warning: {} is damaged ({why}); using an older one",
                    describe(c)
                );
                false
            }
        }
    })
}

/// The epochs (or generations) in `dir` older than its newest complete one, newest first: the
/// ones that may be deleted. Deleting by position instead ("two before the one being saved")
/// is not safe: burn-train writes the three records from three background threads, so the
/// previous checkpoint may still be in flight when the next one starts, and a kill at that
/// moment could leave no complete checkpoint at all.
pub(crate) fn superseded(dir: &Path) -> Vec<usize> {
    let candidates = candidate_epochs(dir);
    match candidates
        .iter()
        .position(|&e| check_epoch(dir, e, false).is_ok())
    {
        Some(newest) => candidates[newest + 1..].to_vec(),
        None => Vec::new(),
    }
}

/// A burn-train [`CheckpointingStrategy`]: saves every checkpoint, and deletes those older than
/// the newest complete one in its folder (see `superseded`). In steady state that keeps two:
/// the newest complete one and the one being written.
pub struct KeepNewestComplete {
    dir: PathBuf,
}

impl KeepNewestComplete {
    /// For the checkpoints in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
}

impl CheckpointingStrategy for KeepNewestComplete {
    fn checkpointing(&mut self, _: usize, _: &EventStoreClient) -> Vec<CheckpointingAction> {
        let mut actions = vec![CheckpointingAction::Save];
        actions.extend(
            superseded(&self.dir)
                .into_iter()
                .map(CheckpointingAction::Delete),
        );
        actions
    }
}

/// Checks that epoch `epoch` of `run_dir` is complete and sound; the error says why not.
pub fn verify_checkpoint(run_dir: &Path, epoch: usize) -> Result<(), String> {
    check_epoch(&checkpoint_dir(run_dir), epoch, true)
}

/// Whether `name` is a temporary file of an unfinished write: ours (`.<name>.tmp-<pid>`, see
/// `fsutil::write_atomic`) or burn-pack's for a record (`<name>.bpk.<pid>-<n>.tmp`).
fn is_temporary(name: &str) -> bool {
    (name.starts_with('.') && name.contains(".tmp-"))
        || (name.ends_with(".tmp") && name.contains(".bpk."))
}

/// Removes temporary files a killed process left in the run folder and its checkpoint folder.
pub fn remove_stale_temporaries(run_dir: &Path) {
    let checkpoints = checkpoint_dir(run_dir);
    for dir in [
        run_dir.to_path_buf(),
        checkpoints.join("partial"),
        checkpoints,
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if is_temporary(&entry.file_name().to_string_lossy()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

/// A burn-train [`Checkpointer`] that writes each record atomically (temp file, fsync, rename)
/// as it is serialised, and then records its size and checksum in the epoch's manifest.
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

    /// Creates the (empty) manifest of `epoch` unless it exists. Every save does this before
    /// its record file appears: a checkpoint with records and no manifest counts as one written
    /// before manifests (complete when its three files exist), so without it a kill after the
    /// three records were renamed into place, but before their manifest entries, would leave a
    /// checkpoint that counted as complete while written and as unfinished after the kill; the
    /// older checkpoints, deleted meanwhile as superseded, would be lost with it.
    fn open_manifest(&self, epoch: usize) -> crate::error::Result<()> {
        let _turn = MANIFEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        if read_manifest(&self.dir, epoch).is_some() {
            return Ok(());
        }
        let json = serde_json::to_string_pretty(&Manifest::default()).expect("manifest serialises");
        crate::fsutil::write_atomic(&manifest_path(&self.dir, epoch), json.as_bytes())
    }

    /// Writes the record file of `epoch` with `write`, its manifest opened first; returns the
    /// file's size and checksum, read back from it. `write` must leave a whole file at the path
    /// it is given or none (a temporary file renamed into place).
    fn place_record(
        &self,
        epoch: usize,
        write: impl FnOnce(&Path) -> Result<(), CheckpointerError>,
    ) -> Result<RecordSum, CheckpointerError> {
        self.open_manifest(epoch).map_err(unknown)?;
        let path = record_path(&self.dir, &self.name, epoch);
        write(&path)?;
        RecordSum::of_file(&path).map_err(CheckpointerError::IOError)
    }

    fn add_to_manifest(&self, epoch: usize, sum: RecordSum) -> crate::error::Result<()> {
        let _turn = MANIFEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let mut manifest = match read_manifest(&self.dir, epoch) {
            Some(Ok(m)) => m,
            _ => Manifest::default(),
        };
        manifest.records.insert(self.name.clone(), sum);
        let json = serde_json::to_string_pretty(&manifest).expect("manifest serialises");
        crate::fsutil::write_atomic(&manifest_path(&self.dir, epoch), json.as_bytes())
    }
}

fn unknown(e: crate::error::Error) -> CheckpointerError {
    CheckpointerError::Unknown(e.to_string())
}

/// A failed record write, naming the record's own file and the cause. burn-pack's error names
/// its temporary file behind three prefixes ("Record error: `Record I/O error: I/O error:
/// cannot write to '<temporary>': No space left on device (os error 28)`").
fn write_error(path: &Path, error: CheckpointerError) -> CheckpointerError {
    let text = error.to_string();
    let cause = text
        .rsplit_once("': ")
        .map_or(text.as_str(), |(_, cause)| cause.trim_end_matches('`'));
    CheckpointerError::Unknown(format!("cannot write {}: {cause}", path.display()))
}

impl<R: Checkpoint> Checkpointer<R> for AtomicFileCheckpointer {
    /// Streams the record to its file as it is serialised: burn-pack writes a temporary file
    /// beside it (`<name>-<epoch>.bpk.<pid>-<n>.tmp`), syncs it and renames it into place. The
    /// record is never also held as one byte buffer (`checkpoint_into_bytes`), which for
    /// `zaremba-medium` was 58 MB more at the epoch's end. A record with nothing to save (`()`)
    /// writes no file; it gets an empty one, so that the epoch is complete.
    fn save(&self, epoch: usize, record: R) -> Result<(), CheckpointerError> {
        let sum = self.place_record(epoch, |path| {
            record
                .save(path.to_path_buf())
                .map_err(|e| write_error(path, e))?;
            if !path.exists() {
                crate::fsutil::write_atomic(path, &[]).map_err(unknown)?;
            }
            Ok(())
        })?;
        self.add_to_manifest(epoch, sum).map_err(unknown)
    }

    fn restore(&self, epoch: usize) -> Result<R, CheckpointerError> {
        // The epoch was checked with `newest_sound_checkpoint` before training resumed.
        let path = record_path(&self.dir, &self.name, epoch);
        let bytes = std::fs::read(&path).map_err(CheckpointerError::IOError)?;
        R::checkpoint_from_bytes(Bytes::from_bytes_vec(bytes)).map_err(CheckpointerError::Record)
    }

    fn delete(&self, epoch: usize) -> Result<(), CheckpointerError> {
        // The record goes first: from then on the epoch is incomplete, with its manifest or
        // without (then it lacks a record, so it is not taken for one from before manifests).
        for path in [
            record_path(&self.dir, &self.name, epoch),
            manifest_path(&self.dir, epoch),
        ] {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(CheckpointerError::IOError(e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `payload` to the path it is given, atomically, as a record's `save` does.
    fn bytes(payload: &[u8]) -> impl FnOnce(&Path) -> Result<(), CheckpointerError> + '_ {
        move |path| crate::fsutil::write_atomic(path, payload).map_err(unknown)
    }

    /// Writes the three records of `epoch` as the checkpointer does, with `payload` bytes.
    fn save_epoch(dir: &Path, epoch: usize, payload: &[u8]) {
        for name in RECORDS {
            let c = AtomicFileCheckpointer::new(dir, name);
            let sum = c.place_record(epoch, bytes(payload)).unwrap();
            c.add_to_manifest(epoch, sum).unwrap();
        }
    }

    /// burn-train saves the three records from three threads: all three files may be in place
    /// before any of them is listed. A kill then must find the previous checkpoint, not this
    /// one, and the previous one must not have been deleted as superseded meanwhile.
    #[test]
    fn a_checkpoint_is_not_complete_until_its_manifest_lists_every_record() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        save_epoch(&dir, 1, b"one");
        let checkpointers = RECORDS.map(|name| AtomicFileCheckpointer::new(&dir, name));
        let sums: Vec<RecordSum> = checkpointers
            .iter()
            .map(|c| c.place_record(2, bytes(b"two")).unwrap())
            .collect();
        for (c, sum) in checkpointers.iter().zip(sums) {
            assert_eq!(last_complete_checkpoint(run.path()), Some(1));
            assert_eq!(newest_sound_checkpoint(run.path()), Some(1));
            assert!(
                superseded(&dir).is_empty(),
                "epoch 1 is kept while 2 is written"
            );
            c.add_to_manifest(2, sum).unwrap();
        }
        assert_eq!(last_complete_checkpoint(run.path()), Some(2));
        assert_eq!(superseded(&dir), vec![1]);
    }

    #[test]
    fn only_checkpoints_older_than_the_newest_complete_one_are_deleted() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        assert!(superseded(&dir).is_empty());
        save_epoch(&dir, 1, b"one");
        save_epoch(&dir, 2, b"two");
        // Epoch 3 still being written (one record of three): 2 is the newest complete, and
        // stays while 3 is in flight.
        std::fs::write(record_path(&dir, "model", 3), b"three").unwrap();
        AtomicFileCheckpointer::new(&dir, "model")
            .add_to_manifest(3, RecordSum::of(b"three"))
            .unwrap();
        assert_eq!(superseded(&dir), vec![1]);
        std::fs::remove_file(record_path(&dir, "optim", 1)).unwrap();
        std::fs::remove_file(record_path(&dir, "optim", 2)).unwrap();
        assert!(
            superseded(&dir).is_empty(),
            "nothing is complete: nothing goes"
        );
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        save_epoch(&dir, 1, b"first epoch");
        save_epoch(&dir, 2, b"second epoch");
        // Same size, one byte flipped: complete, but not sound.
        std::fs::write(record_path(&dir, "optim", 2), b"second epocH").unwrap();
        assert_eq!(last_complete_checkpoint(run.path()), Some(2));
        assert_eq!(newest_sound_checkpoint(run.path()), Some(1));
        assert!(verify_checkpoint(run.path(), 2)
            .unwrap_err()
            .contains("does not match its checksum"));
        // Truncated: not even complete.
        std::fs::write(record_path(&dir, "optim", 2), b"sec").unwrap();
        assert_eq!(last_complete_checkpoint(run.path()), Some(1));
        // A damaged manifest.
        std::fs::write(manifest_path(&dir, 1), b"{\"records\": {\"mod").unwrap();
        assert_eq!(newest_sound_checkpoint(run.path()), None);
    }

    #[test]
    fn checkpoints_without_a_manifest_still_load() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        std::fs::create_dir_all(&dir).unwrap();
        for r in RECORDS {
            std::fs::write(record_path(&dir, r, 3), b"x").unwrap();
        }
        assert_eq!(newest_sound_checkpoint(run.path()), Some(3));
        std::fs::remove_file(record_path(&dir, "optim", 3)).unwrap();
        assert_eq!(last_complete_checkpoint(run.path()), None);
    }

    /// A real record goes to its file as it is serialised and comes back whole; the manifest's
    /// checksum is the file's; a write killed halfway (burn-pack's temporary file left behind)
    /// is neither an epoch nor kept.
    #[test]
    fn a_record_streamed_to_its_file_is_listed_and_restored() {
        use burn::module::Module;
        use burn::nn::{Linear, LinearConfig};
        use burn::store::ModuleRecord;
        use burn::tensor::Device;

        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        let linear: Linear = LinearConfig::new(5, 3).init(&Device::flex());
        let weights = linear.weight.val().into_data();
        let c = AtomicFileCheckpointer::new(&dir, "model");
        c.save(4, linear.clone().into_record()).unwrap();

        let path = record_path(&dir, "model", 4);
        let listed = read_manifest(&dir, 4).unwrap().unwrap().records["model"].clone();
        assert_eq!(listed, RecordSum::of(&std::fs::read(&path).unwrap()));
        let names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "the record and its manifest only: {names:?}"
        );
        let record: ModuleRecord = c.restore(4).unwrap();
        let restored = LinearConfig::new(5, 3)
            .init(&Device::flex())
            .load_record(record);
        assert_eq!(restored.weight.val().into_data(), weights);

        let stranded = dir.join(format!("model-5.bpk.{}-0.tmp", std::process::id()));
        std::fs::write(&stranded, b"half a record").unwrap();
        assert_eq!(candidate_epochs(&dir), vec![4]);
        remove_stale_temporaries(run.path());
        assert!(!stranded.exists());
        assert!(path.exists(), "only temporary files go");
    }

    #[test]
    fn an_epoch_being_deleted_is_never_complete() {
        let run = tempfile::tempdir().unwrap();
        let dir = checkpoint_dir(run.path());
        save_epoch(&dir, 1, b"one");
        save_epoch(&dir, 2, b"two");
        // The three checkpointers delete their records from three threads, in any order.
        for name in ["optim", "model", "scheduler"] {
            let c = AtomicFileCheckpointer::new(&dir, name);
            <AtomicFileCheckpointer as Checkpointer<burn::store::ModuleRecord>>::delete(&c, 1)
                .unwrap();
            assert!(!record_path(&dir, name, 1).exists());
            assert_eq!(last_complete_checkpoint(run.path()), Some(2));
            assert_eq!(candidate_epochs(&dir).contains(&1), name != "scheduler");
        }
        assert!(!manifest_path(&dir, 1).exists());
        std::fs::write(dir.join(".model-3.bpk.tmp-99"), b"partial").unwrap();
        remove_stale_temporaries(run.path());
        assert!(!dir.join(".model-3.bpk.tmp-99").exists());
    }
}
