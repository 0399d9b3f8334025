//! `cargo xtask bench-data`: how long lstm-lm takes from start to its first training batch on a
//! text, and how much memory it holds by then, split into anonymous memory (the heap: tokens,
//! vocabulary, batches) and file-backed pages (the binary, and memory-mapped data).
//!
//! Each run starts `lstm-lm` with plain progress lines and one line a batch, samples
//! `/proc/PID/status` every 20 ms, and stops the process at its first `train batch 1/` line.
//! The first run starts from an empty run folder and an empty token cache (`--cache-dir`, a
//! temporary folder), so it prepares the text; later runs find it prepared in the cache.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The training text (files or folders, as `lstm-lm --train`).
    pub text: Vec<PathBuf>,
    /// Extra flags for `lstm-lm` (preset, vocabulary, device).
    pub flags: Vec<String>,
    /// Runs on the same run folder.
    pub runs: usize,
    /// A built lstm-lm; otherwise `cargo build --release` builds one.
    pub binary: Option<PathBuf>,
}

/// Peak memory seen, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmHWM`: the peak resident set, as the kernel counts it.
    pub peak: u64,
    /// The largest `RssAnon` sampled.
    pub anon: u64,
    /// The largest `RssFile` sampled.
    pub file: u64,
}

impl Memory {
    /// Folds in one `/proc/PID/status` text.
    pub fn update(&mut self, status: &str) {
        let field = |name: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(name))?;
            line.split_whitespace().nth(1)?.parse().ok()
        };
        self.peak = self.peak.max(field("VmHWM:").unwrap_or(0));
        self.anon = self.anon.max(field("RssAnon:").unwrap_or(0));
        self.file = self.file.max(field("RssFile:").unwrap_or(0));
    }
}

/// Whether `line` is the progress line of the first training batch.
pub fn is_first_batch(line: &str) -> bool {
    line.contains(" train batch 1/")
}

/// Runs the benchmark and prints its table.
pub fn bench(options: &Options) -> Result<()> {
    let binary = match &options.binary {
        Some(b) => b.clone(),
        None => crate::bench::build_release(None)?,
    };
    let run_dir = std::env::temp_dir().join(format!("lstm-lm-bench-data-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&run_dir);
    let cache = run_dir.with_extension("cache");
    let _ = std::fs::remove_dir_all(&cache);
    println!("| run | first training batch | peak RSS | peak anonymous | peak file-backed |");
    println!("|---|---|---|---|---|");
    for run in 1..=options.runs.max(1) {
        let (seconds, memory) = one_run(&binary, options, &run_dir, &cache)?;
        let mib = |kib: u64| format!("{:.0} MiB", kib as f64 / 1024.0);
        println!(
            "| {} | {seconds:.1} s | {} | {} | {} |",
            if run == 1 {
                "first (prepares)".to_string()
            } else {
                format!("prepared ({run})")
            },
            mib(memory.peak),
            mib(memory.anon),
            mib(memory.file)
        );
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::remove_dir_all(&cache);
    Ok(())
}

/// One run: seconds to the first training batch, and the memory seen until then.
fn one_run(
    binary: &PathBuf,
    options: &Options,
    run_dir: &PathBuf,
    cache: &PathBuf,
) -> Result<(f64, Memory)> {
    let start = Instant::now();
    let mut child = Command::new(binary)
        .args([
            "--progress",
            "plain",
            "--log-every",
            "1",
            "--checkpoint-minutes",
            "0",
        ])
        .arg("--artifact-dir")
        .arg(run_dir)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--train")
        .args(&options.text)
        .args(&options.flags)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {}", binary.display()))?;
    let pid = child.id();
    let memory = Arc::new(Mutex::new(Memory::default()));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (memory, done) = (memory.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    memory.lock().expect("memory lock").update(&status);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seconds = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("cannot read lstm-lm's output")?;
        if is_first_batch(&line) {
            seconds = Some(start.elapsed().as_secs_f64());
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                memory.lock().expect("memory lock").update(&status);
            }
            break;
        }
    }
    done.store(true, Ordering::Relaxed);
    let _ = child.kill();
    let status = child.wait()?;
    sampler.join().expect("the sampler does not panic");
    let memory = *memory.lock().expect("memory lock");
    match seconds {
        Some(s) => Ok((s, memory)),
        None => bail!("lstm-lm ended ({status}) before its first training batch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_keeps_the_largest_of_each_field() {
        let mut m = Memory::default();
        m.update("VmHWM:\t  1000 kB\nRssAnon:\t   700 kB\nRssFile:\t   200 kB\n");
        m.update("VmHWM:\t  1200 kB\nRssAnon:\t   600 kB\nRssFile:\t   300 kB\n");
        assert_eq!(
            m,
            Memory {
                peak: 1200,
                anon: 700,
                file: 300
            }
        );
        m.update("no such fields\n");
        assert_eq!(m.peak, 1200);
    }

    #[test]
    fn the_first_training_batch_is_found_in_the_progress_lines() {
        assert!(is_first_batch(
            "epoch 1/13 train batch 1/716 | loss 9.9 | ppl 20000.00 | 10 tok/s"
        ));
        assert!(!is_first_batch("epoch 1/13 train batch 10/716 | loss 9.9"));
        assert!(!is_first_batch("data: a stream of 10000000 train tokens"));
    }
}
