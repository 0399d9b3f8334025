//! Writing a prepared folder: the vocabulary (counted, or a BPE learned, from the training
//! split), every split encoded into a store, the manifest; and the checks that each input and
//! each held-out part holds tokens.

use std::path::Path;

use rayon::prelude::*;

use super::bpe;
use super::cache::write_manifest;
use super::plan::{HeldOut, Plan, PrepareOptions};
use super::report::PrepareEvent;
use super::text::{
    count_block, encode_block, for_each_batch, lines_per_input, total_bytes, Counts, Input,
};
use crate::data::store::StoreWriter;
use crate::data::tokenizer::{Codec, Tokenizer};
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};

/// Counts the training tokens (held-out lines left out) and ranks them into a vocabulary.
pub(super) fn count_tokens(
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

/// Encodes inputs with one vocabulary and tokenizer, in passes that keep running totals: the
/// bytes read (reported as progress) and the words not in the vocabulary.
pub(super) struct Encoder<'a> {
    vocab: &'a Vocab,
    codec: &'a Codec,
    report: &'a mut dyn FnMut(PrepareEvent),
    bytes: u64,
    /// Words not in the vocabulary so far (encoded as `<unk>`).
    pub(super) unknown: usize,
}

impl<'a> Encoder<'a> {
    pub(super) fn new(
        vocab: &'a Vocab,
        codec: &'a Codec,
        report: &'a mut dyn FnMut(PrepareEvent),
    ) -> Self {
        Self {
            vocab,
            codec,
            report,
            bytes: 0,
            unknown: 0,
        }
    }

    /// Encodes `inputs` into `main` (and the blocks after the cut, held out, into `held`);
    /// returns each input's sentence count.
    pub(super) fn encode(
        &mut self,
        inputs: &[Input],
        cut: Option<usize>,
        main: &mut StoreWriter,
        mut held: Option<&mut StoreWriter>,
    ) -> Result<Vec<usize>> {
        let mut sentences = vec![0usize; inputs.len()];
        for_each_batch(inputs, cut, &mut |blocks| {
            let encoded: Vec<_> = blocks
                .par_iter()
                .map(|b| encode_block(self.vocab, self.codec, &b.text, b.open))
                .collect();
            for (block, e) in blocks.iter().zip(encoded) {
                sentences[block.input] += e.lens.len();
                self.unknown += e.unknown;
                let out = match held.as_deref_mut() {
                    Some(h) if block.held_out => h,
                    _ => &mut *main,
                };
                out.push_sentences(&e.ids, &e.lens)?;
                out.add_chars(e.chars);
                out.add_words(e.words);
                self.bytes += block.text.len() as u64;
            }
            (self.report)(PrepareEvent::Advanced { bytes: self.bytes });
            Ok(())
        })?;
        Ok(sentences)
    }

    /// Encodes `inputs` into `store`; every input must hold tokens.
    pub(super) fn encode_each(&mut self, inputs: &[Input], store: &mut StoreWriter) -> Result<()> {
        let sentences = self.encode(inputs, None, store, None)?;
        check_each_has_tokens(inputs, &sentences)
    }
}

/// The error for an input without tokens.
pub(super) fn no_tokens(path: &Path) -> Error {
    Error::Corpus {
        path: path.to_path_buf(),
        problem: "no tokens (the file is empty or only blank lines); pass a text file with one \
                  sentence per line"
            .into(),
    }
}

/// The vocabulary and tokenizer the corpus is encoded with: those given (`options.fixed`, a run
/// continued from another; the BPE model is saved into `dir`), else learned from the training
/// inputs, up to the held-out line `cut`.
pub(super) fn vocab_and_codec(
    dir: &Path,
    plan: &Plan,
    cut: Option<usize>,
    options: &PrepareOptions,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<(Vocab, Codec)> {
    Ok(match (&options.fixed, options.tokenizer) {
        (Some((vocab, codec)), _) => {
            bpe::save_codec(codec, dir)?;
            (vocab.clone(), codec.clone())
        }
        (None, Tokenizer::Bpe) => {
            report(PrepareEvent::Started {
                stage: "learning BPE",
                bytes: total_bytes(&plan.train)?,
            });
            let learned = bpe::train(dir, &plan.train, cut, options.max_vocab)?;
            report(PrepareEvent::Finished);
            learned
        }
        (None, Tokenizer::Word) => (count_tokens(plan, cut, options, report)?, Codec::Word),
        (None, Tokenizer::Char) => (count_tokens(plan, cut, options, report)?, Codec::Char),
    })
}

/// Writes the vocabulary, the stores and the manifest of `plan` into the folder `dir`.
pub(super) fn write_prepared(
    dir: &Path,
    plan: &Plan,
    material: &serde_json::Value,
    options: &PrepareOptions,
    report: &mut dyn FnMut(PrepareEvent),
) -> Result<()> {
    let started = std::time::Instant::now();
    // Held out: the lines of each training input, read once, place the cut.
    let (train_lines, binary) = match plan.held_out {
        Some(_) => lines_per_input(&plan.train)?,
        None => (Vec::new(), false),
    };
    let total: usize = train_lines.iter().sum();
    let cut = plan
        .held_out
        .map(|h| (total as f64 * h.train_fraction) as usize);
    if let (Some(h), Some(c)) = (plan.held_out, cut) {
        // Too few lines to cut, before any pass over the text (a text on one line, say);
        // without lines, or with binary data, the passes name the problem.
        if total > 0 && !binary && (c == 0 || c >= total) {
            return Err(too_few_lines(plan, h, total));
        }
    }
    let (vocab, codec) = vocab_and_codec(dir, plan, cut, options, report)?;
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
    let (mut train, mut valid) = (store("train")?, store("valid")?);
    let mut encoder = Encoder::new(&vocab, &codec, report);
    let held = cut.is_some().then_some(&mut valid);
    let train_counts = encoder.encode(&plan.train, cut, &mut train, held)?;
    let held_out = match plan.held_out {
        Some(h) => check_held_out(plan, h, &train_counts, &train, &valid, &train_lines, cut)?,
        None => {
            check_each_has_tokens(&plan.train, &train_counts)?;
            encoder.encode_each(&plan.valid, &mut valid)?;
            None
        }
    };
    if !plan.test.is_empty() {
        let mut test = store("test")?;
        encoder.encode_each(&plan.test, &mut test)?;
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

pub(super) fn check_each_has_tokens(inputs: &[Input], sentences: &[usize]) -> Result<()> {
    match inputs.iter().zip(sentences).find(|(_, &n)| n == 0) {
        Some((input, _)) => Err(no_tokens(input.path())),
        None => Ok(()),
    }
}

/// Checks a held-out split as reading the text whole did (both parts hold tokens) and says,
/// for shards, where the held-out lines start.
pub(super) fn check_held_out(
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
                too_few_lines(plan, h, total)
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
        return Err(too_few_lines(plan, h, total));
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

/// The error for training lines (`total` of them) too few to hold out a share of.
fn too_few_lines(plan: &Plan, h: HeldOut, total: usize) -> Error {
    let pct = (1.0 - h.train_fraction) * 100.0;
    match plan.train.as_slice() {
        [input] => Error::Corpus {
            path: input.path().to_path_buf(),
            problem: format!(
                "{total} line(s) are too few to hold out {pct:.0}% of them for validation; pass \
                 --valid FILE (or more lines)"
            ),
        },
        files => Error::Corpus {
            path: files[files.len() - 1].path().to_path_buf(),
            problem: format!(
                "the {total} lines of the {} training files are too few to hold out {pct:.0}% \
                 of them for validation, or hold no tokens; pass --valid FILE (or more lines)",
                files.len()
            ),
        },
    }
}
