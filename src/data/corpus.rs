//! Reading corpora in PTB format: one sentence per line, whitespace-separated tokens, UTF-8.

use std::path::{Path, PathBuf};

use datasets::{Dataset, Split};

use crate::error::{Error, Result};

/// Tiny Shakespeare (public domain), embedded so that training works with no download.
pub const EMBEDDED_TINY_SHAKESPEARE: &str = include_str!("../../assets/tinyshakespeare.txt");

/// A sentence: its whitespace-separated tokens.
pub type Sentence = Vec<String>;

/// The splits of a corpus, as sentences of tokens.
#[derive(Debug, Clone)]
pub struct Corpus {
    /// Sentences the model trains on and the vocabulary is built from.
    pub train: Vec<Sentence>,
    /// Sentences for the per-epoch validation.
    pub valid: Vec<Sentence>,
    /// Sentences for a final test evaluation, when a test split is given.
    pub test: Option<Vec<Sentence>>,
}

/// Where the text of each split comes from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CorpusSource {
    /// The embedded Tiny Shakespeare: first `train_fraction` of its lines train, the rest valid.
    Embedded {
        /// Share of lines used for training, e.g. 0.9.
        train_fraction: f64,
    },
    /// Files on disk. Without `valid`, the last lines of `train` are held out for validation.
    Files {
        /// Training text.
        train: PathBuf,
        /// Validation text.
        valid: Option<PathBuf>,
        /// Test text, evaluated once at the end.
        test: Option<PathBuf>,
        /// Share of `train`'s lines used for training when `valid` is absent.
        train_fraction: f64,
    },
}

impl CorpusSource {
    /// The named `dataset` under `data_dir` (the folder `cargo xtask fetch-data` writes):
    /// Tiny Shakespeare is the embedded copy, split by lines at `train_fraction`; PTB is its three
    /// fetched splits, each checked to exist.
    pub fn dataset(dataset: Dataset, data_dir: &Path, train_fraction: f64) -> Result<Self> {
        match dataset {
            Dataset::TinyShakespeare => Ok(CorpusSource::Embedded { train_fraction }),
            Dataset::Ptb => {
                let split = |s: Split| -> Result<PathBuf> {
                    let path = dataset
                        .split_path(data_dir, s)
                        .expect("PTB has train, valid and test splits");
                    if path.is_file() {
                        return Ok(path);
                    }
                    Err(Error::MissingData {
                        what: format!("the PTB {} split", s.name()),
                        path,
                        remedy: "download it with `cargo xtask fetch-data --dataset ptb` (or pass \
                                 --data-dir)"
                            .into(),
                    })
                };
                Ok(CorpusSource::Files {
                    train: split(Split::Train)?,
                    valid: Some(split(Split::Valid)?),
                    test: Some(split(Split::Test)?),
                    train_fraction,
                })
            }
        }
    }

    /// The text a `train` command names, and its short name for default run folders: the
    /// files when `train` is given (named by the training file's stem), else `dataset` (named
    /// as the dataset).
    pub fn from_flags(
        files: Option<(PathBuf, Option<PathBuf>, Option<PathBuf>)>,
        dataset: Dataset,
        data_dir: &Path,
        train_fraction: f64,
    ) -> Result<(Self, String)> {
        let Some((train, valid, test)) = files else {
            let source = Self::dataset(dataset, data_dir, train_fraction)?;
            return Ok((source, dataset.name().to_string()));
        };
        let name = train
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        let source = CorpusSource::Files {
            train,
            valid,
            test,
            train_fraction,
        };
        Ok((source, name))
    }

    /// Reads every split.
    pub fn load(&self) -> Result<Corpus> {
        match self {
            CorpusSource::Embedded { train_fraction } => {
                let (train, valid) = split_text(
                    EMBEDDED_TINY_SHAKESPEARE,
                    *train_fraction,
                    Path::new("<embedded>"),
                )?;
                Ok(Corpus {
                    train,
                    valid,
                    test: None,
                })
            }
            CorpusSource::Files {
                train,
                valid,
                test,
                train_fraction,
            } => {
                let (train_s, valid_s) = match valid {
                    Some(v) => (read_corpus(train)?, read_corpus(v)?),
                    None => split_text(&read_text(train)?, *train_fraction, train)?,
                };
                let test = test.as_deref().map(read_corpus).transpose()?;
                Ok(Corpus {
                    train: train_s,
                    valid: valid_s,
                    test,
                })
            }
        }
    }
}

/// Reads one corpus file: its non-blank lines as sentences of tokens.
///
/// Errors name the file and the line: missing file, invalid UTF-8, binary data, no tokens.
pub fn read_corpus(path: &Path) -> Result<Vec<Sentence>> {
    parse_text(&read_text(path)?, path)
}

/// Reads a UTF-8 text file; errors name the file, and the line of the first invalid byte.
fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io("cannot read corpus file", path, e))?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        Error::Corpus {
            path: path.to_path_buf(),
            problem: format!(
                "line {line}: not valid UTF-8 (byte {}); convert the file to UTF-8",
                e.valid_up_to()
            ),
        }
    })?;
    Ok(text.to_owned())
}

/// Splits `text` into sentences of tokens, skipping blank lines; CRLF line ends are accepted.
pub fn parse_text(text: &str, path: &Path) -> Result<Vec<Sentence>> {
    parse_lines(&text.lines().collect::<Vec<_>>(), 1, path)
}

/// [`parse_text`] over `lines`, the first of which is line `first_line` of `path`.
fn parse_lines(lines: &[&str], first_line: usize, path: &Path) -> Result<Vec<Sentence>> {
    let mut sentences = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.contains('\0') {
            return Err(Error::Corpus {
                path: path.to_path_buf(),
                problem: format!(
                    "line {}: contains NUL bytes, so it looks like binary data; \
                     pass a text file with one sentence per line",
                    first_line + i
                ),
            });
        }
        let tokens: Sentence = line.split_whitespace().map(str::to_owned).collect();
        if !tokens.is_empty() {
            sentences.push(tokens);
        }
    }
    if sentences.is_empty() {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            problem: "no tokens (the file is empty or only blank lines); \
                      pass a text file with one sentence per line"
                .into(),
        });
    }
    Ok(sentences)
}

/// Splits `text` by lines, blank ones included: the first `floor(lines * train_fraction)` lines
/// train, the rest validate (PyTorch's reference splits Tiny Shakespeare this way).
fn split_text(
    text: &str,
    train_fraction: f64,
    path: &Path,
) -> Result<(Vec<Sentence>, Vec<Sentence>)> {
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(Error::Config(format!(
            "--train-fraction must be between 0 and 1, got {train_fraction}"
        )));
    }
    let lines: Vec<&str> = text.lines().collect();
    let n = ((lines.len() as f64) * train_fraction) as usize;
    let too_few = || Error::Corpus {
        path: path.to_path_buf(),
        problem: format!(
            "{} line(s) are too few to hold out {:.0}% of them for validation; pass --valid FILE \
             (or more lines)",
            lines.len(),
            (1.0 - train_fraction) * 100.0
        ),
    };
    // A part without tokens in a file that has some: the file is too short to split.
    let has_tokens = lines.iter().any(|l| l.split_whitespace().next().is_some());
    let split_error = |e: Error| match e {
        Error::Corpus { ref problem, .. } if has_tokens && problem.starts_with("no tokens") => {
            too_few()
        }
        e => e,
    };
    let train = parse_lines(&lines[..n], 1, path).map_err(split_error)?;
    let valid = parse_lines(&lines[n..], n + 1, path).map_err(split_error)?;
    Ok((train, valid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_skipped_and_crlf_is_accepted() {
        let s = parse_text("a b\r\n\r\n  \nc\r\n", Path::new("t")).unwrap();
        assert_eq!(s, vec![vec!["a", "b"], vec!["c"]]);
    }

    #[test]
    fn bad_files_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.txt");
        std::fs::write(&p, "\n \n").unwrap();
        assert!(read_corpus(&p)
            .unwrap_err()
            .to_string()
            .contains("no tokens"));
        std::fs::write(&p, b"ok\nbad \xff here\n").unwrap();
        let e = read_corpus(&p).unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("UTF-8"), "{e}");
        let e = read_corpus(&dir.path().join("missing.txt"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn embedded_corpus_splits_ninety_ten_by_lines() {
        let c = CorpusSource::Embedded {
            train_fraction: 0.9,
        }
        .load()
        .unwrap();
        let lines: Vec<&str> = EMBEDDED_TINY_SHAKESPEARE.lines().collect();
        assert_eq!(lines.len(), 40_000);
        let non_blank = |l: &[&str]| l.iter().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(c.train.len(), non_blank(&lines[..36_000]));
        assert_eq!(c.valid.len(), non_blank(&lines[36_000..]));
        assert_eq!(c.train[0], vec!["First", "Citizen:"]);
    }

    #[test]
    fn a_held_out_split_names_lines_of_the_whole_file() {
        let e = split_text("a\nb\nc\nd\x00\n", 0.5, Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("line 4"), "{e}");
        let e = split_text("a\nb\n\n\n", 0.5, Path::new("t")).unwrap_err();
        assert!(e.to_string().contains("--valid"), "{e}");
    }
}
