//! Train word-level LSTM language models with [Burn](https://burn.dev), on a GPU (wgpu) or a CPU.
//!
//! The library holds everything; the `lstm-lm` binary only parses flags and picks a device.
//! Module direction: [`error`], [`fsutil`] and [`data::vocab`] are leaves; [`device`] uses only
//! [`error`]; [`model`] and [`lstm`] never import [`data`]; [`training`], [`eval`], [`generate`] and [`summary`] use the
//! layers below them and not each other.
//!
//! ```no_run
//! use lstm_lm::{config::Preset, data::corpus::CorpusSource, render::ProgressMode, training};
//! use burn::tensor::Device;
//!
//! let report = training::train(training::TrainRequest {
//!     config: Preset::Tiny.config(),
//!     corpus: CorpusSource::Embedded { train_fraction: 0.9 },
//!     run_dir: "runs/example".into(),
//!     fresh: true,
//!     devices: vec![Device::flex()],
//!     progress: ProgressMode::Quiet.into(),
//!     interrupter: Default::default(),
//!     checkpoint_every: None,
//! })?;
//! println!("valid perplexity {}", report.epochs[0].valid_perplexity);
//! # Ok::<(), lstm_lm::error::Error>(())
//! ```

#![warn(missing_docs)]

pub mod bench;
pub mod carry;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod fused;
pub mod generate;
pub mod guard;
pub mod lstm;
pub mod metric_log;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod render;
pub mod run;
pub mod schedule;
pub mod strategy;
pub mod summary;
pub mod training;
