//! Train word-, character- and subword-level LSTM language models with [Burn](https://burn.dev),
//! on a GPU (wgpu) or a CPU.
//!
//! The library holds everything; the `lstm-lm` binary only parses flags, picks devices and
//! prints what the library returns or reports ([`train::events`]). The modules are layers, each
//! importing only the ones listed before it (`tests/layers.rs` reads `src/` and fails on an
//! import against this order or a cycle):
//!
//! | layer | what it holds |
//! |---|---|
//! | [`error`], [`format`](mod@format) | the error type; how rates and durations read |
//! | [`fsutil`], [`device`] | atomic file writes; device choice |
//! | [`model`] | init, the LSTM stack, state carry, the fused CPU and GPU kernels, the adaptive softmax, row-sparse embedding gradients, the language model |
//! | [`data`] | corpus, vocabulary, bucket and stream batching |
//! | [`config`] | the experiment config saved with a run, presets, learning-rate schedules |
//! | [`run`] | the run folder: lock, config and vocabulary, checkpoints, history, curves, summary |
//! | [`train`] | the training step, loop, metrics, checkpoints within an epoch, evaluation |
//! | [`commands`] | `bench`, `eval`, `score`, `generate`, `export`, `import` |
//!
//! ```no_run
//! use lstm_lm::config::presets::Preset;
//! use lstm_lm::data::corpus::CorpusSource;
//! use lstm_lm::train::{self, events::{EventSink, TrainEvent}};
//! use burn::tensor::Device;
//!
//! let report = train::train(train::TrainRequest {
//!     config: Preset::Tiny.config(),
//!     corpus: CorpusSource::Embedded { train_fraction: 0.9 },
//!     cache_dir: lstm_lm::data::prepare::default_cache_dir(),
//!     run_dir: "runs/example".into(),
//!     fresh: true,
//!     devices: vec![Device::flex()],
//!     events: EventSink::new(|event| {
//!         if let TrainEvent::EpochEnded { stats, .. } = event {
//!             println!("epoch {}: valid perplexity {:.2}", stats.epoch, stats.valid_perplexity);
//!         }
//!     }),
//!     interrupter: Default::default(),
//!     checkpoint_every: None,
//! })?;
//! println!("valid perplexity {}", report.epochs[0].valid_perplexity);
//! # Ok::<(), lstm_lm::error::Error>(())
//! ```

#![warn(missing_docs)]

pub mod error;
pub mod format;

pub mod device;
pub mod fsutil;

pub mod model;

pub mod data;

pub mod config;

pub mod run;

pub mod train;

pub mod commands;
