//! `lstm-lm import`: a model trained elsewhere (PyTorch) as a run folder that `eval`, `generate`
//! and `score` open and `train --init-from` trains further.
//!
//! It reads a safetensors file or a PyTorch state dict (`torch.save(model.state_dict())`, a
//! `.pt`/`.pth` file) through Burn's own stores (`burn-store`), in one of these namings:
//!
//! | embedding | LSTM | output | written by |
//! |---|---|---|---|
//! | `embed.weight` | `lstm.{weight,bias}_{ih,hh}_l{k}` | `proj.{weight,bias}` or `asm.head.weight`, `asm.tail.{i}.{0,1}.weight` | `lstm-lm export`, `reference/torch_lm.py --save` |
//! | `encoder.weight` | `rnn.{weight,bias}_{ih,hh}_l{k}` | `decoder.{weight,bias}` | PyTorch's word_language_model `RNNModel` (LSTM) |
//!
//! A prefix common to every name (`module.`, `model.`) is ignored. The two PyTorch biases of a
//! layer are summed into lstm-lm's one; an output weight equal to the embedding is a tied model.
//!
//! The vocabulary file holds one token per line, the line number being the PyTorch id. Its rows
//! are reordered into lstm-lm's layout ([`ForeignVocab`]): `<pad>`, `<eos>`, `<unk>`, then the
//! other tokens in their PyTorch order. A special the file lacks (`<pad>` always, for PyTorch's)
//! gets a zero embedding and an output bias of [`NEVER_LOGIT`], so its probability is exactly 0:
//! it is never generated and the perplexity is PyTorch's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::store::{bridge, ModuleStore, PytorchStore, SafetensorsStore};
use burn::tensor::{DType, Device};
use serde::{Deserialize, Serialize};

use crate::config::presets::Preset;
use crate::config::ExperimentConfig;
use crate::data::tokenizer::{Tokenizer, BPE_FILE};
use crate::data::vocab::ForeignVocab;
use crate::error::{Error, Result};
use crate::fsutil::{write_atomic, write_folder};
use crate::model::weights::{gather, LayerWeights, LmWeights, Matrix, OutputWeights, NEVER_LOGIT};
use crate::model::{LanguageModel, LmConfig, Softmax};
use crate::run::files;

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    /// A `.safetensors`, `.pt` or `.pth` file, or a folder holding `model.safetensors` or
    /// `model.pt` (an `lstm-lm export` or `torch_lm.py --save` folder).
    pub model: PathBuf,
    /// The vocabulary, one token per line in id order (`vocab.txt` next to the model when
    /// `None`).
    pub vocab: Option<PathBuf>,
    /// The run folder to create; it must not exist yet.
    pub out: PathBuf,
}

/// What an import made.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The run folder written.
    pub dir: PathBuf,
    /// The model file read.
    pub file: PathBuf,
    /// Which naming the file used (see the module docs).
    pub naming: &'static str,
    /// Number of tensors read.
    pub tensors: usize,
    /// The imported model's sizes.
    pub model: LmConfig,
    /// lstm-lm's specials the vocabulary did not have (never chosen).
    pub missing: Vec<String>,
}

/// The run folder's `import.json`: where its model came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImportRecord {
    /// The model file read.
    pub file: PathBuf,
    /// The vocabulary file read.
    pub vocab: PathBuf,
    /// The file's naming (see [`crate::commands::import`]).
    pub naming: String,
    /// lstm-lm's specials the vocabulary did not have; their output bias is [`NEVER_LOGIT`].
    pub missing: Vec<String>,
}

/// An import error about `path`.
fn bad(path: &Path, problem: impl Into<String>) -> Error {
    Error::BadModel {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Reads `request.model` and writes the run folder `request.out` (all or nothing).
pub fn import(request: &ImportRequest) -> Result<Imported> {
    if request.out.exists() {
        return Err(Error::Config(format!(
            "{} exists already; remove it or pick another --out",
            request.out.display()
        )));
    }
    let source = Source::locate(request)?;
    let tensors = read_tensors(&source.file)?;
    let count = tensors.len();
    let mut names = Names::detect(&source.file, tensors)?;
    names.div_value = source.div_value;
    let foreign = read_vocab(&source.vocab)?;
    let read = names.read(&foreign)?;
    // The file's tensors (a memory map, or the state dict read) are no longer needed.
    let naming = names.naming;
    drop(names);
    let mut config: ExperimentConfig = Preset::ZarembaSmall.config();
    config.model = read.config.clone();
    config.data.tokenizer = source.tokenizer;
    // Nothing is trained in the imported run itself (`train --init-from` trains from it).
    config.epochs = 0;
    let device = Device::flex();
    let model = config
        .model
        .with_weights(read.weights, &device)
        .map_err(|problem| source.bad(problem))?;
    let record = ImportRecord {
        file: source.file.clone(),
        vocab: source.vocab.clone(),
        naming: naming.into(),
        missing: foreign.missing().iter().map(|s| s.to_string()).collect(),
    };
    write_folder(&request.out, |dir| {
        write_run(dir, &config, &foreign, model, &record, &source)
    })?;
    Ok(Imported {
        dir: request.out.clone(),
        file: source.file,
        naming,
        tensors: count,
        model: read.config,
        missing: record.missing,
    })
}

/// Writes the run's files into `dir`: config, vocabulary, the model as epoch 0
/// ([`files::IMPORTED`]), the import record, and an exported BPE model.
fn write_run(
    dir: &Path,
    config: &ExperimentConfig,
    foreign: &ForeignVocab,
    model: LanguageModel,
    record: &ImportRecord,
    source: &Source,
) -> Result<()> {
    let json = serde_json::to_string_pretty(config).expect("config serialises");
    write_atomic(&dir.join(files::CONFIG), json.as_bytes())?;
    foreign.vocab.save(&dir.join(files::VOCAB))?;
    // Streamed to its file as it is serialised, never also held as one byte buffer.
    let path = dir.join(files::IMPORTED);
    model.into_record().save(&path).map_err(|e| {
        bad(
            &source.file,
            format!("cannot write {}: {e}", path.display()),
        )
    })?;
    let json = serde_json::to_string_pretty(record).expect("record serialises");
    write_atomic(&dir.join(files::IMPORT_RECORD), json.as_bytes())?;
    if let Some(bpe) = &source.bpe {
        let bytes = std::fs::read(bpe).map_err(|e| Error::io("cannot read", bpe, e))?;
        write_atomic(&dir.join(BPE_FILE), &bytes)?;
    }
    Ok(())
}

/// The files an import reads.
struct Source {
    file: PathBuf,
    vocab: PathBuf,
    tokenizer: Tokenizer,
    /// The BPE model of an exported BPE run.
    bpe: Option<PathBuf>,
    /// The adaptive softmax's `div_value` an export states (else it is read from the shapes).
    div_value: Option<f64>,
}

impl Source {
    fn locate(request: &ImportRequest) -> Result<Self> {
        let path = &request.model;
        let (file, dir) = if path.is_dir() {
            let file = ["model.safetensors", "model.pt", "model.pth"]
                .iter()
                .map(|name| path.join(name))
                .find(|p| p.is_file())
                .ok_or_else(|| {
                    bad(
                        path,
                        "the folder holds no model.safetensors or model.pt; pass the model file",
                    )
                })?;
            (file, path.clone())
        } else if path.is_file() {
            let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (path.clone(), dir)
        } else {
            return Err(bad(path, "no such file"));
        };
        let vocab = request
            .vocab
            .clone()
            .unwrap_or_else(|| dir.join("vocab.txt"));
        // An lstm-lm export says how its text was cut; anything else is words.
        let export = export_config(&dir.join("config.json"));
        let tokenizer = export
            .as_ref()
            .and_then(|c| serde_json::from_value(c["tokenizer"].clone()).ok())
            .unwrap_or(Tokenizer::Word);
        let div_value = export.as_ref().and_then(|c| c["div_value"].as_f64());
        let bpe = (tokenizer == Tokenizer::Bpe).then(|| dir.join(BPE_FILE));
        if let Some(bpe) = bpe.as_ref().filter(|p| !p.is_file()) {
            return Err(bad(
                &dir.join("config.json"),
                format!(
                    "it describes a BPE model but {} is missing; copy the export folder whole",
                    bpe.display()
                ),
            ));
        }
        Ok(Self {
            file,
            vocab,
            tokenizer,
            bpe,
            div_value,
        })
    }

    /// An error about the model file.
    fn bad(&self, problem: String) -> Error {
        bad(&self.file, problem)
    }
}

/// An `lstm-lm export` folder's `config.json`, if that is what `config` is.
fn export_config(config: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(config).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    (value["format"] == "lstm-lm-export").then_some(value)
}

/// Every tensor of `file`, by name, read by Burn's store for its format.
fn read_tensors(file: &Path) -> Result<BTreeMap<String, burn::store::burn_pack::Tensor>> {
    let ext = file
        .extension()
        .map(|e| e.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    let failed = |what: &str, e: String| bad(file, format!("cannot read it as {what}: {e}"));
    match ext.as_str() {
        "safetensors" => SafetensorsStore::from_file(file)
            .get_all_tensors()
            .cloned()
            .map_err(|e| failed("safetensors", e.to_string())),
        "pt" | "pth" | "bin" => PytorchStore::from_file(file)
            .get_all_tensors()
            .cloned()
            .map_err(|e| {
                failed(
                    "a PyTorch state dict",
                    format!("{e} (save the model with torch.save(model.state_dict(), PATH))"),
                )
            }),
        _ => Err(bad(
            file,
            "unknown model format; lstm-lm imports .safetensors files and PyTorch state dicts \
             (.pt, .pth)",
        )),
    }
}

/// The vocabulary file's tokens in lstm-lm's layout.
fn read_vocab(path: &Path) -> Result<ForeignVocab> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            "cannot read the vocabulary (pass --vocab FILE: one token per line, in id order)",
            path,
            e,
        )
    })?;
    let tokens: Vec<String> = text.lines().map(str::to_owned).collect();
    ForeignVocab::map(&tokens).map_err(|problem| bad(path, format!("vocabulary: {problem}")))
}

/// A tensor's values as `f32`, row-major, and its shape.
struct Array {
    shape: Vec<usize>,
    values: Vec<f32>,
}

/// The tensor names of one file, in one of the namings of the module docs.
struct Names {
    file: PathBuf,
    tensors: BTreeMap<String, burn::store::burn_pack::Tensor>,
    prefix: String,
    naming: &'static str,
    embed: &'static str,
    lstm: &'static str,
    output: &'static str,
    /// The adaptive softmax's `div_value` when known (else `d_hidden` / the first tail's width).
    div_value: Option<f64>,
}

/// What [`Names::read`] makes: the model's sizes and its weights in lstm-lm's layout.
struct Read {
    config: LmConfig,
    weights: LmWeights,
}

impl Names {
    /// Finds the naming by the embedding's name and the prefix before it.
    fn detect(
        file: &Path,
        tensors: BTreeMap<String, burn::store::burn_pack::Tensor>,
    ) -> Result<Self> {
        let namings = [
            ("lstm-lm export / torch_lm.py", "embed", "lstm", "proj"),
            ("word_language_model RNNModel", "encoder", "rnn", "decoder"),
        ];
        for (naming, embed, lstm, output) in namings {
            let suffix = format!("{embed}.weight");
            let found = tensors
                .keys()
                .find(|k| *k == &suffix || k.ends_with(&format!(".{suffix}")));
            if let Some(key) = found {
                let prefix = key[..key.len() - suffix.len()].to_string();
                return Ok(Self {
                    file: file.to_path_buf(),
                    tensors,
                    prefix,
                    naming,
                    embed,
                    lstm,
                    output,
                    div_value: None,
                });
            }
        }
        let some: Vec<&str> = tensors.keys().take(8).map(String::as_str).collect();
        Err(bad(
            file,
            format!(
                "no embedding (embed.weight or encoder.weight) among its {} tensors ({}{}); \
             lstm-lm imports Embedding -> LSTM -> Linear language models",
                tensors.len(),
                some.join(", "),
                if tensors.len() > some.len() {
                    ", ..."
                } else {
                    ""
                }
            ),
        ))
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(&format!("{}{name}", self.prefix))
    }

    /// The tensor `name` (without the prefix) as `f32`, which must have `dims` dimensions.
    fn take(&self, name: &str, dims: usize) -> Result<Array> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .tensors
            .get(&full)
            .ok_or_else(|| bad(&self.file, format!("the tensor {full} is missing")))?;
        let shape = tensor.shape.to_vec();
        if shape.len() != dims {
            return Err(self.misshaped(&full, &shape, &format!("{dims} dimensions")));
        }
        let data = bridge::to_data(tensor)
            .map_err(|e| bad(&self.file, format!("cannot read {full}: {e}")))?;
        let values = match data.dtype() {
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => data
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| bad(&self.file, format!("cannot read {full}: {e:?}")))?,
            other => {
                return Err(bad(
                    &self.file,
                    format!("{full} holds {other:?} values, not floating point"),
                ))
            }
        };
        Ok(Array { shape, values })
    }

    /// A matrix `[rows, cols]` named `name`; `rows`/`cols` of `None` take the file's.
    fn matrix(&self, name: &str, rows: Option<usize>, cols: Option<usize>) -> Result<Matrix> {
        let a = self.take(name, 2)?;
        let (r, c) = (a.shape[0], a.shape[1]);
        if rows.is_some_and(|x| x != r) || cols.is_some_and(|x| x != c) {
            let want = |d: Option<usize>, got: usize| d.unwrap_or(got).to_string();
            return Err(self.misshaped(
                &format!("{}{name}", self.prefix),
                &a.shape,
                &format!("[{}, {}]", want(rows, r), want(cols, c)),
            ));
        }
        Ok(Matrix::new(r, c, a.values))
    }

    /// A vector of `len` values named `name`.
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let a = self.take(name, 1)?;
        if a.shape[0] != len {
            return Err(self.misshaped(
                &format!("{}{name}", self.prefix),
                &a.shape,
                &format!("[{len}]"),
            ));
        }
        Ok(a.values)
    }

    fn misshaped(&self, name: &str, shape: &[usize], want: &str) -> Error {
        bad(
            &self.file,
            format!("the tensor {name} is {shape:?}, expected {want}"),
        )
    }

    /// The model's sizes and weights, rows reordered into `vocab`'s layout.
    fn read(&self, vocab: &ForeignVocab) -> Result<Read> {
        let embed = self.matrix(&format!("{}.weight", self.embed), None, None)?;
        let (v, e) = (embed.rows, embed.cols);
        if vocab.foreign_len() != v {
            return Err(bad(
                &self.file,
                format!(
                    "the vocabulary has {} tokens but {}{}.weight has {v} rows: pass the \
                     vocabulary the model was trained with (--vocab)",
                    vocab.foreign_len(),
                    self.prefix,
                    self.embed
                ),
            ));
        }
        let (layers, h) = self.lstm_layers(e)?;
        let rows = &vocab.rows;
        let (output, softmax, tied) = self.output(&embed, h, vocab)?;
        let config = LmConfig {
            vocab_size: rows.len(),
            d_embed: e,
            d_hidden: h,
            n_layers: layers.len(),
            tied,
            softmax,
            ..Preset::ZarembaSmall.config().model
        };
        Ok(Read {
            config,
            weights: LmWeights {
                embedding: embed.gather_rows(rows, 0.0),
                layers,
                output,
            },
        })
    }

    /// The LSTM layers (PyTorch's `[4H, in]` transposed, the two biases summed) and `H`.
    fn lstm_layers(&self, d_embed: usize) -> Result<(Vec<LayerWeights>, usize)> {
        let name = |what: &str, k: usize| format!("{}.{what}_l{k}", self.lstm);
        // H from the first recurrent weight's shape; its values are read with the layer below.
        let hh0 = format!("{}{}", self.prefix, name("weight_hh", 0));
        let Some(shape) = self.tensors.get(&hh0).map(|t| t.shape.to_vec()) else {
            return Err(bad(
                &self.file,
                format!("the tensor {hh0} is missing (no LSTM layer)"),
            ));
        };
        if shape.len() != 2 {
            return Err(self.misshaped(&hh0, &shape, "2 dimensions"));
        }
        let h = shape[1];
        if shape[0] != 4 * h {
            return Err(self.misshaped(
                &hh0,
                &shape,
                &format!(
                    "[{}, {h}]: an LSTM's gates (a GRU or plain RNN is not an LSTM)",
                    4 * h
                ),
            ));
        }
        let mut layers = Vec::new();
        let mut k = 0;
        while self.has(&name("weight_ih", k)) || self.has(&name("weight_hh", k)) {
            let input = if k == 0 { d_embed } else { h };
            let ih = self.matrix(&name("weight_ih", k), Some(4 * h), Some(input))?;
            let hh = self.matrix(&name("weight_hh", k), Some(4 * h), Some(h))?;
            let bias = match (self.has(&name("bias_ih", k)), self.has(&name("bias_hh", k))) {
                (false, false) => vec![0.0; 4 * h],
                _ => {
                    let a = self.vector(&name("bias_ih", k), 4 * h)?;
                    let b = self.vector(&name("bias_hh", k), 4 * h)?;
                    a.iter().zip(&b).map(|(x, y)| x + y).collect()
                }
            };
            layers.push(LayerWeights {
                input: ih.transposed(),
                hidden: hh.transposed(),
                bias,
            });
            k += 1;
        }
        Ok((layers, h))
    }

    /// The output layer in lstm-lm's layout, its softmax and whether it is tied.
    fn output(
        &self,
        embed: &Matrix,
        h: usize,
        vocab: &ForeignVocab,
    ) -> Result<(OutputWeights, Softmax, bool)> {
        let v = embed.rows;
        let weight = format!("{}.weight", self.output);
        if self.has(&weight) {
            let w = self.matrix(&weight, Some(v), Some(h))?;
            let bias_name = format!("{}.bias", self.output);
            let bias = if self.has(&bias_name) {
                self.vector(&bias_name, v)?
            } else {
                vec![0.0; v]
            };
            let bias = gather(&bias, &vocab.rows, NEVER_LOGIT);
            if w == *embed {
                return Ok((OutputWeights::Tied { bias }, Softmax::Full, true));
            }
            let weight = w.gather_rows(&vocab.rows, 0.0).transposed();
            return Ok((OutputWeights::Full { weight, bias }, Softmax::Full, false));
        }
        if self.has("asm.head.weight") {
            return self.adaptive(h, vocab).map(|(o, s)| (o, s, false));
        }
        Err(bad(
            &self.file,
            format!(
                "the tensor {}{weight} is missing (and no asm.head.weight): no output layer",
                self.prefix
            ),
        ))
    }

    /// An adaptive softmax (`nn.AdaptiveLogSoftmaxWithLoss`): cutoffs and `div_value` from
    /// the shapes. Its clusters are ranges of ids and its head has no bias, so the vocabulary
    /// must already be in lstm-lm's layout.
    fn adaptive(&self, h: usize, vocab: &ForeignVocab) -> Result<(OutputWeights, Softmax)> {
        if !vocab.is_identity() {
            return Err(bad(&self.file, "an adaptive softmax's clusters are ranges of ids and its head has no bias, so its \
                 vocabulary must already start <pad>, <eos>, <unk> (as lstm-lm exports it): its \
                 rows cannot be reordered"));
        }
        let mut tails = Vec::new();
        let mut sizes = Vec::new();
        while self.has(&format!("asm.tail.{}.0.weight", tails.len())) {
            let i = tails.len();
            let proj = self.matrix(&format!("asm.tail.{i}.0.weight"), None, Some(h))?;
            let out = self.matrix(&format!("asm.tail.{i}.1.weight"), None, Some(proj.rows))?;
            sizes.push(out.rows);
            tails.push((proj.transposed(), out.transposed()));
        }
        let head = self.matrix("asm.head.weight", None, Some(h))?;
        let v = vocab.rows.len();
        let shortlist = head.rows.checked_sub(tails.len()).filter(|&s| s > 0);
        let Some(shortlist) = shortlist.filter(|s| s + sizes.iter().sum::<usize>() == v) else {
            return Err(self.misshaped(
                &format!("{}asm.head.weight", self.prefix),
                &[head.rows, head.cols],
                &format!(
                    "a shortlist plus {} clusters of {v} tokens in all (tails {sizes:?})",
                    tails.len()
                ),
            ));
        };
        let mut cutoffs = vec![shortlist];
        for size in &sizes[..sizes.len().saturating_sub(1)] {
            cutoffs.push(cutoffs.last().unwrap() + size);
        }
        let div_value = match (self.div_value, tails.first()) {
            (Some(stated), _) => stated,
            (None, Some((proj, _))) => h as f64 / proj.cols as f64,
            (None, None) => 4.0,
        };
        Ok((
            OutputWeights::Adaptive {
                head: head.transposed(),
                tails,
            },
            Softmax::Adaptive { cutoffs, div_value },
        ))
    }
}
