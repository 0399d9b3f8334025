//! File names inside a run folder.

/// The experiment config.
pub const CONFIG: &str = "config.json";
/// The vocabulary, one token per line.
pub const VOCAB: &str = "vocab.txt";
/// One JSON [`EpochStats`](crate::run::history::EpochStats) per finished epoch.
pub const HISTORY: &str = "history.jsonl";
/// The test split's score at the end of training, a [`TestScore`](crate::run::TestScore).
pub const TEST: &str = "test.json";
/// Held locked by the process training in the folder; holds its pid.
pub const LOCK: &str = "lock";
/// The model of an imported run (`lstm-lm import`): its epoch 0, with no optimizer state.
pub const IMPORTED: &str = "imported.bpk";
/// Where an imported run's model came from (`lstm-lm import`).
pub const IMPORT_RECORD: &str = "import.json";
