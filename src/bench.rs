//! Training-speed benchmark: real training steps (forward, backward, optimizer) of named
//! configs, timed, with tokens counted the way the reference measurements count them.
//!
//! - `seed`: the reference bucket config (buckets `[10,20,40,60,80]`, batch 50, SGD 0.01,
//!   weight decay 1e-5); tokens are the targets that enter the reference's perplexity, i.e.
//!   neither padding nor end of sentence (the reference gives both id 0).
//! - `small`, `medium`, `zaremba-large`: a contiguous stream, batch 20, truncated BPTT 35 with
//!   the state carried (detached) from window to window, SGD lr 1, global gradient-norm clip 5;
//!   every position is a token.
//!
//! The vocabulary is built from the text and the output layer padded to `min_vocab` rows
//! (10,000 by default, PTB's size), as the PyTorch reference does with `--min-vocab`.

use std::time::Instant;

use burn::optim::GradientsParams;
use burn::tensor::Device;
use serde::Serialize;

use crate::clip::clip_grad_norm;
use crate::config::{OptimizerConfig, REFERENCE_BUCKETS};
use crate::data::batcher::{BucketLoader, Buckets, HostBatch};
use crate::data::corpus::Sentence;
use crate::data::stream::Stream;
use crate::data::vocab::{Vocab, EOS_ID, PAD_ID};
use crate::error::{Error, Result};
use crate::lstm::LstmState;
use crate::model::{InitScheme, LmConfig, LossNorm};
use crate::training::optimizer;

/// A named benchmark configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchConfig {
    /// The reference bucket config: 2 x 256, buckets [10,20,40,60,80], batch 50, SGD 0.01.
    Seed,
    /// 2 x 256, batch 20, BPTT 35, SGD 1.0.
    Small,
    /// 2 x 650, batch 20, BPTT 35, SGD 1.0 (Zaremba medium sizes).
    Medium,
    /// 2 x 1500, batch 20, BPTT 35, SGD 1.0 (Zaremba large sizes).
    ZarembaLarge,
}

/// How a benchmark config forms batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Batching {
    /// Sentence buckets, zero state per batch.
    Buckets,
    /// Truncated BPTT over a contiguous stream with carried state.
    Stream { bptt: usize },
}

impl BenchConfig {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Small => "small",
            Self::Medium => "medium",
            Self::ZarembaLarge => "zaremba-large",
        }
    }

    fn spec(self) -> (usize, usize, Batching, OptimizerConfig, InitScheme) {
        let sgd = |lr, weight_decay| OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay,
        };
        let stream = Batching::Stream { bptt: 35 };
        let uniform = InitScheme::Uniform { range: 0.1 };
        match self {
            Self::Seed => (
                256,
                50,
                Batching::Buckets,
                sgd(0.01, 1e-5),
                InitScheme::MxXavier {
                    magnitude: 2.34,
                    forget_bias: 1.0,
                },
            ),
            Self::Small => (256, 20, stream, sgd(1.0, 0.0), uniform),
            Self::Medium => (650, 20, stream, sgd(1.0, 0.0), uniform),
            Self::ZarembaLarge => (1500, 20, stream, sgd(1.0, 0.0), uniform),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchRequest {
    /// The config.
    pub config: BenchConfig,
    /// Sentences the batches are made of (cycled when `steps` exceeds one epoch).
    pub text: Vec<Sentence>,
    /// The output layer has at least this many rows.
    pub min_vocab: usize,
    /// Untimed steps first (autotuning, allocation); when above 0, also one untimed step of
    /// each batch shape the timed steps meet that these did not (see [`schedule`]).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Where to train (a non-autodiff device; autodiff is added here).
    pub device: Device,
    /// Seed of initialisation.
    pub seed: u64,
}

/// The measurement of one benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Config name.
    pub config: &'static str,
    /// Device, as Burn prints it.
    pub device: String,
    /// Output rows (vocabulary padded to `min_vocab`).
    pub vocab: usize,
    /// Number of parameters.
    pub params: usize,
    /// Timed steps.
    pub steps: usize,
    /// Wall time of the timed steps, seconds.
    pub seconds: f64,
    /// Tokens counted as the reference counts them (see the module docs).
    pub tokens: usize,
    /// All computed positions, padding included (`batch * seq` per step).
    pub positions: usize,
    /// Sequences processed.
    pub samples: usize,
    /// `tokens / seconds`.
    pub tokens_per_sec: f64,
    /// `positions / seconds`.
    pub positions_per_sec: f64,
    /// `samples / seconds`.
    pub samples_per_sec: f64,
    /// Mean wall time per timed step, milliseconds.
    pub ms_per_step: f64,
    /// Mean milliseconds per step in forward + loss, backward, and clipping + optimizer update.
    /// On an asynchronous device (wgpu) the first two are the time to queue the work.
    pub phase_ms: [f64; 3],
    /// Loss of the last step (a sanity check that training happened).
    pub last_loss: f64,
    /// Peak resident memory of the process, MiB (`VmHWM`), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// Whether the fused ops were on, where the device has them (off: Burn's composed ops,
    /// `lstm-lm bench --composed`).
    pub fused: bool,
}

/// Runs the benchmark and reports its speed.
pub fn run(request: &BenchRequest) -> Result<BenchReport> {
    let (hidden, batch_size, batching, optim_config, init) = request.config.spec();
    let vocab = Vocab::build(request.text.iter().map(Vec::as_slice), 0);
    let ids: Vec<Vec<usize>> = request.text.iter().map(|s| vocab.encode(s)).collect();
    let batches: Vec<HostBatch> = match batching {
        Batching::Buckets => {
            let buckets = Buckets::new(&ids, &REFERENCE_BUCKETS);
            // Shuffled as in training, so a short run samples every bucket length.
            BucketLoader::training(buckets, batch_size, request.seed, 1, request.device.clone())
                .epoch_batches(1)
        }
        Batching::Stream { bptt } => {
            let stream = Stream::new(&ids, batch_size);
            (0..stream.num_windows(bptt))
                .map(|k| stream.window(k, bptt))
                .collect()
        }
    };
    if batches.is_empty() {
        return Err(Error::Config(format!(
            "the benchmark text is too short for one batch of {batch_size} ({} sentences)",
            request.text.len()
        )));
    }
    let config = LmConfig {
        vocab_size: vocab.len().max(request.min_vocab),
        d_embed: hidden,
        d_hidden: hidden,
        n_layers: 2,
        init,
        loss_norm: LossNorm::Batch,
        dropout: 0.0,
        tied: false,
    };
    let device = request.device.clone().autodiff();
    let mut model = config.init(request.seed, &device);
    let mut optim = optimizer(&optim_config);
    let lr = optim_config.lr();
    let carry = matches!(batching, Batching::Stream { .. });

    let mut state: Option<Vec<LstmState>> = None;
    let (mut tokens, mut positions, mut samples) = (0, 0, 0);
    let mut last_loss = f64::NAN;
    let mut phases = [0.0f64; 3];
    let shapes: Vec<(usize, usize)> = batches.iter().map(|b| (b.batch, b.seq)).collect();
    let mut start = Instant::now();
    let mut was_timed = false;
    for (index, timed) in schedule(&shapes, request.warmup, request.steps) {
        if timed && !was_timed {
            start = Instant::now();
            was_timed = true;
        }
        let host = &batches[index];
        if index == 0 {
            state = None; // a new pass over the stream starts from zeros
        }
        let t0 = Instant::now();
        let batch = host.to_device(&device);
        let (loss, next) = model.loss_with_state(&batch, state.take());
        if carry {
            state = Some(next.into_iter().map(LstmState::detach).collect());
        }
        let t1 = Instant::now();
        let mut grads = GradientsParams::from_grads(loss.loss.backward(), &model);
        let t2 = Instant::now();
        if carry {
            // PyTorch's reference clips the global gradient norm at 5 in this mode.
            clip_grad_norm(&model, &mut grads, 5.0);
        }
        model = optim.step(lr, model, grads);
        // Reading the loss waits for the step, as the trainer's metrics do.
        last_loss = loss.loss.into_scalar::<f32>() as f64;
        if timed {
            phases[0] += (t1 - t0).as_secs_f64();
            phases[1] += (t2 - t1).as_secs_f64();
            phases[2] += t2.elapsed().as_secs_f64();
            positions += host.batch * host.seq;
            samples += host.batch;
            tokens += match batching {
                Batching::Buckets => host
                    .targets
                    .iter()
                    .filter(|&&t| t != PAD_ID as i64 && t != EOS_ID as i64)
                    .count(),
                Batching::Stream { .. } => host.batch * host.seq,
            };
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let per_sec = |n: usize| n as f64 / seconds;
    Ok(BenchReport {
        fused: crate::fused::enabled(),
        config: request.config.name(),
        device: crate::device::describe(&request.device),
        vocab: config.vocab_size,
        params: config.num_params(),
        steps: request.steps,
        seconds,
        tokens,
        positions,
        samples,
        tokens_per_sec: per_sec(tokens),
        positions_per_sec: per_sec(positions),
        samples_per_sec: per_sec(samples),
        ms_per_step: seconds * 1e3 / request.steps.max(1) as f64,
        phase_ms: phases.map(|p| p * 1e3 / request.steps.max(1) as f64),
        last_loss,
        peak_rss_mib: peak_rss_mib(),
    })
}

/// The steps to run, as (batch index, timed): `warmup` untimed steps over the first batches,
/// then, when `warmup > 0`, one untimed step of each batch shape `[batch, seq]` that the timed
/// steps will meet and the warm-up did not (a GPU compiles, and autotune times, kernels per
/// shape: a `seed` run meets five bucket lengths, and one tuned inside the timed steps would
/// swamp them), then the `steps` timed steps, which continue where the warm-up left off and
/// cycle through the batches.
fn schedule(shapes: &[(usize, usize)], warmup: usize, steps: usize) -> Vec<(usize, bool)> {
    let n = shapes.len();
    let mut plan: Vec<(usize, bool)> = (0..warmup).map(|s| (s % n, false)).collect();
    let timed: Vec<usize> = (warmup..warmup + steps).map(|s| s % n).collect();
    if warmup > 0 {
        let mut seen: Vec<(usize, usize)> = plan.iter().map(|&(i, _)| shapes[i]).collect();
        for &i in &timed {
            if !seen.contains(&shapes[i]) {
                seen.push(shapes[i]);
                plan.push((i, false));
            }
        }
    }
    plan.extend(timed.into_iter().map(|i| (i, true)));
    plan
}

/// The process's peak resident set size in MiB, from `/proc/self/status` (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::schedule;

    /// Bucket batches of lengths 10, 20, 10, 40: one warm-up step (length 10), then one of
    /// each length the timed steps meet (20 at batch 1, 40 at batch 3), then the four timed
    /// steps from batch 1 on, wrapping to batch 0. Without a warm-up nothing is added.
    #[test]
    fn the_warm_up_meets_every_batch_shape_the_timed_steps_will() {
        let shapes = [(50, 10), (50, 20), (50, 10), (50, 40)];
        assert_eq!(
            schedule(&shapes, 1, 4),
            [
                (0, false),
                (1, false),
                (3, false),
                (1, true),
                (2, true),
                (3, true),
                (0, true)
            ]
        );
        assert_eq!(schedule(&shapes, 0, 2), [(0, true), (1, true)]);
        // A stream (one shape): the warm-up is exactly `warmup` steps.
        assert_eq!(
            schedule(&[(20, 35); 3], 2, 2),
            [(0, false), (1, false), (2, true), (0, true)]
        );
    }
}
