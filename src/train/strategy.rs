//! burn-train's single-device training loop, plus checkpoints within an epoch.
//!
//! burn-train 0.22 checkpoints only when an epoch ends, so a kill loses the epoch in progress.
//! [`ResumableStrategy`] is its single-device loop (train split, validation split, epoch
//! checkpoint, the same events in the same order) with one addition: every `every` of wall
//! time it saves a *partial* checkpoint into `checkpoint/partial/`: model, optimizer and
//! scheduler records (atomic files + checksummed manifest, as epoch checkpoints), numbered by a
//! generation `g`, and `progress-g.json` with the epoch, the batches done, the epoch's running
//! perplexity sums and the carried LSTM states. A partial checkpoint is usable when its
//! manifest is complete and sound and its progress file exists; generations are deleted only
//! once a newer one is complete, so a kill while one is being written leaves the previous one.
//!
//! Resuming from one loads the records, skips the batches already done (the loaders are pure
//! functions of seed, epoch and batch), restores the carried states and the perplexity sums:
//! the run then continues exactly as if it had not stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use burn::tensor::Device;
use burn::train::checkpoint::AsyncCheckpointer;
use burn::train::metric::store::EventStoreClient;
use burn::train::{
    EventProcessorTraining, InferenceStep, Interrupter, Learner, LearnerEvent, LearnerModel,
    LearningCheckpointer, SupervisedLearningStrategy, SupervisedTrainingEventProcessor,
    TrainLoader, TrainingComponents, TrainingError, TrainingItem, ValidLoader,
};
use serde::{Deserialize, Serialize};

use super::events::EventSink;
use super::metrics::EpochSums;
use crate::model::carry::{CarrySnapshot, StateCarry};
use crate::run::checkpoint::{
    candidate_epochs, checkpoint_dir, first_sound, superseded, AtomicFileCheckpointer,
    KeepNewestComplete,
};

/// Folder of the partial checkpoints of a run.
pub fn partial_dir(run_dir: &Path) -> PathBuf {
    checkpoint_dir(run_dir).join("partial")
}

/// Where a partial checkpoint stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PartialProgress {
    /// The generation of its records (`model-<generation>.bpk`, ...).
    pub generation: usize,
    /// The 1-based epoch it is inside.
    pub epoch: usize,
    /// Training batches of that epoch already done.
    pub batches: usize,
    /// The training perplexity's running sums after those batches.
    pub sums: EpochSums,
    /// The carried LSTM states (stream batching; empty for buckets).
    pub carry: CarrySnapshot,
}

fn progress_path(dir: &Path, generation: usize) -> PathBuf {
    dir.join(format!("progress-{generation}.json"))
}

/// The newest usable partial checkpoint of `run_dir` inside epoch `epoch`, if any.
pub fn find_partial(run_dir: &Path, epoch: usize) -> Option<PartialProgress> {
    let dir = partial_dir(run_dir);
    let mut found: Vec<PartialProgress> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            name.strip_prefix("progress-")?.strip_suffix(".json")?;
            serde_json::from_str(&std::fs::read_to_string(e.path()).ok()?).ok()
        })
        .filter(|p: &PartialProgress| p.epoch == epoch && p.batches > 0)
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.generation));
    let generation = first_sound(&dir, found.iter().map(|p| p.generation), |g| {
        let p = found
            .iter()
            .find(|p| p.generation == g)
            .expect("a candidate");
        format!(
            "the checkpoint within epoch {} (batch {})",
            p.epoch, p.batches
        )
    })?;
    found.into_iter().find(|p| p.generation == generation)
}

/// The next free generation number in `dir`.
fn next_generation(dir: &Path) -> usize {
    candidate_epochs(dir).first().map_or(0, |g| g + 1)
}

/// The next item of a loader; `None` at its end, or on its error, which stops training.
fn next_item<T, E: Into<TrainingError>>(
    iterator: &mut (impl Iterator<Item = Result<T, E>> + ?Sized),
    interrupter: &Interrupter,
) -> Option<T> {
    match iterator.next()? {
        Ok(item) => Some(item),
        Err(err) => {
            interrupter.fail(err);
            None
        }
    }
}

/// The validation split of `epoch`, as burn-train's single-device loop runs it.
fn validate<M: LearnerModel>(
    learner: &Learner<M>,
    loader: &ValidLoader<M>,
    processor: &mut SupervisedTrainingEventProcessor<M>,
    interrupter: &Interrupter,
    epoch: usize,
) {
    interrupter.fail_on_error(processor.process_valid(LearnerEvent::StartSplit {
        epoch_number: epoch,
        total_items: loader.num_items(),
    }));
    let model = learner.model().valid();
    let mut iterator = loader.iter();
    let mut iteration = 0;
    while let Some(item) = next_item(&mut *iterator, interrupter) {
        let progress = iterator.progress();
        iteration += 1;
        let item = InferenceStep::step(&model, item);
        let item = TrainingItem::new(item, progress, Some(iteration), None);
        interrupter.fail_on_error(processor.process_valid(LearnerEvent::ProcessedItem(item)));
        if interrupter.should_stop() {
            break;
        }
    }
    interrupter.fail_on_error(processor.process_valid(LearnerEvent::EndSplit(epoch)));
}

/// What [`ResumableStrategy`] needs besides burn-train's components.
pub struct ResumableStrategy {
    device: Device,
    run_dir: PathBuf,
    every: Option<Duration>,
    sums: Arc<Mutex<EpochSums>>,
    carry: Option<StateCarry>,
    resume: Mutex<Option<PartialProgress>>,
    generation: AtomicUsize,
    events: EventSink,
}

impl ResumableStrategy {
    /// Trains on `device`; saves a partial checkpoint of `run_dir` every `every` (never when
    /// `None`), reading the training perplexity's running sums from `sums` and the carried
    /// states from `carry`; starts inside an epoch when `resume` is given. A partial checkpoint
    /// that cannot be saved is reported to `events` (training goes on).
    pub fn new(
        device: Device,
        run_dir: &Path,
        every: Option<Duration>,
        sums: Arc<Mutex<EpochSums>>,
        carry: Option<StateCarry>,
        resume: Option<PartialProgress>,
        events: EventSink,
    ) -> Self {
        Self {
            generation: AtomicUsize::new(next_generation(&partial_dir(run_dir))),
            device,
            run_dir: run_dir.to_path_buf(),
            every,
            sums,
            carry,
            resume: Mutex::new(resume),
            events,
        }
    }

    fn checkpointer<M: LearnerModel>(&self) -> LearningCheckpointer<M> {
        let dir = partial_dir(&self.run_dir);
        LearningCheckpointer::new(
            AsyncCheckpointer::new(AtomicFileCheckpointer::new(&dir, "model")),
            AsyncCheckpointer::new(AtomicFileCheckpointer::new(&dir, "optim")),
            AsyncCheckpointer::new(AtomicFileCheckpointer::new(&dir, "scheduler")),
            Box::new(KeepNewestComplete::new(&dir)),
        )
    }

    /// Saves the learner and where the epoch stands as the next generation.
    fn save_partial<M: LearnerModel>(
        &self,
        checkpointer: &mut LearningCheckpointer<M>,
        learner: &Learner<M>,
        epoch: usize,
        batches: usize,
        store: &EventStoreClient,
    ) {
        let generation = self.generation.fetch_add(1, Ordering::SeqCst);
        checkpointer.checkpoint(learner, generation, store);
        let progress = PartialProgress {
            generation,
            epoch,
            batches,
            sums: *self.sums.lock().expect("sums lock"),
            carry: self
                .carry
                .as_ref()
                .map(StateCarry::snapshot)
                .unwrap_or_default(),
        };
        let dir = partial_dir(&self.run_dir);
        let json = serde_json::to_string(&progress).expect("progress serialises");
        if let Err(e) =
            crate::fsutil::write_atomic(&progress_path(&dir, generation), json.as_bytes())
        {
            self.events
                .warn(format!("checkpoint within epoch {epoch} not saved: {e}"));
        }
        // Its records go with the checkpointing strategy's deletions.
        for old in superseded(&dir) {
            let _ = std::fs::remove_file(progress_path(&dir, old));
        }
    }

    /// Trains epoch `epoch`'s split from batch `skip` on (the batches before it were done before
    /// a resume), with the events burn-train's loop sends, and saves a partial checkpoint every
    /// `every`; returns early when the interrupter stops the run.
    fn train_split<M: LearnerModel>(
        &self,
        learner: &mut Learner<M>,
        loader: &TrainLoader<M>,
        (epoch, skip): (usize, usize),
        io: SplitIo<M>,
    ) {
        let SplitIo {
            processor,
            interrupter,
            partial,
            store,
        } = io;
        interrupter.fail_on_error(processor.process_train(LearnerEvent::StartSplit {
            epoch_number: epoch,
            total_items: loader.num_items(),
        }));
        let mut iterator = loader.iter();
        for _ in 0..skip {
            iterator.next();
        }
        let mut iteration = skip;
        let mut last_save = Instant::now();
        while let Some(item) = next_item(&mut *iterator, interrupter) {
            iteration += 1;
            let progress = iterator.progress();
            let output = learner.train_step(item);
            learner.lr_step();
            learner.optimizer_step(output.grads);
            let item = TrainingItem::new(
                output.item,
                progress.clone(),
                Some(iteration),
                Some(learner.lr_current()),
            );
            interrupter.fail_on_error(processor.process_train(LearnerEvent::ProcessedItem(item)));
            if interrupter.should_stop() {
                break;
            }
            if let Some(every) = self.every {
                if last_save.elapsed() >= every && !progress.is_completed() {
                    // The metrics (and the divergence guard) see every batch before the save.
                    interrupter.fail_on_error(processor.flush());
                    if interrupter.should_stop() {
                        break;
                    }
                    self.save_partial(partial, learner, epoch, iteration, store);
                    last_save = Instant::now();
                }
            }
        }
        interrupter.fail_on_error(processor.process_train(LearnerEvent::EndSplit(epoch)));
    }
}

/// Where a training split reports its events and saves its partial checkpoints.
struct SplitIo<'a, M: LearnerModel> {
    processor: &'a mut SupervisedTrainingEventProcessor<M>,
    interrupter: &'a Interrupter,
    partial: &'a mut LearningCheckpointer<M>,
    store: &'a EventStoreClient,
}

impl<M: LearnerModel> SupervisedLearningStrategy<M> for ResumableStrategy {
    fn fit(
        &self,
        components: TrainingComponents<M>,
        mut learner: Learner<M>,
        dataloader_train: TrainLoader<M>,
        dataloader_valid: ValidLoader<M>,
        starting_epoch: usize,
    ) -> (M, SupervisedTrainingEventProcessor<M>) {
        let dataloader_train = dataloader_train.to_device(&self.device);
        let dataloader_valid = dataloader_valid.to_device(&self.device.clone().inner());
        learner.fork(&self.device);
        let mut processor = components.event_processor;
        let mut checkpointer = components.checkpointer;
        let interrupter = components.interrupter;
        let store = components.event_store;
        let mut partial = self.checkpointer::<M>();

        let mut resume = self.resume.lock().expect("resume lock").take();
        if let Some(r) = &resume {
            // The records load onto the devices the learner's parameters are already on.
            learner = partial.load_checkpoint(learner, r.generation);
            if let Some(carry) = &self.carry {
                carry.restore(&r.carry, &self.device);
            }
        }

        for epoch in starting_epoch..=components.num_epochs {
            let skip = resume
                .take()
                .filter(|r| r.epoch == epoch)
                .map_or(0, |r| r.batches);
            let io = SplitIo {
                processor: &mut processor,
                interrupter: &interrupter,
                partial: &mut partial,
                store: &store,
            };
            self.train_split(&mut learner, &dataloader_train, (epoch, skip), io);
            if interrupter.should_stop() {
                break;
            }

            validate(
                &learner,
                &dataloader_valid,
                &mut processor,
                &interrupter,
                epoch,
            );
            interrupter.fail_on_error(processor.process_train(LearnerEvent::EndEpoch(epoch)));
            interrupter.fail_on_error(processor.flush());
            if interrupter.should_stop() {
                break;
            }
            if let Some(checkpointer) = &mut checkpointer {
                checkpointer.checkpoint(&learner, epoch, &store);
            }
        }
        (learner.model(), processor)
    }
}
