//! Training through burn-train: [`train`] prepares the run folder, the loaders and the model,
//! hands them to burn-train's `Learner`, and scores the test split at the end. Running the same
//! request again continues from the newest complete checkpoint of the run folder.
//!
//! The parts: [`step`] (the steps burn-train runs), [`loaders`], [`progress`] (burn-train's
//! renderer turned into [`events`]), [`strategy`] (the single-device loop with checkpoints
//! within an epoch), [`metrics`], [`metric_log`], [`guard`] (the NaN stop), [`clip`],
//! [`schedule`] (the learning rate per step) and [`evaluate`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use burn::module::Module;
use burn::optim::lr_scheduler::module_lr_scheduler::ModuleLrScheduler;
use burn::tensor::Device;
use burn::train::{
    ExecutionStrategy, Interrupter, Learner, MultiDeviceOptim, SupervisedTraining, TrainingStrategy,
};

pub mod clip;
pub mod evaluate;
pub mod events;
pub mod guard;
pub mod loaders;
pub mod metric_log;
pub mod metrics;
pub mod progress;
pub mod schedule;
pub mod step;
pub mod strategy;

use crate::config::{Batching, ExperimentConfig};
use crate::data::corpus::CorpusSource;
use crate::data::prepare::{prepare, PrepareOptions, Prepared};
use crate::data::store::Tokens;
use crate::data::tokenizer::{Codec, Tokenizer, BPE_FILE};
use crate::data::vocab::Vocab;
use crate::data::vocab::UNK_ID;
use crate::error::{Error, Result};
use crate::format::format_rate;
use crate::model::adaptive::tail_ranges;
use crate::model::{LanguageModel, LmConfig, LossNorm, Softmax};
use crate::run::checkpoint::{
    checkpoint_dir, last_complete_checkpoint, newest_sound_checkpoint, remove_stale_temporaries,
    AtomicFileCheckpointer, KeepNewestComplete,
};
use crate::run::history::{bits_per_char, bpc_text, word_perplexity, word_ppl_text, EpochStats};
use crate::run::recorder::{EpochRates, EpochRecorder};
use crate::run::{check_resume, clear_run, save_run, save_test_score, Run, RunLock, TestScore};

use evaluate::{evaluate_bucketed, evaluate_stream, Evaluation};
use events::{EventSink, TrainEvent};
use guard::DivergenceGuard;
use loaders::{check_devices, loaders, parallel_summary, steps_per_epoch_on, Loaders};
use metric_log::MetricLogs;
use metrics::{EpochSums, PerplexityMetric, TokensPerSecond};
use progress::ProgressTracker;
use schedule::EpochLrScheduler;
use step::optimizer;
use strategy::{find_partial, PartialProgress, ResumableStrategy};

/// A training run to start or continue.
pub struct TrainRequest {
    /// The experiment.
    pub config: ExperimentConfig,
    /// The text.
    pub corpus: CorpusSource,
    /// The token cache the text is prepared into once (see [`crate::data::prepare`]).
    pub cache_dir: PathBuf,
    /// The run folder.
    pub run_dir: PathBuf,
    /// Start over even if the run folder holds a run.
    pub fresh: bool,
    /// Where to train: one device, or several for data-parallel training through burn-train's
    /// multi-device strategy (the first device holds the optimizer and runs validation).
    pub devices: Vec<Device>,
    /// Where progress and facts about the run are reported ([`EventSink::quiet`]: nowhere).
    pub events: EventSink,
    /// Stops training at the next batch when triggered (Ctrl-C); the last checkpoint is kept.
    pub interrupter: Interrupter,
    /// Also checkpoint within an epoch at most this often (wall time); `None`: at epoch ends
    /// only.
    pub checkpoint_every: Option<Duration>,
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

/// `--checkpoint-minutes` as an interval: `None` for 0 (checkpoints at epoch ends only).
pub fn checkpoint_interval(minutes: f64) -> Result<Option<Duration>> {
    if !(minutes >= 0.0 && minutes.is_finite()) {
        return Err(Error::Config(format!(
            "--checkpoint-minutes must be 0 (off) or a positive number, got {minutes}"
        )));
    }
    Ok((minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0)))
}

/// Trains, or continues, the run described by `request`.
pub fn train(mut request: TrainRequest) -> Result<TrainReport> {
    let start = start_from(&mut request.config, &request.run_dir)?;
    request.config.validate()?;
    check_devices(&request.config, &request.devices)?;
    let corpus = prepare_corpus(
        &mut request.config,
        &request.corpus,
        &request.cache_dir,
        start.as_ref(),
        &request.events,
    )?;
    let TrainRequest {
        config,
        run_dir,
        events,
        ..
    } = &request;
    let report = |resumed_from, epochs, interrupted, test| TrainReport {
        resumed_from,
        epochs,
        interrupted,
        test,
        vocab_size: corpus.vocab.len(),
    };

    // Held until this function returns; a second trainer in the same folder is refused.
    let _lock = RunLock::acquire(run_dir)?;
    let resumed_from = prepare_folder(run_dir, request.fresh, config, &corpus.vocab, events)?;
    if let Some(done) = resumed_from.filter(|&e| e >= config.epochs) {
        events.info(already_trained(run_dir, done, config.epochs));
        return Ok(report(resumed_from, Vec::new(), false, None));
    }
    save_run(run_dir, config, &corpus.vocab, resumed_from.unwrap_or(0))?;
    if let Codec::Bpe(_) = corpus.codec {
        // The BPE model goes with the run: eval, generate and resume read it there.
        let from = corpus.dir.join(BPE_FILE);
        let bytes = std::fs::read(&from).map_err(|e| Error::io("cannot read", &from, e))?;
        crate::fsutil::write_atomic(&run_dir.join(BPE_FILE), &bytes)?;
    }

    let start = start.filter(|_| resumed_from.is_none());
    let fitted = fit(&request, &corpus, resumed_from, start.as_ref())?;
    let test = match (&corpus.test, fitted.interrupted) {
        (Some(test), false) => {
            let eval_device = request.devices[0].clone().without_autodiff();
            let model = fitted.model.fork(&eval_device);
            Some(score_test(
                &model,
                config,
                test,
                &eval_device,
                run_dir,
                events,
            ))
        }
        _ => None,
    };
    Ok(report(
        resumed_from,
        fitted.epochs,
        fitted.interrupted,
        test,
    ))
}

/// The corpus as token stores (prepared now, or found in `cache_dir`), announced through
/// `events`; sets `config.model.vocab_size` to its vocabulary and checks the softmax against
/// it. A run started from another (`start`) keeps that run's vocabulary and tokenizer.
fn prepare_corpus(
    config: &mut ExperimentConfig,
    corpus: &CorpusSource,
    cache_dir: &Path,
    start: Option<&Run>,
    events: &EventSink,
) -> Result<Prepared> {
    let options = PrepareOptions {
        cache_dir: cache_dir.to_path_buf(),
        max_vocab: config.data.max_vocab,
        tokenizer: config.data.tokenizer,
        fixed: start.map(|run| (run.vocab().clone(), run.codec().clone())),
    };
    let corpus = prepare(corpus, &options, &mut |e| {
        events.send(TrainEvent::Prepare(e))
    })?;
    let how = if corpus.reused {
        "prepared before"
    } else {
        "prepared now"
    };
    events.info(format!("tokens: {} ({how})", corpus.dir.display()));
    if let Some(note) = &corpus.held_out {
        events.info(note.clone());
    }
    let vocab = corpus.vocab.len();
    config.model.vocab_size = vocab;
    config
        .model
        .softmax
        .check_vocab(vocab)
        .map_err(Error::Config)?;
    if let Softmax::Adaptive { cutoffs, .. } = &config.model.softmax {
        events.info(cluster_note(cutoffs, vocab, &corpus.train));
    }
    Ok(corpus)
}

/// What [`fit`] leaves.
struct Fitted {
    /// The model after the last step.
    model: LanguageModel,
    /// The epochs trained.
    epochs: Vec<EpochStats>,
    /// True when stopped by the interrupter.
    interrupted: bool,
}

/// Trains the model of `request` on `corpus` through burn-train's `Learner` from epoch
/// `resumed_from` (or within the epoch after it, from a checkpoint within an epoch), the
/// weights of `start` when a new run starts from another; a failure or a diverged loss becomes
/// the run's error.
fn fit(
    request: &TrainRequest,
    corpus: &Prepared,
    resumed_from: Option<usize>,
    start: Option<&Run>,
) -> Result<Fitted> {
    let TrainRequest {
        config,
        run_dir,
        devices,
        events,
        ..
    } = request;
    let first_epoch = resumed_from.unwrap_or(0) + 1;
    let loaders = loaders(
        config,
        &corpus.train,
        &corpus.valid,
        first_epoch,
        &devices[0],
        events,
    )?;
    let partial = partial_to_resume(run_dir, first_epoch, devices.len(), events);
    let steps_per_epoch = steps_per_epoch_on(&loaders, devices, config);
    let start = start.filter(|_| partial.is_none());
    let mut model = init_model(config, devices, run_dir, start, events)?;
    let setup = Setup {
        run_dir,
        config,
        devices,
        first_epoch,
        resumed_from,
        checkpoint_every: request.checkpoint_every,
        tokens_per_char: (
            corpus.train.tokens_per_char(),
            corpus.valid.tokens_per_char(),
        ),
        tokens_per_word: per_word(config, &corpus.valid),
    };
    announce_start(&setup, steps_per_epoch, &partial, events);

    let recorder = Arc::new(Mutex::new(EpochRecorder::open(
        run_dir,
        config.lr_schedule,
        config.optimizer.lr(),
    )));
    let rates = recorder.lock().expect("recorder lock").rates();
    let scheduler = EpochLrScheduler::new(rates.clone(), steps_per_epoch);
    let optim = optimizer(&config.optimizer, &mut model);
    let learner = Learner::new(model, optim, ModuleLrScheduler::new(scheduler));
    // Stops the run at the first NaN or infinite batch loss, before any checkpoint holds it.
    let guard = DivergenceGuard::new(request.interrupter.clone());
    let result = supervised(&setup, loaders, partial, &guard, &recorder, events)
        .with_interrupter(request.interrupter.clone())
        .launch(learner);
    check_outcome(result.error, &guard, &rates, run_dir)?;
    let interrupted = result.interrupted.is_some();
    if interrupted {
        events.info(format!(
            "interrupted; {}; run the same command again to continue",
            kept_checkpoint(run_dir)
        ));
    }
    let epochs = recorder.lock().expect("recorder lock").recorded().to_vec();
    Ok(Fitted {
        model: result.model,
        epochs,
        interrupted,
    })
}

/// Readies the locked run folder: stale temporary files removed, the run cleared when `fresh`,
/// a saved run checked against `config` and `vocab`. Returns the epoch to resume from.
fn prepare_folder(
    run_dir: &Path,
    fresh: bool,
    config: &ExperimentConfig,
    vocab: &Vocab,
    events: &EventSink,
) -> Result<Option<usize>> {
    remove_stale_temporaries(run_dir);
    if fresh {
        clear_run(run_dir)?;
    }
    let resume = check_resume(run_dir, config, vocab)?;
    if let Some(note) = resume.lr_note() {
        events.info(note);
    }
    Ok(resume.epoch)
}

/// The checkpoint within epoch `first_epoch` to resume from, if any; several devices resume
/// from epoch checkpoints only, and say so.
fn partial_to_resume(
    run_dir: &Path,
    first_epoch: usize,
    devices: usize,
    events: &EventSink,
) -> Option<PartialProgress> {
    let partial = find_partial(run_dir, first_epoch)?;
    if devices > 1 {
        events.info(format!(
            "not resuming within epoch {} (batch {}): training on several devices resumes from \
             epoch checkpoints only",
            partial.epoch, partial.batches
        ));
        return None;
    }
    Some(partial)
}

/// One line on how the adaptive softmax's `cutoffs` split the training tokens, so that a user
/// can see whether the head holds most of them.
fn cluster_note(cutoffs: &[usize], vocab: usize, train: &Tokens) -> String {
    let shares = train.shares_below_and_between(cutoffs);
    let clusters: Vec<String> = tail_ranges(cutoffs, vocab)
        .iter()
        .zip(&shares[1..])
        .map(|(ids, share)| format!("ids {}-{} {:.1}%", ids.start, ids.end - 1, share * 100.0))
        .collect();
    format!(
        "adaptive softmax: the head's {} words hold {:.1}% of the training tokens; tail \
         clusters: {}",
        cutoffs[0],
        shares[0] * 100.0,
        clusters.join(", ")
    )
}

/// The run a new run starts from (`--init-from`), opened; its model sizes, output layer and
/// tokenizer replace `config`'s (the training settings stay).
fn start_from(config: &mut ExperimentConfig, run_dir: &Path) -> Result<Option<Run>> {
    let Some(dir) = config.init_from.clone() else {
        return Ok(None);
    };
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if same(&dir, run_dir) {
        return Err(Error::Config(format!(
            "--init-from {} is the run folder itself; pass another --artifact-dir for the new run",
            dir.display()
        )));
    }
    let source = match Run::open(&dir) {
        Ok(source) => source,
        // Resuming after the source was moved away: the run holds the same vocabulary and
        // tokenizer, and its checkpoint the model.
        Err(gone) => match Run::open(run_dir) {
            Ok(own)
                if own.config().init_from.as_deref() == Some(dir.as_path())
                    && newest_sound_checkpoint(run_dir).is_some() =>
            {
                own
            }
            _ => return Err(gone),
        },
    };
    let theirs = &source.config().model;
    config.model = LmConfig {
        init: config.model.init,
        loss_norm: config.model.loss_norm,
        dropout: config.model.dropout,
        ..theirs.clone()
    };
    config.data.tokenizer = source.config().data.tokenizer;
    config.data.max_vocab = 0;
    Ok(Some(source))
}

/// The model a run starts with, on the first device, with the training settings its step
/// reads: the newest model of `start` (`--init-from`), or the seeded initialisation.
fn init_model(
    config: &ExperimentConfig,
    devices: &[Device],
    run_dir: &Path,
    start: Option<&Run>,
    events: &EventSink,
) -> Result<LanguageModel> {
    let device = &devices[0];
    let mut model = match start {
        Some(source) => started_from(source, config, &device.clone().autodiff(), events)?,
        None => config.model.init(config.seed, &device.clone().autodiff()),
    };
    model.max_grad_norm = config.clip;
    model.devices = devices.len();
    events.info(format!(
        "model: {} x {} LSTM, embedding {}, {} parameters; device {}; run folder {}",
        config.model.n_layers,
        config.model.d_hidden,
        config.model.d_embed,
        model.num_params(),
        crate::device::describe(device),
        run_dir.display()
    ));
    Ok(model)
}

/// The newest model of `source` on `device`, with `config`'s training settings; says where it
/// came from and gives a row the source never had (an imported `<unk>`) a bias it can learn.
fn started_from(
    source: &Run,
    config: &ExperimentConfig,
    device: &Device,
    events: &EventSink,
) -> Result<LanguageModel> {
    let (mut model, epoch) = source.load_model(None, device)?;
    model.dropout = config.model.dropout;
    model.loss_per_batch = config.model.loss_norm == LossNorm::Batch;
    events.info(format!(
        "starting from the model of {} ({}); its vocabulary of {} tokens is fixed (other words \
         read as <unk>); the optimizer state starts fresh",
        source.dir().display(),
        if epoch == 0 {
            "as imported".to_string()
        } else {
            format!("epoch {epoch}")
        },
        source.vocab().len()
    ));
    if model.revive_output_row(UNK_ID) {
        events.info(
            "the model had no <unk>: its row starts with the lowest bias of the others, to be \
             learned",
        );
    }
    Ok(model)
}

/// That `run_dir` already holds the `done` epochs of the `asked` ones, and what to do.
fn already_trained(run_dir: &Path, done: usize, asked: usize) -> String {
    format!(
        "{} already holds {done} trained epochs (asked for {asked}); pass --epochs {} to train \
         longer, or --fresh to start over",
        run_dir.display(),
        done + 1
    )
}

/// Says how the run is split across devices and where it starts.
fn announce_start(
    setup: &Setup,
    steps_per_epoch: usize,
    partial: &Option<PartialProgress>,
    events: &EventSink,
) {
    let devices = setup.devices;
    if devices.len() > 1 {
        events.info(parallel_summary(setup.config, devices, steps_per_epoch));
        if setup.checkpoint_every.is_some() {
            events.info(
                "checkpoints at epoch ends only: burn-train's multi-device strategy has no \
                 checkpoints within an epoch",
            );
        }
    }
    events.info(match (partial, setup.resumed_from) {
        (Some(p), _) => format!(
            "resuming within epoch {}, after batch {} (a checkpoint within the epoch)",
            p.epoch, p.batches
        ),
        (None, Some(epoch)) => format!("resuming from the checkpoint of epoch {epoch}"),
        (None, None) => "starting a new run".to_string(),
    });
}

/// What [`supervised`] builds the training from.
struct Setup<'a> {
    run_dir: &'a Path,
    config: &'a ExperimentConfig,
    devices: &'a [Device],
    first_epoch: usize,
    resumed_from: Option<usize>,
    checkpoint_every: Option<Duration>,
    /// Tokens per character of the training and validation text.
    tokens_per_char: (Option<f64>, Option<f64>),
    /// Tokens per word of the validation text (character and subword models).
    tokens_per_word: Option<f64>,
}

/// burn-train's supervised training of `setup`: metrics, metric logs, atomic checkpoints, the
/// progress tracker that records each epoch with `recorder`, and the single-device loop with
/// checkpoints within an epoch, or burn-train's data-parallel one.
fn supervised(
    setup: &Setup,
    loaders: Loaders,
    partial: Option<PartialProgress>,
    guard: &DivergenceGuard,
    recorder: &Arc<Mutex<EpochRecorder>>,
    events: &EventSink,
) -> SupervisedTraining<LanguageModel> {
    let batch_items = setup.config.data.batch_size;
    let tracker =
        ProgressTracker::new(batch_items, recorder.clone(), guard.clone(), events.clone())
            .with_text_ratios(setup.tokens_per_char, setup.tokens_per_word);
    let ckpt = checkpoint_dir(setup.run_dir);
    // The training perplexity's running sums, which a checkpoint within an epoch saves.
    let sums = Arc::new(Mutex::new(EpochSums::default()));
    let strategy = if setup.devices.len() > 1 {
        // burn-train's own data-parallel loop: the loaders are split across the devices
        // (`slice`), gradients are summed on the first device, which steps the optimizer.
        ExecutionStrategy::multi(setup.devices.to_vec(), MultiDeviceOptim::OptimMainDevice).into()
    } else {
        TrainingStrategy::Custom(Arc::new(ResumableStrategy::new(
            setup.devices[0].clone().autodiff(),
            setup.run_dir,
            setup.checkpoint_every,
            sums.clone(),
            loaders.carry.clone(),
            partial.clone(),
            events.clone(),
        )))
    };
    let training = SupervisedTraining::new(setup.run_dir, loaders.train, loaders.valid)
        .metric_train_numeric(
            PerplexityMetric::guarded(guard.clone(), "training", setup.first_epoch)
                .tracking(sums, partial.as_ref().map(|p| p.sums).unwrap_or_default()),
        )
        .metric_valid_numeric(PerplexityMetric::guarded(
            guard.clone(),
            "validation",
            setup.first_epoch,
        ))
        .metric_train_numeric(TokensPerSecond::new())
        .metric_valid_numeric(TokensPerSecond::new())
        .with_metric_logger(MetricLogs::new(setup.run_dir, events.clone()))
        .with_custom_checkpointers(
            AtomicFileCheckpointer::new(&ckpt, "model"),
            AtomicFileCheckpointer::new(&ckpt, "optim"),
            AtomicFileCheckpointer::new(&ckpt, "scheduler"),
        )
        .with_checkpointing_strategy(KeepNewestComplete::new(&ckpt))
        .num_epochs(setup.config.epochs)
        .renderer(Box::new(tracker))
        .with_training_strategy(strategy);
    match setup.resumed_from {
        Some(epoch) => training.checkpoint(epoch),
        None => training,
    }
}

/// Turns how burn-train ended into this run's error, if it failed or the loss diverged.
fn check_outcome(
    error: Option<impl std::fmt::Display>,
    guard: &DivergenceGuard,
    rates: &EpochRates,
    run_dir: &Path,
) -> Result<()> {
    if let Some(error) = error {
        let error = error.to_string();
        let hint = if error.contains("No space left") || error.contains("os error 28") {
            "the disk is full: free some space, then "
        } else {
            "after fixing the cause, "
        };
        return Err(Error::Training(format!(
            "{error}; {}; {hint}run the same command again to continue",
            kept_checkpoint(run_dir)
        )));
    }
    if let Some(d) = guard.tripped() {
        return Err(Error::Diverged {
            split: d.split,
            loss: if d.loss.is_nan() { "NaN" } else { "infinite" },
            epoch: d.epoch,
            batch: d.batch,
            lr: format_rate(rates.lr(d.epoch)),
            kept: kept_checkpoint(run_dir),
        });
    }
    Ok(())
}

/// Which checkpoint a rerun resumes from, in words.
fn kept_checkpoint(run_dir: &Path) -> String {
    match last_complete_checkpoint(run_dir) {
        Some(e) => format!("the checkpoint of epoch {e} is kept"),
        None => "no epoch had finished".to_string(),
    }
}

/// Scores the test split the way the run was trained: with full context (the whole split as one
/// stream, state carried) for a stream run, sentence by sentence in buckets for a bucket run;
/// records the score as the run's `test.json`.
fn score_test(
    model: &LanguageModel,
    config: &ExperimentConfig,
    test: &Arc<Tokens>,
    device: &Device,
    run_dir: &Path,
    events: &EventSink,
) -> Evaluation {
    let score = match config.data.batching {
        Batching::Stream => {
            let e = evaluate_stream(model, test, 1, config.data.bptt, device);
            events.info(format!(
                "test (full context): {} tokens, loss {:.4}, perplexity {:.2}{}{}",
                e.tokens,
                e.loss,
                e.perplexity,
                bpc_text(bits_per_char(e.loss, test.tokens_per_char())),
                word_ppl_text(word_perplexity(e.loss, per_word(config, test)))
            ));
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
            events.info(format!(
                "test: {} tokens, loss {:.4}, perplexity {:.2} ({} sentences longer than {largest} \
                 tokens not scored)",
                e.tokens, e.loss, e.perplexity, e.dropped_sentences
            ));
            e
        }
    };
    let record = TestScore {
        epoch: last_complete_checkpoint(run_dir).unwrap_or(config.epochs),
        tokens: score.tokens,
        loss: score.loss,
        perplexity: score.perplexity,
        bits_per_char: bits_per_char(score.loss, test.tokens_per_char()),
        word_perplexity: word_perplexity(score.loss, per_word(config, test)),
    };
    if let Err(e) = save_test_score(run_dir, &record) {
        events.warn(format!("the test score is not recorded: {e}"));
    }
    score
}

/// Tokens per word of `tokens` for a character or subword model (`None` for a word model,
/// whose perplexity is already per word).
pub fn per_word(config: &ExperimentConfig, tokens: &Tokens) -> Option<f64> {
    (config.data.tokenizer != Tokenizer::Word)
        .then(|| tokens.tokens_per_word())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_minutes_become_an_interval_or_none_and_bad_values_are_refused() {
        assert_eq!(checkpoint_interval(0.0).unwrap(), None);
        assert_eq!(
            checkpoint_interval(1.5).unwrap(),
            Some(Duration::from_secs(90))
        );
        for bad in [-1.0, f64::NAN, f64::INFINITY] {
            let e = checkpoint_interval(bad).unwrap_err().to_string();
            assert!(e.contains("--checkpoint-minutes must be 0 (off)"), "{e}");
        }
    }
}
