//! The corpus's texts read in blocks of whole lines (checked to be UTF-8 without NUL bytes),
//! and what is done to one block on one core: counting its tokens, encoding it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::data::corpus::EMBEDDED_TINY_SHAKESPEARE;
use crate::data::tokenizer::{count_chars, count_words, line_cut, Codec, Tokenizer};
use crate::data::vocab::{Vocab, EOS_ID};
use crate::error::{Error, Result};

/// Bytes of text a block holds (more when a line is longer).
const BLOCK_BYTES: usize = 16 << 20;

/// One text the corpus is read from.
#[derive(Debug, Clone)]
pub(super) enum Input {
    /// The embedded Tiny Shakespeare.
    Embedded,
    /// A text file.
    File(PathBuf),
}

impl Input {
    /// Its path in messages (`<embedded>` for the embedded text).
    pub(super) fn path(&self) -> &Path {
        match self {
            Input::Embedded => Path::new("<embedded>"),
            Input::File(p) => p,
        }
    }

    /// Its text, from the start.
    pub(super) fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Input::Embedded => Ok(Box::new(EMBEDDED_TINY_SHAKESPEARE.as_bytes())),
            Input::File(p) => Ok(Box::new(
                File::open(p).map_err(|e| Error::io("cannot read corpus file", p, e))?,
            )),
        }
    }

    /// Its size in bytes.
    pub(super) fn bytes(&self) -> Result<u64> {
        match self {
            Input::Embedded => Ok(EMBEDDED_TINY_SHAKESPEARE.len() as u64),
            Input::File(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| Error::io("cannot read corpus file", p, e)),
        }
    }

    /// What the cache key holds of it: the embedded text's checksum, a file's path, size and
    /// modification time.
    pub(super) fn fingerprint(&self) -> Result<serde_json::Value> {
        Ok(match self {
            Input::Embedded => serde_json::json!({
                "embedded": "tinyshakespeare",
                "crc32": crc32fast::hash(EMBEDDED_TINY_SHAKESPEARE.as_bytes()),
            }),
            Input::File(p) => {
                let io = |e| Error::io("cannot read corpus file", p, e);
                let meta = std::fs::metadata(p).map_err(io)?;
                let modified = meta
                    .modified()
                    .map_err(io)?
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                let path = std::fs::canonicalize(p).map_err(io)?;
                serde_json::json!({
                    "path": path.to_string_lossy(),
                    "bytes": meta.len(),
                    "modified_ns": modified.to_string(),
                })
            }
        })
    }
}

/// A block of whole lines of one input, or a piece of a line longer than a block.
pub(super) struct Block {
    pub(super) text: String,
    /// The input it comes from.
    pub(super) input: usize,
    /// Whether its lines are held out for validation.
    pub(super) held_out: bool,
    /// Whether it is a piece of a line that goes on in the next block (it then holds no line
    /// end; see [`line_cut`]).
    pub(super) open: bool,
}

/// Reads `inputs` block by block, in order, and hands `f` a batch of blocks at a time (two
/// per core, to work on in parallel). With `cut`, the block holding line `cut` (0-based,
/// counted over all inputs together) is split there, and the blocks from it on are marked
/// held out. A line longer than a block is handed over in pieces (cut by [`line_cut`]), so no
/// text is ever held whole. Bytes that are not UTF-8 and NUL bytes are errors naming the file
/// and the line.
pub(super) fn for_each_batch(
    inputs: &[Input],
    cut: Option<usize>,
    f: &mut dyn FnMut(Vec<Block>) -> Result<()>,
) -> Result<()> {
    for_each_batch_of(inputs, cut, BLOCK_BYTES, f)
}

/// [`for_each_batch`] with blocks of `block_bytes`.
fn for_each_batch_of(
    inputs: &[Input],
    cut: Option<usize>,
    block_bytes: usize,
    f: &mut dyn FnMut(Vec<Block>) -> Result<()>,
) -> Result<()> {
    let per_batch = 2 * rayon::current_num_threads().max(1);
    let mut batch = Vec::with_capacity(per_batch);
    let mut lines_before = 0usize;
    for (index, input) in inputs.iter().enumerate() {
        let mut reader = input.open()?;
        let path = input.path();
        let (mut pending, mut offset, mut line) = (Vec::new(), 0usize, 1usize);
        let mut eof = false;
        while !eof {
            let start = pending.len();
            pending.resize(start + block_bytes, 0);
            let n = read_full(&mut reader, &mut pending[start..])
                .map_err(|e| Error::io("cannot read corpus file", path, e))?;
            pending.truncate(start + n);
            eof = n == 0;
            let Some((end, open)) = block_end(&pending, start, eof) else {
                continue;
            };
            let rest = pending.split_off(end);
            let bytes = std::mem::replace(&mut pending, rest);
            let text = checked_text(bytes, path, offset, line)?;
            offset += end;
            // A piece of a line holds no line end; its line is counted with its last piece.
            let lines = if open { 0 } else { count_lines(&text) };
            for (text, before) in split_at_cut(text, lines_before, lines, cut) {
                batch.push(Block {
                    text,
                    input: index,
                    held_out: cut.is_some_and(|c| before >= c),
                    open,
                });
            }
            line += lines;
            lines_before += lines;
            if batch.len() >= per_batch {
                f(std::mem::take(&mut batch))?;
            }
        }
    }
    if !batch.is_empty() {
        f(batch)?;
    }
    Ok(())
}

/// Where the next block of `pending` ends, and whether it ends inside a line: after its last
/// line end, or at the input's end, or (no line end in it) at a [`line_cut`]; `None` when it
/// needs more bytes. Only the bytes from `read` on (just read) are searched: those before hold
/// no line end and no cut, or a block would have ended there.
fn block_end(pending: &[u8], read: usize, eof: bool) -> Option<(usize, bool)> {
    // A cut needs the byte before its space and the byte after it.
    let from = read.saturating_sub(2);
    let end = if eof {
        (pending.len(), false)
    } else {
        match memchr::memrchr(b'\n', &pending[from..]) {
            Some(i) => (from + i + 1, false),
            None => (from + line_cut(&pending[from..])?, true),
        }
    };
    (end.0 > 0).then_some(end)
}

/// `text` (holding lines `before..before + lines` of all inputs) as the parts before and
/// after line `cut`, each with its first line's number.
fn split_at_cut(
    text: String,
    before: usize,
    lines: usize,
    cut: Option<usize>,
) -> Vec<(String, usize)> {
    match cut.filter(|&c| c > before && c < before + lines) {
        Some(cut) => {
            let (head, tail) = text.split_at(nth_line_start(&text, cut - before));
            vec![(head.to_owned(), before), (tail.to_owned(), cut)]
        }
        None => vec![(text, before)],
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `bytes` as text; an error names the line of the first invalid UTF-8 byte or NUL byte.
/// `offset` and `line` are where the block starts in its file.
fn checked_text(bytes: Vec<u8>, path: &Path, offset: usize, line: usize) -> Result<String> {
    let line_of = |bytes: &[u8], at: usize| line + memchr::memchr_iter(b'\n', &bytes[..at]).count();
    if let Some(at) = memchr::memchr(0, &bytes) {
        return Err(Error::Corpus {
            path: path.to_path_buf(),
            problem: format!(
                "line {}: contains NUL bytes, so it looks like binary data; pass a text file \
                 with one sentence per line",
                line_of(&bytes, at)
            ),
        });
    }
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let bytes = e.into_bytes();
        Error::Corpus {
            path: path.to_path_buf(),
            problem: format!(
                "line {}: not valid UTF-8 (byte {}); convert the file to UTF-8",
                line_of(&bytes, at),
                offset + at
            ),
        }
    })
}

/// Lines as `str::lines` counts them (a last line without a line end counts).
pub(super) fn count_lines(text: &str) -> usize {
    let n = memchr::memchr_iter(b'\n', text.as_bytes()).count();
    n + usize::from(!text.is_empty() && !text.ends_with('\n'))
}

/// Byte where line `n` (0-based) of `text` starts.
pub(super) fn nth_line_start(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    memchr::memchr_iter(b'\n', text.as_bytes())
        .nth(n - 1)
        .map_or(text.len(), |i| i + 1)
}

/// Word counts, by a fast hash (the keys are the user's own text).
pub(super) type Counts<K> = HashMap<K, (u64, u64), foldhash::fast::FixedState>;

/// Token counts of a block: token -> (count, index of its first appearance in the block).
pub(super) fn count_block(text: &str, tokenizer: Tokenizer) -> Counts<&str> {
    let mut counts = Counts::default();
    let mut index = 0u64;
    for line in text.lines() {
        tokenizer.for_each_token(line, |token| {
            counts.entry(token).or_insert((0, index)).0 += 1;
            index += 1;
        });
    }
    counts
}

/// The bytes of `inputs` together.
pub(super) fn total_bytes(inputs: &[Input]) -> Result<u64> {
    inputs.iter().map(Input::bytes).sum()
}

/// A block encoded: its sentences' ids one after the other (each ending in `<eos>`), each
/// sentence's length, the tokens not in the vocabulary and the block's characters and words.
/// The ids after the last length (an open block's) begin a sentence that the next block ends.
pub(super) struct Encoded {
    pub(super) ids: Vec<u32>,
    pub(super) lens: Vec<u32>,
    pub(super) unknown: usize,
    pub(super) chars: u64,
    pub(super) words: u64,
}

/// Encodes the lines of `text`; an `open` text is a piece of a line (see [`Block`]), whose
/// tokens end no sentence and count no line end.
pub(super) fn encode_block(vocab: &Vocab, codec: &Codec, text: &str, open: bool) -> Encoded {
    let (mut ids, mut lens, mut unknown) = (Vec::new(), Vec::new(), 0);
    if open {
        let (_, unknowns) = codec.encode_line(vocab, text, &mut ids);
        return Encoded {
            ids,
            lens,
            unknown: unknowns,
            chars: text.chars().count() as u64,
            words: text.split_whitespace().count() as u64,
        };
    }
    for line in text.lines() {
        let start = ids.len();
        let (sentence, unknowns) = codec.encode_line(vocab, line, &mut ids);
        unknown += unknowns;
        if sentence {
            ids.push(EOS_ID as u32);
            lens.push((ids.len() - start) as u32);
        }
    }
    Encoded {
        ids,
        lens,
        unknown,
        chars: count_chars(text),
        words: count_words(text),
    }
}

/// Each input's lines, as `str::lines` counts them, without decoding the text, and whether
/// any input holds a NUL byte (binary data, which the passes that decode the text name).
pub(super) fn lines_per_input(inputs: &[Input]) -> Result<(Vec<usize>, bool)> {
    let mut counts = Vec::with_capacity(inputs.len());
    let mut nul = false;
    for input in inputs {
        let mut reader = input.open()?;
        let mut buf = vec![0u8; 1 << 20];
        let (mut lines, mut last) = (0usize, b'\n');
        loop {
            let n = read_full(&mut reader, &mut buf)
                .map_err(|e| Error::io("cannot read corpus file", input.path(), e))?;
            if n == 0 {
                break;
            }
            lines += memchr::memchr_iter(b'\n', &buf[..n]).count();
            nul |= memchr::memchr(0, &buf[..n]).is_some();
            last = buf[n - 1];
        }
        counts.push(lines + usize::from(last != b'\n'));
    }
    Ok((counts, nul))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line longer than a block comes in pieces (open blocks, which count no line) cut
    /// before a single space between words, that give the text back put together; a held-out
    /// cut still falls at its line.
    #[test]
    fn a_long_line_comes_in_pieces_cut_between_words() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "ab cd  ef gh\tij kl mn op qr st\nuv wx yz\nlast one here";
        let path = tmp.path().join("t.txt");
        std::fs::write(&path, text).unwrap();
        let mut blocks = Vec::new();
        for_each_batch_of(&[Input::File(path)], Some(2), 8, &mut |b| {
            blocks.extend(b);
            Ok(())
        })
        .unwrap();
        let joined: String = blocks.iter().map(|b| b.text.as_str()).collect();
        assert_eq!(joined, text);
        let pieces: Vec<&str> = blocks
            .iter()
            .filter(|b| b.open)
            .map(|b| b.text.as_str())
            .collect();
        assert_eq!(pieces, ["ab", " cd  ef", " gh\tij kl mn", "last", " one"]);
        for pair in blocks.windows(2).filter(|p| p[0].open) {
            assert!(pair[1].text.starts_with(' ') && !pair[1].text.starts_with("  "));
        }
        let held: String = blocks
            .iter()
            .filter(|b| b.held_out)
            .map(|b| b.text.as_str())
            .collect();
        assert_eq!(held, "last one here");
    }

    /// Lines are counted as `str::lines` counts them (where the held-out split is cut), and
    /// line `n` starts after the n-th line end.
    #[test]
    fn lines_are_counted_and_found_as_str_lines_does() {
        assert_eq!(nth_line_start("x\ny\nz", 0), 0);
        assert_eq!(nth_line_start("x\ny\nz", 2), 4);
        assert_eq!(nth_line_start("x\n", 5), 2);
        for text in ["x\ny\nz", "x\n", "", "\n\n", "a\r\nb"] {
            assert_eq!(count_lines(text), text.lines().count(), "{text:?}");
        }
    }
}
