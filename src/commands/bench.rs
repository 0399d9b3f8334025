//! Training-speed benchmark: the trainer's own training step and update ([`TrainStep::step`]:
//! forward, loss, backward; [`TrainStep::optimize`]: clipping, optimizer), called as burn-train's
//! Learner calls them, timed on named configs, with tokens counted the way the reference
//! measurements count them.
//!
//! Each config is a preset with overrides ([`BenchConfig::experiment`]); the names are kept
//! from earlier measurements so figures stay comparable:
//! - `seed`: `--preset seed` (buckets `[10,20,40,60,80]`, batch 50, SGD 0.01, weight decay
//!   1e-5); tokens are the targets that enter the reference's perplexity, i.e. neither padding
//!   nor end of sentence (the reference gives both id 0).
//! - `small`, `medium`, `zaremba-large`: `--preset zaremba-small` (stream batch 20, SGD lr 1,
//!   clip 5, uniform init 0.1, no dropout) with `--embed` = `--hidden` 256, 650 or 1500 and
//!   `--bptt 35`; the state is carried (detached) from window to window; every position is a
//!   token. `small` is not the preset `zaremba-small` (2 x 200, bptt 20), and `medium` and
//!   `zaremba-large` have neither the dropout nor the init range of `zaremba-medium` and
//!   `zaremba-large`: they time the sizes.
//!
//! The vocabulary is built from the text and the output layer padded to `min_vocab` rows
//! (10,000 by default, PTB's size), as the PyTorch reference does with `--min-vocab`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::Device;
use burn::train::TrainStep;
use serde::Serialize;

use crate::config::overrides::Overrides;
use crate::config::presets::Preset;
use crate::config::{Batching, ExperimentConfig};
use crate::data::batcher::{BucketLoader, Buckets, HostBatch};
use crate::data::corpus::Sentence;
use crate::data::store::Tokens;
use crate::data::stream::{Stream, StreamLoader};
use crate::data::vocab::{Vocab, EOS_ID, PAD_ID};
use crate::error::{Error, Result};
use crate::model::adaptive::tail_shapes;
use crate::model::fused::matmul;
use crate::model::{LmBatch, LmConfig, Softmax};
use crate::train::step::optimizer;

/// A named benchmark configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BenchConfig {
    /// `--preset seed`: 2 x 256, buckets 10,20,40,60,80, batch 50, SGD 0.01.
    Seed,
    /// `--preset zaremba-small --embed 256 --hidden 256 --bptt 35`: 2 x 256, stream batch 20.
    Small,
    /// `--preset zaremba-small --embed 650 --hidden 650 --bptt 35` (Zaremba medium's sizes).
    Medium,
    /// `--preset zaremba-small --embed 1500 --hidden 1500 --bptt 35` (Zaremba large's sizes).
    ZarembaLarge,
    /// `--preset zaremba-small` as it is: 2 x 200, stream batch 20, bptt 20 (the adaptive
    /// softmax's benchmark sizes).
    ZarembaSmall,
}

impl BenchConfig {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Small => "small",
            Self::Medium => "medium",
            Self::ZarembaLarge => "zaremba-large",
            Self::ZarembaSmall => "zaremba-small",
        }
    }

    /// The experiment config it times: a preset with overrides.
    pub fn experiment(self) -> ExperimentConfig {
        let sizes = |width: usize| Overrides {
            embed: Some(width),
            hidden: Some(width),
            bptt: Some(35),
            ..Default::default()
        };
        match self {
            Self::Seed => Preset::Seed.config(),
            Self::Small => sizes(256).apply(Preset::ZarembaSmall.config()),
            Self::Medium => sizes(650).apply(Preset::ZarembaSmall.config()),
            Self::ZarembaLarge => sizes(1500).apply(Preset::ZarembaSmall.config()),
            Self::ZarembaSmall => Preset::ZarembaSmall.config(),
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
    /// each batch shape the timed steps meet that these did not (see `schedule`).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Where to train (a non-autodiff device; autodiff is added here).
    pub device: Device,
    /// Seed of initialisation (and of the bucket order).
    pub seed: u64,
    /// Run Burn's composed ops instead of the fused ones, to time what the fused ops replace.
    pub composed: bool,
    /// The output softmax, in place of the config's (full) when given.
    pub softmax: Option<Softmax>,
    /// Measure this machine's sgemm ceiling too (about 3 s; see [`sgemm_ceiling`]).
    pub ceiling: bool,
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
    /// Mean milliseconds per step in the training step (forward, loss, backward) and in the
    /// update (clipping, optimizer). On an asynchronous device (wgpu) the first is the time to
    /// queue the work.
    pub phase_ms: [f64; 2],
    /// Loss of the last step (a sanity check that training happened).
    pub last_loss: f64,
    /// Peak resident memory of the process until the last timed step, MiB (`VmHWM`, read before
    /// the ceiling is measured), when the OS reports it.
    pub peak_rss_mib: Option<f64>,
    /// Whether the fused ops were on, where the device has them (off: Burn's composed ops,
    /// `lstm-lm bench --composed`).
    pub fused: bool,
    /// Mean GFLOP of a timed step's matrix products ([`step_flops`]).
    pub gflop_per_step: f64,
    /// `gflop_per_step` over the mean step time: the products' rate the step achieves.
    pub gflops: f64,
    /// This machine's f32 sgemm ceiling, when measured ([`sgemm_ceiling`]).
    pub ceiling: Option<Ceiling>,
    /// `gflops` as a share of the ceiling (0.8 = 80%).
    pub share_of_ceiling: Option<f64>,
    /// Each product shape whose library was chosen by timing (feature `openblas`), with the
    /// library kept and each one's median time, largest first: `[700, 650] x [650, 10000]:
    /// openblas (medians: gemm 45.10 ms, openblas 41.02 ms)`.
    pub products: Vec<String>,
    /// The system OpenBLAS built in (feature `openblas`): version, build options and the
    /// kernels it picked for this CPU, e.g. `OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH
    /// NO_AFFINITY Zen MAX_THREADS=64`.
    pub openblas: Option<String>,
}

/// The best f32 matrix-product rate measured on this machine: a `[2048, 2048] x [2048, 2048]`
/// product on every core, by each path available, the fastest kept.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// GFLOP/s of the fastest path.
    pub gflops: f64,
    /// Which path it was.
    pub path: String,
    /// Every path measured, `(path, GFLOP/s)`.
    pub paths: Vec<(String, f64)>,
}

/// FLOPs of one training step's matrix products, `2·m·k·n` each: forward, every LSTM layer's
/// input and recurrent products on all `positions` (`batch × seq`; `2·P·(in + H)·4H` a layer,
/// `in` = `d_embed` for the first layer, `H` above), and the output layer on the `scored`
/// positions it sees (`2·S·H·V`: every position of a stream, the real targets of a bucket
/// batch); backward twice the forward (the gradients of the inputs and of the weights).
/// With the adaptive softmax the output layer is its head on every scored position
/// (`2·S·H·(c_0 + clusters)`) and tail cluster `i` on the share `tail_shares[i]` of them whose
/// target it holds (`2·S·share·(H·d_i + d_i·size_i)`).
/// Element-wise work (gates, softmax, the optimizer) is left out.
pub fn step_flops(model: &LmConfig, positions: usize, scored: usize, tail_shares: &[f64]) -> f64 {
    let (e, h) = (model.d_embed as f64, model.d_hidden as f64);
    let p = positions as f64;
    let s = scored as f64;
    let lstm: f64 = (0..model.n_layers)
        .map(|l| {
            let input = if l == 0 { e } else { h };
            2.0 * p * (input + h) * 4.0 * h
        })
        .sum();
    let output = match &model.softmax {
        Softmax::Full => 2.0 * s * h * model.vocab_size as f64,
        Softmax::Adaptive { cutoffs, div_value } => {
            let tails: f64 = tail_shapes(model.d_hidden, model.vocab_size, cutoffs, *div_value)
                .iter()
                .zip(tail_shares)
                .map(|(tail, share)| {
                    let d = tail.width as f64;
                    2.0 * s * share * (h * d + d * tail.ids.len() as f64)
                })
                .sum();
            2.0 * s * h * (cutoffs[0] + cutoffs.len()) as f64 + tails
        }
    };
    3.0 * (lstm + output)
}

/// Measures [`Ceiling`]: the `n x n x n` product (2048 in the bench) through the `gemm` crate cut
/// into one block per core (the fused ops' path), through `gemm`'s own threads, and through
/// every other backend compiled in, each run until `seconds` have passed after a warm-up.
pub fn sgemm_ceiling(n: usize, seconds: f64) -> Ceiling {
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    let paths: Vec<(String, f64)> = matmul::ceiling_paths()
        .into_iter()
        .map(|(name, product)| {
            product(&mut c, &a, &b, n);
            let (start, mut reps) = (Instant::now(), 0u32);
            while reps == 0 || start.elapsed().as_secs_f64() < seconds {
                product(&mut c, &a, &b, n);
                reps += 1;
            }
            let rate =
                2.0 * (n as f64).powi(3) * f64::from(reps) / start.elapsed().as_secs_f64() / 1e9;
            (name.to_string(), rate)
        })
        .collect();
    let (path, gflops) = paths
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .expect("at least the gemm crate");
    Ceiling {
        gflops,
        path,
        paths,
    }
}

/// The batches of one pass over the text, for `config`.
enum Batches {
    /// Bucket batches in the training order of epoch 1.
    Buckets(Vec<HostBatch>),
    /// The stream's windows, served with the carry keys that hand the state on, and their
    /// shapes.
    Stream(StreamLoader, Vec<(usize, usize)>),
}

impl Batches {
    fn new(config: &ExperimentConfig, ids: &Arc<Tokens>, seed: u64, device: &Device) -> Self {
        let data = &config.data;
        match data.batching {
            Batching::Buckets => {
                let buckets = Buckets::new(ids.clone(), &data.buckets);
                // Shuffled as in training, so a short run samples every bucket length.
                Self::Buckets(
                    BucketLoader::training(buckets, data.batch_size, seed, 1, device.clone())
                        .epoch_batches(1),
                )
            }
            Batching::Stream => {
                let stream = Stream::new(ids.clone(), data.batch_size);
                let shapes = (0..stream.num_windows(data.bptt))
                    .map(|k| {
                        let w = stream.window(k, data.bptt);
                        (w.batch, w.seq)
                    })
                    .collect();
                let loader = StreamLoader::training(stream, data.bptt, seed, 1, device.clone());
                Self::Stream(loader, shapes)
            }
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::Buckets(b) => b.len(),
            Self::Stream(_, shapes) => shapes.len(),
        }
    }

    /// `[batch, seq]` of batch `k`.
    fn shape(&self, k: usize) -> (usize, usize) {
        match self {
            Self::Buckets(b) => (b[k].batch, b[k].seq),
            Self::Stream(_, shapes) => shapes[k],
        }
    }

    /// Batch `k` of pass `pass` on `device`, and its tokens as the reference counts them.
    fn get(&self, pass: usize, k: usize, device: &Device) -> (LmBatch, usize) {
        match self {
            Self::Buckets(b) => {
                let counted = b[k]
                    .targets
                    .iter()
                    .filter(|&&t| t != PAD_ID as i64 && t != EOS_ID as i64)
                    .count();
                (b[k].to_device(device), counted)
            }
            Self::Stream(s, _) => {
                // A new pass is a new epoch: its first window starts from zeros.
                let batch = s.batch(pass, k);
                let [rows, seq] = batch.inputs.dims();
                (batch, rows * seq)
            }
        }
    }
}

/// The most untimed steps a warm-up adds while product shapes are still timed through each
/// library (`medium` needs 7 steps in all with OpenBLAS: its output layer's products come once a
/// step).
const MAX_EXTRA_WARMUP: usize = 16;

/// Runs the benchmark and reports its speed.
pub fn run(request: &BenchRequest) -> Result<BenchReport> {
    crate::model::fused::set_enabled(!request.composed);
    let device = request.device.clone().autodiff();
    let (config, batches, shares) = setup(request, &device)?;
    let tally = time_steps(request, &config, &batches, &shares, &device);
    let seconds = tally.seconds;
    let per_sec = |n: usize| n as f64 / seconds;
    let per_step = |x: f64| x / request.steps.max(1) as f64;
    let gflops = tally.flops / seconds / 1e9;
    // The peak before the ceiling's products: their three `[2048, 2048]` matrices (48 MiB) and
    // packing buffers are not the training's memory, and raised the peak by up to 13 MiB.
    let peak_rss_mib = peak_rss_mib();
    let ceiling = request.ceiling.then(|| sgemm_ceiling(2048, 1.0));
    Ok(BenchReport {
        fused: crate::model::fused::enabled(),
        config: request.config.name(),
        device: crate::device::describe(&request.device),
        vocab: config.model.vocab_size,
        params: config.model.num_params(),
        steps: request.steps,
        seconds,
        tokens: tally.tokens,
        positions: tally.positions,
        samples: tally.samples,
        tokens_per_sec: per_sec(tally.tokens),
        positions_per_sec: per_sec(tally.positions),
        samples_per_sec: per_sec(tally.samples),
        ms_per_step: per_step(seconds * 1e3),
        phase_ms: tally.phases.map(|p| per_step(p * 1e3)),
        last_loss: tally.last_loss,
        peak_rss_mib,
        gflop_per_step: per_step(tally.flops / 1e9),
        gflops,
        share_of_ceiling: ceiling.as_ref().map(|c| gflops / c.gflops),
        ceiling,
        products: matmul::decisions().iter().map(|d| d.to_string()).collect(),
        openblas: matmul::openblas_config(),
    })
}

/// The experiment `request` times, with the vocabulary of its text (padded to `min_vocab`);
/// the batches of one pass over the text; and the adaptive softmax's shares of the tokens in
/// each tail cluster (empty for a full softmax), which the FLOPs formula counts.
fn setup(request: &BenchRequest, device: &Device) -> Result<(ExperimentConfig, Batches, Vec<f64>)> {
    let mut config = request.config.experiment();
    if let Some(softmax) = &request.softmax {
        config.model.softmax = softmax.clone();
    }
    let vocab = Vocab::build(request.text.iter().map(Vec::as_slice), 0);
    let ids: Vec<Vec<usize>> = request.text.iter().map(|s| vocab.encode(s)).collect();
    let ids = Arc::new(Tokens::from_sentences(&ids));
    let batches = Batches::new(&config, &ids, request.seed, device);
    if batches.len() == 0 {
        return Err(Error::Config(format!(
            "the benchmark text is too short for one batch of {} ({} sentences)",
            config.data.batch_size,
            request.text.len()
        )));
    }
    config.model.vocab_size = vocab.len().max(request.min_vocab);
    // The bench's vocabulary is the whole text's (no cap), padded to `min_vocab`.
    config.data.max_vocab = 0;
    config.validate()?;
    (config.model.softmax)
        .check_vocab(config.model.vocab_size)
        .map_err(Error::Config)?;
    let shares = match &config.model.softmax {
        Softmax::Adaptive { cutoffs, .. } => ids.shares_below_and_between(cutoffs)[1..].to_vec(),
        Softmax::Full => Vec::new(),
    };
    Ok((config, batches, shares))
}

/// What the timed steps of [`time_steps`] did.
struct Tally {
    /// Wall time from the first timed step to the end of the last.
    seconds: f64,
    /// Tokens as the reference counts them, summed over the timed steps.
    tokens: usize,
    /// Positions (`batch x seq`), summed.
    positions: usize,
    /// Sequences, summed.
    samples: usize,
    /// FLOPs of the timed steps ([`step_flops`]).
    flops: f64,
    /// Seconds in the step (forward, loss, backward) and in the update, summed.
    phases: [f64; 2],
    /// The loss of the last step, timed or not.
    last_loss: f64,
}

/// Trains a new model of `config` on `batches` as the Learner does: `request.warmup` untimed
/// steps (more while product shapes are still timed through each library), then
/// `request.steps` timed ones.
fn time_steps(
    request: &BenchRequest,
    config: &ExperimentConfig,
    batches: &Batches,
    shares: &[f64],
    device: &Device,
) -> Tally {
    let mut model = config.model.init(request.seed, device);
    model.max_grad_norm = config.clip;
    let mut optim = optimizer(&config.optimizer, &mut model);
    let lr = config.optimizer.lr();
    let mut tally = Tally {
        seconds: 0.0,
        tokens: 0,
        positions: 0,
        samples: 0,
        flops: 0.0,
        phases: [0.0; 2],
        last_loss: f64::NAN,
    };
    let shapes: Vec<(usize, usize)> = (0..batches.len()).map(|k| batches.shape(k)).collect();
    let mut start = Instant::now();
    let mut was_timed = false;
    // Passes over the text, counted as epochs: each starts the stream from zeros again.
    let mut pass = 0;
    let mut plan: VecDeque<(usize, bool)> = schedule(&shapes, request.warmup, request.steps).into();
    let mut extra_warmup = 0;
    while let Some((index, timed)) = plan.pop_front() {
        // With more than one library for the products (feature `openblas`), each large product
        // shape is timed through each on its first calls; a warm-up runs on until every shape
        // has kept one, so that the timed steps run what training runs.
        let first_timed = timed && !was_timed && request.warmup > 0;
        if first_timed && extra_warmup < MAX_EXTRA_WARMUP && matmul::trials_open() {
            plan.push_front((index, timed));
            plan.push_front((index, false));
            extra_warmup += 1;
            continue;
        }
        if timed && !was_timed {
            start = Instant::now();
            was_timed = true;
        }
        if index == 0 || pass == 0 {
            pass += 1;
        }
        let t0 = Instant::now();
        let (batch, counted) = batches.get(pass, index, device);
        let (rows, seq) = shapes[index];
        let scored = batch.real_rows.as_ref().map_or(rows * seq, |r| r.dims()[0]);
        let output = TrainStep::step(&model, batch);
        let t1 = Instant::now();
        model = model.optimize(&mut optim, lr.into(), output.grads);
        // Reading the loss waits for the step, as the trainer's metrics do.
        tally.last_loss = output.item.loss.into_scalar::<f32>() as f64;
        if timed {
            tally.phases[0] += (t1 - t0).as_secs_f64();
            tally.phases[1] += t1.elapsed().as_secs_f64();
            tally.positions += rows * seq;
            tally.samples += rows;
            tally.tokens += counted;
            tally.flops += step_flops(&config.model, rows * seq, scored, shares);
        }
    }
    tally.seconds = start.elapsed().as_secs_f64();
    tally
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} on {}{}: {:.0} tokens/s, {:.0} positions/s, {:.1} samples/s, {:.1} ms/step \
             (step {:.1}, update {:.1}), peak RSS {} ({} steps, V={}, {} params, last loss {:.3})",
            self.config,
            self.device,
            if self.fused { "" } else { " (composed ops)" },
            self.tokens_per_sec,
            self.positions_per_sec,
            self.samples_per_sec,
            self.ms_per_step,
            self.phase_ms[0],
            self.phase_ms[1],
            self.peak_rss_mib
                .map_or("unknown".into(), |m| format!("{m:.0} MiB")),
            self.steps,
            self.vocab,
            self.params,
            self.last_loss,
        )?;
        write!(
            f,
            "; {:.1} GFLOP/step, {:.1} GFLOP/s",
            self.gflop_per_step, self.gflops
        )?;
        if let (Some(c), Some(share)) = (&self.ceiling, self.share_of_ceiling) {
            write!(
                f,
                " = {:.0}% of this machine's sgemm ceiling ({:.0} GFLOP/s, {})",
                share * 100.0,
                c.gflops,
                c.path
            )?;
        }
        for product in &self.products {
            write!(f, "\n  product {product}")?;
        }
        if let Some(openblas) = &self.openblas {
            write!(f, "\n  {openblas}")?;
        }
        Ok(())
    }
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
