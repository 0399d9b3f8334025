//! Shows training's events: a live bar in a terminal, plain lines otherwise, and one summary
//! line per epoch either way.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use lstm_lm::data::prepare::PrepareEvent;
use lstm_lm::format::format_duration;
use lstm_lm::train::events::{Split, SplitProgress, TrainEvent};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A live bar when stdout is a terminal, plain lines otherwise.
    Auto,
    /// Plain lines (see `--log-every`).
    Plain,
    /// Only the per-epoch summary lines.
    Quiet,
}

/// The display: what it shows, and the bar while a split runs.
pub struct Display {
    mode: ProgressMode,
    log_every: usize,
    bar: Option<ProgressBar>,
    /// The preparation pass under way: its stage, bytes, start and the last tenth shown.
    pass: Option<(&'static str, u64, std::time::Instant, usize)>,
}

impl Display {
    /// A display in `mode`; in plain mode one line every `log_every` training batches (0: about
    /// ten per epoch).
    pub fn new(mode: ProgressMode, log_every: usize) -> Self {
        let mode = match mode {
            ProgressMode::Auto if !std::io::stdout().is_terminal() => ProgressMode::Plain,
            m => m,
        };
        Self {
            mode,
            log_every,
            bar: None,
            pass: None,
        }
    }

    /// Shows `event`.
    pub fn show(&mut self, event: TrainEvent) {
        match event {
            TrainEvent::Info(line) => self.println(line),
            TrainEvent::Warning(line) => match &self.bar {
                Some(bar) => bar.suspend(|| eprintln!("warning: {line}")),
                None => eprintln!("warning: {line}"),
            },
            TrainEvent::Prepare(event) => self.prepare(event),
            TrainEvent::SplitStarted(p) => {
                if self.mode == ProgressMode::Auto {
                    let bar = ProgressBar::new(p.batches as u64);
                    bar.set_style(
                        ProgressStyle::with_template("{msg} [{elapsed_precise}] {wide_bar}")
                            .expect("static template"),
                    );
                    bar.set_message(status(&p));
                    self.bar = Some(bar);
                }
            }
            TrainEvent::Batch(p) => {
                if let Some(bar) = &self.bar {
                    bar.set_position(p.batch as u64);
                    bar.set_message(status(&p));
                } else if self.mode == ProgressMode::Plain && p.split == Split::Train {
                    let every = match self.log_every {
                        0 => (p.batches / 10).max(1),
                        n => n,
                    };
                    if p.batch.is_multiple_of(every) && !p.finished() {
                        println!("{}", status(&p));
                    }
                }
            }
            TrainEvent::SplitEnded => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            TrainEvent::EpochEnded { stats, epochs } => self.println(format!(
                "epoch {}/{epochs}: train ppl {:.2} | valid ppl {:.2}{}{} | lr {} | {:.0} tok/s | {:.1} s",
                stats.epoch,
                stats.train_perplexity,
                stats.valid_perplexity,
                stats
                    .valid_bits_per_char
                    .map_or(String::new(), |b| format!(" | valid bpc {b:.4}")),
                stats
                    .valid_word_perplexity
                    .map_or(String::new(), |p| format!(" | valid word ppl {p:.2}")),
                stats.lr,
                stats.tokens_per_second,
                stats.seconds
            )),
        }
    }

    /// Preparing the text: a bar with MB/s and the time left in a terminal; otherwise a line
    /// when a pass starts and ends, and about every 10% in between.
    fn prepare(&mut self, event: PrepareEvent) {
        match event {
            PrepareEvent::Started { stage, bytes } => {
                self.pass = Some((stage, bytes, std::time::Instant::now(), 0));
                if self.mode == ProgressMode::Auto {
                    let bar = ProgressBar::new(bytes);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
                             {bytes_per_sec} ETA {eta}",
                        )
                        .expect("static template"),
                    );
                    bar.set_message(format!("preparing the text: {stage}"));
                    self.bar = Some(bar);
                } else if self.mode == ProgressMode::Plain {
                    println!("preparing the text: {stage}, {:.1} MB", bytes as f64 / 1e6);
                }
            }
            PrepareEvent::Advanced { bytes } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(bytes);
                } else if let Some((stage, total, start, shown)) = &mut self.pass {
                    let tenth = (bytes * 10 / (*total).max(1)) as usize;
                    if self.mode == ProgressMode::Plain && tenth > *shown && bytes < *total {
                        *shown = tenth;
                        let secs = start.elapsed().as_secs_f64().max(1e-9);
                        println!(
                            "preparing the text: {stage} {}% ({:.1} MB/s)",
                            tenth * 10,
                            bytes as f64 / 1e6 / secs
                        );
                    }
                }
            }
            PrepareEvent::Finished => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                if let Some((stage, total, start, _)) = self.pass.take() {
                    if self.mode != ProgressMode::Quiet {
                        let secs = start.elapsed().as_secs_f64();
                        self.println(format!(
                            "preparing the text: {stage} done, {:.1} MB in {} ({:.1} MB/s)",
                            total as f64 / 1e6,
                            format_duration(secs),
                            total as f64 / 1e6 / secs.max(1e-9)
                        ));
                    }
                }
            }
            PrepareEvent::Note(line) => self.println(line),
        }
    }

    fn println(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }
}

/// The progress line: epoch, batch, running loss and perplexity, tokens/s, time left.
fn status(p: &SplitProgress) -> String {
    let split = match p.split {
        Split::Train => "train",
        Split::Valid => "valid",
    };
    let mut s = format!(
        "epoch {}/{} {split} batch {}/{}",
        p.epoch, p.epochs, p.batch, p.batches
    );
    if let Some(ppl) = p.perplexity {
        // The running perplexity is exp(mean loss per token) over the epoch so far.
        s += &format!(" | loss {:.4} | ppl {ppl:.2}", ppl.ln());
    }
    if let Some(t) = p.tokens_per_second {
        s += &format!(" | {t:.0} tok/s");
    }
    if let Some((epoch_left, run_left)) = p.seconds_left {
        s += &format!(
            " | epoch left {} | run left {}",
            format_duration(epoch_left),
            format_duration(run_left)
        );
    }
    s
}
