//! Training through burn-train: the train/inference steps, the run folder, checkpoints and
//! resume.
//!
//! A run folder holds `config.json`, `vocab.txt`, `history.jsonl` (one line per finished epoch),
//! burn-train's metric logs (`train/`, `valid/`, `experiment.log`) and `checkpoint/`. Running
//! the same command again continues from the newest complete checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use burn::module::{Module, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, ExecutionError, Tensor};
use burn::train::checkpoint::KeepLastNCheckpoints;
use burn::train::metric::Adaptor;
use burn::train::{
    InferenceStep, Interrupter, ItemLazy, Learner, SupervisedTraining, TrainOutput, TrainStep,
};

use crate::checkpoint::{checkpoint_dir, last_complete_checkpoint, AtomicFileCheckpointer};
use crate::config::{ExperimentConfig, OptimizerConfig};
use crate::data::batcher::{BucketLoader, Buckets};
use crate::data::corpus::CorpusSource;
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::eval::{evaluate_bucketed, Evaluation};
use crate::metrics::{NllInput, PerplexityMetric, TokenCountInput, TokensPerSecond};
use crate::model::{LanguageModel, LmBatch};
use crate::render::{EpochStats, ProgressMode, Renderer};

/// File names inside a run folder.
pub mod files {
    /// The experiment config.
    pub const CONFIG: &str = "config.json";
    /// The vocabulary, one token per line.
    pub const VOCAB: &str = "vocab.txt";
    /// One JSON [`EpochStats`](crate::render::EpochStats) per finished epoch.
    pub const HISTORY: &str = "history.jsonl";
}

/// What one step reports to the metrics.
pub struct LmOutput {
    /// The differentiated loss `[1]`.
    pub loss: Tensor<1>,
    /// Summed negative log-likelihood over real tokens `[1]`.
    pub nll_sum: Tensor<1>,
    /// Number of real tokens.
    pub tokens: usize,
}

impl ItemLazy for LmOutput {
    fn sync(self) -> std::result::Result<Self, ExecutionError> {
        Ok(Self {
            loss: self.loss.without_autodiff(),
            nll_sum: self.nll_sum.without_autodiff(),
            tokens: self.tokens,
        })
    }
}

impl Adaptor<NllInput> for LmOutput {
    fn adapt(&self) -> NllInput {
        NllInput {
            nll_sum: self.nll_sum.clone(),
            tokens: self.tokens,
        }
    }
}

impl Adaptor<TokenCountInput> for LmOutput {
    fn adapt(&self) -> TokenCountInput {
        TokenCountInput {
            tokens: self.tokens,
        }
    }
}

impl TrainStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        let loss = self.loss(&batch);
        let grads = loss.loss.backward();
        TrainOutput::new(
            self,
            grads,
            LmOutput {
                loss: loss.loss.detach(),
                nll_sum: loss.nll_sum.detach(),
                tokens: loss.tokens,
            },
        )
    }
}

impl InferenceStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> LmOutput {
        let loss = self.loss(&batch);
        LmOutput {
            loss: loss.loss,
            nll_sum: loss.nll_sum,
            tokens: loss.tokens,
        }
    }
}

/// A training run to start or continue.
pub struct TrainRequest {
    /// The experiment.
    pub config: ExperimentConfig,
    /// The text.
    pub corpus: CorpusSource,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Start over even if the run folder holds a run.
    pub fresh: bool,
    /// Where to train.
    pub device: Device,
    /// How to show progress.
    pub progress: ProgressMode,
    /// Stops training at the next batch when triggered (Ctrl-C); the last checkpoint is kept.
    pub interrupter: Interrupter,
}

/// What a call to [`train`] did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// The epoch whose checkpoint training resumed from, if it resumed.
    pub resumed_from: Option<usize>,
    /// The epochs trained by this call.
    pub epochs: Vec<EpochStats>,
    /// True when stopped by the interrupter before the last epoch.
    pub interrupted: bool,
    /// Perplexity on the test split, when one was given and training finished.
    pub test: Option<Evaluation>,
    /// Vocabulary size.
    pub vocab_size: usize,
}

/// Trains, or continues, the run described by `request`.
pub fn train(request: TrainRequest) -> Result<TrainReport> {
    let TrainRequest {
        mut config,
        corpus,
        run_dir,
        fresh,
        device,
        progress,
        interrupter,
    } = request;
    config.validate()?;
    let corpus = corpus.load()?;
    let vocab = Vocab::build(
        corpus.train.iter().map(Vec::as_slice),
        config.data.max_vocab,
    );
    config.model.vocab_size = vocab.len();

    if fresh {
        clear_run(&run_dir)?;
    }
    let resumed_from = check_resume(&run_dir, &config, &vocab)?;
    if let Some(done) = resumed_from.filter(|&e| e >= config.epochs) {
        println!(
            "{} already holds {done} trained epochs (asked for {}); pass --epochs {} to train \
             longer, or --fresh to start over",
            run_dir.display(),
            config.epochs,
            done + 1
        );
        return Ok(TrainReport {
            resumed_from,
            epochs: Vec::new(),
            interrupted: false,
            test: None,
            vocab_size: vocab.len(),
        });
    }
    save_run(&run_dir, &config, &vocab, resumed_from.unwrap_or(0))?;

    let encode = |s: &[Vec<String>]| s.iter().map(|w| vocab.encode(w)).collect::<Vec<_>>();
    let (train_ids, valid_ids) = (encode(&corpus.train), encode(&corpus.valid));
    let train_buckets = Buckets::new(&train_ids, &config.data.buckets);
    let valid_buckets = Buckets::new(&valid_ids, &config.data.buckets);
    let largest = config.data.buckets.iter().max().copied().unwrap_or(0);
    println!(
        "data: {} train sentences ({} tokens), {} valid; vocabulary {}; dropped {} train and {} \
         valid sentences longer than {largest} tokens",
        train_ids.len(),
        train_ids.iter().map(|s| s.len() - 1).sum::<usize>(),
        valid_ids.len(),
        vocab.len(),
        train_buckets.dropped,
        valid_buckets.dropped,
    );
    if train_buckets.num_batches(config.data.batch_size) == 0 {
        return Err(Error::Config(format!(
            "no bucket holds {} training sentences, so there is no full batch; lower \
             --batch-size or add training text",
            config.data.batch_size
        )));
    }
    let first_epoch = resumed_from.unwrap_or(0) + 1;
    let train_loader = BucketLoader::training(
        train_buckets,
        config.data.batch_size,
        config.seed,
        first_epoch,
        device.clone(),
    );
    let valid_loader =
        BucketLoader::evaluation(valid_buckets, config.data.batch_size, device.clone());

    let model = config.model.init(config.seed, &device.clone().autodiff());
    println!(
        "model: {} x {} LSTM, embedding {}, {} parameters; device {device:?}; run folder {}",
        config.model.n_layers,
        config.model.d_hidden,
        config.model.d_embed,
        model.num_params(),
        run_dir.display()
    );
    match resumed_from {
        Some(epoch) => println!("resuming from the checkpoint of epoch {epoch}"),
        None => println!("starting a new run"),
    }
    let learner = Learner::new(model, optimizer(&config.optimizer), config.optimizer.lr());

    let history = Arc::new(Mutex::new(Vec::new()));
    let renderer = {
        let history = history.clone();
        let path = run_dir.join(files::HISTORY);
        Renderer::new(
            progress,
            Box::new(move |stats: &EpochStats| {
                history.lock().expect("history lock").push(stats.clone());
                if let Err(e) = append_history(&path, stats) {
                    eprintln!("warning: cannot record epoch {}: {e}", stats.epoch);
                }
            }),
        )
    };
    let ckpt = checkpoint_dir(&run_dir);
    let mut training =
        SupervisedTraining::new(&run_dir, Arc::new(train_loader), Arc::new(valid_loader))
            .metrics((PerplexityMetric::new(), TokensPerSecond::new()))
            .with_custom_checkpointers(
                AtomicFileCheckpointer::new(&ckpt, "model"),
                AtomicFileCheckpointer::new(&ckpt, "optim"),
                AtomicFileCheckpointer::new(&ckpt, "scheduler"),
            )
            .with_checkpointing_strategy(KeepLastNCheckpoints::new(2))
            .num_epochs(config.epochs)
            .renderer(Box::new(renderer))
            .with_interrupter(interrupter);
    if let Some(epoch) = resumed_from {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(learner);
    if let Some(error) = result.error {
        return Err(Error::Training(error.to_string()));
    }
    let epochs = history.lock().expect("history lock").clone();
    let interrupted = result.interrupted.is_some();
    if interrupted {
        let kept = last_complete_checkpoint(&run_dir);
        println!(
            "interrupted; {}; run the same command again to continue",
            match kept {
                Some(e) => format!("the checkpoint of epoch {e} is kept"),
                None => "no epoch had finished".to_string(),
            }
        );
    }

    let test = match (&corpus.test, interrupted) {
        (Some(test), false) => {
            let eval_device = device.clone().without_autodiff();
            let model = result.model.fork(&eval_device);
            let e = evaluate_bucketed(
                &model,
                &encode(test),
                &config.data.buckets,
                config.data.batch_size,
                &eval_device,
            );
            println!(
                "test: {} tokens, loss {:.4}, perplexity {:.2} ({} sentences longer than {largest} \
                 tokens not scored)",
                e.tokens, e.loss, e.perplexity, e.dropped_sentences
            );
            Some(e)
        }
        _ => None,
    };
    Ok(TrainReport {
        resumed_from,
        epochs,
        interrupted,
        test,
        vocab_size: vocab.len(),
    })
}

/// The optimizer of `config`; weight decay applies to weight matrices only, as in the
/// reference (MXNet's `wd_mult` is 0 on biases).
/// The optimizer of `config`; biases are never weight-decayed.
pub(crate) fn optimizer(config: &OptimizerConfig) -> ModuleOptimizer {
    let decay = |wd: f64| (wd > 0.0).then(|| WeightDecayConfig::new(wd as f32));
    let biases = ParamGroup::from_predicate("bias");
    match *config {
        OptimizerConfig::Sgd {
            momentum,
            weight_decay,
            ..
        } => {
            let momentum = (momentum > 0.0).then(|| {
                MomentumConfig::new()
                    .with_momentum(momentum)
                    .with_dampening(0.0)
            });
            let sgd = SgdConfig::new().with_momentum(momentum);
            sgd.clone()
                .with_weight_decay(decay(weight_decay))
                .init()
                .with_group(biases, sgd.build(), None)
        }
        OptimizerConfig::Adam { weight_decay, .. } => AdamConfig::new()
            .with_weight_decay(decay(weight_decay))
            .init()
            .with_group(biases, AdamConfig::new().build(), None),
    }
}

/// Removes what a run writes into `run_dir`, and nothing else.
fn clear_run(run_dir: &Path) -> Result<()> {
    for name in ["checkpoint", "train", "valid"] {
        let p = run_dir.join(name);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
        }
    }
    for name in [
        files::CONFIG,
        files::VOCAB,
        files::HISTORY,
        "experiment.log",
    ] {
        let p = run_dir.join(name);
        if p.is_file() {
            std::fs::remove_file(&p).map_err(|e| Error::io("cannot remove", &p, e))?;
        }
    }
    Ok(())
}

/// The epoch to resume from, after checking that the run in `run_dir` (if any) was made by the
/// same config and vocabulary.
fn check_resume(run_dir: &Path, config: &ExperimentConfig, vocab: &Vocab) -> Result<Option<usize>> {
    let config_path = run_dir.join(files::CONFIG);
    if !config_path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config_path)
        .map_err(|e| Error::io("cannot read", &config_path, e))?;
    let saved: ExperimentConfig = serde_json::from_str(&text).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!(
            "{} is not a valid config ({e}); pass --fresh to start over",
            files::CONFIG
        ),
    })?;
    let differences = config.resume_differences(&saved);
    if !differences.is_empty() {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: format!("its config differs: {}", differences.join("; ")),
        });
    }
    let saved_vocab = Vocab::load(&run_dir.join(files::VOCAB))?;
    if &saved_vocab != vocab {
        return Err(Error::IncompatibleRun {
            dir: run_dir.to_path_buf(),
            problem: "the training data gives a different vocabulary than the run's vocab.txt \
                      (the training text changed)"
                .into(),
        });
    }
    Ok(last_complete_checkpoint(run_dir))
}

/// Writes config and vocabulary, and cuts the history back to the epochs the checkpoint holds.
fn save_run(
    run_dir: &Path,
    config: &ExperimentConfig,
    vocab: &Vocab,
    epochs_kept: usize,
) -> Result<()> {
    std::fs::create_dir_all(run_dir)
        .map_err(|e| Error::io("cannot create run folder", run_dir, e))?;
    let json = serde_json::to_string_pretty(config).expect("config serialises");
    crate::fsutil::write_atomic(&run_dir.join(files::CONFIG), json.as_bytes())?;
    vocab.save(&run_dir.join(files::VOCAB))?;
    let kept: Vec<EpochStats> = read_history(run_dir)
        .into_iter()
        .filter(|s| s.epoch <= epochs_kept)
        .collect();
    let mut text = String::new();
    for s in &kept {
        text += &serde_json::to_string(s).expect("stats serialise");
        text.push('\n');
    }
    crate::fsutil::write_atomic(&run_dir.join(files::HISTORY), text.as_bytes())
}

/// The finished epochs recorded in a run folder (unreadable lines are skipped).
pub fn read_history(run_dir: &Path) -> Vec<EpochStats> {
    std::fs::read_to_string(run_dir.join(files::HISTORY))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn append_history(path: &Path, stats: &EpochStats) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(
        f,
        "{}",
        serde_json::to_string(stats).expect("stats serialise")
    )?;
    f.sync_data()
}

/// The config saved in a run folder.
pub fn load_config(run_dir: &Path) -> Result<ExperimentConfig> {
    let path = run_dir.join(files::CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io("cannot read", &path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!("{} is not a valid config: {e}", files::CONFIG),
    })
}

/// The model of a run folder's checkpoint `epoch` (the newest complete one when `None`), on
/// `device`; the checkpoint may come from any backend.
pub fn load_model(run_dir: &Path, epoch: Option<usize>, device: &Device) -> Result<LanguageModel> {
    let config = load_config(run_dir)?;
    let epoch = match epoch.or_else(|| last_complete_checkpoint(run_dir)) {
        Some(e) => e,
        None => {
            return Err(Error::BadRun {
                dir: run_dir.to_path_buf(),
                problem: "no complete checkpoint yet; train at least one epoch".into(),
            })
        }
    };
    let path = crate::checkpoint::record_path(&checkpoint_dir(run_dir), "model", epoch);
    let record = burn::store::ModuleRecord::load(&path).map_err(|e| Error::BadRun {
        dir: run_dir.to_path_buf(),
        problem: format!("cannot load {}: {e}", path.display()),
    })?;
    Ok(config.model.init(config.seed, device).load_record(record))
}
