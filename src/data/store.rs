//! A split's token ids, encoded once and read through a memory map: [`Tokens`].
//!
//! A store file (`*.tokens`, little-endian) is a 64-byte header, the ids (u16 when the
//! vocabulary has at most 65,536 ids, else u32), zero padding to 8 bytes, then the sentence
//! offsets (u64, `sentences + 1` of them: sentence `k` is ids `offsets[k]..offsets[k + 1]`, its
//! end of sentence included):
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `LSTMTOK\0` |
//! | 8..12 | format version (3) |
//! | 12..16 | bytes per id (2 or 4) |
//! | 16..24 | ids |
//! | 24..32 | sentences |
//! | 32..40 | vocabulary size |
//! | 40..44 | CRC-32 of everything after the header |
//! | 44..52 | words of the raw text (whitespace-separated, plus one end of sentence a line that has any; 0: not counted) |
//! | 52..60 | characters of the raw text the ids encode (0: not counted) |
//! | 60..64 | CRC-32 of bytes 0..60 |
//!
//! Opening checks the header's checksum, the file's length against it, and the offsets' first
//! and last values; the checksum of the data is checked too when the data is at most
//! [`FULL_CHECK_BYTES`] (reading a larger one in full would cost the warm start its seconds).
//! Files are written to a temporary name and renamed into place, so a store that is there is
//! whole.

use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"LSTMTOK\0";
const VERSION: u32 = 3;
const HEADER: usize = 64;
/// Stores whose data is at most this many bytes get their data checksum checked on opening.
pub const FULL_CHECK_BYTES: u64 = 256 << 20;

/// Bytes per id for a vocabulary of `vocab_size` ids: 2 up to 65,536 ids, else 4.
pub fn id_width(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 {
        2
    } else {
        4
    }
}

/// The ids of a split, as stored.
#[derive(Debug, Clone, Copy)]
pub enum Ids<'a> {
    /// Two bytes an id.
    U16(&'a [u16]),
    /// Four bytes an id.
    U32(&'a [u32]),
}

impl Ids<'_> {
    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::U16(s) => s.len(),
            Ids::U32(s) => s.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Id `i`.
    pub fn get(&self, i: usize) -> usize {
        match self {
            Ids::U16(s) => s[i] as usize,
            Ids::U32(s) => s[i] as usize,
        }
    }

    /// Appends ids `range` to `out` as i64 (the batches' element type).
    pub fn extend_i64(&self, range: Range<usize>, out: &mut Vec<i64>) {
        match self {
            Ids::U16(s) => out.extend(s[range].iter().map(|&v| v as i64)),
            Ids::U32(s) => out.extend(s[range].iter().map(|&v| v as i64)),
        }
    }
}

/// The token ids of a split and where its sentences start: a memory-mapped store file, or ids
/// held in memory (texts scored once, benchmarks, tests).
pub struct Tokens {
    inner: Inner,
}

enum Inner {
    Mapped {
        map: Mmap,
        width: usize,
        ids: usize,
        sentences: usize,
        layout: Layout,
        chars: u64,
        words: u64,
    },
    Owned {
        ids: Vec<u32>,
        offsets: Vec<u64>,
    },
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokens({} ids, {} sentences)",
            self.len(),
            self.num_sentences()
        )
    }
}

impl Tokens {
    /// Sentences of ids (each with its end of sentence), held in memory.
    pub fn from_sentences(sentences: &[Vec<usize>]) -> Self {
        let mut offsets = Vec::with_capacity(sentences.len() + 1);
        offsets.push(0u64);
        let mut ids = Vec::new();
        for s in sentences {
            ids.extend(s.iter().map(|&id| id as u32));
            offsets.push(ids.len() as u64);
        }
        Self {
            inner: Inner::Owned { ids, offsets },
        }
    }

    /// Characters of the raw text these ids encode (see [`super::tokenizer::count_chars`]),
    /// when counted (stores only: ids held in memory come from no raw text).
    pub fn chars(&self) -> Option<u64> {
        match &self.inner {
            Inner::Mapped { chars, .. } if *chars > 0 => Some(*chars),
            _ => None,
        }
    }

    /// Opens the store file at `path`, checked as the module docs say; `vocab_size`, when
    /// given, must be the one it was written for. Errors say what is wrong with the file.
    pub fn open(path: &Path, vocab_size: Option<usize>) -> Result<Self> {
        let bad = |problem: String| Error::Corpus {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| Error::io("cannot open token store", path, e))?;
        // SAFETY: store files are written once under a temporary name and renamed into place;
        // nothing writes them afterwards (a user editing one by hand breaks this, as for any
        // memory-mapped file).
        let map = unsafe { Mmap::map(&file) }
            .map_err(|e| Error::io("cannot map token store", path, e))?;
        let header = map
            .get(..HEADER)
            .ok_or_else(|| bad(format!("{} bytes, shorter than a header", map.len())))?;
        if &header[..8] != MAGIC {
            return Err(bad("not a token store (wrong magic bytes)".into()));
        }
        if crc32fast::hash(&header[..60]) != u32_at(header, 60) {
            return Err(bad("the header's checksum does not match".into()));
        }
        let version = u32_at(header, 8);
        if version != VERSION {
            return Err(bad(format!(
                "format version {version}, this build reads {VERSION}"
            )));
        }
        let width = u32_at(header, 12) as usize;
        let (ids, sentences) = (u64_at(header, 16) as usize, u64_at(header, 24) as usize);
        let stored_vocab = u64_at(header, 32) as usize;
        if width != 2 && width != 4 {
            return Err(bad(format!("{width} bytes per id")));
        }
        if let Some(v) = vocab_size.filter(|&v| v != stored_vocab) {
            return Err(bad(format!(
                "written for a vocabulary of {stored_vocab} ids, not {v}"
            )));
        }
        let expected = layout(width, ids, sentences).end as u64;
        if map.len() as u64 != expected {
            return Err(bad(format!(
                "{} bytes where its header says {expected}",
                map.len()
            )));
        }
        let data = &map[HEADER..];
        if data.len() as u64 <= FULL_CHECK_BYTES && crc32fast::hash(data) != u32_at(header, 40) {
            return Err(bad("the data's checksum does not match".into()));
        }
        let (words, chars) = (u64_at(header, 44), u64_at(header, 52));
        let tokens = Self {
            inner: Inner::Mapped {
                map,
                width,
                ids,
                sentences,
                layout: layout(width, ids, sentences),
                chars,
                words,
            },
        };
        let offsets = tokens.offsets();
        if offsets[0] != 0 || offsets[sentences] != ids as u64 {
            return Err(bad("its sentence offsets do not span its ids".into()));
        }
        Ok(tokens)
    }

    /// Number of ids (ends of sentence included).
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Mapped { ids, .. } => *ids,
            Inner::Owned { ids, .. } => ids.len(),
        }
    }

    /// Whether there are no ids.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The share of the ids below `bounds[0]`, then in each range `bounds[i]..bounds[i + 1]`
    /// (the last one open-ended): how an adaptive softmax with these cutoffs splits the tokens
    /// between its head and its tail clusters. `bounds` increasing.
    pub fn shares_below_and_between(&self, bounds: &[usize]) -> Vec<f64> {
        let mut counts = vec![0usize; bounds.len() + 1];
        let ids = self.ids();
        for i in 0..ids.len() {
            counts[bounds.partition_point(|&b| b <= ids.get(i))] += 1;
        }
        let n = ids.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n).collect()
    }

    /// Number of sentences.
    pub fn num_sentences(&self) -> usize {
        self.offsets().len() - 1
    }

    /// The ids.
    pub fn ids(&self) -> Ids<'_> {
        match &self.inner {
            Inner::Mapped {
                map,
                width,
                ids,
                layout,
                ..
            } => {
                let bytes = &map[layout.ids.clone()];
                // SAFETY: the map is page-aligned and the ids start at byte 64, so they are
                // aligned for u16 and u32; `bytes` holds exactly `ids` of them (the length was
                // checked on opening); every bit pattern is a valid integer. Store files are
                // little-endian, as this target is (checked at compile time below).
                unsafe {
                    if *width == 2 {
                        Ids::U16(std::slice::from_raw_parts(bytes.as_ptr().cast(), *ids))
                    } else {
                        Ids::U32(std::slice::from_raw_parts(bytes.as_ptr().cast(), *ids))
                    }
                }
            }
            Inner::Owned { ids, .. } => Ids::U32(ids),
        }
    }

    /// Where each sentence starts, and the end: `[sentences + 1]`.
    pub fn offsets(&self) -> &[u64] {
        match &self.inner {
            Inner::Mapped {
                map,
                sentences,
                layout,
                ..
            } => {
                let bytes = &map[layout.offsets.clone()];
                // SAFETY: 8-byte aligned (page-aligned map, offsets padded to 8), length
                // checked on opening, little-endian.
                unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast(), sentences + 1) }
            }
            Inner::Owned { offsets, .. } => offsets,
        }
    }

    /// Tokens per word of the text (words as [`super::tokenizer::count_words`] counts them),
    /// when counted: a subword model's loss per token times this is its loss per word.
    pub fn tokens_per_word(&self) -> Option<f64> {
        match &self.inner {
            Inner::Mapped { words, .. } if *words > 0 => Some(self.len() as f64 / *words as f64),
            _ => None,
        }
    }

    /// Tokens per character of the text, when its characters were counted.
    pub fn tokens_per_char(&self) -> Option<f64> {
        self.chars().map(|c| self.len() as f64 / c as f64)
    }

    /// The ids of sentence `k`.
    pub fn sentence(&self, k: usize) -> Range<usize> {
        let o = self.offsets();
        o[k] as usize..o[k + 1] as usize
    }

    /// The ids of every sentence, each as a `Vec` (small texts and tests only).
    pub fn to_sentences(&self) -> Vec<Vec<usize>> {
        let ids = self.ids();
        (0..self.num_sentences())
            .map(|k| self.sentence(k).map(|i| ids.get(i)).collect())
            .collect()
    }
}

#[cfg(not(target_endian = "little"))]
compile_error!("token stores are read in place as little-endian integers");

/// Byte ranges of a store's parts.
#[derive(Debug, Clone)]
struct Layout {
    ids: Range<usize>,
    offsets: Range<usize>,
    end: usize,
}

fn layout(width: usize, ids: usize, sentences: usize) -> Layout {
    let ids_end = HEADER + ids * width;
    let offsets_start = ids_end.div_ceil(8) * 8;
    let end = offsets_start + (sentences + 1) * 8;
    Layout {
        ids: HEADER..ids_end,
        offsets: offsets_start..end,
        end,
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Writes a store file sentence by sentence: ids go straight to disk, the sentence offsets to
/// a second temporary file that [`finish`](StoreWriter::finish) appends (so memory does not
/// grow with the corpus). The file appears under its name only once it is whole.
pub struct StoreWriter {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    offsets_tmp: PathBuf,
    offsets: BufWriter<File>,
    crc: crc32fast::Hasher,
    width: usize,
    vocab_size: usize,
    ids: u64,
    /// Ids up to the end of the last sentence (fewer than `ids` while one is open).
    ended: u64,
    sentences: u64,
    chars: u64,
    words: u64,
}

impl StoreWriter {
    /// Starts the store `path` for ids below `vocab_size`.
    pub fn create(path: &Path, vocab_size: usize) -> Result<Self> {
        let create = |tmp: &Path| -> Result<BufWriter<File>> {
            let file = File::create(tmp).map_err(|e| Error::io("cannot create", tmp, e))?;
            Ok(BufWriter::with_capacity(1 << 20, file))
        };
        let tmp = path.with_extension("tokens.partial");
        let offsets_tmp = path.with_extension("offsets.partial");
        let mut out = create(&tmp)?;
        out.write_all(&[0u8; HEADER])
            .map_err(|e| Error::io("cannot write", &tmp, e))?;
        let mut offsets = create(&offsets_tmp)?;
        offsets
            .write_all(&0u64.to_le_bytes())
            .map_err(|e| Error::io("cannot write", &offsets_tmp, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out,
            offsets_tmp,
            offsets,
            crc: crc32fast::Hasher::new(),
            width: id_width(vocab_size),
            vocab_size,
            ids: 0,
            ended: 0,
            sentences: 0,
            chars: 0,
            words: 0,
        })
    }

    /// Appends one sentence's ids (its end of sentence included).
    pub fn push_sentence(&mut self, ids: &[u32]) -> Result<()> {
        self.push_sentences(ids, &[ids.len() as u32])
    }

    /// Appends `ids` and ends a sentence after each run of `lens` ids, the first run counted
    /// from the start of `ids`: ids after the last run begin a sentence (a line read in pieces)
    /// that the next call's first run ends.
    pub fn push_sentences(&mut self, ids: &[u32], lens: &[u32]) -> Result<()> {
        debug_assert!(lens.iter().map(|&l| l as usize).sum::<usize>() <= ids.len());
        debug_assert!(ids.iter().all(|&id| (id as usize) < self.vocab_size));
        let bytes: Vec<u8> = if self.width == 2 {
            ids.iter()
                .flat_map(|&id| (id as u16).to_le_bytes())
                .collect()
        } else {
            ids.iter().flat_map(|&id| id.to_le_bytes()).collect()
        };
        self.write(&bytes)?;
        let mut offsets = Vec::with_capacity(lens.len() * 8);
        let mut end = self.ids;
        for &len in lens {
            end += len as u64;
            offsets.extend_from_slice(&end.to_le_bytes());
        }
        self.ids += ids.len() as u64;
        if !lens.is_empty() {
            self.ended = end;
        }
        self.sentences += lens.len() as u64;
        self.offsets
            .write_all(&offsets)
            .map_err(|e| Error::io("cannot write", &self.offsets_tmp, e))
    }

    /// Counts `n` more characters of the raw text.
    pub fn add_chars(&mut self, n: u64) {
        self.chars += n;
    }

    /// Counts `n` more words of the raw text.
    pub fn add_words(&mut self, n: u64) {
        self.words += n;
    }

    /// Sentences written so far.
    pub fn sentences(&self) -> usize {
        self.sentences as usize
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.crc.update(bytes);
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("cannot write", &self.tmp, e))
    }

    /// Writes the offsets and the header, syncs the file and renames it into place.
    pub fn finish(mut self) -> Result<()> {
        debug_assert_eq!(self.ended, self.ids, "a sentence was left open");
        let pad = (self.ids as usize * self.width).div_ceil(8) * 8 - self.ids as usize * self.width;
        self.write(&vec![0u8; pad])?;
        self.append_offsets()?;
        let mut header = [0u8; HEADER];
        header[..8].copy_from_slice(MAGIC);
        header[8..12].copy_from_slice(&VERSION.to_le_bytes());
        header[12..16].copy_from_slice(&(self.width as u32).to_le_bytes());
        header[16..24].copy_from_slice(&self.ids.to_le_bytes());
        header[24..32].copy_from_slice(&(self.sentences() as u64).to_le_bytes());
        header[32..40].copy_from_slice(&(self.vocab_size as u64).to_le_bytes());
        header[40..44].copy_from_slice(&self.crc.clone().finalize().to_le_bytes());
        header[44..52].copy_from_slice(&self.words.to_le_bytes());
        header[52..60].copy_from_slice(&self.chars.to_le_bytes());
        let check = crc32fast::hash(&header[..60]);
        header[60..64].copy_from_slice(&check.to_le_bytes());
        let io = |e| Error::io("cannot write", &self.tmp, e);
        let mut file = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        file.write_all(&header).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| Error::io("cannot rename into place", &self.path, e))
    }

    /// Copies the offsets' temporary file to the end of the store and removes it.
    fn append_offsets(&mut self) -> Result<()> {
        let path = self.offsets_tmp.clone();
        let io = |e| Error::io("cannot read", &path, e);
        self.offsets.flush().map_err(io)?;
        let mut src = File::open(&self.offsets_tmp).map_err(io)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            self.write(&buf[..n])?;
        }
        std::fs::remove_file(&self.offsets_tmp).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_split_the_ids_at_the_bounds() {
        let tokens = Tokens::from_sentences(&[vec![0, 1, 2, 3], vec![4, 5, 9, 10, 11]]);
        let shares = tokens.shares_below_and_between(&[3, 10]);
        assert_eq!(shares, vec![3.0 / 9.0, 4.0 / 9.0, 2.0 / 9.0]);
    }

    fn write(path: &Path, vocab: usize, sentences: &[Vec<u32>]) {
        let mut w = StoreWriter::create(path, vocab).unwrap();
        for s in sentences {
            w.push_sentence(s).unwrap();
        }
        w.add_chars(40);
        w.finish().unwrap();
    }

    /// What is written is read back, id for id and sentence for sentence, at both widths; the
    /// width is u16 up to 65,536 ids and u32 above, as the file's size shows.
    #[test]
    fn round_trip_in_u16_and_u32() {
        let tmp = tempfile::tempdir().unwrap();
        for (vocab, big) in [
            (65_536usize, 65_535u32),
            (65_537, 65_536),
            (300_000, 299_999),
        ] {
            let sentences = vec![vec![3, big, 1], vec![1], vec![7, 8, 9, 10, 1]];
            let path = tmp.path().join(format!("v{vocab}.tokens"));
            write(&path, vocab, &sentences);
            let tokens = Tokens::open(&path, Some(vocab)).unwrap();
            let width = id_width(vocab);
            assert_eq!(width, if vocab <= 65_536 { 2 } else { 4 });
            assert_eq!(
                std::fs::metadata(&path).unwrap().len() as usize,
                layout(width, 9, 3).end
            );
            assert_eq!(tokens.len(), 9);
            assert_eq!(tokens.num_sentences(), 3);
            assert_eq!(tokens.chars(), Some(40));
            let back: Vec<Vec<u32>> = tokens
                .to_sentences()
                .into_iter()
                .map(|s| s.into_iter().map(|i| i as u32).collect())
                .collect();
            assert_eq!(back, sentences);
            assert!(matches!(
                (tokens.ids(), width),
                (Ids::U16(_), 2) | (Ids::U32(_), 4)
            ));
        }
    }

    /// A half-written store (no rename yet) is not there under its name; a truncated, a
    /// flipped or a foreign file is refused with what is wrong, and so is a store opened for
    /// another vocabulary.
    #[test]
    fn damaged_and_unfinished_stores_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("train.tokens");
        let mut w = StoreWriter::create(&path, 10).unwrap();
        w.push_sentence(&[3, 4, 1]).unwrap();
        drop(w);
        assert!(
            !path.exists(),
            "an unfinished store is under its final name"
        );
        write(&path, 10, &[vec![3, 4, 1], vec![5, 1]]);
        let good = std::fs::read(&path).unwrap();
        let refused = |bytes: &[u8], vocab: Option<usize>| {
            std::fs::write(&path, bytes).unwrap();
            Tokens::open(&path, vocab).unwrap_err().to_string()
        };
        let e = refused(&good[..good.len() - 3], None);
        assert!(e.contains("where its header says"), "{e}");
        let mut flipped = good.clone();
        flipped[20] ^= 1;
        assert!(refused(&flipped, None).contains("header's checksum"));
        let mut flipped = good.clone();
        flipped[HEADER + 1] ^= 1;
        assert!(refused(&flipped, None).contains("data's checksum"));
        assert!(refused(b"hello world", None).contains("shorter than a header"));
        let e = refused(&good, Some(11));
        assert!(e.contains("vocabulary of 10 ids, not 11"), "{e}");
        std::fs::write(&path, &good).unwrap();
        assert_eq!(Tokens::open(&path, Some(10)).unwrap().len(), 5);
    }
}
