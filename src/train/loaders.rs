//! The training and validation loaders of a run, and how they split across devices.

use std::sync::Arc;

use burn::data::dataloader::DataLoader;
use burn::tensor::Device;

use crate::config::{Batching, ExperimentConfig};
use crate::data::batcher::{BucketLoader, Buckets};
use crate::data::epochs::Epochs;
use crate::data::store::Tokens;
use crate::data::stream::{Stream, StreamLoader};
use crate::error::{Error, Result};
use crate::model::carry::StateCarry;
use crate::model::LmBatch;

use super::events::EventSink;

/// The training and validation loaders of a run, and the optimizer steps per epoch.
pub(crate) struct Loaders {
    pub train: Arc<dyn DataLoader<LmBatch>>,
    pub valid: Arc<dyn DataLoader<LmBatch>>,
    pub steps_per_epoch: usize,
    /// The training windows' carried states (stream batching).
    pub carry: Option<StateCarry>,
}

/// Makes the loaders `config` asks for, and says what the data gives.
pub(crate) fn loaders(
    config: &ExperimentConfig,
    train_ids: &Arc<Tokens>,
    valid_ids: &Arc<Tokens>,
    first_epoch: usize,
    device: &Device,
    events: &EventSink,
) -> Result<Loaders> {
    let source = Source {
        config,
        train_ids,
        valid_ids,
        first_epoch,
        device,
    };
    match config.data.batching {
        Batching::Buckets => bucket_loaders(&source, events),
        Batching::Stream => stream_loaders(&source, events),
    }
}

/// What the loaders of a run are made from.
struct Source<'a> {
    config: &'a ExperimentConfig,
    train_ids: &'a Arc<Tokens>,
    valid_ids: &'a Arc<Tokens>,
    /// The epoch training starts at (the shuffles are seeded per epoch).
    first_epoch: usize,
    device: &'a Device,
}

/// Bucket loaders: sentences grouped by length into `config.data.buckets`, shuffled each
/// epoch; sentences longer than the largest bucket are dropped and counted.
fn bucket_loaders(source: &Source, events: &EventSink) -> Result<Loaders> {
    let data = &source.config.data;
    let train_tokens = source.train_ids.len();
    let train_sentences = source.train_ids.num_sentences();
    let train_buckets = Buckets::new(source.train_ids.clone(), &data.buckets);
    let valid_buckets = Buckets::new(source.valid_ids.clone(), &data.buckets);
    let largest = data.buckets.iter().max().copied().unwrap_or(0);
    events.info(format!(
        "data: {} train sentences ({} tokens), {} valid; buckets {:?}; dropped {} train and \
         {} valid sentences longer than {largest} tokens",
        train_sentences,
        train_tokens - train_sentences,
        source.valid_ids.num_sentences(),
        data.buckets,
        train_buckets.dropped,
        valid_buckets.dropped,
    ));
    let per_pass = train_buckets.num_batches(data.batch_size);
    if train_buckets.dropped == train_sentences {
        return Err(Error::Config(format!(
            "every training sentence is longer than the largest bucket ({largest} \
             tokens); pass --batching stream (no length limit) or larger --buckets"
        )));
    }
    if per_pass == 0 {
        return Err(Error::Config(format!(
            "no bucket holds {} training sentences, so there is no full batch; lower \
             --batch-size or add training text",
            data.batch_size
        )));
    }
    // Targets a batch holds on average: a sentence of n ids predicts n - 1 of them.
    let (ids, sentences) = (train_buckets.ids, train_buckets.len());
    let per_batch = (ids - sentences) as f64 / sentences.max(1) as f64 * data.batch_size as f64;
    let mut train = BucketLoader::training(
        train_buckets,
        data.batch_size,
        source.config.seed,
        source.first_epoch,
        source.device.clone(),
    );
    if data.epoch_tokens > 0 {
        train = train.with_epoch_steps(steps_for_tokens(data.epoch_tokens, per_batch));
        report_epochs(events, train.epochs(), per_batch, source.valid_ids.len());
    }
    let steps_per_epoch = train.epochs().per_epoch;
    Ok(Loaders {
        train: Arc::new(train),
        valid: Arc::new(BucketLoader::evaluation(
            valid_buckets,
            data.batch_size,
            source.device.clone(),
        )),
        steps_per_epoch,
        carry: None,
    })
}

/// Stream loaders: the split as `config.data.batch_size` columns cut into windows of
/// `config.data.bptt` steps, the state carried from window to window.
fn stream_loaders(source: &Source, events: &EventSink) -> Result<Loaders> {
    let data = &source.config.data;
    let train_tokens = source.train_ids.len();
    let mut train = StreamLoader::training(
        Stream::new(source.train_ids.clone(), data.batch_size),
        data.bptt,
        source.config.seed,
        source.first_epoch,
        source.device.clone(),
    );
    let valid = StreamLoader::evaluation(
        Stream::new(source.valid_ids.clone(), data.batch_size),
        data.bptt,
        source.device.clone(),
    );
    events.info(format!(
        "data: a stream of {train_tokens} train tokens in {} columns, {} windows of {} \
         steps per epoch; valid {} tokens in {} windows",
        data.batch_size,
        train.num_windows(),
        data.bptt,
        source.valid_ids.len(),
        valid.num_windows(),
    ));
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
    if data.epoch_tokens > 0 {
        let per_window = (data.batch_size * data.bptt) as f64;
        train = train.with_epoch_steps(steps_for_tokens(data.epoch_tokens, per_window));
        report_epochs(events, train.epochs(), per_window, source.valid_ids.len());
    }
    Ok(Loaders {
        steps_per_epoch: train.num_windows(),
        carry: Some(train.carry()),
        train: Arc::new(train),
        valid: Arc::new(valid),
    })
}

/// Steps that hold about `tokens` training tokens at `per_step` tokens a step (at least one).
fn steps_for_tokens(tokens: u64, per_step: f64) -> usize {
    ((tokens as f64 / per_step.max(1.0)).round() as usize).max(1)
}

/// Says what `--epoch-tokens` made of an epoch (`per_step` training tokens a step), and warns
/// when the validation text (`valid_tokens`) is the longer ([`validation_note`]).
fn report_epochs(events: &EventSink, epochs: Epochs, per_step: f64, valid_tokens: usize) {
    events.info(epochs_note(epochs, per_step));
    if let Some(warning) = validation_note(valid_tokens, epochs.per_epoch as f64 * per_step) {
        events.warn(warning);
    }
}

/// What `--epoch-tokens` made of an epoch, in one line.
fn epochs_note(epochs: Epochs, per_step: f64) -> String {
    format!(
        "epochs: {} steps each (about {} training tokens, {:.3} of a pass over the training \
         text of {} steps); the passes run on across epochs",
        epochs.per_epoch,
        (epochs.per_epoch as f64 * per_step).round(),
        epochs.share_of_pass(),
        epochs.per_pass,
    )
}

/// A warning when the validation text is longer than the training tokens of an epoch (about
/// `epoch_tokens`), after each of which it is read whole: a large text's automatic held-out
/// share (10% of the lines) with a small `--epoch-tokens` would then spend most of the run
/// validating. `None` when validation is the shorter.
fn validation_note(valid_tokens: usize, epoch_tokens: f64) -> Option<String> {
    (valid_tokens as f64 > epoch_tokens).then(|| {
        format!(
            "validation reads {valid_tokens} tokens after every epoch of about {} training \
             tokens, more than the epoch trains on (a validation token costs about a third of \
             a training one): give a shorter --valid (held-out lines: a higher \
             --train-fraction), or raise --epoch-tokens",
            epoch_tokens.round()
        )
    })
}

/// Refuses device lists that cannot train `config`: none at all, or a stream whose columns do not
/// split evenly across the devices (each device's share of the gradient would be off).
pub(crate) fn check_devices(config: &ExperimentConfig, devices: &[Device]) -> Result<()> {
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
pub(crate) fn steps_per_epoch_on(
    loaders: &Loaders,
    devices: &[Device],
    config: &ExperimentConfig,
) -> usize {
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
pub(crate) fn parallel_summary(
    config: &ExperimentConfig,
    devices: &[Device],
    steps: usize,
) -> String {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::config::presets::Preset;
    use crate::train::events::TrainEvent;

    /// The warnings `loaders` gives for 40 training and `valid` validation sentences of 10
    /// tokens, with epochs of `epoch_tokens` training tokens.
    fn warnings(batching: Batching, valid: usize, epoch_tokens: u64) -> Vec<String> {
        let sentences = |n: usize| -> Arc<Tokens> {
            let s: Vec<Vec<usize>> = (0..n)
                .map(|i| (0..10).map(|w| 3 + (i + w) % 20).collect())
                .collect();
            Arc::new(Tokens::from_sentences(&s))
        };
        let mut config = Preset::Tiny.config();
        config.data.batching = batching;
        config.data.batch_size = 4;
        config.data.bptt = 5;
        config.data.epoch_tokens = epoch_tokens;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let seen = seen.clone();
            EventSink::new(move |e| {
                if let TrainEvent::Warning(w) = e {
                    seen.lock().unwrap().push(w);
                }
            })
        };
        let (train, valid) = (sentences(40), sentences(valid));
        loaders(&config, &train, &valid, 1, &Device::flex(), &sink).unwrap();
        let seen = seen.lock().unwrap().clone();
        seen
    }

    /// Epochs of fewer training tokens than the validation text holds get a warning that says
    /// how to shorten validation; longer epochs, or none set, get none.
    #[test]
    fn a_validation_longer_than_an_epoch_is_warned_of() {
        for batching in [Batching::Stream, Batching::Buckets] {
            let short = warnings(batching, 30, 100);
            assert_eq!(short.len(), 1, "{batching:?}: {short:?}");
            for remedy in ["--valid", "--train-fraction", "--epoch-tokens"] {
                assert!(short[0].contains(remedy), "{batching:?}: {}", short[0]);
            }
            assert!(
                warnings(batching, 30, 0).is_empty(),
                "{batching:?}: no epoch tokens"
            );
            assert!(
                warnings(batching, 5, 100).is_empty(),
                "{batching:?}: a short validation"
            );
        }
    }
}
