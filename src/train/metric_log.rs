//! burn-train's per-batch metric logs, written so that a full disk costs the logs, not the run.
//!
//! burn-train's own `FileMetricLogger` panics when a write fails ("Can log an item."), so a disk
//! that fills up while a metric line is written killed the process with exit code 101 and a
//! panic instead of the clear "the disk is full" stop that a failing checkpoint gives. This
//! logger writes the same files (`<run>/train/epoch-N/<Metric>.log`, `<run>/valid/...`, one
//! serialized value per line, a resumed epoch's file restarted) and on the first failure says
//! once what happened and stops writing them; training goes on, and the next checkpoint, which
//! needs the space too, stops the run with the remedy if the disk is still full.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use burn::train::logger::MetricLogger;
use burn::train::metric::store::{EpochSummary, MetricsUpdate, Split};
use burn::train::metric::{MetricDefinition, MetricId, NumericEntry};

use super::events::EventSink;

/// A burn-train [`MetricLogger`] writing the metric logs of a run folder; see the module docs.
pub struct MetricLogs {
    dir: PathBuf,
    names: HashMap<MetricId, String>,
    open: HashMap<PathBuf, BufWriter<File>>,
    failed: bool,
    events: EventSink,
}

impl MetricLogs {
    /// Logs under the run folder `run_dir`; a write that fails is reported to `events`.
    pub fn new(run_dir: &Path, events: EventSink) -> Self {
        Self {
            dir: run_dir.to_path_buf(),
            names: HashMap::new(),
            open: HashMap::new(),
            failed: false,
            events,
        }
    }

    /// Whether a write failed, after which nothing more is written.
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The log file of metric `name` in `epoch` of `split`.
    pub fn path(&self, name: &str, epoch: usize, split: &Split) -> PathBuf {
        let split = match split {
            Split::Test(Some(tag)) => format!("test/{}", tag.trim().replace(' ', "-")),
            other => other.to_string(),
        };
        self.dir
            .join(split)
            .join(format!("epoch-{epoch}"))
            .join(format!("{}.log", name.replace(' ', "_")))
    }

    fn write(&mut self, path: PathBuf, value: &str) -> std::io::Result<()> {
        let file = match self.open.get_mut(&path) {
            Some(file) => file,
            None => {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let file = BufWriter::new(File::create(&path)?);
                self.open.entry(path.clone()).or_insert(file)
            }
        };
        writeln!(file, "{value}").map_err(|e| with_path(e, &path))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        for (path, file) in &mut self.open {
            file.flush().map_err(|e| with_path(e, path))?;
        }
        Ok(())
    }

    /// Says once that the logs stop, and drops the open files without writing more.
    fn fail(&mut self, error: std::io::Error) {
        self.events.warn(format!(
            "the metric logs under {} stop here ({error}); training goes on, and its \
             checkpoints need disk space too",
            self.dir.display()
        ));
        self.failed = true;
        for (_, file) in self.open.drain() {
            // Dropping a BufWriter flushes it, which would fail again; its buffer is discarded.
            let _ = file.into_parts();
        }
    }
}

fn with_path(error: std::io::Error, path: &Path) -> std::io::Error {
    std::io::Error::new(error.kind(), format!("{}: {error}", path.display()))
}

impl MetricLogger for MetricLogs {
    fn log(&mut self, update: MetricsUpdate, epoch: usize, split: &Split) {
        if self.failed {
            return;
        }
        let entries = update
            .entries
            .iter()
            .chain(update.entries_numeric.iter().map(|n| &n.entry));
        for entry in entries {
            if entry.serialized_entry.is_not_available() {
                continue;
            }
            let Some(name) = self.names.get(&entry.metric_id) else {
                continue;
            };
            let path = self.path(name, epoch, split);
            if let Err(e) = self.write(path, &entry.serialized_entry.serialized) {
                self.fail(e);
                return;
            }
        }
    }

    fn read_numeric(
        &mut self,
        name: &str,
        epoch: usize,
        split: &Split,
    ) -> Result<Vec<NumericEntry>, String> {
        if !self.failed {
            if let Err(e) = self.flush() {
                self.fail(e);
            }
        }
        let path = self.path(name, epoch, split);
        std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(NumericEntry::deserialize)
            .collect()
    }

    fn log_metric_definition(&mut self, definition: MetricDefinition) {
        self.names
            .insert(definition.metric_id, definition.name.to_string());
    }

    fn log_epoch_summary(&mut self, _summary: EpochSummary) {
        if self.failed {
            return;
        }
        match self.flush() {
            Ok(()) => self.open.clear(),
            Err(e) => self.fail(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::events::TrainEvent;
    use burn::train::metric::store::NumericMetricUpdate;
    use burn::train::metric::{MetricAttributes, MetricEntry, SerializedEntry};
    use std::sync::Arc;

    fn logs_with_perplexity(run_dir: &Path, events: EventSink) -> (MetricLogs, MetricId) {
        let mut logs = MetricLogs::new(run_dir, events);
        let id = MetricId::new(Arc::new("ppl".to_string()));
        logs.log_metric_definition(MetricDefinition {
            metric_id: id.clone(),
            name: Arc::new("Perplexity".to_string()),
            description: None,
            attributes: MetricAttributes::None,
        });
        (logs, id)
    }

    fn update(id: &MetricId, value: f64) -> MetricsUpdate {
        let entry = MetricEntry::new(
            id.clone(),
            SerializedEntry::new(format!("{value:.2}"), value.to_string()),
        );
        MetricsUpdate::new(
            Vec::new(),
            vec![NumericMetricUpdate::new(
                entry,
                Some(NumericEntry::Value(value)),
                None,
            )],
        )
    }

    #[test]
    fn values_are_written_per_split_and_epoch_and_read_back() {
        let run = tempfile::tempdir().unwrap();
        let (mut logs, id) = logs_with_perplexity(run.path(), EventSink::quiet());
        for v in [300.0, 250.5] {
            logs.log(update(&id, v), 1, &Split::Train);
        }
        logs.log(update(&id, 90.25), 1, &Split::Valid);
        let read = logs.read_numeric("Perplexity", 1, &Split::Train).unwrap();
        let values: Vec<f64> = read.iter().map(NumericEntry::current).collect();
        assert_eq!(values, [300.0, 250.5]);
        logs.log_epoch_summary(EpochSummary::new(1, Split::Valid));
        let text = std::fs::read_to_string(run.path().join("valid/epoch-1/Perplexity.log"));
        assert_eq!(text.unwrap(), "90.25\n");
        assert!(!logs.failed());
    }

    /// `/dev/full` fails every write with "No space left on device", as a full disk does.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_full_disk_stops_the_logs_without_a_panic() {
        let run = tempfile::tempdir().unwrap();
        let warnings = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = warnings.clone();
        let events = EventSink::new(move |e| {
            if let TrainEvent::Warning(w) = e {
                seen.lock().unwrap().push(w);
            }
        });
        let (mut logs, id) = logs_with_perplexity(run.path(), events);
        let path = logs.path("Perplexity", 1, &Split::Train);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink("/dev/full", &path).unwrap();
        // Enough lines to fill the write buffer, then the epoch's end flushes what is left.
        for i in 0..2000 {
            logs.log(update(&id, f64::from(i)), 1, &Split::Train);
        }
        logs.log_epoch_summary(EpochSummary::new(1, Split::Train));
        assert!(logs.failed());
        logs.log(update(&id, 1.0), 2, &Split::Train);
        assert!(!logs.path("Perplexity", 2, &Split::Train).exists());
        let warnings = warnings.lock().unwrap();
        assert_eq!(warnings.len(), 1, "said once: {warnings:?}");
        assert!(warnings[0].contains("No space left"), "{warnings:?}");
    }
}
