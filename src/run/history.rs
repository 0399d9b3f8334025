//! The run's record of finished epochs, `history.jsonl`: one JSON [`EpochStats`] per line.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::Result;

use super::files;

/// What one epoch measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochStats {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Training perplexity over the epoch (padding excluded).
    pub train_perplexity: f64,
    /// Validation perplexity after the epoch (padding excluded).
    pub valid_perplexity: f64,
    /// Real training tokens per second.
    pub tokens_per_second: f64,
    /// Wall time of the epoch, training and validation, in seconds.
    pub seconds: f64,
    /// Learning rate the epoch trained at (0 in histories written before it was recorded).
    #[serde(default)]
    pub lr: f64,
    /// Training bits per character (see [`bits_per_char`]), where the characters were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_bits_per_char: Option<f64>,
    /// Validation bits per character, where the characters were counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_bits_per_char: Option<f64>,
    /// Validation perplexity per word (see [`word_perplexity`]), for character and subword
    /// models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_word_perplexity: Option<f64>,
}

/// Perplexity per word of a split scored at `loss` nats per token, whose text has
/// `tokens_per_word` tokens a word (words as a word model counts its tokens: whitespace-
/// separated words plus one end of sentence a non-blank line): `exp(loss * tokens / words)`,
/// comparable with a word model's perplexity on the same text.
pub fn word_perplexity(loss: f64, tokens_per_word: Option<f64>) -> Option<f64> {
    tokens_per_word.map(|r| (loss * r).exp())
}

/// Bits per character of a split scored at `loss` nats per token, whose text has
/// `tokens_per_char` tokens a character: `loss / ln 2 * tokens / chars`. The characters are
/// counted from the raw text (`data::tokenizer::count_chars`), so word, character and subword
/// models of one text share the denominator; a split scored in part (a stream's last partial
/// row, sentences longer than every bucket) is taken at its mean loss per token.
pub fn bits_per_char(loss: f64, tokens_per_char: Option<f64>) -> Option<f64> {
    tokens_per_char.map(|r| loss / std::f64::consts::LN_2 * r)
}

/// `", perplexity per word N"`, or nothing.
pub fn word_ppl_text(ppl: Option<f64>) -> String {
    ppl.map_or(String::new(), |p| format!(", perplexity per word {p:.2}"))
}

/// `", N bits per character"`, or nothing when the characters were not counted.
pub fn bpc_text(bpc: Option<f64>) -> String {
    bpc.map_or(String::new(), |b| format!(", {b:.4} bits per character"))
}

/// The finished epochs recorded in a run folder (unreadable lines are skipped).
pub fn read_history(run_dir: &Path) -> Vec<EpochStats> {
    std::fs::read_to_string(run_dir.join(files::HISTORY))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Writes `history` as the run's whole `history.jsonl`, atomically.
pub(crate) fn write_history(run_dir: &Path, history: &[EpochStats]) -> Result<()> {
    let mut text = String::new();
    for s in history {
        text += &serde_json::to_string(s).expect("stats serialise");
        text.push('\n');
    }
    crate::fsutil::write_atomic(&run_dir.join(files::HISTORY), text.as_bytes())
}

/// Appends one epoch to the history file at `path` and syncs it.
pub(crate) fn append_history(path: &Path, stats: &EpochStats) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(stats).expect("stats serialise")
    )?;
    f.sync_data()
}
