//! `cargo xtask bench`: lstm-lm's training speed side by side with the PyTorch reference.
//!
//! Each round runs every config once with each system, alternating which goes first, every run
//! in its own process (so peak memory is per config). The ratio of a config is the median over
//! rounds of ours / PyTorch's tokens/s, so both sides of a ratio saw the same machine load. The
//! sgemm ceiling is measured in every round too (lstm-lm's in each of its runs, right after the
//! steps; the reference environment's, PyTorch's and numpy's BLAS, at the end of the round), and
//! a config's share of the ceiling is the median over rounds of its rate against that round's
//! ceiling: on a machine whose speed drifts by a third within minutes, a step time from one
//! moment against a ceiling from another said more about the drift than about the headroom
//! (docs/BENCHMARKS.md).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// What to run.
pub struct Options {
    /// Config names as `lstm-lm bench --config` takes them.
    pub configs: Vec<String>,
    /// A/B rounds.
    pub rounds: usize,
    /// Timed training steps per run.
    pub steps: usize,
    /// Untimed steps before timing, on both sides (the reference's from its progress logs).
    pub warmup: usize,
    /// `lstm-lm bench --device`.
    pub device: String,
    /// Text the batches are made of.
    pub text: PathBuf,
    /// Python with PyTorch, or `None` to skip the reference.
    pub python: Option<PathBuf>,
    /// The reference trainer `torch_lm.py`.
    pub reference: PathBuf,
    /// Threads for PyTorch (flex uses every core rayon sees).
    pub threads: usize,
    /// Cargo features for building lstm-lm (`wgpu` for the GPU).
    pub features: Option<String>,
    /// A built lstm-lm to run (no build then); by default one release build before the rounds.
    pub binary: Option<PathBuf>,
    /// PyTorch's device: `cpu`, or `cuda` (cuDNN).
    pub reference_device: String,
    /// Time lstm-lm with Burn's composed ops instead of its fused ones (`lstm-lm bench
    /// --composed`).
    pub composed: bool,
}

/// One measurement.
#[derive(Debug, Clone, Deserialize)]
struct Run {
    tokens_per_sec: f64,
    ms_per_step: f64,
    peak_rss_mib: Option<f64>,
    #[serde(default)]
    samples_per_sec: f64,
    /// Where lstm-lm ran, with the GPU's kernel compiler, e.g. `... (wgpu<wgsl>)`.
    #[serde(default)]
    device: String,
    /// GFLOP of a step's matrix products (lstm-lm's formula; see `lstm-lm bench --help`).
    #[serde(default)]
    gflop_per_step: Option<f64>,
    /// The machine's sgemm ceiling lstm-lm measured, GFLOP/s.
    #[serde(default)]
    ceiling: Option<Ceiling>,
    /// The library each product shape kept (built with `--features openblas`), one line each.
    #[serde(default)]
    products: Vec<String>,
    /// The system OpenBLAS built in, with the kernels it picked for this CPU (feature
    /// `openblas`).
    #[serde(default)]
    openblas: Option<String>,
}

/// The part of lstm-lm's ceiling report the table shows.
#[derive(Debug, Clone, Deserialize)]
struct Ceiling {
    gflops: f64,
    path: String,
}

/// Runs the benchmark and prints the table.
pub fn bench(options: &Options) -> Result<()> {
    if !options.text.is_file() {
        bail!(
            "benchmark text {} not found: pass --text FILE (PTB format), e.g. data/ptb/ptb.valid.txt \
             from `cargo xtask fetch-data --dataset ptb`",
            options.text.display()
        );
    }
    if let Some(python) = &options.python {
        if !python.exists() || !options.reference.is_file() {
            bail!(
                "PyTorch reference not found ({} / {}): run reference/setup.sh, pass \
                 --python and --reference, or --no-reference to time lstm-lm alone",
                python.display(),
                options.reference.display()
            );
        }
    }
    let binary = build(options)?;
    let mut ours: Vec<Vec<Run>> = vec![Vec::new(); options.configs.len()];
    let mut theirs: Vec<Vec<Run>> = vec![Vec::new(); options.configs.len()];
    let mut reference_ceilings = Vec::new();
    for round in 0..options.rounds {
        for (c, config) in options.configs.iter().enumerate() {
            let reference_first = round % 2 == 1;
            let mut order = vec![false, true];
            if reference_first {
                order.reverse();
            }
            for is_reference in order {
                if is_reference {
                    let Some(python) = &options.python else {
                        continue;
                    };
                    let r = run_reference(options, python, config)?;
                    eprintln!(
                        "round {}: {config:>13} pytorch {:>8.0} tok/s {:>8.1} ms/step",
                        round + 1,
                        r.tokens_per_sec,
                        r.ms_per_step
                    );
                    theirs[c].push(r);
                } else {
                    let r = run_ours(options, &binary, config)?;
                    eprintln!(
                        "round {}: {config:>13} lstm-lm {:>8.0} tok/s {:>8.1} ms/step",
                        round + 1,
                        r.tokens_per_sec,
                        r.ms_per_step
                    );
                    for product in &r.products {
                        eprintln!(
                            "round {}: {config:>13} lstm-lm product {product}",
                            round + 1
                        );
                    }
                    ours[c].push(r);
                }
            }
        }
        if let (Some(python), "cpu") = (&options.python, options.reference_device.as_str()) {
            let rates = reference_ceiling(options, python)?;
            let listed: Vec<String> = rates
                .iter()
                .map(|(path, gflops)| format!("{path} {gflops:.0}"))
                .collect();
            eprintln!(
                "round {}: the reference environment's sgemm ceiling: {} GFLOP/s",
                round + 1,
                listed.join(", ")
            );
            reference_ceilings.push(rates.iter().map(|r| r.1).fold(f64::NAN, f64::max));
        }
    }
    print_table(options, &ours, &theirs, &reference_ceilings);
    Ok(())
}

/// Each round's sgemm ceiling for one config: the higher of lstm-lm's (measured in that round's
/// run of the config) and the reference environment's (measured at the end of the round, when
/// it ran); NaN where neither was measured.
fn round_ceilings(ours: &[Run], reference: &[f64]) -> Vec<f64> {
    ours.iter()
        .enumerate()
        .map(|(round, run)| {
            let own = run.ceiling.as_ref().map_or(f64::NAN, |c| c.gflops);
            // `f64::max` returns the other value when one is NaN.
            own.max(reference.get(round).copied().unwrap_or(f64::NAN))
        })
        .collect()
}

/// The median over rounds of `flop_per_step` at each run's step time against its round's
/// ceiling (the rounds without a ceiling left out); NaN when no round has one.
fn median_share(runs: &[Run], ceilings: &[f64], flop_per_step: f64) -> f64 {
    median(
        runs.iter()
            .zip(ceilings)
            .filter(|(_, c)| c.is_finite())
            .map(|(r, c)| flop_per_step / r.ms_per_step * 1e3 / c)
            .collect(),
    )
}

/// The reference environment's sgemm rates on a `[2048, 2048]` product with the benchmark's
/// threads, by path: PyTorch's (MKL or oneDNN on a CPU) and numpy's BLAS (OpenBLAS in its
/// wheels; faster than MKL on an AMD Zen 3), from `reference/gemm_bench.py` beside the
/// reference trainer.
fn reference_ceiling(options: &Options, python: &Path) -> Result<Vec<(String, f64)>> {
    let script = options.reference.with_file_name("gemm_bench.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--sizes", "2048", "--min-time", "1", "--square-only"])
        .args(["--threads", &options.threads.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{} failed ({}):\n{stdout}\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rates = parse_gflops(&stdout);
    if rates.is_empty() {
        bail!("no GFLOP/s line from {}:\n{stdout}", script.display());
    }
    Ok(rates)
}

/// Every `[numpy ]threads=N ... : X GFLOP/s` line's path (`numpy`, else `PyTorch`) and rate.
fn parse_gflops(stdout: &str) -> Vec<(String, f64)> {
    stdout
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(':')?;
            let gflops = tail.split_whitespace().next()?.parse().ok()?;
            let path = if head.starts_with("numpy") {
                "numpy"
            } else {
                "PyTorch"
            };
            Some((path.to_string(), gflops))
        })
        .collect()
}

fn build(options: &Options) -> Result<PathBuf> {
    if let Some(binary) = &options.binary {
        if !binary.is_file() {
            bail!("--binary {} is not a file", binary.display());
        }
        return Ok(binary.clone());
    }
    build_release(options.features.as_deref())
}

/// Builds lstm-lm in release mode (with `features`) and returns the executable cargo made, so
/// that every round runs that one build: run through `cargo run` instead, a round started after
/// a source file changed would time a new build.
pub(crate) fn build_release(features: Option<&str>) -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--quiet", "--bin", "lstm-lm"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(std::process::Stdio::inherit());
    if let Some(f) = features {
        cmd.args(["--features", f]);
    }
    let out = cmd.output().context("cannot run cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release failed");
    }
    executable(&String::from_utf8_lossy(&out.stdout))
        .context("cargo build --release named no lstm-lm executable")
}

/// The path of the `lstm-lm` executable in cargo's JSON messages (`--message-format=json`).
fn executable(messages: &str) -> Option<PathBuf> {
    messages
        .lines()
        .rev()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "lstm-lm")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
}

/// Cargo, for the lstm-lm package (xtask is a workspace of its own).
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    cmd
}

fn run_ours(options: &Options, binary: &Path, config: &str) -> Result<Run> {
    let mut cmd = Command::new(binary);
    cmd.args(["bench", "--json", "--config", config, "--device"])
        .arg(&options.device)
        .arg("--text")
        .arg(&options.text)
        .args(["--steps", &options.steps.to_string()])
        .args(["--warmup", &options.warmup.to_string()]);
    if options.composed {
        cmd.arg("--composed");
    }
    let out = cmd.output().context("cannot run lstm-lm bench")?;
    if !out.status.success() {
        bail!(
            "lstm-lm bench --config {config} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("lstm-lm bench printed no report:\n{stdout}"))?;
    serde_json::from_str(line).with_context(|| format!("cannot parse {line}"))
}

/// The reference's flags for one of our config names, and its batch size.
fn reference_args(config: &str) -> Result<(Vec<String>, usize)> {
    let (mode, batch, width) = match config {
        "seed" => ("bucket", 50, "256"),
        "small" => ("bptt", 20, "256"),
        "medium" => ("bptt", 20, "650"),
        "zaremba-large" => ("bptt", 20, "1500"),
        other => bail!("no reference config for {other:?}"),
    };
    let args = [
        "--mode",
        mode,
        "--batch-size",
        &batch.to_string(),
        "--emb",
        width,
        "--hidden",
        width,
    ]
    .map(String::from)
    .to_vec();
    Ok((args, batch))
}

/// Python that runs the reference script (argv[1]) in-process and prints its peak RSS. On a GPU
/// every tensor it makes, and its seeded generator, live on `device` (the script itself only
/// knows the CPU); `.item()` in its loop waits for the GPU every step, so its timing is honest.
fn reference_wrapper(device: &str) -> String {
    let on_device = if device == "cpu" {
        String::new()
    } else {
        format!(
            "import torch\n\
             torch.set_default_device('{device}')\n\
             class _OnDevice(torch.Generator):\n\
             \x20   def __new__(cls, device=None):\n\
             \x20       return torch._C.Generator(device='{device}')\n\
             torch.Generator = _OnDevice\n\
             print('reference on', torch.cuda.get_device_name(0) if torch.cuda.is_available() else '{device}', \
             'cudnn', torch.backends.cudnn.version())\n"
        )
    };
    format!(
        "import resource, runpy, sys\n\
         {on_device}\
         sys.argv = sys.argv[1:]\n\
         runpy.run_path(sys.argv[0], run_name='__main__')\n\
         print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
    )
}

fn run_reference(options: &Options, python: &Path, config: &str) -> Result<Run> {
    let wrapper = reference_wrapper(&options.reference_device);
    let (args, batch) = reference_args(config)?;
    // The script times its whole epoch, first batch included; on a GPU that batch holds cuDNN's
    // and CUDA's one-time setup, which lstm-lm's `--warmup` leaves out. With a warm-up, the
    // script logs every `warmup` batches and the timing is taken from the logs after the first.
    let warmup = options.warmup;
    let (max_batches, log_interval) = if warmup == 0 {
        (options.steps, 0)
    } else {
        (warmup * (1 + options.steps.div_ceil(warmup)), warmup)
    };
    let out = Command::new(python)
        .arg("-c")
        .arg(&wrapper)
        .arg(&options.reference)
        .args(args)
        .arg("--train")
        .arg(&options.text)
        .arg("--valid")
        .arg(&options.text)
        .args(["--min-vocab", "10000", "--epochs", "1", "--no-eval"])
        .args(["--log-interval", &log_interval.to_string()])
        .args(["--max-batches", &max_batches.to_string()])
        .args(["--threads", &options.threads.to_string()])
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "the PyTorch reference failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let epoch = stdout
        .lines()
        .find(|l| l.starts_with("EPOCH 1:"))
        .with_context(|| format!("no EPOCH line from the reference:\n{stdout}"))?;
    let field = |name: &str| -> Result<f64> {
        epoch
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.trim_end_matches('s').parse().ok())
            .with_context(|| format!("no {name} in {epoch}"))
    };
    let (tokens_per_sec, samples_per_sec) = if warmup == 0 {
        (field("tok/s=")?, field("samples/s=")?)
    } else {
        after_warmup(&stdout, batch)?
    };
    let peak = stdout
        .lines()
        .find_map(|l| l.strip_prefix("PEAK_RSS_KIB "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    Ok(Run {
        tokens_per_sec,
        ms_per_step: batch as f64 / samples_per_sec * 1e3,
        peak_rss_mib: peak.map(|k| k / 1024.0),
        samples_per_sec,
        device: String::new(),
        gflop_per_step: None,
        ceiling: None,
        products: Vec::new(),
        openblas: None,
    })
}

/// Tokens/s and samples/s of the reference after its first logged interval (the warm-up), from
/// its progress lines `ep E batch K: ... | R tok/s (last N batches) | C samples/s cum | ...`:
/// every batch holds `batch` samples, so line j was printed `T_j = K_j * batch / C_j` seconds
/// into the epoch, and interval j counted `R_j * (T_j - T_{j-1})` tokens.
fn after_warmup(stdout: &str, batch: usize) -> Result<(f64, f64)> {
    let mut marks = Vec::new(); // (batches done, seconds since the start, tokens/s since the last)
    for line in stdout.lines().filter(|l| l.trim_start().starts_with("ep ")) {
        let number = |after: &str, before: &str| -> Option<f64> {
            let rest = &line[line.find(after)? + after.len()..];
            rest[..rest.find(before)?].trim().parse().ok()
        };
        let parsed = (|| {
            let k = number(" batch ", ":")?;
            let rate = number("| ", " tok/s")?;
            let cum = number("batches) | ", " samples/s cum")?;
            Some((k, k * batch as f64 / cum, rate))
        })();
        marks.push(parsed.with_context(|| format!("cannot read the reference's line {line:?}"))?);
    }
    if marks.len() < 2 {
        bail!(
            "the reference logged {} intervals; at least 2 are needed",
            marks.len()
        );
    }
    let tokens: f64 = marks.windows(2).map(|w| w[1].2 * (w[1].1 - w[0].1)).sum();
    let (first, last) = (marks[0], marks[marks.len() - 1]);
    let seconds = last.1 - first.1;
    Ok((
        tokens / seconds,
        (last.0 - first.0) * batch as f64 / seconds,
    ))
}

/// The smallest and largest of `values` (infinity and 0 when there are none).
fn range(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &v| {
        (lo.min(v), hi.max(v))
    })
}

/// `median GFLOP/s (min-max)`, or `not run`.
fn spread(values: &[f64]) -> String {
    if values.is_empty() {
        return "not run".into();
    }
    let (lo, hi) = range(values);
    format!("{:.0} GFLOP/s ({lo:.0}-{hi:.0})", median(values.to_vec()))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn print_table(
    options: &Options,
    ours: &[Vec<Run>],
    theirs: &[Vec<Run>],
    reference_ceilings: &[f64],
) {
    print_setting(options, ours);
    print_ceilings(ours, reference_ceilings);
    println!(
        "| config | system | tokens/s (median, min-max) | samples/s | ms/step | peak RSS MiB (highest, min-max) | GFLOP/s | share of ceiling | ratio to PyTorch |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (c, config) in options.configs.iter().enumerate() {
        print_config_rows(config, &ours[c], &theirs[c], reference_ceilings);
    }
}

/// The line above the table: rounds, steps, devices, text and the load average after the runs.
fn print_setting(options: &Options, ours: &[Vec<Run>]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let device = ours
        .iter()
        .flatten()
        .map(|r| r.device.as_str())
        .find(|d| !d.is_empty())
        .unwrap_or(&options.device);
    println!(
        "\n{} rounds x {} steps, lstm-lm on {}{}, PyTorch on {}, text {}, load average after: {}",
        options.rounds,
        options.steps,
        device,
        if options.composed {
            " (composed ops)"
        } else {
            ""
        },
        options.reference_device,
        options.text.display(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}

/// The sgemm ceilings measured in the rounds, and lstm-lm's OpenBLAS when it has one.
fn print_ceilings(ours: &[Vec<Run>], reference_ceilings: &[f64]) {
    let measured: Vec<&Ceiling> = ours
        .iter()
        .flatten()
        .filter_map(|r| r.ceiling.as_ref())
        .collect();
    // The path that was fastest most often.
    let path = measured
        .iter()
        .map(|c| c.path.as_str())
        .max_by_key(|p| measured.iter().filter(|c| c.path == *p).count())
        .unwrap_or("-");
    println!(
        "sgemm ceiling ([2048, 2048] product, every core), measured in every round: lstm-lm's \
         paths {} (fastest most often: {path}), the reference environment's (PyTorch, numpy) \
         {}; each share below is the median over rounds of the rate against the higher of the \
         two in the same round",
        spread(&measured.iter().map(|c| c.gflops).collect::<Vec<_>>()),
        spread(reference_ceilings),
    );
    if let Some(openblas) = ours.iter().flatten().find_map(|r| r.openblas.as_ref()) {
        println!("lstm-lm's OpenBLAS: {openblas}");
    }
}

/// The table's two rows of one config: lstm-lm's runs (`ours`, with the ratio) and PyTorch's.
fn print_config_rows(config: &str, ours: &[Run], theirs: &[Run], reference_ceilings: &[f64]) {
    let ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a.tokens_per_sec / b.tokens_per_sec)
        .collect();
    // The config's FLOPs per step and each round's ceiling, the same for both systems.
    let config_flop = ours.iter().find_map(|r| r.gflop_per_step);
    let ceilings = round_ceilings(ours, reference_ceilings);
    for (name, runs, ratio) in [
        ("lstm-lm", ours, Some(median(ratios.clone()))),
        ("PyTorch", theirs, None),
    ] {
        if runs.is_empty() {
            continue;
        }
        let tps: Vec<f64> = runs.iter().map(|r| r.tokens_per_sec).collect();
        let (lo, hi) = range(&tps);
        let peaks: Vec<f64> = runs.iter().filter_map(|r| r.peak_rss_mib).collect();
        let peak = match range(&peaks) {
            _ if peaks.is_empty() => "-".to_string(),
            (lo, hi) if lo == hi => format!("{hi:.0}"),
            (lo, hi) => format!("{hi:.0} ({lo:.0}-{hi:.0})"),
        };
        let ms = median(runs.iter().map(|r| r.ms_per_step).collect());
        // Both sides run the same products on a stream; with buckets lstm-lm skips the
        // padded positions at the output layer and PyTorch does not, so its FLOPs differ.
        let flop = match (name, config_flop) {
            ("lstm-lm", Some(f)) => Some(f),
            (_, Some(f)) if config != "seed" => Some(f),
            _ => None,
        };
        let gflops = flop.map(|f| f / ms * 1e3);
        let share = flop
            .map(|f| median_share(runs, &ceilings, f))
            .filter(|s| s.is_finite());
        println!(
            "| {config} | {name} | {:.0} ({lo:.0}-{hi:.0}) | {:.1} | {ms:.1} | {peak} | {} | {} | {} |",
            median(tps),
            median(runs.iter().map(|r| r.samples_per_sec).collect()),
            gflops.map_or("-".into(), |g| format!("{g:.0}")),
            share.map_or("-".into(), |s| format!("{:.0}%", s * 100.0)),
            match ratio {
                Some(r) if !ratios.is_empty() => format!("{r:.2}x"),
                _ => String::new(),
            }
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With a warm-up, the reference's rate is read from its logged intervals after the first:
    /// here 20-sample batches, the first interval 2 s (the warm-up), the next two 1 s each at
    /// 700 and 1,400 tokens/s, so 2,100 tokens in 2 s and 40 batches of 20 samples.
    #[test]
    fn the_gemm_bench_rate_is_read_from_its_line() {
        let out = "torch 2.15.0 load (0.5, 0.4, 0.3)\n\
            threads=2   2048 x  2048 x  2048 :   201.3 GFLOP/s   (load 1.02)\n\
            numpy threads=2   2048 x  2048 x  2048 :   125.9 GFLOP/s   (load 1.02)\n";
        assert_eq!(
            parse_gflops(out),
            [("PyTorch".to_string(), 201.3), ("numpy".to_string(), 125.9)]
        );
        assert!(parse_gflops("torch 2.15.0\n").is_empty());
    }

    /// The executable is read from cargo's artifact messages: the binary's, not a library's
    /// or a build script's, and the last if several.
    #[test]
    fn the_built_executable_is_read_from_cargos_messages() {
        let messages = concat!(
            r#"{"reason":"compiler-artifact","target":{"name":"lstm-lm"},"executable":"/old/lstm-lm"}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"build-script-build"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"lstm_lm"},"executable":null}"#,
            "\n",
            r#"{"reason":"compiler-artifact","target":{"name":"lstm-lm"},"executable":"/t/release/lstm-lm"}"#,
            "\n",
            r#"{"reason":"build-finished","success":true}"#,
            "\n"
        );
        assert_eq!(
            executable(messages),
            Some(PathBuf::from("/t/release/lstm-lm"))
        );
        assert_eq!(
            executable(r#"{"reason":"build-finished","success":true}"#),
            None
        );
    }

    #[test]
    fn the_reference_rate_leaves_its_warm_up_out() {
        let log = "vocab: 10000\n\
            \x20 ep 1 batch 20: train ppl 900.00 | 175 tok/s (last 20 batches) | 200.0 samples/s cum | load 1.0\n\
            \x20 ep 1 batch 40: train ppl 800.00 | 700 tok/s (last 20 batches) | 266.7 samples/s cum | load 1.0\n\
            \x20 ep 1 batch 60: train ppl 700.00 | 1400 tok/s (last 20 batches) | 300.0 samples/s cum | load 1.0\n\
            EPOCH 1: batches=60 time=4.0s tok/s=612 samples/s=300.0\n";
        let (tokens, samples) = after_warmup(log, 20).unwrap();
        assert!((tokens - 1050.0).abs() < 1.0, "{tokens}");
        assert!((samples - 400.0).abs() < 0.5, "{samples}");
        assert!(after_warmup("EPOCH 1: tok/s=1\n", 20).is_err());
    }

    fn run(ms_per_step: f64, ceiling: Option<f64>) -> Run {
        Run {
            tokens_per_sec: 0.0,
            ms_per_step,
            peak_rss_mib: None,
            samples_per_sec: 0.0,
            device: String::new(),
            gflop_per_step: None,
            ceiling: ceiling.map(|gflops| Ceiling {
                gflops,
                path: "gemm".into(),
            }),
            products: Vec::new(),
            openblas: None,
        }
    }

    /// A step of 50 GFLOP in three rounds: the machine fast in the first (ceiling 250 from
    /// lstm-lm, 300 from PyTorch: 250 ms a step is 2/3 of 300), slow in the second (200 / 150:
    /// 375 ms is 2/3 of 200) and the third measured by lstm-lm alone (ceiling 100, 1000 ms a
    /// step: 1/2). Each round's rate is set against its own round's higher ceiling.
    #[test]
    fn shares_set_each_round_against_its_own_ceiling() {
        let ours = [
            run(250.0, Some(250.0)),
            run(375.0, Some(200.0)),
            run(1000.0, Some(100.0)),
        ];
        let ceilings = round_ceilings(&ours, &[300.0, 150.0]);
        assert_eq!(ceilings, [300.0, 200.0, 100.0]);
        let share = median_share(&ours, &ceilings, 50.0);
        assert!((share - 2.0 / 3.0).abs() < 1e-12, "{share}");
        // Without any ceiling there is no share, rather than a made-up one.
        let none = [run(250.0, None)];
        assert!(median_share(&none, &round_ceilings(&none, &[]), 50.0).is_nan());
        assert_eq!(spread(&[]), "not run");
        assert_eq!(spread(&[300.0, 250.0, 200.0]), "250 GFLOP/s (200-300)");
    }

    /// The wrapper is Python that parses, on the CPU and with the GPU lines.
    #[test]
    fn the_reference_wrappers_parse_as_python() {
        for device in ["cpu", "cuda"] {
            let wrapper = reference_wrapper(device);
            let out = Command::new("python3")
                .args(["-c", "import ast, sys; ast.parse(sys.argv[1])"])
                .arg(&wrapper)
                .output()
                .expect("python3 runs");
            assert!(
                out.status.success(),
                "{device}:\n{wrapper}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                wrapper.contains("set_default_device('cuda')"),
                device == "cuda"
            );
        }
    }
}
