//! Preparing a corpus once for many runs: the vocabulary and every split's ids, in a cache of
//! [token stores](super::store).
//!
//! [`prepare`] streams the text (blocks of 16 MiB, never a whole file in memory): one pass
//! counts the training words and fixes the vocabulary, a second encodes every split into a
//! store file. Blocks are counted and encoded on all cores, and written in order, so the
//! result is the same on any number of cores. Everything lands in a folder of the cache named
//! after a key of what it was made from: each file's path, size and modification time, the
//! vocabulary cap, how validation lines are held out, the tokenizer and the store format. A
//! changed file or setting gives another key, so a stale preparation is never read. The folder
//! is written under a temporary name and renamed into place when whole; one left by a killed
//! run is removed by the next. A prepared folder that does not open cleanly (a damaged store)
//! is prepared again, with a one-line message.
//!
//! Preparing reproduces what reading the text whole did, id for id: blank lines skipped,
//! tokens split at Unicode whitespace, `<eos>` after every sentence, words ranked by count
//! then first appearance, the same held-out lines.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::corpus::{CorpusSource, EMBEDDED_TINY_SHAKESPEARE};
use super::store::{StoreWriter, Tokens};
use super::tokenizer::{count_chars, count_words, Codec, Tokenizer, BPE_FILE, DEFAULT_BPE_VOCAB};
use super::vocab::{Vocab, EOS, EOS_ID, PAD, UNK};
use crate::error::{Error, Result};

/// Bytes of text a block holds (more when a line is longer).
const BLOCK_BYTES: usize = 16 << 20;
/// Version of the prepared folder's layout; part of the cache key.
const FORMAT: u32 = 3;
/// The prepared folder's description of itself.
const MANIFEST: &str = "prepared.json";

/// Where and how to prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The cache folder (see [`default_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Vocabulary cap, specials included (0: none).
    pub max_vocab: usize,
    /// How lines become tokens.
    pub tokenizer: Tokenizer,
    /// A vocabulary and tokenizer to encode with instead of ones learned from the training
    /// text (a run started from another's model); `max_vocab` and `tokenizer` are then unused.
    pub fixed: Option<(Vocab, Codec)>,
}

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

/// A prepared corpus: its vocabulary and the ids of each split.
#[derive(Debug)]
pub struct Prepared {
    /// The vocabulary of the training split.
    pub vocab: Vocab,
    /// The tokenizer, for BPE with its model (also in the folder, [`BPE_FILE`]).
    pub codec: Codec,
    /// Training ids.
    pub train: Arc<Tokens>,
    /// Validation ids.
    pub valid: Arc<Tokens>,
    /// Test ids, when a test split is given.
    pub test: Option<Arc<Tokens>>,
    /// Which lines were held out for validation, when several training files were split.
    pub held_out: Option<String>,
    /// The prepared folder.
    pub dir: PathBuf,
    /// Whether it was there already (nothing was read but the stores).
    pub reused: bool,
}

/// The cache folder when none is given: `$LSTM_LM_CACHE_DIR`, else `lstm-lm/tokens` in the
/// user's cache folder (`~/.cache` on Linux), else `.lstm-lm-cache` here.
pub fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LSTM_LM_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    dirs::cache_dir()
        .map(|d| d.join("lstm-lm").join("tokens"))
        .unwrap_or_else(|| PathBuf::from(".lstm-lm-cache"))
}

/// Prepares `source` in the cache (or finds it there) and opens it.
pub fn prepare(
    source: &CorpusSource,
    options: &PrepareOptions,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<Prepared> {
    let plan = Plan::of(source)?;
    let key = plan.key(options)?;
    let (mut prepared, reused) = in_cache(
        &options.cache_dir,
        &key,
        report,
        &mut |dir, report| write_prepared(dir, &plan, &key.material, options, report),
        &|dir| open(dir, &key.material, &plan),
    )?;
    prepared.reused = reused;
    Ok(prepared)
}

/// A text encoded with a run's vocabulary ([`encode_text`]).
#[derive(Debug)]
pub struct EncodedText {
    /// Its ids.
    pub tokens: Arc<Tokens>,
    /// Its words that are not in the vocabulary (encoded as `<unk>`).
    pub unknown: usize,
}

/// Encodes the text files `paths` (read in turn) with `tokenizer` and `vocab` into the cache,
/// or finds them there, keyed by the files, the tokenizer and the vocabulary; every file must
/// hold tokens.
pub fn encode_text(
    paths: &[PathBuf],
    codec: &Codec,
    vocab: &Vocab,
    cache_dir: &Path,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<EncodedText> {
    let inputs: Vec<Input> = paths.iter().cloned().map(Input::File).collect();
    let mut material = vocab_material(vocab, codec);
    material["format"] = FORMAT.into();
    material["text"] = inputs
        .iter()
        .map(Input::fingerprint)
        .collect::<Result<Vec<_>>>()?
        .into();
    let key = Key::new(material, &inputs[0]);
    let build = &mut |dir: &Path, report: &mut dyn FnMut(PrepareEvent)| {
        report(PrepareEvent::Started {
            stage: "encoding",
            bytes: total_bytes(&inputs)?,
        });
        let mut store = StoreWriter::create(&dir.join("text.tokens"), vocab.len())?;
        let mut tally = Tally::default();
        let counts = encode_inputs(
            vocab, codec, &inputs, None, &mut store, None, &mut tally, report,
        )?;
        check_each_has_tokens(&inputs, &counts)?;
        report(PrepareEvent::Finished);
        store.finish()?;
        let manifest = serde_json::json!({ "key": key.material, "unknown": tally.unknown });
        write_manifest(dir, &manifest)
    };
    let (text, _) = in_cache(cache_dir, &key, report, build, &|dir| {
        let stored = read_manifest(dir, &key.material)?;
        Ok(EncodedText {
            tokens: Arc::new(Tokens::open(&dir.join("text.tokens"), Some(vocab.len()))?),
            unknown: stored.get("unknown").and_then(|u| u.as_u64()).unwrap_or(0) as usize,
        })
    })?;
    Ok(text)
}

/// What identifies a vocabulary and tokenizer in a cache key: the tokenizer, checksums of the
/// tokens and of the BPE model, the size.
fn vocab_material(vocab: &Vocab, codec: &Codec) -> serde_json::Value {
    let words: Vec<&str> = (0..vocab.len()).filter_map(|i| vocab.token(i)).collect();
    serde_json::json!({
        "tokenizer": codec.kind().name(),
        "bpe_crc32": match codec {
            Codec::Bpe(model) => Some(crc32fast::hash(
                model.to_string(false).unwrap_or_default().as_bytes(),
            )),
            _ => None,
        },
        "vocab_crc32": crc32fast::hash(words.join("\n").as_bytes()),
        "vocab_size": vocab.len(),
    })
}

/// Writes a cache folder's files into the given folder, reporting as it goes.
type BuildFn<'a> = dyn FnMut(&Path, &mut dyn FnMut(PrepareEvent)) -> Result<()> + 'a;

/// Running totals of the encoding passes: bytes read and words not in the vocabulary.
#[derive(Debug, Default)]
struct Tally {
    bytes: u64,
    unknown: usize,
}

/// Opens the cache's folder for `key`, or builds it first: `build` writes into a temporary
/// folder that is renamed into place when whole. A folder that does not open is built again,
/// with a note. Returns what `open` made of it and whether it was there before.
fn in_cache<T>(
    cache: &Path,
    key: &Key,
    report: &mut dyn FnMut(PrepareEvent),
    build: &mut BuildFn,
    open: &dyn Fn(&Path) -> Result<T>,
) -> Result<(T, bool)> {
    std::fs::create_dir_all(cache).map_err(|e| Error::io("cannot create", cache, e))?;
    remove_abandoned(cache);
    let dir = cache.join(&key.name);
    if dir.exists() {
        match open(&dir) {
            Ok(found) => return Ok((found, true)),
            Err(e) => {
                report(PrepareEvent::Note(format!(
                    "token cache {}: {e}; preparing it again",
                    dir.display()
                )));
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io("cannot remove", &dir, e))?;
            }
        }
    }
    let tmp = cache.join(format!(
        "{}.partial-{}-{}",
        key.name,
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::io("cannot create", &tmp, e))?;
    if let Err(e) = build(&tmp, report) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another process prepared the same text meanwhile: use its folder.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok((open(&dir)?, false))
}

/// The tokenizer a prepared folder was made with, from its manifest's key.
fn plan_tokenizer(stored: &serde_json::Value) -> Tokenizer {
    match stored["key"]["tokenizer"].as_str() {
        Some("char") => Tokenizer::Char,
        Some("bpe") => Tokenizer::Bpe,
        _ => Tokenizer::Word,
    }
}

/// Learns a byte-level BPE of `max_vocab` pieces (specials included; [`DEFAULT_BPE_VOCAB`]
/// when 0) on the training lines (held-out ones left out), streamed from the files, and writes
/// it into `dir` as [`BPE_FILE`]. Its ids are the vocabulary's: the specials are its tokens
/// 0, 1, 2.
fn train_bpe(
    dir: &Path,
    plan: &Plan,
    cut: Option<usize>,
    max_vocab: usize,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<(Vocab, Codec)> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::normalizers::NormalizerWrapper;
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::processors::PostProcessorWrapper;
    use tokenizers::{AddedToken, DecoderWrapper, PreTokenizerWrapper, TokenizerBuilder};

    let size = if max_vocab == 0 {
        DEFAULT_BPE_VOCAB
    } else {
        max_vocab
    };
    let path = dir.join(BPE_FILE);
    let failed = |e: tokenizers::Error| Error::Corpus {
        path: plan.train[0].path().to_path_buf(),
        problem: format!("learning the BPE failed: {e}"),
    };
    report(PrepareEvent::Started {
        stage: "learning BPE",
        bytes: total_bytes(&plan.train)?,
    });
    let mut model = TokenizerBuilder::<
        BPE,
        NormalizerWrapper,
        PreTokenizerWrapper,
        PostProcessorWrapper,
        DecoderWrapper,
    >::new()
    .with_model(BPE::default())
    .with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false).into()))
    .with_decoder(Some(ByteLevel::default().into()))
    .build()
    .map_err(failed)?;
    let specials = [PAD, EOS, UNK]
        .map(|s| AddedToken::from(s.to_string(), true))
        .to_vec();
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(size)
        .min_frequency(2)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .show_progress(false)
        .build();
    let error = Arc::new(std::sync::Mutex::new(None));
    let lines = TrainLines::new(plan.train.clone(), cut, error.clone());
    model.train(&mut trainer, lines).map_err(failed)?;
    if let Some(e) = error.lock().expect("line reader lock").take() {
        return Err(e);
    }
    let model: tokenizers::Tokenizer = model.into();
    let got = model.get_vocab_size(true);
    if got < size {
        return Err(Error::Corpus {
            path: plan.train[0].path().to_path_buf(),
            problem: format!(
                "the training text allows only {got} BPE pieces (256 bytes, 3 specials and every \
                 merge of a pair seen twice), fewer than the {size} asked for; pass --max-vocab \
                 {got} or less, or more text"
            ),
        });
    }
    let tokens: Vec<String> = (0..got as u32)
        .map(|i| model.id_to_token(i).unwrap_or_default())
        .collect();
    let vocab = Vocab::from_ordered(tokens).map_err(|problem| Error::Corpus {
        path: path.clone(),
        problem: format!("the learned BPE is not a vocabulary: {problem}"),
    })?;
    let codec = Codec::Bpe(Arc::new(model));
    save_codec(&codec, dir)?;
    report(PrepareEvent::Finished);
    Ok((vocab, codec))
}

/// Writes a BPE model into the prepared folder `dir` (words and characters need no file).
fn save_codec(codec: &Codec, dir: &Path) -> Result<()> {
    if let Codec::Bpe(model) = codec {
        let path = dir.join(BPE_FILE);
        model.save(&path, true).map_err(|e| Error::Corpus {
            path: path.clone(),
            problem: format!("cannot write the BPE: {e}"),
        })?;
    }
    Ok(())
}

/// The training lines of some inputs, streamed (line ends removed), up to global line `cut`;
/// a read error ends the lines and is left in `error`.
struct TrainLines {
    inputs: std::vec::IntoIter<Input>,
    current: Option<Box<dyn std::io::BufRead + Send>>,
    path: PathBuf,
    /// Lines read, over all inputs, and in the current one.
    line: usize,
    file_line: usize,
    cut: Option<usize>,
    error: Arc<std::sync::Mutex<Option<Error>>>,
}

impl TrainLines {
    fn new(
        inputs: Vec<Input>,
        cut: Option<usize>,
        error: Arc<std::sync::Mutex<Option<Error>>>,
    ) -> Self {
        Self {
            inputs: inputs.into_iter(),
            current: None,
            path: PathBuf::new(),
            line: 0,
            file_line: 0,
            cut,
            error,
        }
    }

    fn fail(&mut self, e: Error) -> Option<String> {
        *self.error.lock().expect("line reader lock") = Some(e);
        self.current = None;
        self.inputs = Vec::new().into_iter();
        None
    }
}

impl Iterator for TrainLines {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        if self.cut.is_some_and(|c| self.line >= c) {
            return None;
        }
        loop {
            if self.current.is_none() {
                let input = self.inputs.next()?;
                self.path = input.path().to_path_buf();
                self.file_line = 0;
                match input.open() {
                    Ok(r) => {
                        self.current = Some(Box::new(std::io::BufReader::with_capacity(1 << 20, r)))
                    }
                    Err(e) => return self.fail(e),
                }
            }
            let mut bytes = Vec::new();
            let reader = self.current.as_mut().expect("an open input");
            match reader.read_until(b'\n', &mut bytes) {
                Ok(0) => {
                    self.current = None;
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    let path = self.path.clone();
                    return self.fail(Error::io("cannot read corpus file", &path, e));
                }
            }
            self.line += 1;
            self.file_line += 1;
            if bytes.ends_with(b"\n") {
                bytes.pop();
                if bytes.ends_with(b"\r") {
                    bytes.pop();
                }
            }
            return match String::from_utf8(bytes) {
                Ok(line) => Some(line),
                Err(_) => {
                    let problem = format!(
                        "line {}: not valid UTF-8; convert the file to UTF-8",
                        self.file_line
                    );
                    let path = self.path.clone();
                    self.fail(Error::Corpus { path, problem })
                }
            };
        }
    }
}

/// Removes the temporary folders of preparations whose process is gone.
fn remove_abandoned(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((_, rest)) = name.split_once(".partial-") else {
            continue;
        };
        let pid: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if pid.is_some_and(|pid| !process_alive(pid)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether process `pid` runs (where `/proc` says; elsewhere it is assumed to).
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return true;
    }
    let proc = Path::new("/proc");
    !proc.is_dir() || proc.join(pid.to_string()).exists()
}

/// The manifest of the folder `dir`, checked to be made from `material`.
fn read_manifest(dir: &Path, material: &serde_json::Value) -> Result<serde_json::Value> {
    let manifest = dir.join(MANIFEST);
    let text =
        std::fs::read_to_string(&manifest).map_err(|e| Error::io("cannot read", &manifest, e))?;
    let stored: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Corpus {
        path: manifest.clone(),
        problem: format!("not a prepared corpus ({e})"),
    })?;
    if stored.get("key") != Some(material) {
        return Err(Error::Corpus {
            path: manifest,
            problem: "made from other files or settings".into(),
        });
    }
    Ok(stored)
}

/// Writes the folder's manifest (last: a folder with one is whole).
fn write_manifest(dir: &Path, manifest: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(manifest).expect("a JSON value");
    crate::fsutil::write_atomic(&dir.join(MANIFEST), text.as_bytes())
}

/// Opens the prepared folder `dir`, checking that it was made from `material`.
fn open(dir: &Path, material: &serde_json::Value, plan: &Plan) -> Result<Prepared> {
    let stored = read_manifest(dir, material)?;
    let vocab = Vocab::load(&dir.join("vocab.txt"))?;
    let codec = Codec::load(plan_tokenizer(&stored), dir)?;
    let split = |name: &str| -> Result<Arc<Tokens>> {
        Ok(Arc::new(Tokens::open(
            &dir.join(format!("{name}.tokens")),
            Some(vocab.len()),
        )?))
    };
    let held_out = stored
        .get("held_out")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    Ok(Prepared {
        train: split("train")?,
        valid: split("valid")?,
        test: if plan.test.is_empty() {
            None
        } else {
            Some(split("test")?)
        },
        held_out,
        vocab,
        codec,
        dir: dir.to_path_buf(),
        reused: false,
    })
}

/// One text the corpus is read from.
#[derive(Debug, Clone)]
enum Input {
    Embedded,
    File(PathBuf),
}

impl Input {
    fn path(&self) -> &Path {
        match self {
            Input::Embedded => Path::new("<embedded>"),
            Input::File(p) => p,
        }
    }

    /// Its text, from the start.
    fn open(&self) -> Result<Box<dyn Read + Send>> {
        match self {
            Input::Embedded => Ok(Box::new(EMBEDDED_TINY_SHAKESPEARE.as_bytes())),
            Input::File(p) => Ok(Box::new(
                File::open(p).map_err(|e| Error::io("cannot read corpus file", p, e))?,
            )),
        }
    }

    fn bytes(&self) -> Result<u64> {
        match self {
            Input::Embedded => Ok(EMBEDDED_TINY_SHAKESPEARE.len() as u64),
            Input::File(p) => std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| Error::io("cannot read corpus file", p, e)),
        }
    }

    /// What the cache key holds of it: the embedded text's checksum, a file's path, size and
    /// modification time.
    fn fingerprint(&self) -> Result<serde_json::Value> {
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

/// How a held-out validation split is cut from the training text.
#[derive(Debug, Clone, Copy)]
struct HeldOut {
    train_fraction: f64,
    /// Name the held-out lines in a note (several training files, or shards).
    note: bool,
}

/// The inputs of each split.
#[derive(Debug, Clone)]
struct Plan {
    train: Vec<Input>,
    /// Validation files; empty when held out.
    valid: Vec<Input>,
    held_out: Option<HeldOut>,
    test: Vec<Input>,
}

/// The cache key: what the preparation is made from, and its folder name.
struct Key {
    material: serde_json::Value,
    name: String,
}

impl Plan {
    fn of(source: &CorpusSource) -> Result<Self> {
        let files = |v: &[PathBuf]| v.iter().cloned().map(Input::File).collect::<Vec<_>>();
        let plan = match source {
            CorpusSource::Embedded { train_fraction } => Plan {
                train: vec![Input::Embedded],
                valid: Vec::new(),
                held_out: Some(HeldOut {
                    train_fraction: *train_fraction,
                    note: false,
                }),
                test: Vec::new(),
            },
            CorpusSource::Files {
                train,
                valid,
                test,
                train_fraction,
            } => Plan {
                train: vec![Input::File(train.clone())],
                valid: valid.iter().cloned().map(Input::File).collect(),
                held_out: valid.is_none().then_some(HeldOut {
                    train_fraction: *train_fraction,
                    note: false,
                }),
                test: test.iter().cloned().map(Input::File).collect(),
            },
            CorpusSource::Shards {
                train,
                valid,
                test,
                train_fraction,
            } => Plan {
                train: files(train),
                valid: files(valid),
                held_out: valid.is_empty().then_some(HeldOut {
                    train_fraction: *train_fraction,
                    note: true,
                }),
                test: files(test),
            },
        };
        if let Some(h) = plan.held_out {
            if !(h.train_fraction > 0.0 && h.train_fraction < 1.0) {
                return Err(Error::Config(format!(
                    "--train-fraction must be between 0 and 1, got {}",
                    h.train_fraction
                )));
            }
        }
        Ok(plan)
    }

    fn key(&self, options: &PrepareOptions) -> Result<Key> {
        let prints = |inputs: &[Input]| -> Result<Vec<serde_json::Value>> {
            inputs.iter().map(Input::fingerprint).collect()
        };
        let tokenizer = match &options.fixed {
            Some((_, codec)) => codec.kind(),
            None => options.tokenizer,
        };
        let mut material = serde_json::json!({
            "format": FORMAT,
            "tokenizer": tokenizer.name(),
            "max_vocab": options.max_vocab,
            "train": prints(&self.train)?,
            "valid": prints(&self.valid)?,
            "held_out": self.held_out.map(|h| serde_json::json!({
                "train_fraction": h.train_fraction,
                "note": h.note,
            })),
            "test": prints(&self.test)?,
        });
        if let Some((vocab, codec)) = &options.fixed {
            // Only then, so that the keys of earlier preparations stay what they were.
            material["fixed_vocab"] = vocab_material(vocab, codec);
        }
        Ok(Key::new(material, &self.train[0]))
    }
}

impl Key {
    /// The key of `material`; its folder is named after `first`'s file name and a digest.
    fn new(material: serde_json::Value, first: &Input) -> Self {
        let digest = Sha256::digest(material.to_string().as_bytes());
        let hex: String = digest[..10].iter().map(|b| format!("{b:02x}")).collect();
        let stem = match first {
            Input::Embedded => "tinyshakespeare".to_string(),
            Input::File(p) => p
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "corpus".into()),
        };
        let stem: String = stem
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '.' || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(40)
            .collect();
        Self {
            material,
            name: format!("{stem}-{hex}"),
        }
    }
}

/// A block of whole lines of one input.
struct Block {
    text: String,
    /// The input it comes from.
    input: usize,
    /// Whether its lines are held out for validation.
    held_out: bool,
}

/// Reads `inputs` block by block, in order, and hands `f` a batch of blocks at a time (two
/// per core, to work on in parallel). With `cut`, the block holding line `cut` (0-based,
/// counted over all inputs together) is split there, and the blocks from it on are marked
/// held out. Bytes that are not UTF-8 and NUL bytes are errors naming the file and the line.
fn for_each_batch(
    inputs: &[Input],
    cut: Option<usize>,
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
            pending.resize(start + BLOCK_BYTES, 0);
            let n = read_full(&mut reader, &mut pending[start..])
                .map_err(|e| Error::io("cannot read corpus file", path, e))?;
            pending.truncate(start + n);
            eof = n == 0;
            let end = if eof {
                pending.len()
            } else {
                match memchr::memrchr(b'\n', &pending) {
                    Some(i) => i + 1,
                    None => continue,
                }
            };
            if end == 0 {
                continue;
            }
            let rest = pending.split_off(end);
            let bytes = std::mem::replace(&mut pending, rest);
            let text = checked_text(bytes, path, offset, line)?;
            offset += end;
            let lines = count_lines(&text);
            let mut parts = vec![(text, lines_before)];
            if let Some(cut) = cut.filter(|&c| c > lines_before && c < lines_before + lines) {
                let (text, before) = parts.pop().expect("one part");
                let (head, tail) = text.split_at(nth_line_start(&text, cut - before));
                parts.push((head.to_owned(), before));
                parts.push((tail.to_owned(), cut));
            }
            for (text, before) in parts {
                batch.push(Block {
                    text,
                    input: index,
                    held_out: cut.is_some_and(|c| before >= c),
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
fn count_lines(text: &str) -> usize {
    let n = memchr::memchr_iter(b'\n', text.as_bytes()).count();
    n + usize::from(!text.is_empty() && !text.ends_with('\n'))
}

/// Byte where line `n` (0-based) of `text` starts.
fn nth_line_start(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    memchr::memchr_iter(b'\n', text.as_bytes())
        .nth(n - 1)
        .map_or(text.len(), |i| i + 1)
}

/// Word counts, by a fast hash (the keys are the user's own text).
type Counts<K> = HashMap<K, (u64, u64), foldhash::fast::FixedState>;

/// Token counts of a block: token -> (count, index of its first appearance in the block).
fn count_block(text: &str, tokenizer: Tokenizer) -> Counts<&str> {
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

/// Counts the training tokens (held-out lines left out) and ranks them into a vocabulary.
fn count_tokens(
    plan: &Plan,
    cut: Option<usize>,
    options: &PrepareOptions,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<Vocab> {
    let mut totals: Counts<String> = Counts::default();
    let (mut block_index, mut done) = (0u64, 0u64);
    report(PrepareEvent::Started {
        stage: "counting tokens",
        bytes: total_bytes(&plan.train)?,
    });
    for_each_batch(&plan.train, cut, &mut |blocks| {
        let counted: Vec<_> = blocks
            .par_iter()
            .map(|b| (!b.held_out).then(|| count_block(&b.text, options.tokenizer)))
            .collect();
        for (block, counted) in blocks.iter().zip(counted) {
            done += block.text.len() as u64;
            let Some(counts) = counted else {
                continue;
            };
            for (word, (count, first)) in counts {
                let first = (block_index << 32) | first;
                match totals.get_mut(word) {
                    Some(t) => t.0 += count,
                    None => {
                        totals.insert(word.to_owned(), (count, first));
                    }
                }
            }
            block_index += 1;
        }
        report(PrepareEvent::Advanced { bytes: done });
        Ok(())
    })?;
    report(PrepareEvent::Finished);
    let words = totals
        .into_iter()
        .map(|(w, (count, first))| (w, count, first))
        .collect();
    Ok(Vocab::from_counts(words, options.max_vocab))
}

fn total_bytes(inputs: &[Input]) -> Result<u64> {
    inputs.iter().map(Input::bytes).sum()
}

/// A block encoded: its sentences' ids one after the other (each ending in `<eos>`), each
/// sentence's length, the tokens not in the vocabulary and the block's characters.
struct Encoded {
    ids: Vec<u32>,
    lens: Vec<u32>,
    unknown: usize,
    chars: u64,
    words: u64,
}

fn encode_block(vocab: &Vocab, codec: &Codec, text: &str) -> Encoded {
    let (mut ids, mut lens, mut unknown) = (Vec::new(), Vec::new(), 0);
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

/// Encodes `inputs` into `main` (and the held-out blocks into `held`), adding the words not
/// in the vocabulary to `unknown`; returns each input's sentence count.
#[allow(clippy::too_many_arguments)]
fn encode_inputs(
    vocab: &Vocab,
    codec: &Codec,
    inputs: &[Input],
    cut: Option<usize>,
    main: &mut StoreWriter,
    mut held: Option<&mut StoreWriter>,
    tally: &mut Tally,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<Vec<usize>> {
    let mut sentences = vec![0usize; inputs.len()];
    for_each_batch(inputs, cut, &mut |blocks| {
        let encoded: Vec<_> = blocks
            .par_iter()
            .map(|b| encode_block(vocab, codec, &b.text))
            .collect();
        for (block, e) in blocks.iter().zip(encoded) {
            sentences[block.input] += e.lens.len();
            tally.unknown += e.unknown;
            let out = match held.as_deref_mut() {
                Some(h) if block.held_out => h,
                _ => &mut *main,
            };
            out.push_sentences(&e.ids, &e.lens)?;
            out.add_chars(e.chars);
            out.add_words(e.words);
            tally.bytes += block.text.len() as u64;
        }
        report(PrepareEvent::Advanced { bytes: tally.bytes });
        Ok(())
    })?;
    Ok(sentences)
}

/// Each input's lines, as `str::lines` counts them, without decoding the text.
fn lines_per_input(inputs: &[Input]) -> Result<Vec<usize>> {
    let mut counts = Vec::with_capacity(inputs.len());
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
            last = buf[n - 1];
        }
        counts.push(lines + usize::from(last != b'\n'));
    }
    Ok(counts)
}

/// The error for an input without tokens.
fn no_tokens(path: &Path) -> Error {
    Error::Corpus {
        path: path.to_path_buf(),
        problem: "no tokens (the file is empty or only blank lines); pass a text file with one \
                  sentence per line"
            .into(),
    }
}

/// Writes the vocabulary, the stores and the manifest of `plan` into the folder `dir`.
fn write_prepared(
    dir: &Path,
    plan: &Plan,
    material: &serde_json::Value,
    options: &PrepareOptions,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<()> {
    let started = std::time::Instant::now();
    // Held out: the lines of each training input, read once, place the cut.
    let train_lines = match plan.held_out {
        Some(_) => lines_per_input(&plan.train)?,
        None => Vec::new(),
    };
    let cut = plan
        .held_out
        .map(|h| (train_lines.iter().sum::<usize>() as f64 * h.train_fraction) as usize);
    let (vocab, codec) = match (&options.fixed, options.tokenizer) {
        (Some((vocab, codec)), _) => {
            save_codec(codec, dir)?;
            (vocab.clone(), codec.clone())
        }
        (None, Tokenizer::Bpe) => train_bpe(dir, plan, cut, options.max_vocab, report)?,
        (None, Tokenizer::Word) => (count_tokens(plan, cut, options, report)?, Codec::Word),
        (None, Tokenizer::Char) => (count_tokens(plan, cut, options, report)?, Codec::Char),
    };
    vocab.save(&dir.join("vocab.txt"))?;
    let store = |name: &str| StoreWriter::create(&dir.join(format!("{name}.tokens")), vocab.len());
    let all: Vec<&Input> = plan
        .train
        .iter()
        .chain(&plan.valid)
        .chain(&plan.test)
        .collect();
    report(PrepareEvent::Started {
        stage: "encoding",
        bytes: all.iter().map(|i| i.bytes()).sum::<Result<u64>>()?,
    });
    let mut tally = Tally::default();
    let (mut train, mut valid) = (store("train")?, store("valid")?);
    let train_counts = encode_inputs(
        &vocab,
        &codec,
        &plan.train,
        cut,
        &mut train,
        cut.is_some().then_some(&mut valid),
        &mut tally,
        report,
    )?;
    let held_out = match plan.held_out {
        Some(h) => check_held_out(plan, h, &train_counts, &train, &valid, &train_lines, cut)?,
        None => {
            check_each_has_tokens(&plan.train, &train_counts)?;
            let counts = encode_inputs(
                &vocab,
                &codec,
                &plan.valid,
                None,
                &mut valid,
                None,
                &mut tally,
                report,
            )?;
            check_each_has_tokens(&plan.valid, &counts)?;
            None
        }
    };
    if !plan.test.is_empty() {
        let mut test = store("test")?;
        let counts = encode_inputs(
            &vocab, &codec, &plan.test, None, &mut test, None, &mut tally, report,
        )?;
        check_each_has_tokens(&plan.test, &counts)?;
        test.finish()?;
    }
    report(PrepareEvent::Finished);
    let sentences = (train.sentences(), valid.sentences());
    train.finish()?;
    valid.finish()?;
    let manifest = serde_json::json!({
        "key": material,
        "vocab_size": vocab.len(),
        "train_sentences": sentences.0,
        "valid_sentences": sentences.1,
        "held_out": held_out,
        "seconds": started.elapsed().as_secs_f64(),
    });
    write_manifest(dir, &manifest)
}

fn check_each_has_tokens(inputs: &[Input], sentences: &[usize]) -> Result<()> {
    match inputs.iter().zip(sentences).find(|(_, &n)| n == 0) {
        Some((input, _)) => Err(no_tokens(input.path())),
        None => Ok(()),
    }
}

/// Checks a held-out split as reading the text whole did (both parts hold tokens) and says,
/// for shards, where the held-out lines start.
fn check_held_out(
    plan: &Plan,
    h: HeldOut,
    train_counts: &[usize],
    train: &StoreWriter,
    valid: &StoreWriter,
    lines_each: &[usize],
    cut: Option<usize>,
) -> Result<Option<String>> {
    let n = cut.unwrap_or(0);
    let total: usize = lines_each.iter().sum();
    let pct = (1.0 - h.train_fraction) * 100.0;
    let tf = h.train_fraction;
    if let [input] = plan.train.as_slice() {
        let path = input.path();
        if train.sentences() == 0 || valid.sentences() == 0 {
            return Err(if train_counts[0] + valid.sentences() == 0 {
                no_tokens(path)
            } else {
                Error::Corpus {
                    path: path.to_path_buf(),
                    problem: format!(
                        "{total} line(s) are too few to hold out {pct:.0}% of them for \
                         validation; pass --valid FILE (or more lines)"
                    ),
                }
            });
        }
        return Ok(h.note.then(|| {
            format!(
                "validation: the last {pct:.0}% of the lines of {} (--train-fraction {tf})",
                path.display()
            )
        }));
    }
    if train.sentences() == 0 || valid.sentences() == 0 {
        return Err(Error::Corpus {
            path: plan.train[plan.train.len() - 1].path().to_path_buf(),
            problem: format!(
                "the {total} lines of the {} training files are too few to hold out {pct:.0}% \
                 of them for validation, or hold no tokens; pass --valid FILE (or more lines)",
                plan.train.len()
            ),
        });
    }
    // Where line `n` falls: the file and its line.
    let mut before = 0;
    for (input, &lines) in plan.train.iter().zip(lines_each) {
        if n < before + lines {
            return Ok(Some(format!(
                "validation: the last {} of the {total} lines of the {} training files, from \
                 line {} of {} on (--train-fraction {tf})",
                total - n,
                plan.train.len(),
                n - before + 1,
                input.path().display()
            )));
        }
        before += lines;
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::read_corpus;
    use crate::data::vocab::UNK_ID;

    fn options(dir: &Path) -> PrepareOptions {
        PrepareOptions {
            cache_dir: dir.to_path_buf(),
            max_vocab: 0,
            tokenizer: Tokenizer::Word,
            fixed: None,
        }
    }

    /// `train` with its last lines held out.
    fn held_out(train: &Path, train_fraction: f64) -> CorpusSource {
        CorpusSource::Files {
            train: train.to_path_buf(),
            valid: None,
            test: None,
            train_fraction,
        }
    }

    fn prepare_quiet(source: &CorpusSource, o: &PrepareOptions) -> (Prepared, Vec<PrepareEvent>) {
        let mut events = Vec::new();
        let p = prepare(source, o, &mut |e| events.push(e)).unwrap();
        (p, events)
    }

    /// The prepared ids are those of reading the text whole and encoding it sentence by
    /// sentence, CRLF, blank lines, odd whitespace and a last line without its end included.
    #[test]
    fn prepared_ids_are_those_of_the_whole_text() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "b a c\r\n\n  a c \u{3000}d\nc d e\n\ne b a\nlast line";
        let train = tmp.path().join("t.txt");
        std::fs::write(&train, text).unwrap();
        let valid = tmp.path().join("v.txt");
        std::fs::write(&valid, "a zz b\n").unwrap();
        let source = CorpusSource::Files {
            train: train.clone(),
            valid: Some(valid.clone()),
            test: None,
            train_fraction: 0.9,
        };
        let (p, _) = prepare_quiet(&source, &options(&tmp.path().join("cache")));
        let words = read_corpus(&train).unwrap();
        let vocab = Vocab::build(words.iter().map(Vec::as_slice), 0);
        assert_eq!(p.vocab, vocab);
        let ids: Vec<Vec<usize>> = words.iter().map(|s| vocab.encode(s)).collect();
        assert_eq!(p.train.to_sentences(), ids);
        let v: Vec<Vec<usize>> = read_corpus(&valid)
            .unwrap()
            .iter()
            .map(|s| vocab.encode(s))
            .collect();
        assert_eq!(p.valid.to_sentences(), v);
        assert!(p.test.is_none());
    }

    /// A second preparation of the same text reuses the folder; a changed file, a changed
    /// vocabulary cap or a changed held-out share gives a new one, never the stale ids.
    #[test]
    fn a_changed_file_or_setting_is_never_read_stale() {
        let tmp = tempfile::tempdir().unwrap();
        let train = tmp.path().join("t.txt");
        std::fs::write(&train, "a b c\nd e f\ng h i\nj k l\n").unwrap();
        let source = held_out(&train, 0.5);
        let o = options(&tmp.path().join("cache"));
        let (first, _) = prepare_quiet(&source, &o);
        assert!(!first.reused);
        let (again, _) = prepare_quiet(&source, &o);
        assert!(again.reused);
        assert_eq!(again.dir, first.dir);
        // Same size, new content.
        std::fs::write(&train, "x y z\nd e f\ng h i\nj k l\n").unwrap();
        let (changed, _) = prepare_quiet(&source, &o);
        assert!(!changed.reused);
        assert_eq!(changed.vocab.token(3), Some("x"));
        let capped = PrepareOptions {
            max_vocab: 5,
            ..o.clone()
        };
        let (capped, _) = prepare_quiet(&source, &capped);
        assert_eq!(capped.vocab.len(), 5);
        let (other, _) = prepare_quiet(&held_out(&train, 0.75), &o);
        assert_eq!(
            (other.train.num_sentences(), other.valid.num_sentences()),
            (3, 1)
        );
        assert_eq!(changed.valid.num_sentences(), 2);
    }

    /// A damaged store is found on opening and prepared again with a one-line note; a folder
    /// left by a killed preparation (its process gone) is removed and never read.
    #[test]
    fn damaged_and_abandoned_preparations_are_redone() {
        let tmp = tempfile::tempdir().unwrap();
        let train = tmp.path().join("t.txt");
        std::fs::write(&train, "a b c\nd e f\ng h i\nj k l\n").unwrap();
        let source = held_out(&train, 0.5);
        let cache = tmp.path().join("cache");
        let o = options(&cache);
        let (good, _) = prepare_quiet(&source, &o);
        let expected = good.train.to_sentences();
        let store = good.dir.join("train.tokens");
        drop(good);
        let mut bytes = std::fs::read(&store).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&store, &bytes).unwrap();
        let (redone, events) = prepare_quiet(&source, &o);
        assert!(!redone.reused);
        assert_eq!(redone.train.to_sentences(), expected);
        let notes: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                PrepareEvent::Note(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("checksum") && notes[0].contains("preparing it again"));
        // A killed run's folder: pid 2^31 - 1 runs nowhere.
        let abandoned = cache.join("t-0000.partial-2147483647-1");
        std::fs::create_dir(&abandoned).unwrap();
        std::fs::write(abandoned.join("train.tokens.partial"), b"half").unwrap();
        let (_, _) = prepare_quiet(&source, &o);
        assert!(!abandoned.exists());
    }

    /// Held out from several files: the same lines as reading them whole, and the note says
    /// where they start; the cut may fall inside a block.
    #[test]
    fn held_out_lines_match_reading_the_files_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let a_text: String = (0..12).map(|i| format!("a{i} w\n")).collect();
        let b_text: String = (0..8).map(|i| format!("b{i} w\n")).collect();
        let a = tmp.path().join("a.txt");
        let b = tmp.path().join("b.txt");
        std::fs::write(&a, &a_text).unwrap();
        std::fs::write(&b, &b_text).unwrap();
        let source = CorpusSource::Shards {
            train: vec![a, b],
            valid: Vec::new(),
            test: Vec::new(),
            train_fraction: 0.75,
        };
        let (p, _) = prepare_quiet(&source, &options(&tmp.path().join("cache")));
        assert_eq!(p.train.num_sentences(), 15);
        assert_eq!(p.valid.num_sentences(), 5);
        // b3 is the first held-out word, so not in the training vocabulary; b2 is.
        let (train, valid) = (p.train.to_sentences(), p.valid.to_sentences());
        assert_eq!(valid[0], [UNK_ID, p.vocab.id("w"), EOS_ID]);
        assert_eq!(p.vocab.token(train[14][0]), Some("b2"));
        assert!(!p.vocab.contains("b3"));
        let note = p.held_out.unwrap();
        assert!(
            note.contains("the last 5 of the 20 lines of the 2 training files"),
            "{note}"
        );
        assert!(
            note.contains("line 4 of") && note.contains("b.txt"),
            "{note}"
        );
        assert_eq!(nth_line_start("x\ny\nz", 2), 4);
        assert_eq!(count_lines("x\ny\nz"), 3);
        assert_eq!(count_lines("x\n"), 1);
    }

    /// The embedded text: the first 90% of its 40,000 lines train (blank ones included in the
    /// count, skipped as sentences), the rest validate.
    #[test]
    fn the_embedded_text_splits_ninety_ten_by_lines() {
        let tmp = tempfile::tempdir().unwrap();
        let source = CorpusSource::Embedded {
            train_fraction: 0.9,
        };
        let (p, _) = prepare_quiet(&source, &options(tmp.path()));
        let lines: Vec<&str> = EMBEDDED_TINY_SHAKESPEARE.lines().collect();
        assert_eq!(lines.len(), 40_000);
        let non_blank = |l: &[&str]| l.iter().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(p.train.num_sentences(), non_blank(&lines[..36_000]));
        assert_eq!(p.valid.num_sentences(), non_blank(&lines[36_000..]));
        let first: Vec<_> = p.train.to_sentences()[0]
            .iter()
            .map(|&i| p.vocab.token(i).unwrap().to_string())
            .collect();
        assert_eq!(first, ["First", "Citizen:", "<eos>"]);
    }

    /// Errors while holding out name the line of the whole file (a NUL byte past the cut) or
    /// ask for --valid when a part has no tokens; a file of blank lines has no tokens.
    #[test]
    fn held_out_errors_name_the_line_or_the_remedy() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("t.txt");
        let attempt = |text: &[u8]| {
            std::fs::write(&file, text).unwrap();
            prepare(
                &held_out(&file, 0.5),
                &options(&tmp.path().join("c")),
                &mut |_| {},
            )
            .unwrap_err()
            .to_string()
        };
        let e = attempt(b"a\nb\nc\nd\x00\n");
        assert!(e.contains("line 4") && e.contains("NUL"), "{e}");
        let e = attempt(b"a\nb\n\n\n");
        assert!(e.contains("--valid"), "{e}");
        let e = attempt(b"\n \n\n");
        assert!(e.contains("no tokens"), "{e}");
        let e = attempt(b"ok\nbad \xff here\n");
        assert!(
            e.contains("line 2") && e.contains("UTF-8") && e.contains("byte 7"),
            "{e}"
        );
        assert!(
            std::fs::read_dir(tmp.path().join("c"))
                .unwrap()
                .next()
                .is_none(),
            "a failed preparation leaves nothing in the cache"
        );
    }

    /// Words, characters and BPE pieces of one text: the same character and word counts
    /// (checked against counts of the raw text), characters keep blank lines as sentences of
    /// `<eos>`, and the character vocabulary holds every character once.
    #[test]
    fn words_and_characters_of_one_text_count_the_same_characters() {
        let tmp = tempfile::tempdir().unwrap();
        let text = "Fïrst Citizen:\r\nBefore we proceed,\n\nhear me 😀 speak.\nlast";
        let train = tmp.path().join("t.txt");
        std::fs::write(&train, text).unwrap();
        // Independently: every scalar value but the \r of a CRLF, plus the missing final \n.
        let raw = text.chars().count() - text.matches("\r\n").count() + 1;
        let mut counted = Vec::new();
        // Words as a word model counts its tokens: the words, plus an end a non-blank line.
        let words = (2 + 1) + (3 + 1) + (4 + 1) + (1 + 1);
        for tokenizer in [Tokenizer::Word, Tokenizer::Char, Tokenizer::Bpe] {
            let o = PrepareOptions {
                tokenizer,
                // The 256 bytes and 3 specials: a text this short has no pair to merge twice.
                max_vocab: if tokenizer == Tokenizer::Bpe { 259 } else { 0 },
                ..options(&tmp.path().join("cache"))
            };
            let (p, _) = prepare_quiet(&held_out(&train, 0.6), &o);
            counted.push(p.train.chars().unwrap() + p.valid.chars().unwrap());
            let (tw, vw) = (p.train.tokens_per_word(), p.valid.tokens_per_word());
            let counted_words =
                p.train.len() as f64 / tw.unwrap() + p.valid.len() as f64 / vw.unwrap();
            assert!(
                (counted_words - words as f64).abs() < 1e-6,
                "{tokenizer:?}: {counted_words}"
            );
            if tokenizer == Tokenizer::Char {
                let eos = p.vocab.id("<eos>");
                assert_eq!(p.train.to_sentences()[2], [eos], "the blank line");
                assert_eq!(p.train.num_sentences() + p.valid.num_sentences(), 5);
                // Training lines 1-3 only: their characters, each once, and no emoji.
                assert!(p.vocab.contains("ï") && p.vocab.contains(" ") && p.vocab.contains(":"));
                assert!(!p.vocab.contains("😀"));
                let distinct: std::collections::HashSet<char> =
                    "Fïrst Citizen:Before we proceed,".chars().collect();
                assert_eq!(p.vocab.len(), 3 + distinct.len());
            } else if tokenizer == Tokenizer::Word {
                assert_eq!(p.train.num_sentences() + p.valid.num_sentences(), 4);
            }
        }
        assert_eq!(counted, [raw as u64; 3]);
    }

    /// BPE: its ids are the vocabulary's (the specials 0, 1, 2), encoding then decoding the
    /// held-out text gives it back exactly (non-ASCII, emoji, CRLF read as LF, blank lines),
    /// the model is in the prepared folder, and a vocabulary larger than the text allows is
    /// refused with the size it allows.
    #[test]
    fn bpe_round_trips_the_text_and_refuses_a_vocabulary_too_large() {
        let tmp = tempfile::tempdir().unwrap();
        let mut text = String::new();
        for i in 0..300 {
            text += &format!("Héllo wörld {i}, the cat sät on the mat 😀\r\n");
            if i % 7 == 0 {
                text += "\n";
            }
        }
        let train = tmp.path().join("t.txt");
        std::fs::write(&train, &text).unwrap();
        let o = PrepareOptions {
            tokenizer: Tokenizer::Bpe,
            max_vocab: 300,
            ..options(&tmp.path().join("cache"))
        };
        let (p, _) = prepare_quiet(&held_out(&train, 0.8), &o);
        assert_eq!(p.vocab.len(), 300);
        assert_eq!(
            (0..3)
                .map(|i| p.vocab.token(i).unwrap())
                .collect::<Vec<_>>(),
            [PAD, EOS, UNK]
        );
        assert!(matches!(p.codec, Codec::Bpe(_)));
        assert!(p.dir.join(BPE_FILE).is_file());
        let lines: Vec<&str> = text.lines().collect();
        let cut = (lines.len() as f64 * 0.8) as usize;
        let expected: String = lines[cut..].iter().map(|l| format!("{l}\n")).collect();
        let tokens: Vec<String> = p
            .valid
            .to_sentences()
            .into_iter()
            .flatten()
            .map(|i| p.vocab.token(i).unwrap().to_string())
            .collect();
        let decoded = p
            .codec
            .detokenize(&p.vocab, tokens.iter().map(String::as_str));
        assert_eq!(decoded, expected);
        assert!(
            p.valid.len() < expected.len() / 2,
            "BPE pieces span several bytes"
        );

        let too_many = PrepareOptions {
            max_vocab: 100_000,
            ..o.clone()
        };
        let e = prepare(&held_out(&train, 0.8), &too_many, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("allows only") && e.contains("--max-vocab"),
            "{e}"
        );
    }
}
