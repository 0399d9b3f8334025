//! Training through burn-train: the train/inference steps, the loaders, the learning-rate
//! schedule, checkpoints and resume.
//!
//! Running the same command again continues from the newest complete checkpoint of the run
//! folder (see [`crate::run`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::data::dataloader::DataLoader;
use burn::module::{Module, ParamGroup};
use burn::optim::decay::WeightDecayConfig;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::optim::momentum::MomentumConfig;
use burn::optim::{AdamConfig, GradientsParams, ModuleOptimizer, SgdConfig};
use burn::tensor::{Device, ExecutionError, Tensor};
use burn::train::metric::Adaptor;
use burn::train::{
    ExecutionStrategy, InferenceStep, Interrupter, ItemLazy, Learner, MultiDeviceOptim,
    SupervisedTraining, TrainOutput, TrainStep, TrainingStrategy,
};

use crate::carry::StateCarry;
use crate::checkpoint::{
    checkpoint_dir, last_complete_checkpoint, remove_stale_temporaries, AtomicFileCheckpointer,
    KeepNewestComplete,
};
use crate::clip::clip_grad_norm;
use crate::config::{Batching, ExperimentConfig, OptimizerConfig};
use crate::data::batcher::{BucketLoader, Buckets};
use crate::data::corpus::CorpusSource;
use crate::data::stream::{Stream, StreamLoader};
use crate::data::vocab::Vocab;
use crate::error::{Error, Result};
use crate::eval::{evaluate_bucketed, evaluate_stream, Evaluation};
use crate::guard::DivergenceGuard;
use crate::metric_log::MetricLogs;
use crate::metrics::{EpochSums, NllInput, PerplexityMetric, TokenCountInput, TokensPerSecond};
use crate::model::{LanguageModel, LmBatch};
use crate::plot::write_curves;
use crate::render::{EpochStats, Progress, Renderer};
use crate::run::{
    append_history, check_resume, clear_run, save_run, save_test_score, RunLock, TestScore,
};
pub use crate::run::{files, load_config, load_model, read_history};
use crate::schedule::{format_rate, EpochLrScheduler};
use crate::strategy::{find_partial, ResumableStrategy};

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

/// A training step: forward from the carried state (stream windows) or zeros, backward, global
/// gradient clipping. The final state is left for the next window before the backward pass; it
/// is detached, so the next window's graph stops there (truncated BPTT).
///
/// On `n` devices each computes `1 / n` of the gradient of its own batch and clips it at `1 / n`
/// of the threshold: the sum burn-train forms is the mean of the devices' gradients, and its norm
/// stays within the threshold.
impl TrainStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> TrainOutput<LmOutput> {
        let loss = self.loss_carried(&batch);
        let share = 1.0 / self.devices.max(1) as f64;
        let differentiated = if self.devices > 1 {
            loss.loss.clone() * share as f32
        } else {
            loss.loss.clone()
        };
        let mut grads = GradientsParams::from_grads(differentiated.backward(), self);
        if self.max_grad_norm > 0.0 {
            clip_grad_norm(self, &mut grads, self.max_grad_norm * share);
        }
        TrainOutput {
            grads,
            item: LmOutput {
                loss: loss.loss.detach(),
                nll_sum: loss.nll_sum.detach(),
                tokens: loss.tokens,
            },
        }
    }
}

/// A validation step: the same loss, carrying the state between windows of a stream.
impl InferenceStep for LanguageModel {
    type Input = LmBatch;
    type Output = LmOutput;

    fn step(&self, batch: LmBatch) -> LmOutput {
        let loss = self.loss_carried(&batch);
        LmOutput {
            loss: loss.loss,
            nll_sum: loss.nll_sum,
            tokens: loss.tokens,
        }
    }
}

/// The training and validation loaders of a run, and the optimizer steps per epoch.
struct Loaders {
    train: Arc<dyn DataLoader<LmBatch>>,
    valid: Arc<dyn DataLoader<LmBatch>>,
    steps_per_epoch: usize,
    /// The training windows' carried states (stream batching).
    carry: Option<StateCarry>,
}

/// Makes the loaders `config` asks for and prints what the data gives.
fn loaders(
    config: &ExperimentConfig,
    train_ids: &[Vec<usize>],
    valid_ids: &[Vec<usize>],
    first_epoch: usize,
    device: &Device,
) -> Result<Loaders> {
    let data = &config.data;
    let train_tokens: usize = train_ids.iter().map(Vec::len).sum();
    match data.batching {
        Batching::Buckets => {
            let train_buckets = Buckets::new(train_ids, &data.buckets);
            let valid_buckets = Buckets::new(valid_ids, &data.buckets);
            let largest = data.buckets.iter().max().copied().unwrap_or(0);
            println!(
                "data: {} train sentences ({} tokens), {} valid; buckets {:?}; dropped {} train and \
                 {} valid sentences longer than {largest} tokens",
                train_ids.len(),
                train_tokens - train_ids.len(),
                valid_ids.len(),
                data.buckets,
                train_buckets.dropped,
                valid_buckets.dropped,
            );
            let steps_per_epoch = train_buckets.num_batches(data.batch_size);
            if train_buckets.dropped == train_ids.len() {
                return Err(Error::Config(format!(
                    "every training sentence is longer than the largest bucket ({largest} \
                     tokens); pass --batching stream (no length limit) or larger --buckets"
                )));
            }
            if steps_per_epoch == 0 {
                return Err(Error::Config(format!(
                    "no bucket holds {} training sentences, so there is no full batch; lower \
                     --batch-size or add training text",
                    data.batch_size
                )));
            }
            Ok(Loaders {
                train: Arc::new(BucketLoader::training(
                    train_buckets,
                    data.batch_size,
                    config.seed,
                    first_epoch,
                    device.clone(),
                )),
                valid: Arc::new(BucketLoader::evaluation(
                    valid_buckets,
                    data.batch_size,
                    device.clone(),
                )),
                steps_per_epoch,
                carry: None,
            })
        }
        Batching::Stream => {
            let train = StreamLoader::training(
                Stream::new(train_ids, data.batch_size),
                data.bptt,
                config.seed,
                first_epoch,
                device.clone(),
            );
            let valid = StreamLoader::evaluation(
                Stream::new(valid_ids, data.batch_size),
                data.bptt,
                device.clone(),
            );
            println!(
                "data: a stream of {train_tokens} train tokens in {} columns, {} windows of {} \
                 steps per epoch; valid {} tokens in {} windows",
                data.batch_size,
                train.num_windows(),
                data.bptt,
                valid_ids.iter().map(Vec::len).sum::<usize>(),
                valid.num_windows(),
            );
            if train.num_windows() == 0 || valid.num_windows() == 0 {
                return Err(Error::Config(format!(
                    "the {} split is too short for {} columns of at least 2 tokens; lower \
                     --batch-size or add text",
                    if train.num_windows() == 0 {
                        "training"
                    } else {
                        "validation"
                    },
                    data.batch_size
                )));
            }
            Ok(Loaders {
                steps_per_epoch: train.num_windows(),
                carry: Some(train.carry()),
                train: Arc::new(train),
                valid: Arc::new(valid),
            })
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
    /// Where to train: one device, or several for data-parallel training through burn-train's
    /// multi-device strategy (the first device holds the optimizer and runs validation).
    pub devices: Vec<Device>,
    /// How to show progress.
    pub progress: Progress,
    /// Stops training at the next batch when triggered (Ctrl-C); the last checkpoint is kept.
    pub interrupter: Interrupter,
    /// Also checkpoint within an epoch at most this often (wall time); `None`: at epoch ends
    /// only.
    pub checkpoint_every: Option<std::time::Duration>,
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
        devices,
        progress,
        interrupter,
        checkpoint_every,
    } = request;
    config.validate()?;
    check_devices(&config, &devices)?;
    let device = devices[0].clone();
    let corpus = corpus.load()?;
    let vocab = Vocab::build(
        corpus.train.iter().map(Vec::as_slice),
        config.data.max_vocab,
    );
    config.model.vocab_size = vocab.len();

    // Held until this function returns; a second trainer in the same folder is refused.
    let _lock = RunLock::acquire(&run_dir)?;
    remove_stale_temporaries(&run_dir);
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
    let first_epoch = resumed_from.unwrap_or(0) + 1;
    let loaders = loaders(&config, &train_ids, &valid_ids, first_epoch, &device)?;
    let parallel = devices.len() > 1;
    let mut partial = find_partial(&run_dir, first_epoch);
    if let Some(p) = partial.as_ref().filter(|_| parallel) {
        println!(
            "not resuming within epoch {} (batch {}): training on several devices resumes from \
             epoch checkpoints only",
            p.epoch, p.batches
        );
        partial = None;
    }
    let steps_per_epoch = steps_per_epoch_on(&loaders, &devices, &config);

    let mut model = config.model.init(config.seed, &device.clone().autodiff());
    model.max_grad_norm = config.clip;
    model.devices = devices.len();
    println!(
        "model: {} x {} LSTM, embedding {}, {} parameters; device {}; run folder {}",
        config.model.n_layers,
        config.model.d_hidden,
        config.model.d_embed,
        model.num_params(),
        crate::device::describe(&device),
        run_dir.display()
    );
    if parallel {
        println!("{}", parallel_summary(&config, &devices, steps_per_epoch));
        if checkpoint_every.is_some() {
            println!(
                "checkpoints at epoch ends only: burn-train's multi-device strategy has no \
                 checkpoints within an epoch"
            );
        }
    }
    match (&partial, resumed_from) {
        (Some(p), _) => println!(
            "resuming within epoch {}, after batch {} (a checkpoint within the epoch)",
            p.epoch, p.batches
        ),
        (None, Some(epoch)) => println!("resuming from the checkpoint of epoch {epoch}"),
        (None, None) => println!("starting a new run"),
    }
    // The validation perplexities of finished epochs, which the plateau schedule reads; a resumed
    // run starts from the ones its history holds.
    let earlier = read_history(&run_dir);
    let valid_history = Arc::new(Mutex::new(
        earlier
            .iter()
            .map(|s| s.valid_perplexity)
            .collect::<Vec<_>>(),
    ));
    let scheduler = EpochLrScheduler::new(
        config.lr_schedule,
        config.optimizer.lr(),
        steps_per_epoch,
        valid_history.clone(),
    );
    let learner = Learner::new(
        model,
        optimizer(&config.optimizer),
        ModuleLrScheduler::new(scheduler),
    );

    // Stops the run at the first NaN or infinite batch loss, before any checkpoint holds it.
    let guard = DivergenceGuard::new(interrupter.clone());
    let history = Arc::new(Mutex::new(Vec::new()));
    let renderer = {
        let history = history.clone();
        let guard = guard.clone();
        let valid_history = valid_history.clone();
        let dir = run_dir.clone();
        let path = run_dir.join(files::HISTORY);
        let (schedule, base_lr) = (config.lr_schedule, config.optimizer.lr());
        Renderer::new(
            progress,
            config.data.batch_size,
            Box::new(move |stats: &mut EpochStats| {
                let mut valid = valid_history.lock().expect("history lock");
                stats.lr = schedule.lr_for_epoch(base_lr, stats.epoch, &valid);
                if guard.tripped().is_some() {
                    // The epoch ends without a checkpoint: record nothing of it.
                    return;
                }
                valid.push(stats.valid_perplexity);
                history.lock().expect("history lock").push(stats.clone());
                if let Err(e) = append_history(&path, stats) {
                    eprintln!("warning: cannot record epoch {}: {e}", stats.epoch);
                }
                if let Err(e) = write_curves(&dir, &run_title(&dir), &read_history(&dir)) {
                    eprintln!("warning: {e}");
                }
            }),
        )
    };
    let ckpt = checkpoint_dir(&run_dir);
    // The training perplexity's running sums, which a checkpoint within an epoch saves.
    let sums = Arc::new(Mutex::new(EpochSums::default()));
    let mut training = SupervisedTraining::new(&run_dir, loaders.train, loaders.valid)
        .metric_train_numeric(
            PerplexityMetric::guarded(guard.clone(), "training", first_epoch).tracking(
                sums.clone(),
                partial.as_ref().map(|p| p.sums).unwrap_or_default(),
            ),
        )
        .metric_valid_numeric(PerplexityMetric::guarded(
            guard.clone(),
            "validation",
            first_epoch,
        ))
        .metric_train_numeric(TokensPerSecond::new())
        .metric_valid_numeric(TokensPerSecond::new())
        .with_metric_logger(MetricLogs::new(&run_dir))
        .with_custom_checkpointers(
            AtomicFileCheckpointer::new(&ckpt, "model"),
            AtomicFileCheckpointer::new(&ckpt, "optim"),
            AtomicFileCheckpointer::new(&ckpt, "scheduler"),
        )
        .with_checkpointing_strategy(KeepNewestComplete::new(&ckpt))
        .num_epochs(config.epochs)
        .renderer(Box::new(renderer))
        .with_training_strategy(if parallel {
            // burn-train's own data-parallel loop: the loaders are split across the devices
            // (`slice`), gradients are summed on the first device, which steps the optimizer.
            ExecutionStrategy::multi(devices.clone(), MultiDeviceOptim::OptimMainDevice).into()
        } else {
            TrainingStrategy::Custom(Arc::new(ResumableStrategy::new(
                device.clone().autodiff(),
                &run_dir,
                checkpoint_every,
                sums,
                loaders.carry.clone(),
                partial,
            )))
        })
        .with_interrupter(interrupter);
    if let Some(epoch) = resumed_from {
        training = training.checkpoint(epoch);
    }
    let result = training.launch(learner);
    if let Some(error) = result.error {
        let error = error.to_string();
        let hint = if error.contains("No space left") || error.contains("os error 28") {
            "the disk is full: free some space, then "
        } else {
            "after fixing the cause, "
        };
        return Err(Error::Training(format!(
            "{error}. {}; {hint}run the same command again to continue",
            kept_checkpoint(&run_dir)
        )));
    }
    let epochs = history.lock().expect("history lock").clone();
    if let Some(d) = guard.tripped() {
        // The validation perplexities of the epochs before it, as the scheduler saw them.
        let earlier = valid_history.lock().expect("history lock").clone();
        return Err(Error::Diverged {
            split: d.split,
            loss: if d.loss.is_nan() { "NaN" } else { "infinite" },
            epoch: d.epoch,
            batch: d.batch,
            lr: format_rate(config.lr_schedule.lr_for_epoch(
                config.optimizer.lr(),
                d.epoch,
                &earlier,
            )),
            kept: kept_checkpoint(&run_dir),
        });
    }
    let interrupted = result.interrupted.is_some();
    if interrupted {
        println!(
            "interrupted; {}; run the same command again to continue",
            kept_checkpoint(&run_dir)
        );
    }

    let test = match (&corpus.test, interrupted) {
        (Some(test), false) => {
            let eval_device = device.clone().without_autodiff();
            let model = result.model.fork(&eval_device);
            let score = evaluate_test(&model, &config, &encode(test), &eval_device);
            let record = TestScore {
                epoch: last_complete_checkpoint(&run_dir).unwrap_or(config.epochs),
                tokens: score.tokens,
                loss: score.loss,
                perplexity: score.perplexity,
            };
            if let Err(e) = save_test_score(&run_dir, &record) {
                eprintln!("warning: the test score is not recorded: {e}");
            }
            Some(score)
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

/// Refuses device lists that cannot train `config`: none at all, or a stream whose columns do not
/// split evenly across the devices (each device's share of the gradient would be off).
fn check_devices(config: &ExperimentConfig, devices: &[Device]) -> Result<()> {
    let n = devices.len();
    if n == 0 {
        return Err(Error::Config("no device to train on".into()));
    }
    if n > 1
        && config.data.batching == Batching::Stream
        && !config.data.batch_size.is_multiple_of(n)
    {
        return Err(Error::Config(format!(
            "stream batching splits each batch's {} columns across the devices, so --batch-size \
             must be a multiple of the {n} devices; pass --batch-size {}",
            config.data.batch_size,
            config.data.batch_size.div_ceil(n) * n
        )));
    }
    Ok(())
}

/// Optimizer steps per epoch on `devices`. burn-train splits the training loader across them
/// and each step takes one batch from every device that still has one: a stream slice serves
/// every window of its columns, a bucket slice its share of the batches.
fn steps_per_epoch_on(loaders: &Loaders, devices: &[Device], config: &ExperimentConfig) -> usize {
    if devices.len() < 2 || config.data.batching == Batching::Stream {
        return loaders.steps_per_epoch;
    }
    burn::data::dataloader::split::split_dataloader(loaders.train.clone(), devices)
        .iter()
        .map(|part| part.num_items() / config.data.batch_size)
        .max()
        .unwrap_or(0)
}

/// The data-parallel setup in one line.
fn parallel_summary(config: &ExperimentConfig, devices: &[Device], steps: usize) -> String {
    let n = devices.len();
    let b = config.data.batch_size;
    let per_step = match config.data.batching {
        Batching::Stream => format!(
            "each step splits the {b} stream columns, {} per device",
            b / n
        ),
        Batching::Buckets => {
            format!("each step takes {n} batches of {b} sentences, one per device")
        }
    };
    format!(
        "data parallel on {n} devices ({}): {per_step}; the gradient is their mean, {steps} steps \
         per epoch",
        devices
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// Which checkpoint a rerun resumes from, in words.
fn kept_checkpoint(run_dir: &std::path::Path) -> String {
    match last_complete_checkpoint(run_dir) {
        Some(e) => format!("the checkpoint of epoch {e} is kept"),
        None => "no epoch had finished".to_string(),
    }
}

/// The title of a run's plot: its folder name.
pub fn run_title(run_dir: &std::path::Path) -> String {
    run_dir.file_name().map_or_else(
        || run_dir.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Scores the test split the way the run was trained: with full context (the whole split as one
/// stream, state carried) for a stream run, sentence by sentence in buckets for a bucket run.
fn evaluate_test(
    model: &LanguageModel,
    config: &ExperimentConfig,
    test: &[Vec<usize>],
    device: &Device,
) -> Evaluation {
    match config.data.batching {
        Batching::Stream => {
            let e = evaluate_stream(model, test, 1, config.data.bptt, device);
            println!(
                "test (full context): {} tokens, loss {:.4}, perplexity {:.2}",
                e.tokens, e.loss, e.perplexity
            );
            e
        }
        Batching::Buckets => {
            let e = evaluate_bucketed(
                model,
                test,
                &config.data.buckets,
                config.data.batch_size,
                device,
            );
            let largest = config.data.buckets.iter().max().copied().unwrap_or(0);
            println!(
                "test: {} tokens, loss {:.4}, perplexity {:.2} ({} sentences longer than {largest} \
                 tokens not scored)",
                e.tokens, e.loss, e.perplexity, e.dropped_sentences
            );
            e
        }
    }
}

/// The optimizer of `config`; biases are never weight-decayed (MXNet's `wd_mult` is 0 on
/// biases).
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
