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
    /// Which lines were held out for validation, when several training files were split.
    pub held_out: Option<String>,
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
    /// Several files per split, each read in turn (see [`expand_paths`] for folders of
    /// shards). Without `valid`, the last lines of the training files taken together are held
    /// out: the last `1 - train_fraction` of all their lines, so they come from the last
    /// file(s).
    Shards {
        /// Training files, in reading order.
        train: Vec<PathBuf>,
        /// Validation files; none: held out from `train`.
        valid: Vec<PathBuf>,
        /// Test files; none: no test.
        test: Vec<PathBuf>,
        /// Share of the training lines used for training when `valid` is empty.
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
    /// files when `train` is given (named after the first one: a file's stem, a folder's
    /// name), else `dataset` (named as the dataset). One file for each split is
    /// [`CorpusSource::Files`]; several files or a folder of shards [`CorpusSource::Shards`].
    pub fn from_flags(
        files: Option<(Vec<PathBuf>, Vec<PathBuf>, Vec<PathBuf>)>,
        dataset: Dataset,
        data_dir: &Path,
        train_fraction: f64,
    ) -> Result<(Self, String)> {
        let Some((train, valid, test)) = files.filter(|f| !f.0.is_empty()) else {
            let source = Self::dataset(dataset, data_dir, train_fraction)?;
            return Ok((source, dataset.name().to_string()));
        };
        let name = train[0]
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "corpus".into());
        let single = |p: &[PathBuf]| p.len() <= 1 && p.iter().all(|f| !f.is_dir());
        let source = if single(&train) && single(&valid) && single(&test) {
            CorpusSource::Files {
                train: train[0].clone(),
                valid: valid.first().cloned(),
                test: test.first().cloned(),
                train_fraction,
            }
        } else {
            CorpusSource::Shards {
                train: expand_paths(&train)?,
                valid: expand_paths(&valid)?,
                test: expand_paths(&test)?,
                train_fraction,
            }
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
                    held_out: None,
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
                    held_out: None,
                })
            }
            CorpusSource::Shards {
                train,
                valid,
                test,
                train_fraction,
            } => {
                let (train_s, valid_s, held_out) = if valid.is_empty() {
                    let (t, v, note) = split_files(train, *train_fraction)?;
                    (t, v, Some(note))
                } else {
                    (read_files(train)?, read_files(valid)?, None)
                };
                let test = (!test.is_empty()).then(|| read_files(test)).transpose()?;
                Ok(Corpus {
                    train: train_s,
                    valid: valid_s,
                    test,
                    held_out,
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

/// The files `paths` name, in reading order: a file stands for itself, a folder for the files
/// in it (not those whose name starts with `.`), sorted by name (byte order). A folder without
/// files, or a path that does not exist, is an error that names it.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            let entries = std::fs::read_dir(path).map_err(|e| Error::io("cannot list", path, e))?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| e.path())
                .collect();
            if files.is_empty() {
                return Err(Error::Corpus {
                    path: path.clone(),
                    problem: "the folder holds no files; pass text files or a folder of them"
                        .into(),
                });
            }
            files.sort();
            out.extend(files);
        } else if path.exists() {
            out.push(path.clone());
        } else {
            return Err(Error::Corpus {
                path: path.clone(),
                problem: "no such file or folder".into(),
            });
        }
    }
    Ok(out)
}

/// The sentences of `paths`, read in order; each file must hold tokens.
fn read_files(paths: &[PathBuf]) -> Result<Vec<Sentence>> {
    let mut sentences = Vec::new();
    for path in paths {
        sentences.extend(read_corpus(path)?);
    }
    Ok(sentences)
}

/// Splits the lines of `paths` taken together: the first `train_fraction` of them train, the
/// rest validate (so they come from the last file or files). Returns both and, in words, where
/// the held-out lines start.
fn split_files(
    paths: &[PathBuf],
    train_fraction: f64,
) -> Result<(Vec<Sentence>, Vec<Sentence>, String)> {
    if let [path] = paths {
        let (train, valid) = split_text(&read_text(path)?, train_fraction, path)?;
        let note = format!(
            "validation: the last {:.0}% of the lines of {} (--train-fraction {train_fraction})",
            (1.0 - train_fraction) * 100.0,
            path.display()
        );
        return Ok((train, valid, note));
    }
    if !(train_fraction > 0.0 && train_fraction < 1.0) {
        return Err(Error::Config(format!(
            "--train-fraction must be between 0 and 1, got {train_fraction}"
        )));
    }
    let texts: Vec<String> = paths.iter().map(|p| read_text(p)).collect::<Result<_>>()?;
    let total: usize = texts.iter().map(|t| t.lines().count()).sum();
    let n = ((total as f64) * train_fraction) as usize;
    let (mut train, mut valid) = (Vec::new(), Vec::new());
    let (mut start, mut note) = (0usize, String::new());
    for (path, text) in paths.iter().zip(&texts) {
        let lines: Vec<&str> = text.lines().collect();
        let cut = n.saturating_sub(start).min(lines.len());
        train.extend(parse_some(&lines[..cut], 1, path)?);
        valid.extend(parse_some(&lines[cut..], cut + 1, path)?);
        if note.is_empty() && cut < lines.len() {
            note = format!(
                "validation: the last {} of the {total} lines of the {} training files, from line \
                 {} of {} on (--train-fraction {train_fraction})",
                total - n,
                paths.len(),
                cut + 1,
                path.display()
            );
        }
        start += lines.len();
    }
    if train.is_empty() || valid.is_empty() {
        return Err(Error::Corpus {
            path: paths[paths.len() - 1].clone(),
            problem: format!(
                "the {total} lines of the {} training files are too few to hold out {:.0}% of \
                 them for validation, or hold no tokens; pass --valid FILE (or more lines)",
                paths.len(),
                (1.0 - train_fraction) * 100.0
            ),
        });
    }
    Ok((train, valid, note))
}

/// [`parse_lines`], where a part without tokens is no error (it is part of a larger split).
fn parse_some(lines: &[&str], first_line: usize, path: &Path) -> Result<Vec<Sentence>> {
    if lines.iter().all(|l| l.split_whitespace().next().is_none()) {
        return Ok(Vec::new());
    }
    parse_lines(lines, first_line, path)
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

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A folder is its files sorted by name, hidden ones left out; files given one by one keep
    /// their order; a folder without files and a missing path are errors naming them.
    #[test]
    fn shards_are_read_in_a_stated_order() {
        let tmp = tempfile::tempdir().unwrap();
        let shards = tmp.path().join("shards");
        std::fs::create_dir(&shards).unwrap();
        for name in ["b.txt", "a.txt", ".hidden", "c10.txt", "c2.txt"] {
            write(&shards, name, "x\n");
        }
        let names = |paths: Vec<PathBuf>| -> Vec<String> {
            let file = |p: &PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
            paths.iter().map(file).collect()
        };
        let got = expand_paths(std::slice::from_ref(&shards)).unwrap();
        assert_eq!(names(got), ["a.txt", "b.txt", "c10.txt", "c2.txt"]);
        let one = write(tmp.path(), "z.txt", "y\n");
        let got = expand_paths(&[one, shards.join("b.txt")]).unwrap();
        assert_eq!(names(got), ["z.txt", "b.txt"]);
        let empty = tmp.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = expand_paths(&[empty]).unwrap_err().to_string();
        assert!(e.contains("holds no files"), "{e}");
        let e = expand_paths(&[tmp.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no such file or folder") && e.contains("nope"),
            "{e}"
        );
    }

    /// Several training files without --valid: the last lines of them all are held out, as if
    /// they were one file, and the note says from which file and line.
    #[test]
    fn the_last_lines_of_several_training_files_are_held_out() {
        let tmp = tempfile::tempdir().unwrap();
        let a_text: String = (0..12).map(|i| format!("a{i} w\n")).collect();
        let b_text: String = (0..8).map(|i| format!("b{i} w\n")).collect();
        let a = write(tmp.path(), "a.txt", &a_text);
        let b = write(tmp.path(), "b.txt", &b_text);
        let (train, valid, note) = split_files(&[a, b.clone()], 0.75).unwrap();
        let (whole_train, whole_valid) =
            split_text(&format!("{a_text}{b_text}"), 0.75, &b).unwrap();
        assert_eq!((train, valid.clone()), (whole_train, whole_valid));
        assert_eq!(valid.len(), 5);
        assert_eq!(valid[0][0], "b3");
        assert!(
            note.contains("the last 5 of the 20 lines of the 2 training files"),
            "{note}"
        );
        assert!(
            note.contains("line 4 of") && note.contains("b.txt"),
            "{note}"
        );
        // One flag value each is the plain one-file source; two files or a folder are shards.
        let flags = |train: Vec<PathBuf>| {
            CorpusSource::from_flags(Some((train, vec![], vec![])), Dataset::Ptb, tmp.path(), 0.9)
                .unwrap()
        };
        let a = tmp.path().join("a.txt");
        assert!(matches!(
            flags(vec![a.clone()]).0,
            CorpusSource::Files { .. }
        ));
        let (two, name) = flags(vec![a.clone(), b]);
        assert_eq!(name, "a");
        let corpus = two.load().unwrap();
        assert_eq!(corpus.train.len() + corpus.valid.len(), 20);
        assert!(corpus.held_out.is_some());
        let (folder, name) = flags(vec![tmp.path().to_path_buf()]);
        assert!(matches!(folder, CorpusSource::Shards { ref train, .. } if train.len() == 2));
        assert_eq!(name, tmp.path().file_stem().unwrap().to_string_lossy());
    }

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
