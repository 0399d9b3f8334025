//! What a preparation is made from: the options, the inputs of each split ([`Plan`]) and the
//! cache key that names its folder ([`Key`]).

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::text::Input;
use crate::data::corpus::CorpusSource;
use crate::data::tokenizer::{Codec, Tokenizer};
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};

/// Version of the prepared folder's layout; part of the cache key.
pub(super) const FORMAT: u32 = 3;

/// Where and how to prepare.
#[derive(Debug, Clone)]
pub struct PrepareOptions {
    /// The cache folder (see [`default_cache_dir`](super::default_cache_dir)).
    pub cache_dir: PathBuf,
    /// Vocabulary cap, specials included (0: none).
    pub max_vocab: usize,
    /// How lines become tokens.
    pub tokenizer: Tokenizer,
    /// A vocabulary and tokenizer to encode with instead of ones learned from the training
    /// text (a run started from another's model); `max_vocab` and `tokenizer` are then unused.
    pub fixed: Option<(Vocab, Codec)>,
}

/// How a held-out validation split is cut from the training text.
#[derive(Debug, Clone, Copy)]
pub(super) struct HeldOut {
    pub(super) train_fraction: f64,
    /// Name the held-out lines in a note (several training files, or shards).
    pub(super) note: bool,
}

/// The inputs of each split.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub(super) train: Vec<Input>,
    /// Validation files; empty when held out.
    pub(super) valid: Vec<Input>,
    pub(super) held_out: Option<HeldOut>,
    pub(super) test: Vec<Input>,
}

/// The cache key: what the preparation is made from, and its folder name.
pub(super) struct Key {
    pub(super) material: serde_json::Value,
    pub(super) name: String,
}

impl Plan {
    pub(super) fn of(source: &CorpusSource) -> Result<Self> {
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

    pub(super) fn key(&self, options: &PrepareOptions) -> Result<Key> {
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
    pub(super) fn new(material: serde_json::Value, first: &Input) -> Self {
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

/// What identifies a vocabulary and tokenizer in a cache key: the tokenizer, checksums of the
/// tokens and of the BPE model, the size.
pub(super) fn vocab_material(vocab: &Vocab, codec: &Codec) -> serde_json::Value {
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
