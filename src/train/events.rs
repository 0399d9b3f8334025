//! What training reports as it goes. The library sends [`TrainEvent`]s to an [`EventSink`];
//! what to show of them, and how, is the caller's (the binary draws a bar or prints lines).

use std::sync::{Arc, Mutex};

use crate::data::prepare::PrepareEvent;
use crate::run::history::EpochStats;

/// A split of an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// Training batches.
    Train,
    /// Validation batches.
    Valid,
}

/// Where a split of an epoch stands.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitProgress {
    /// Training or validation.
    pub split: Split,
    /// 1-based epoch.
    pub epoch: usize,
    /// Epochs the run asks for in total.
    pub epochs: usize,
    /// Batches done in this split (counted from its items, so a run resumed within an epoch
    /// counts from where it stopped).
    pub batch: usize,
    /// Batches in the split.
    pub batches: usize,
    /// Perplexity over the split so far (`exp` of the mean loss per token), once known.
    pub perplexity: Option<f64>,
    /// Training tokens per second so far, once known.
    pub tokens_per_second: Option<f64>,
    /// Seconds left in this epoch's training and in the whole run, projected from this epoch's
    /// pace and the last validation's duration (training split only).
    pub seconds_left: Option<(f64, f64)>,
}

impl SplitProgress {
    /// Whether the split is done.
    pub fn finished(&self) -> bool {
        self.batch >= self.batches
    }
}

/// What training reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// A fact about the run, said once: what the data gives, the model, where it resumes, how a
    /// setting applies here, the test score.
    Info(String),
    /// Something went wrong without stopping training (a history line not written).
    Warning(String),
    /// Preparing the text into the token cache (a pass started, advanced or ended; a note).
    Prepare(PrepareEvent),
    /// A split of an epoch starts.
    SplitStarted(SplitProgress),
    /// A batch of the split is done.
    Batch(SplitProgress),
    /// The split is done.
    SplitEnded,
    /// An epoch ended: what it measured. It is in `history.jsonl` unless its loss diverged.
    EpochEnded {
        /// The epoch's figures, its learning rate included.
        stats: EpochStats,
        /// Epochs the run asks for in total.
        epochs: usize,
    },
}

type Handler = Box<dyn FnMut(TrainEvent) + Send>;

/// Where training sends its events: a handler shared by every part of the training that
/// reports (clones send to the same handler, one event at a time).
#[derive(Clone)]
pub struct EventSink(Arc<Mutex<Handler>>);

impl EventSink {
    /// A sink that hands each event to `handler`.
    pub fn new(handler: impl FnMut(TrainEvent) + Send + 'static) -> Self {
        Self(Arc::new(Mutex::new(Box::new(handler))))
    }

    /// A sink that drops every event.
    pub fn quiet() -> Self {
        Self::new(|_| {})
    }

    /// Sends `event`.
    pub fn send(&self, event: TrainEvent) {
        (self.0.lock().expect("event handler lock"))(event);
    }

    /// Sends an [`TrainEvent::Info`].
    pub fn info(&self, line: impl Into<String>) {
        self.send(TrainEvent::Info(line.into()));
    }

    /// Sends a [`TrainEvent::Warning`].
    pub fn warn(&self, line: impl Into<String>) {
        self.send(TrainEvent::Warning(line.into()));
    }
}

impl Default for EventSink {
    fn default() -> Self {
        Self::quiet()
    }
}

impl std::fmt::Debug for EventSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventSink")
    }
}
