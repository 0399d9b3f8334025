//! `lstm-lm export`: a run's model in PyTorch's layout, for use outside the tool.
//!
//! The folder it writes holds `model.safetensors` (written by Burn's own store, `burn-store`),
//! `vocab.txt` (one token per line, the line number is the id) and `config.json`. Tensor names,
//! shapes and layouts are those of `nn.Embedding`, `nn.LSTM` and `nn.Linear` (or
//! `nn.AdaptiveLogSoftmaxWithLoss`) as `reference/torch_lm.py`'s `LM` names them:
//!
//! | tensor | shape |
//! |---|---|
//! | `embed.weight` | `[vocab, d_embed]` |
//! | `lstm.weight_ih_l{k}` | `[4 * d_hidden, d_input]`, gate blocks i, f, g, o |
//! | `lstm.weight_hh_l{k}` | `[4 * d_hidden, d_hidden]` |
//! | `lstm.bias_ih_l{k}` | `[4 * d_hidden]`: lstm-lm's one bias |
//! | `lstm.bias_hh_l{k}` | `[4 * d_hidden]`: zeros |
//! | `proj.weight`, `proj.bias` | `[vocab, d_hidden]`, `[vocab]` (a tied model's `proj.weight` is a copy of `embed.weight`) |
//! | `asm.head.weight` | `[shortlist + clusters, d_hidden]` (adaptive softmax, instead of `proj`) |
//! | `asm.tail.{i}.0.weight`, `asm.tail.{i}.1.weight` | `[d_tail, d_hidden]`, `[cluster size, d_tail]` |
//!
//! lstm-lm stores its matrices `[in, out]`; the mirror module below holds them transposed,
//! `[out, in]`, so that the store writes PyTorch's shapes.

use std::path::PathBuf;

use burn::module::{Module, Param};
use burn::store::{ModuleSnapshot, SafetensorsStore};
use burn::tensor::{Device, Tensor};
use serde::Serialize;

use crate::data::tokenizer::BPE_FILE;
use crate::data::vocab::{EOS_ID, PAD_ID, UNK_ID};
use crate::error::{Error, Result};
use crate::fsutil::{write_atomic, write_folder};
use crate::model::{LanguageModel, Softmax};
use crate::run::Run;

/// The safetensors file of an export.
pub const MODEL_FILE: &str = "model.safetensors";

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// The run folder.
    pub run_dir: PathBuf,
    /// The checkpoint's epoch (the newest complete one when `None`).
    pub epoch: Option<usize>,
    /// The folder to write; it must not exist yet.
    pub out: PathBuf,
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The checkpoint's epoch.
    pub epoch: usize,
    /// The folder written.
    pub dir: PathBuf,
    /// Number of tensors in `model.safetensors`.
    pub tensors: usize,
}

/// The export's `config.json`: what a PyTorch user needs to build the modules.
#[derive(Debug, Clone, Serialize)]
pub struct ExportConfig {
    /// `"lstm-lm-export"`.
    pub format: &'static str,
    /// Version of this layout.
    pub version: u32,
    /// Number of ids (rows of `embed.weight`).
    pub vocab_size: usize,
    /// `nn.Embedding`'s `embedding_dim`.
    pub embedding_dim: usize,
    /// `nn.LSTM`'s `hidden_size`.
    pub hidden_size: usize,
    /// `nn.LSTM`'s `num_layers`.
    pub num_layers: usize,
    /// Whether the output layer was tied to the embedding (`proj.weight` is then its copy).
    pub tied: bool,
    /// `"full"` (`proj`) or `"adaptive"` (`asm`).
    pub softmax: &'static str,
    /// The adaptive softmax's cutoffs (`nn.AdaptiveLogSoftmaxWithLoss`'s, without the
    /// vocabulary size), empty for the full softmax.
    pub cutoffs: Vec<usize>,
    /// The adaptive softmax's `div_value`.
    pub div_value: f64,
    /// How text becomes ids: `word`, `char` or `bpe` (see the run's `tokenizer.json`).
    pub tokenizer: String,
    /// Ids of the special tokens: `<pad>` (never predicted), `<eos>` (each line's end) and
    /// `<unk>` (words outside the vocabulary).
    pub pad_id: usize,
    /// See `pad_id`.
    pub eos_id: usize,
    /// See `pad_id`.
    pub unk_id: usize,
    /// The run and checkpoint it came from.
    pub source: String,
}

#[derive(Module, Debug)]
struct TorchEmbedding {
    weight: Param<Tensor<2>>,
}

#[derive(Module, Debug)]
struct TorchLstmLayer {
    weight_ih: Param<Tensor<2>>,
    weight_hh: Param<Tensor<2>>,
    bias_ih: Param<Tensor<1>>,
    bias_hh: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct TorchLinear {
    weight: Param<Tensor<2>>,
    bias: Param<Tensor<1>>,
}

#[derive(Module, Debug)]
struct TorchTail {
    proj: Param<Tensor<2>>,
    out: Param<Tensor<2>>,
}

#[derive(Module, Debug)]
struct TorchAdaptive {
    head: Param<Tensor<2>>,
    tail: Vec<TorchTail>,
}

/// lstm-lm's model with PyTorch's names and shapes (see the module docs).
#[derive(Module, Debug)]
struct TorchLm {
    embed: TorchEmbedding,
    lstm: Vec<TorchLstmLayer>,
    proj: Option<TorchLinear>,
    asm: Option<TorchAdaptive>,
}

/// `[in, out]` -> `[out, in]` as a parameter.
fn transposed(p: &Param<Tensor<2>>) -> Param<Tensor<2>> {
    Param::from_tensor(p.val().transpose())
}

impl TorchLm {
    fn of(model: &LanguageModel) -> Self {
        let lstm = model
            .lstm
            .layers
            .iter()
            .map(|layer| TorchLstmLayer {
                weight_ih: transposed(&layer.input_weight),
                weight_hh: transposed(&layer.hidden_weight),
                bias_ih: Param::from_tensor(layer.bias.val()),
                bias_hh: Param::from_tensor(layer.bias.val().zeros_like()),
            })
            .collect();
        let proj = match (&model.output, &model.tied_bias) {
            (Some(linear), _) => Some(TorchLinear {
                weight: transposed(&linear.weight),
                bias: Param::from_tensor(linear.bias.as_ref().expect("a bias").val()),
            }),
            (None, Some(bias)) => Some(TorchLinear {
                weight: Param::from_tensor(model.embedding.weight.val()),
                bias: Param::from_tensor(bias.val()),
            }),
            (None, None) => None,
        };
        let asm = model.adaptive.as_ref().map(|a| TorchAdaptive {
            head: transposed(&a.head),
            tail: a
                .tails
                .iter()
                .map(|t| TorchTail {
                    proj: transposed(&t.proj),
                    out: transposed(&t.out),
                })
                .collect(),
        });
        Self {
            embed: TorchEmbedding {
                weight: Param::from_tensor(model.embedding.weight.val()),
            },
            lstm,
            proj,
            asm,
        }
    }
}

/// Burn's paths of [`TorchLm`] -> PyTorch's names.
fn pytorch_names(store: SafetensorsStore) -> SafetensorsStore {
    store
        .with_key_remapping(
            r"^lstm\.(\d+)\.(weight_ih|weight_hh|bias_ih|bias_hh)$",
            "lstm.${2}_l${1}",
        )
        .with_key_remapping(r"^asm\.head$", "asm.head.weight")
        .with_key_remapping(r"^asm\.tail\.(\d+)\.proj$", "asm.tail.${1}.0.weight")
        .with_key_remapping(r"^asm\.tail\.(\d+)\.out$", "asm.tail.${1}.1.weight")
}

/// Writes `request.out`: `model.safetensors`, `vocab.txt`, `config.json`, all or nothing (a
/// temporary folder renamed into place).
pub fn export(request: &ExportRequest) -> Result<Exported> {
    if request.out.exists() {
        return Err(Error::Config(format!(
            "{} exists already; remove it or pick another --out",
            request.out.display()
        )));
    }
    let run = Run::open(&request.run_dir)?;
    let (model, epoch) = run.load_model(request.epoch, &Device::flex())?;
    let config = export_config(&run, epoch);
    let mirror = TorchLm::of(&model);
    let tensors = mirror.num_params_tensors();
    write_folder(&request.out, |dir| {
        let mut store = pytorch_names(SafetensorsStore::from_file(dir.join(MODEL_FILE)))
            .metadata("lstm-lm-source", config.source.clone());
        mirror.save_into(&mut store).map_err(|e| {
            Error::Config(format!(
                "cannot write {}: {e}",
                dir.join(MODEL_FILE).display()
            ))
        })?;
        run.vocab().save(&dir.join("vocab.txt"))?;
        let json = serde_json::to_string_pretty(&config).expect("the config serialises") + "\n";
        write_atomic(&dir.join("config.json"), json.as_bytes())?;
        let tokenizer = run.dir().join(BPE_FILE);
        if tokenizer.is_file() {
            let bytes =
                std::fs::read(&tokenizer).map_err(|e| Error::io("cannot read", &tokenizer, e))?;
            write_atomic(&dir.join(BPE_FILE), &bytes)?;
        }
        Ok(())
    })?;
    Ok(Exported {
        epoch,
        dir: request.out.clone(),
        tensors,
    })
}

fn export_config(run: &Run, epoch: usize) -> ExportConfig {
    let m = &run.config().model;
    let (softmax, cutoffs, div_value) = match &m.softmax {
        Softmax::Full => ("full", Vec::new(), 0.0),
        Softmax::Adaptive { cutoffs, div_value } => ("adaptive", cutoffs.clone(), *div_value),
    };
    ExportConfig {
        format: "lstm-lm-export",
        version: 1,
        vocab_size: m.vocab_size,
        embedding_dim: m.d_embed,
        hidden_size: m.d_hidden,
        num_layers: m.n_layers,
        tied: m.tied,
        softmax,
        cutoffs,
        div_value,
        tokenizer: serde_json::to_value(run.config().data.tokenizer)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        pad_id: PAD_ID,
        eos_id: EOS_ID,
        unk_id: UNK_ID,
        source: format!("{} epoch {epoch}", run.dir().display()),
    }
}

impl TorchLm {
    /// Number of tensors the export writes.
    fn num_params_tensors(&self) -> usize {
        let output = match (&self.proj, &self.asm) {
            (Some(_), _) => 2,
            (None, Some(a)) => 1 + 2 * a.tail.len(),
            (None, None) => 0,
        };
        1 + 4 * self.lstm.len() + output
    }
}
