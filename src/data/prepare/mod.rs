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
//! Its parts: `plan` says what a preparation is made from (options, each split's inputs, the
//! cache key), `text` reads the inputs in blocks of whole lines and counts or encodes one block,
//! `bpe` learns a BPE, `write` makes a prepared folder (vocabulary, stores, manifest), `cache`
//! keeps the folders whole, `report` is what a caller hears; this file ties them together and
//! opens a prepared folder.
//!
//! Preparing reproduces what reading the text whole did, id for id: blank lines skipped,
//! tokens split at Unicode whitespace, `<eos>` after every sentence, words ranked by count
//! then first appearance, the same held-out lines.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::corpus::CorpusSource;
use super::store::{StoreWriter, Tokens};
use super::tokenizer::{Codec, Tokenizer};
use super::vocab::Vocab;
use crate::error::Result;
use cache::{in_cache, read_manifest, write_manifest};
pub use plan::PrepareOptions;
use plan::{vocab_material, Key, Plan, FORMAT};
pub use report::PrepareEvent;
use text::{total_bytes, Input};
use write::{write_prepared, Encoder};

mod bpe;
mod cache;
mod plan;
mod report;
mod text;
mod write;

/// A prepared corpus: its vocabulary and the ids of each split.
#[derive(Debug)]
pub struct Prepared {
    /// The vocabulary of the training split.
    pub vocab: Vocab,
    /// The tokenizer, for BPE with its model (also in the folder,
    /// [`BPE_FILE`](super::tokenizer::BPE_FILE)).
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
        &key.name,
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
        let mut encoder = Encoder::new(vocab, codec, report);
        encoder.encode_each(&inputs, &mut store)?;
        let unknown = encoder.unknown;
        report(PrepareEvent::Finished);
        store.finish()?;
        let manifest = serde_json::json!({ "key": key.material, "unknown": unknown });
        write_manifest(dir, &manifest)
    };
    let (text, _) = in_cache(cache_dir, &key.name, report, build, &|dir| {
        let stored = read_manifest(dir, &key.material)?;
        Ok(EncodedText {
            tokens: Arc::new(Tokens::open(&dir.join("text.tokens"), Some(vocab.len()))?),
            unknown: stored.get("unknown").and_then(|u| u.as_u64()).unwrap_or(0) as usize,
        })
    })?;
    Ok(text)
}

/// The tokenizer a prepared folder was made with, from its manifest's key.
fn plan_tokenizer(stored: &serde_json::Value) -> Tokenizer {
    match stored["key"]["tokenizer"].as_str() {
        Some("char") => Tokenizer::Char,
        Some("bpe") => Tokenizer::Bpe,
        _ => Tokenizer::Word,
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corpus::{read_corpus, LinePieces, EMBEDDED_TINY_SHAKESPEARE};
    use crate::data::tokenizer::{count_chars, count_words, TextStream, BPE_FILE};
    use crate::data::vocab::{EOS, EOS_ID, PAD, UNK, UNK_ID};

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
    /// ask for --valid when a part has no tokens; a file of blank lines has no tokens; a text
    /// on one line is refused before any pass over it, unless it is binary data.
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
        // One line (text8's way) is refused before any pass over the text; binary data is
        // still named as such.
        std::fs::write(&file, "one long line of words").unwrap();
        let mut events = Vec::new();
        let o = options(&tmp.path().join("c"));
        let e = prepare(&held_out(&file, 0.5), &o, &mut |ev| events.push(ev))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 line(s) are too few") && e.contains("--valid"),
            "{e}"
        );
        assert!(events.is_empty(), "{events:?}");
        let e = attempt(b"one line \x00 of binary");
        assert!(e.contains("NUL"), "{e}");
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

    /// A line longer than a read block (text8's one line of 100 MB, say) is read in pieces
    /// cut between words, and prepares to the ids, sentences, characters and words of the
    /// text read whole, for words and characters (a line of 17 MiB, read in 16 MiB blocks)
    /// and BPE (a line of 2.5 MiB, learned from in 1 MiB pieces, encoded in 16 KiB ones);
    /// `lstm-lm tokenize`, which reads the file's lines in pieces of about 1 MiB and writes
    /// them in 16 KiB ones, writes the tokens of the line cut whole.
    #[test]
    fn a_line_longer_than_a_block_prepares_as_if_read_whole() {
        let tmp = tempfile::tempdir().unwrap();
        for (tokenizer, mib) in [
            (Tokenizer::Word, 17),
            (Tokenizer::Char, 17),
            (Tokenizer::Bpe, 2),
        ] {
            let text = text_with_a_long_line((mib << 20) + (1 << 19));
            let train = tmp.path().join("t.txt");
            std::fs::write(&train, &text).unwrap();
            let valid = tmp.path().join("v.txt");
            std::fs::write(&valid, "the mat\n").unwrap();
            let source = CorpusSource::Files {
                train: train.clone(),
                valid: Some(valid),
                test: None,
                train_fraction: 0.9,
            };
            let o = PrepareOptions {
                tokenizer,
                max_vocab: if tokenizer == Tokenizer::Bpe { 280 } else { 0 },
                ..options(&tmp.path().join("cache"))
            };
            let (p, _) = prepare_quiet(&source, &o);
            // Each line encoded whole (BPE by its model directly, not in pieces).
            let mut expected = Vec::new();
            for line in text.lines() {
                let mut ids = Vec::new();
                let sentence = match &p.codec {
                    Codec::Bpe(model) => {
                        ids.extend(model.encode(line, false).unwrap().get_ids());
                        true
                    }
                    codec => codec.encode_line(&p.vocab, line, &mut ids).0,
                };
                if sentence {
                    ids.push(EOS_ID as u32);
                    expected.push(ids.into_iter().map(|i| i as usize).collect::<Vec<_>>());
                }
            }
            let got = p.train.to_sentences();
            assert_eq!(got.len(), expected.len(), "{tokenizer:?}: sentences");
            assert!(
                got == expected,
                "{tokenizer:?}: the ids differ from the whole text's"
            );
            // `lstm-lm tokenize` writes the long line's tokens, taken in pieces, as those of
            // the line cut whole, whitespace inside a token escaped.
            let long = text.lines().nth(1).unwrap();
            let whole: Vec<String> = match &p.codec {
                Codec::Bpe(model) => model
                    .encode(long, false)
                    .unwrap()
                    .get_ids()
                    .iter()
                    .map(|&i| p.vocab.token(i as usize).unwrap().to_string())
                    .collect(),
                _ => tokenizer
                    .tokens_of(long)
                    .into_iter()
                    .map(String::from)
                    .collect(),
            };
            let escape = |t: &String| t.replace(' ', "<U+0020>").replace('\t', "<U+0009>");
            let expected = whole.iter().map(escape).collect::<Vec<_>>().join(" ");
            let mut written = Vec::new();
            p.codec.write_spaced(&p.vocab, long, &mut written).unwrap();
            assert!(
                written == expected.as_bytes(),
                "{tokenizer:?}: tokenize differs from the line cut whole"
            );
            // As `tokenize` reads a file: its lines in pieces of about 1 MiB, each written
            // after the last; the same as every line written whole.
            let mut pieces = Vec::new();
            let read = LinePieces::open(&train, 1 << 20).unwrap();
            p.codec
                .write_spaced_lines(&p.vocab, read, &mut pieces)
                .unwrap();
            let mut whole = Vec::new();
            for line in text.lines() {
                p.codec.write_spaced(&p.vocab, line, &mut whole).unwrap();
                whole.push(b'\n');
            }
            assert!(
                pieces == whole,
                "{tokenizer:?}: a file read in pieces differs"
            );
            assert_eq!(p.train.chars(), Some(count_chars(&text)), "{tokenizer:?}");
            let words = p.train.len() as f64 / p.train.tokens_per_word().unwrap();
            assert!(
                (words - count_words(&text) as f64).abs() < 1e-3,
                "{tokenizer:?}"
            );
        }
    }

    /// Lines around one of about `bytes` bytes of words, punctuation, digits, non-ASCII
    /// letters, an emoji, tabs and runs of spaces.
    fn text_with_a_long_line(bytes: usize) -> String {
        let shapes = [
            "the", "cät", "sat,", "on", "42", "mat.", "  a", "'s", "\t(x)", "😀",
        ];
        let mut long = String::new();
        let mut state = 7u64;
        while long.len() < bytes {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            long += shapes[(state >> 33) as usize % shapes.len()];
            long.push(' ');
        }
        format!("first line\n{}\n\nshort one\nlast", long.trim_end())
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
        // Pushed one at a time (as `generate` writes), the pieces show whole characters only
        // and join to the same text; characters the model never saw come in single bytes.
        let mut tokens = tokens;
        tokens.extend(p.codec.tokens_of(&p.vocab, "€ ∑ 漢字"));
        let decoded = p
            .codec
            .detokenize(&p.vocab, tokens.iter().map(String::as_str));
        assert!(decoded.ends_with("€ ∑ 漢字"), "{decoded}");
        let mut stream = TextStream::new(&p.codec, &p.vocab);
        let pieces: Vec<String> = tokens.iter().map(|t| stream.push(t)).collect();
        assert!(pieces
            .iter()
            .all(|s| !s.contains(char::REPLACEMENT_CHARACTER)));
        assert!(
            pieces.iter().any(String::is_empty),
            "a piece ending inside a character is held"
        );
        assert_eq!(pieces.concat() + &stream.finish(), decoded);

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
