//! Reading corpora in PTB format: one sentence per line, whitespace-separated tokens, UTF-8.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use datasets::{Dataset, Split};

use super::tokenizer::line_cut;
use crate::error::{Error, Result};

/// Tiny Shakespeare (public domain), embedded so that training works with no download.
pub const EMBEDDED_TINY_SHAKESPEARE: &str = include_str!("../../assets/tinyshakespeare.txt");

/// A sentence: its whitespace-separated tokens.
pub type Sentence = Vec<String>;

/// The lines of a text as [`str::lines`] cuts them (line ends removed, CRLF too), read as they
/// come, so a text of any size takes one line's memory; a line that is not UTF-8, or a read
/// error, is an error naming the file and the line, and ends them.
pub struct TextLines<R> {
    reader: R,
    path: PathBuf,
    /// Lines read so far.
    line: usize,
    failed: bool,
}

impl TextLines<Box<dyn BufRead>> {
    /// The lines of the file `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
        Ok(Self::new(
            Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
            path,
        ))
    }
}

impl<R: BufRead> TextLines<R> {
    /// The lines of `reader`, the text `path` (as errors name it).
    pub fn new(reader: R, path: &Path) -> Self {
        Self {
            reader,
            path: path.to_path_buf(),
            line: 0,
            failed: false,
        }
    }
}

impl<R: BufRead> Iterator for TextLines<R> {
    type Item = Result<String>;

    fn next(&mut self) -> Option<Result<String>> {
        if self.failed {
            return None;
        }
        let mut bytes = Vec::new();
        match self.reader.read_until(b'\n', &mut bytes) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(e) => {
                self.failed = true;
                return Some(Err(Error::io("cannot read", &self.path, e)));
            }
        }
        self.line += 1;
        trim_line_end(&mut bytes);
        Some(String::from_utf8(bytes).map_err(|e| {
            self.failed = true;
            not_utf8(&self.path, self.line, e.utf8_error().valid_up_to() + 1)
        }))
    }
}

/// The lines of a text in pieces: each piece with whether its line ends after it. A line
/// longer than `max` bytes comes in pieces cut at the last [`line_cut`] of what has been read
/// (every tokenizer reads the pieces one after the other as it reads the whole line), so a
/// text on one line (text8 and the like) takes about `max` bytes, not the whole line; a line
/// with no such cut comes whole. Lines as [`TextLines`] cuts them; a piece that is not UTF-8,
/// or a read error, is an error naming the file and the line, and ends them.
pub struct LinePieces<R> {
    reader: R,
    path: PathBuf,
    max: usize,
    /// Bytes read and not yet handed out, from `start`.
    pending: Vec<u8>,
    start: usize,
    /// Where the search for a line end in `pending` goes on from.
    searched: usize,
    /// The line being handed out (1-based), and how many of its bytes went out already.
    line: usize,
    line_offset: usize,
    done: bool,
}

impl LinePieces<Box<dyn Read>> {
    /// The lines of the file `path`, in pieces of about `max` bytes.
    pub fn open(path: &Path, max: usize) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
        Ok(Self::new(Box::new(file), path, max))
    }
}

impl<R: Read> LinePieces<R> {
    /// The lines of `reader`, the text `path` (as errors name it), in pieces of about `max`
    /// bytes.
    pub fn new(reader: R, path: &Path, max: usize) -> Self {
        Self {
            reader,
            path: path.to_path_buf(),
            max: max.max(1),
            pending: Vec::new(),
            start: 0,
            searched: 0,
            line: 1,
            line_offset: 0,
            done: false,
        }
    }

    /// `pending[start..start + len]` as a piece (a line end trimmed when `ends`).
    fn take(&mut self, len: usize, ends: bool) -> Result<(String, bool)> {
        let mut bytes = self.pending[self.start..self.start + len].to_vec();
        self.start += len;
        self.searched = self.start;
        if ends {
            trim_line_end(&mut bytes);
        }
        let piece = String::from_utf8(bytes).map_err(|e| {
            self.done = true;
            let byte = self.line_offset + e.utf8_error().valid_up_to() + 1;
            not_utf8(&self.path, self.line, byte)
        })?;
        if ends {
            self.line += 1;
            self.line_offset = 0;
        } else {
            self.line_offset += len;
        }
        Ok((piece, ends))
    }

    /// Reads more of the text after what is pending; `false` at its end.
    fn fill(&mut self) -> Result<bool> {
        self.pending.drain(..self.start);
        self.searched -= self.start;
        self.start = 0;
        let have = self.pending.len();
        self.pending.resize(have + self.max.max(1 << 16), 0);
        loop {
            match self.reader.read(&mut self.pending[have..]) {
                Ok(n) => {
                    self.pending.truncate(have + n);
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pending.truncate(have);
                    return Err(Error::io("cannot read", &self.path, e));
                }
            }
        }
    }
}

impl<R: Read> Iterator for LinePieces<R> {
    type Item = Result<(String, bool)>;

    fn next(&mut self) -> Option<Result<(String, bool)>> {
        while !self.done {
            let rest = &self.pending[self.searched..];
            if let Some(at) = memchr::memchr(b'\n', rest) {
                let len = self.searched + at + 1 - self.start;
                return Some(self.take(len, true));
            }
            self.searched = self.pending.len();
            let open = &self.pending[self.start..];
            if open.len() >= self.max {
                if let Some(at) = line_cut(open) {
                    return Some(self.take(at, false));
                }
            }
            match self.fill() {
                Ok(true) => {}
                Ok(false) => {
                    self.done = true;
                    let len = self.pending.len() - self.start;
                    // The last line, when it has no line end (or a piece of it went out).
                    if len > 0 || self.line_offset > 0 {
                        return Some(self.take(len, true));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The error for a text whose line `line` is not UTF-8 from its byte `byte` (1-based) on.
fn not_utf8(path: &Path, line: usize, byte: usize) -> Error {
    Error::Corpus {
        path: path.to_path_buf(),
        problem: format!(
            "line {line}: not valid UTF-8 (byte {byte} of the line); convert the file to UTF-8"
        ),
    }
}

/// Removes a line end (`\n` or `\r\n`) from the end of `line`, as [`str::lines`] does.
pub fn trim_line_end(line: &mut Vec<u8>) {
    if line.ends_with(b"\n") {
        line.pop();
        if line.ends_with(b"\r") {
            line.pop();
        }
    }
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

    /// Lines read as they come are those of `str::lines` (CRLF, blank lines, a last line
    /// without its end); a line that is not UTF-8 is named and ends them.
    #[test]
    fn text_lines_are_str_lines_and_name_a_bad_line() {
        for text in ["a b\r\n\nc\n", "x\ny", "", "\n\n", "é\r\n😀"] {
            let read: Vec<String> = TextLines::new(text.as_bytes(), Path::new("t.txt"))
                .collect::<Result<_>>()
                .unwrap();
            assert_eq!(read, text.lines().collect::<Vec<_>>(), "{text:?}");
        }
        let bad = b"ok\r\nfine\nno\xff good\nnever read\n";
        let read: Vec<_> = TextLines::new(&bad[..], Path::new("t.txt")).collect();
        assert_eq!(read.len(), 3);
        assert_eq!(read[1].as_ref().unwrap(), "fine");
        let e = read[2].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("t.txt") && e.contains("line 3: not valid UTF-8"),
            "{e}"
        );
    }

    /// A reader that gives at most `step` bytes a call, as a pipe may.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Lines read in pieces join to the lines of `str::lines` (CRLF, blank lines, a last line
    /// without its end), however the reads come; a line longer than `max` comes in pieces about
    /// `max` long, each but a line's last cut before a single space between two words;
    /// a piece that is not UTF-8 names its line and its byte in the line, and ends them.
    #[test]
    fn line_pieces_join_to_the_lines_and_cut_long_ones_between_words() {
        let long = "one two  three\tfour ".repeat(40) + "end";
        let texts = [
            "a b\r\n\nc\n".to_string(),
            "x\ny".into(),
            String::new(),
            "\n\n".into(),
            "é\r\n😀".into(),
            format!("{long}\r\nshort\n{long}"),
            "nospacesatallinthislongline\nz".into(),
        ];
        for text in &texts {
            for (max, step) in [(8, 3), (16, 1000), (1 << 20, 7)] {
                let reader = Trickle(text.as_bytes(), step);
                let mut lines = vec![String::new()];
                let (mut open, mut at) = (false, 0);
                for piece in LinePieces::new(reader, Path::new("t.txt"), max) {
                    let (piece, ends) = piece.unwrap();
                    assert!(text[at..].starts_with(&piece), "{piece:?} at {at}");
                    at += piece.len();
                    if ends {
                        at += ["\r\n", "\n"]
                            .iter()
                            .find(|end| text[at..].starts_with(**end))
                            .map_or(0, |end| end.len());
                    } else {
                        // Cut before a single space between two words, within what was read
                        // (`long` has one at least every 20 bytes).
                        let b = text.as_bytes();
                        assert!(piece.len() <= max + step + 20, "{piece:?}");
                        assert!(b[at] == b' ' && !b[at - 1].is_ascii_whitespace());
                        assert!(!b[at + 1].is_ascii_whitespace(), "{piece:?}");
                    }
                    lines.last_mut().unwrap().push_str(&piece);
                    open = !ends;
                    if ends {
                        lines.push(String::new());
                    }
                }
                assert!(!open, "{text:?}: a line left open");
                lines.pop();
                assert_eq!(
                    lines,
                    text.lines().collect::<Vec<_>>(),
                    "{text:?} {max} {step}"
                );
            }
        }
        let bad = b"ok\r\nfine words here\nno\xff good\nnever read\n";
        let read: Vec<_> = LinePieces::new(&bad[..], Path::new("t.txt"), 4).collect();
        let e = read.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(
            e.contains("t.txt") && e.contains("line 3: not valid UTF-8 (byte 3 of the line)"),
            "{e}"
        );
        assert!(read[..read.len() - 1].iter().all(|r| r.is_ok()));
        // The byte counts from the line's start when the line came in pieces.
        let bad = b"ok\nno go\xff good\n";
        let read: Vec<_> = LinePieces::new(Trickle(bad, 3), Path::new("t.txt"), 4).collect();
        assert_eq!(read[1].as_ref().unwrap(), &("no".to_string(), false));
        let e = read.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(
            e.contains("line 2: not valid UTF-8 (byte 6 of the line)"),
            "{e}"
        );
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
}
