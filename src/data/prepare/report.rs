//! What preparing reports as it goes, for a progress bar or a log.

/// What preparing reports as it goes.
#[derive(Debug, Clone, PartialEq)]
pub enum PrepareEvent {
    /// A pass over `bytes` of text starts.
    Started {
        /// What the pass does, e.g. "counting tokens".
        stage: &'static str,
        /// Bytes the pass reads.
        bytes: u64,
    },
    /// `bytes` of the pass are done (a running total).
    Advanced {
        /// Bytes done so far in this pass.
        bytes: u64,
    },
    /// The pass is done.
    Finished,
    /// A fact worth one line: the cache reused, a damaged preparation redone.
    Note(String),
}
