//! The `lstm-lm` binary: kill -9 and rerun, and the errors a user sees.

mod common;

use common::{stderr_of_failure, stdout_of};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lstm_lm::run::checkpoint::last_complete_checkpoint;

fn lstm_lm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lstm-lm"));
    c.stdin(Stdio::null());
    // One token cache for this test process, not the user's.
    let cache = std::env::temp_dir().join(format!("lstm-lm-test-cache-{}", std::process::id()));
    c.env("LSTM_LM_CACHE_DIR", cache);
    c
}

/// Starts `lstm-lm args` with its output discarded.
fn spawn_silent(args: &[&std::ffi::OsStr]) -> std::process::Child {
    lstm_lm()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The files under `dir` with their sizes, one per line, for failure messages.
fn listing(dir: &Path) -> String {
    let mut lines = Vec::new();
    for entry in walk(dir) {
        let size = std::fs::metadata(&entry).map_or(0, |m| m.len());
        lines.push(format!("{} ({size} bytes)", entry.display()));
    }
    lines.sort();
    lines.join("\n")
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let path = e.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

fn train_args<'a>(train: &'a Path, valid: &'a Path, run: &'a Path) -> Vec<&'a std::ffi::OsStr> {
    let mut a: Vec<&std::ffi::OsStr> = [
        "--preset",
        "tiny",
        "--epochs",
        "4",
        "--max-vocab",
        "500",
        "--embed",
        "16",
        "--hidden",
        "24",
        "--device",
        "flex",
        "--progress",
        "plain",
        "--artifact-dir",
    ]
    .iter()
    .map(|s| s.as_ref())
    .collect();
    a.extend([
        run.as_os_str(),
        "--train".as_ref(),
        train.as_os_str(),
        "--valid".as_ref(),
        valid.as_os_str(),
    ]);
    a
}

/// Sets the value that follows `flag` in `args` (as made by [`train_args`]).
fn set_flag<'a>(args: &mut [&'a std::ffi::OsStr], flag: &str, value: &'a str) {
    let i = args
        .iter()
        .position(|a| *a == flag)
        .unwrap_or_else(|| panic!("{flag} is not among the arguments"));
    args[i + 1] = value.as_ref();
}

/// Waits until `run` holds a complete checkpoint, while `child` is still training.
fn wait_for_first_checkpoint(run: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while last_complete_checkpoint(run).is_none() {
        assert!(Instant::now() < deadline, "no checkpoint within 5 minutes");
        assert!(child.try_wait().unwrap().is_none(), "training exited early");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn kill_9_during_training_then_the_same_command_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 3000, 300);
    let run = tmp.path().join("run");
    let args = train_args(&train, &valid, &run);

    let mut child = spawn_silent(&args);
    wait_for_first_checkpoint(&run, &mut child);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = last_complete_checkpoint(&run).unwrap();
    assert!(kept < 4, "killed before the end");

    let out = lstm_lm().args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("resuming from the checkpoint of epoch {kept}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("epoch {}/4: train ppl", kept + 1)),
        "{stdout}"
    );
    assert!(
        !stdout.contains(&format!("epoch {kept}/4: train ppl")),
        "finished epochs are not redone"
    );
    assert!(stdout.contains("epoch 4/4: train ppl"), "{stdout}");
    let epochs: Vec<usize> = lstm_lm::run::history::read_history(&run)
        .iter()
        .map(|e| e.epoch)
        .collect();
    assert_eq!(epochs, vec![1, 2, 3, 4], "each epoch recorded once");

    // A changed model is refused, naming the difference and the way out.
    let mut changed = args.clone();
    let i = changed.iter().position(|a| *a == "24").unwrap();
    changed[i] = "32".as_ref();
    let out = lstm_lm().args(&changed).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cannot resume")
            && stderr.contains("model.d_hidden")
            && stderr.contains("--fresh"),
        "{stderr}"
    );
}

#[test]
fn missing_ptb_names_the_fetch_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = lstm_lm()
        .args(["--dataset", "ptb", "--data-dir"])
        .arg(tmp.path())
        .args(["--device", "flex"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("cargo xtask fetch-data --dataset ptb"),
        "{stderr}"
    );
    assert!(stderr.contains("ptb.train.txt"), "{stderr}");
}

#[test]
fn a_bad_corpus_file_is_named_with_its_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad = tmp.path().join("bad.txt");
    std::fs::write(&bad, b"fine line\nsecond \xc3\x28 line\n").unwrap();
    let out = lstm_lm()
        .args(["--device", "flex", "--train"])
        .arg(&bad)
        .arg("--artifact-dir")
        .arg(tmp.path().join("run"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("bad.txt") && stderr.contains("line 2") && stderr.contains("UTF-8"),
        "{stderr}"
    );
}

#[test]
fn ctrl_c_stops_after_the_batch_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 3000, 300);
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &valid, &run);
    let i = args.iter().position(|a| *a == "4").unwrap();
    args[i] = "50".as_ref(); // far more epochs than the test waits for

    let mut child = lstm_lm()
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_first_checkpoint(&run, &mut child);
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{stdout}");
    let kept = last_complete_checkpoint(&run).unwrap();
    assert!(kept < 50);
    assert!(
        stdout.contains(&format!(
            "interrupted; the checkpoint of epoch {kept} is kept"
        )),
        "{stdout}"
    );
}

/// The stream flags reach the config, and `lstm-lm eval` scores the saved run with full
/// context, printing tokens, loss and perplexity; a run folder without a run is named.
#[test]
fn stream_training_flags_and_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 600, 200);
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &valid, &run);
    set_flag(&mut args, "--epochs", "2");
    let stdout = stdout_of(
        lstm_lm()
            .args(&args)
            .args([
                "--batching",
                "stream",
                "--bptt",
                "10",
                "--dropout",
                "0.1",
                "--clip",
                "1",
            ])
            .args([
                "--lr-schedule",
                "step",
                "--decay-start",
                "1",
                "--lr-decay",
                "0.5",
            ]),
    );
    assert!(stdout.contains("windows of 10 steps"), "{stdout}");
    assert!(
        stdout.contains("| lr 0.01 |") && stdout.contains("| lr 0.005 |"),
        "{stdout}"
    );
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    for field in [
        "\"batching\": \"stream\"",
        "\"dropout\": 0.1",
        "\"clip\": 1.0",
        "\"step-decay\"",
    ] {
        assert!(config.contains(field), "{field} in {config}");
    }

    let stdout = stdout_of(lstm_lm().arg("eval").arg(&run).arg("--text").arg(&valid));
    assert!(
        stdout.contains("(epoch 2)") && stdout.contains("full context"),
        "{stdout}"
    );
    let number_after = |label: &str| -> f64 {
        stdout
            .split(label)
            .nth(1)
            .and_then(|p| p.split([',', ' ', '\n']).next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label} in {stdout}"))
    };
    let ppl = number_after("perplexity ");
    assert!(ppl > 1.0 && ppl < 500.0, "{stdout}");
    // Bits per character from the same loss and the text's own character count.
    let bpc: f64 = stdout
        .split(" bits per character")
        .next()
        .and_then(|s| s.rsplit(", ").next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no bits per character in {stdout}"));
    assert!(bpc > 0.0 && bpc < ppl.log2(), "{stdout}");

    let out = lstm_lm()
        .arg("eval")
        .arg(tmp.path())
        .arg("--text")
        .arg(&valid)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("config.json"), "{stderr}");
}

/// `--devices flex,flex` trains data-parallel on two CPU workers and says how the work is split
/// and that checkpoints come at epoch ends only; a list of one, or an unknown name, is an error
/// that says what to pass.
#[test]
fn two_devices_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 300, 60);
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &valid, &run);
    set_flag(&mut args, "--epochs", "1");
    let device = args.iter().position(|a| *a == "--device").unwrap();
    args[device] = "--devices".as_ref();
    set_flag(&mut args, "--devices", "flex,flex");
    let stdout = stdout_of(lstm_lm().args(&args));
    assert!(
        stdout.contains("data parallel on 2 devices")
            && stdout.contains("each step takes 2 batches of 16 sentences, one per device")
            && stdout.contains("checkpoints at epoch ends only")
            && stdout.contains("epoch 1/1"),
        "{stdout}"
    );
    for (list, says) in [
        ("flex", "two or more"),
        ("flex,tpu", "unknown device `tpu`"),
    ] {
        set_flag(&mut args, "--devices", list);
        let out = lstm_lm().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{list}: {stderr}");
        assert!(
            stderr.contains(says) && !stderr.contains("panicked"),
            "{list}: {stderr}"
        );
    }
}

/// From the command line: plain progress every N batches with loss and time left, then
/// `generate` (deterministic for a seed, sentences on lines), `report` (the history's values and
/// a redrawn plot) and `runs` (the run, complete); non-run folders get an error naming the fix.
#[test]
fn generate_report_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 600, 200);
    let runs = tmp.path().join("runs");
    let run = runs.join("tiny");
    let mut args = train_args(&train, &valid, &run);
    set_flag(&mut args, "--epochs", "2");
    let stdout = stdout_of(
        lstm_lm()
            .args(&args)
            .args(["--log-every", "3", "--batch-size", "8", "--test"])
            .arg(&valid),
    );
    let progress: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("epoch 1/2 train batch"))
        .collect();
    assert!(progress.len() >= 3, "{stdout}");
    for line in &progress {
        let batch: usize = line["epoch 1/2 train batch ".len()..]
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(batch % 3, 0, "{line}");
        for part in [
            "| loss ",
            "| ppl ",
            " tok/s",
            "| epoch left ",
            "| run left ",
        ] {
            assert!(line.contains(part), "{part:?} in {line}");
        }
    }

    let generate = |seed: &str| {
        let out = lstm_lm()
            .arg("generate")
            .arg(&run)
            .args(["--prompt", "the qqqq", "--length", "60", "--seed", seed])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        )
    };
    let (text, warning) = generate("4");
    assert!(text.starts_with("the qqqq "), "{text}");
    assert!(warning.contains("fed as <unk>: qqqq"), "{warning}");
    assert!(
        !text.contains("<eos>"),
        "sentence ends become line breaks: {text}"
    );
    let words = text.split_whitespace().count();
    let breaks = text.matches('\n').count();
    // 2 prompt words + 60 tokens, of which the sentence ends are line breaks (plus the final
    // one when the text does not end with a sentence end).
    assert!(words + breaks == 62 || words + breaks == 63, "{text}");
    assert_eq!(generate("4").0, text);
    assert_ne!(generate("5").0, text);

    #[cfg(unix)]
    {
        // The text is written as it is drawn: the start of a long text (the same text's) comes
        // while the model is still drawing, and a reader that leaves early (`| head`) ends the
        // run as it ends Unix tools, by SIGPIPE, without an error message.
        let mut child = lstm_lm()
            .arg("generate")
            .arg(&run)
            .args(["--prompt", "the qqqq", "--length", "1000000", "--seed", "4"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut head = [0u8; 12];
        std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut head).unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "the text came before the end"
        );
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(&head[..], &text.as_bytes()[..12]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.is_empty(), "{stderr}");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&out.status),
            Some(13),
            "SIGPIPE"
        );
    }

    let history = lstm_lm::run::history::read_history(&run);
    let best = history
        .iter()
        .map(|s| s.valid_perplexity)
        .fold(f64::INFINITY, f64::min);
    std::fs::remove_file(run.join("curves.svg")).unwrap();
    let report = stdout_of(lstm_lm().arg("report").arg(&run));
    assert!(
        report.contains("(complete)") && report.contains("2 of 2"),
        "{report}"
    );
    assert!(report.contains(&format!("{best:.2} (epoch")), "{report}");
    assert!(std::fs::metadata(run.join("curves.svg")).unwrap().len() > 1000);

    let table = stdout_of(lstm_lm().arg("runs").arg(&runs));
    let row = table
        .lines()
        .find(|l| l.contains("tiny"))
        .expect("the run is listed");
    assert!(row.contains("complete") && row.contains("2/2"), "{table}");
    assert!(row.contains(&format!("{best:.2}")), "{table}");

    for sub in ["generate", "report"] {
        let out = lstm_lm().arg(sub).arg(tmp.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{sub}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("lstm-lm runs"), "{sub}: {err}");
    }
}

/// Every tensor of the model of `epoch` in `run`, as raw f32 data.
fn model_tensors(run: &Path, epoch: usize) -> Vec<Vec<f32>> {
    let m = lstm_lm::run::load_model(run, Some(epoch), &burn::tensor::Device::flex()).unwrap();
    let mut out = vec![m.embedding.weight.val().into_data()];
    for layer in &m.lstm.layers {
        out.push(layer.input_weight.val().into_data());
        out.push(layer.hidden_weight.val().into_data());
        out.push(layer.bias.val().into_data());
    }
    let output = m.output.as_ref().expect("untied");
    out.push(output.weight.val().into_data());
    out.extend(output.bias.as_ref().map(|b| b.val().into_data()));
    out.into_iter()
        .map(|d| d.try_into_vec::<f32>().unwrap())
        .collect()
}

/// Asserts that `run` ended as `alone` did: the same perplexities in the history and the same
/// weights at `epoch`, bit for bit.
fn assert_same_run(run: &Path, alone: &Path, epoch: usize, name: &str) {
    let ppl = |dir: &Path| -> Vec<(u64, u64)> {
        lstm_lm::run::history::read_history(dir)
            .iter()
            .map(|e| (e.train_perplexity.to_bits(), e.valid_perplexity.to_bits()))
            .collect()
    };
    assert_eq!(ppl(run), ppl(alone), "{name}: perplexities bit for bit");
    assert!(
        model_tensors(run, epoch) == model_tensors(alone, epoch),
        "{name}: the final weights differ from the run left alone"
    );
}

/// `kill -9` again and again, at timed points and as soon as a checkpoint file is being
/// written, then the same command until it finishes: the weights and the history are those of
/// the run left alone, bit for bit, and no temporary file is left.
#[test]
fn kill_9_at_many_points_and_the_run_ends_as_if_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 3000, 200);
    // 8 epochs of a fraction of a second each: long enough that at least 3 of the kills land
    // before the run ends on an idle machine too (with 4 epochs, 4 landed and once only 2).
    let epochs = 8;
    let epochs_flag = epochs.to_string();
    let alone = tmp.path().join("alone");
    let mut args = train_args(&train, &valid, &alone);
    set_flag(&mut args, "--epochs", &epochs_flag);
    stdout_of(lstm_lm().args(&args));

    let run = tmp.path().join("killed");
    let mut args = train_args(&train, &valid, &run);
    set_flag(&mut args, "--epochs", &epochs_flag);
    let ckpt = run.join("checkpoint");
    // A manifest's temporary file (`.manifest-N.json.tmp-<pid>`) or a record's, which
    // burn-pack writes as it serialises it (`model-N.bpk.<pid>-<n>.tmp`).
    let writing = || {
        std::fs::read_dir(&ckpt).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.contains(".tmp-") || name.ends_with(".tmp")
            })
        })
    };
    let (mut kills, mut during_writes, mut finished) = (0, 0, false);
    for round in 0..14 {
        let mut child = spawn_silent(&args);
        let start = Instant::now();
        // Even rounds: a timed kill; odd rounds: the moment a checkpoint file is being written.
        let at = Duration::from_millis(100 + 90 * round as u64);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "round {round}: {status}");
                finished = true;
                break;
            }
            let mid_write = round % 2 == 1 && writing();
            if mid_write || (round % 2 == 0 && start.elapsed() >= at) {
                child.kill().unwrap();
                child.wait().unwrap();
                kills += 1;
                during_writes += usize::from(mid_write);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "round {round} hangs"
            );
            std::thread::sleep(Duration::from_micros(200));
        }
        if finished {
            break;
        }
    }
    if !finished {
        stdout_of(lstm_lm().args(&args));
    }
    eprintln!("{kills} kills, {during_writes} while a checkpoint file was being written");
    assert!(kills >= 3, "only {kills} kills landed");

    let recorded: Vec<usize> = lstm_lm::run::history::read_history(&run)
        .iter()
        .map(|e| e.epoch)
        .collect();
    assert_eq!(
        recorded,
        (1..=epochs).collect::<Vec<_>>(),
        "each epoch recorded once"
    );
    assert_same_run(&run, &alone, epochs, "killed");
    assert!(!writing(), "no temporary file is left");
}

/// Unmounts a test file system when dropped.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A disk that fills up while epoch 2 is being checkpointed: the run stops with an error that
/// says so and how to continue, the checkpoint of epoch 1 is intact, and once there is room
/// the same command continues from it. Mounts a small tmpfs, which needs root: ignored by a
/// plain `cargo test`, run by `.ci/run` (as root) with `--include-ignored`.
#[test]
#[ignore = "mounts a tmpfs, which needs root: run as root with --include-ignored (CI does)"]
fn a_full_disk_while_checkpointing_keeps_the_previous_checkpoint() {
    let root = Command::new("id").arg("-u").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&root.stdout).trim(),
        "0",
        "mounting a small tmpfs needs root"
    );
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 1500, 200);
    // One epoch's checkpoint size, measured on a normal disk.
    let probe = tmp.path().join("probe");
    let mut args = train_args(&train, &valid, &probe);
    set_flag(&mut args, "--epochs", "1");
    stdout_of(lstm_lm().args(&args));
    let one_epoch: u64 = std::fs::read_dir(probe.join("checkpoint"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();

    let disk = tmp.path().join("disk");
    std::fs::create_dir(&disk).unwrap();
    let size = |bytes: u64| format!("size={}k", bytes / 1024);
    let status = Command::new("mount")
        .args(["-t", "tmpfs", "-o"])
        .arg(size(one_epoch * 3 / 2 + 200 * 1024))
        .arg("tmpfs")
        .arg(&disk)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cannot mount a tmpfs here (a container without CAP_SYS_ADMIN?)"
    );
    let _mounted = Mounted(disk.clone());

    let run = disk.join("run");
    let args = train_args(&train, &valid, &run);
    let out = lstm_lm().args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "No space left on device",
        "the checkpoint of epoch 1 is kept",
        "free some space",
        "run the same command again",
    ] {
        assert!(stderr.contains(part), "{part:?} in {stderr}");
    }
    assert!(
        !stderr.contains(".bpk."),
        "a record that could not be written is named by its own path, not its temporary \
         file's: {stderr}"
    );
    assert_eq!(last_complete_checkpoint(&run), Some(1));
    assert!(lstm_lm::run::checkpoint::verify_checkpoint(&run, 1).is_ok());

    // Room again: the same command continues from epoch 1 to the end.
    let status = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&disk)
        .status()
        .unwrap();
    assert!(status.success());
    let stdout = stdout_of(lstm_lm().args(&args));
    assert!(
        stdout.contains("resuming from the checkpoint of epoch 1"),
        "{stdout}"
    );
    assert_eq!(last_complete_checkpoint(&run), Some(4));
}

/// Bad input files and folders: each ends with exit code 1 and a message naming the file (and
/// line) and what to do, never a panic; CRLF text and a 1 MB line train when they can.
#[test]
fn bad_input_gets_a_clear_error_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (good, valid) = common::tiny_corpus(dir, 300, 100);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let long_line: String = (0..300_000)
        .map(|i| format!("w{} ", i % 997))
        .collect::<String>()[..1 << 20]
        .trim_end()
        .to_string();
    let long = write("long.txt", long_line.as_bytes());
    let crlf = write(
        "crlf.txt",
        std::fs::read_to_string(&good)
            .unwrap()
            .replace('\n', "\r\n")
            .as_bytes(),
    );
    let run = |args: &[&std::ffi::OsStr]| {
        let out = lstm_lm()
            .args([
                "--preset",
                "tiny",
                "--device",
                "flex",
                "--progress",
                "quiet",
            ])
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(!stderr.contains("panicked"), "{stderr}");
        (out.status.code(), stderr)
    };
    let os = |s: &str| -> std::ffi::OsString { s.into() };
    let file = |p: &Path| p.as_os_str().to_owned();
    let run_dir = |name: &str| dir.join("runs").join(name).into_os_string();

    let cases: Vec<(&str, Vec<std::ffi::OsString>, Vec<&str>)> = vec![
        (
            "missing file",
            vec![os("--train"), file(&dir.join("nope.txt"))],
            vec!["cannot read corpus file", "nope.txt", "No such file"],
        ),
        (
            "empty file",
            vec![os("--train"), file(&write("empty.txt", b""))],
            vec!["empty.txt", "no tokens", "one sentence per line"],
        ),
        (
            "only blank lines",
            vec![os("--train"), file(&write("blank.txt", b"\n  \n\t\n"))],
            vec!["blank.txt", "no tokens"],
        ),
        (
            "invalid UTF-8",
            vec![os("--train"), file(&write("latin1.txt", b"ok\ncaf\xe9\n"))],
            vec![
                "latin1.txt",
                "line 2",
                "not valid UTF-8",
                "convert the file to UTF-8",
            ],
        ),
        (
            "binary data",
            vec![
                os("--train"),
                file(&write("bin.txt", b"one\ntwo\0\x01\x02\n")),
            ],
            vec!["bin.txt", "line 2", "binary data"],
        ),
        (
            "a 1 MB line, no --valid",
            vec![os("--train"), file(&long)],
            vec!["long.txt", "too few to hold out", "--valid FILE"],
        ),
        (
            "a 1 MB line in buckets",
            vec![os("--train"), file(&long), os("--valid"), file(&valid)],
            vec!["longer than the largest bucket", "--batching stream"],
        ),
        (
            "artifact dir that is not a folder",
            vec![
                os("--train"),
                file(&good),
                os("--artifact-dir"),
                file(&good.join("run")),
            ],
            vec!["cannot create run folder", "train.txt/run"],
        ),
    ];
    for (what, args, parts) in cases {
        let mut args = args;
        if !args.iter().any(|a| a == "--artifact-dir") {
            args.extend([os("--artifact-dir"), run_dir(what)]);
        }
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(1), "{what}: {stderr}");
        for part in parts {
            assert!(stderr.contains(part), "{what}: {part:?} in {stderr}");
        }
    }

    // Accepted: CRLF line ends, and a 1 MB line as a stream.
    for (what, args) in [
        ("crlf", vec![os("--train"), file(&crlf)]),
        (
            "long stream",
            vec![
                os("--train"),
                file(&long),
                os("--valid"),
                file(&valid),
                os("--batching"),
                os("stream"),
                os("--bptt"),
                os("20"),
            ],
        ),
    ] {
        let mut args = args;
        args.extend([os("--artifact-dir"), run_dir(what)]);
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        let (code, stderr) = run(&args);
        assert_eq!(code, Some(0), "{what}: {stderr}");
    }
}

/// `--checkpoint-minutes`: a run killed in the middle of its first epoch, after a checkpoint
/// within it, resumes after the saved batch (stream batching with carried state and dropout, and
/// buckets) and ends with the weights and perplexities of the run left alone, bit for bit.
#[test]
fn a_kill_within_an_epoch_resumes_after_the_saved_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (train, valid) = common::tiny_corpus(tmp.path(), 3000, 200);
    let stream = ["--batching", "stream", "--bptt", "10", "--dropout", "0.1"];
    for (name, extra) in [("stream", &stream[..]), ("buckets", &[][..])] {
        let alone = tmp.path().join(format!("{name}-alone"));
        let mut args = train_args(&train, &valid, &alone);
        set_flag(&mut args, "--epochs", "2");
        stdout_of(lstm_lm().args(&args).args(extra));

        let run = tmp.path().join(format!("{name}-killed"));
        let mut args = train_args(&train, &valid, &run);
        set_flag(&mut args, "--epochs", "2");
        let extra: Vec<&std::ffi::OsStr> = extra
            .iter()
            .map(|s| s.as_ref())
            .chain(["--checkpoint-minutes".as_ref(), "0.0005".as_ref()])
            .collect();
        args.extend(&extra);
        // An epoch lasts a fraction of a second: on a loaded machine the kill can land after
        // epoch 1 has ended, which is not the case under test, so that attempt is made again.
        let mut attempts = 0;
        let saved = loop {
            attempts += 1;
            let _ = std::fs::remove_dir_all(&run);
            let mut child = spawn_silent(&args);
            let deadline = Instant::now() + Duration::from_secs(120);
            let saved = loop {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "{name}: finished too soon"
                );
                assert!(
                    Instant::now() < deadline,
                    "{name}: no checkpoint within the epoch"
                );
                match lstm_lm::train::strategy::find_partial(&run, 1) {
                    Some(p) if p.batches >= 5 => break p,
                    _ => std::thread::sleep(Duration::from_millis(2)),
                }
            };
            child.kill().unwrap();
            child.wait().unwrap();
            let past_epoch_1 = lstm_lm::train::strategy::find_partial(&run, 2).is_some()
                || [
                    "manifest-1.json",
                    "model-1.bpk",
                    "optim-1.bpk",
                    "scheduler-1.bpk",
                ]
                .iter()
                .any(|f| run.join("checkpoint").join(f).exists());
            if !past_epoch_1 {
                break saved;
            }
            assert!(attempts < 5, "{name}: every kill landed after epoch 1");
        };
        assert_eq!(
            last_complete_checkpoint(&run),
            None,
            "{name}: killed within epoch 1"
        );

        let left = listing(&run.join("checkpoint"));
        let out = lstm_lm().args(&args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{name}: {stdout}{stderr}");
        let resumed = stdout
            .lines()
            .find(|l| l.starts_with("resuming within epoch 1, after batch "))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: the kill left {left}\n(saw batch {} of generation {})\n{stdout}{stderr}",
                    saved.batches, saved.generation
                )
            });
        let batch: usize = resumed["resuming within epoch 1, after batch ".len()..]
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(batch >= saved.batches, "{name}: {resumed}");

        assert_same_run(&run, &alone, 2, name);
    }
}

/// `lstm-lm bench` runs real training steps and reports them as JSON; `--composed` runs the same
/// steps through Burn's composed ops instead of the fused ones (what the fused ops are measured
/// against), and they train alike: the same losses within float rounding. The report counts the
/// step's matrix-product FLOPs by the documented formula and puts their rate against the
/// machine's sgemm ceiling (skipped with `--no-ceiling`).
#[test]
fn bench_reports_steps_fused_and_composed() {
    let report = |composed: bool| {
        let mut cmd = lstm_lm();
        cmd.args(["bench", "--config", "small", "--steps", "3", "--json"]);
        if composed {
            cmd.args(["--composed", "--no-ceiling"]);
        }
        let out = stdout_of(&mut cmd);
        serde_json::from_str::<serde_json::Value>(out.trim()).expect(&out)
    };
    let (fused, composed) = (report(false), report(true));
    assert_eq!(fused["fused"], true);
    assert_eq!(composed["fused"], false);
    for r in [&fused, &composed] {
        assert_eq!(r["config"], "small");
        assert_eq!(r["steps"], 3);
        assert_eq!(r["tokens"], 3 * 20 * 35, "{r}");
        assert!(r["tokens_per_sec"].as_f64().unwrap() > 0.0, "{r}");
        // 2 x 256 LSTM on 700 positions, and the output layer on all of them, times 3.
        let v = r["vocab"].as_f64().unwrap();
        let want = 3.0 * (2.0 * 2.0 * 700.0 * 512.0 * 1024.0 + 2.0 * 700.0 * 256.0 * v) / 1e9;
        let got = r["gflop_per_step"].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    }
    let ceiling = fused["ceiling"]["gflops"].as_f64().unwrap();
    let paths = fused["ceiling"]["paths"].as_array().unwrap();
    assert!(paths.len() >= 2 && ceiling > 1.0, "{}", fused["ceiling"]);
    let share = fused["share_of_ceiling"].as_f64().unwrap();
    let rate = fused["gflops"].as_f64().unwrap();
    assert!((share - rate / ceiling).abs() < 1e-9, "{share}");
    assert!(composed["ceiling"].is_null() && composed["share_of_ceiling"].is_null());
    let (a, b) = (
        fused["last_loss"].as_f64().unwrap(),
        composed["last_loss"].as_f64().unwrap(),
    );
    assert!(
        a.is_finite() && (a - b).abs() <= 1e-4 * a.abs(),
        "fused {a}, composed {b}"
    );
}

/// `--train` takes several files or a folder of shards: a folder's files are read sorted by
/// name, and without `--valid` the run says which lines it holds out; both name the run after
/// the first path and train to the end.
#[test]
fn several_training_files_and_a_folder_of_shards_train() {
    let tmp = tempfile::tempdir().unwrap();
    let lines: Vec<&str> = lstm_lm::data::corpus::EMBEDDED_TINY_SHAKESPEARE
        .lines()
        .take(600)
        .collect();
    let shards = tmp.path().join("shards");
    std::fs::create_dir(&shards).unwrap();
    std::fs::write(shards.join("part-1.txt"), lines[..400].join("\n")).unwrap();
    std::fs::write(shards.join("part-2.txt"), lines[400..].join("\n")).unwrap();
    let run = |train: &[std::path::PathBuf], dir: &str| {
        let mut cmd = lstm_lm();
        cmd.args(["--preset", "tiny", "--epochs", "1", "--progress", "quiet"])
            .args([
                "--device",
                "flex",
                "--checkpoint-minutes",
                "0",
                "--artifact-dir",
            ])
            .arg(tmp.path().join(dir))
            .arg("--train")
            .args(train);
        stdout_of(&mut cmd)
    };
    let files = run(
        &[shards.join("part-1.txt"), shards.join("part-2.txt")],
        "files",
    );
    assert!(
        files.contains(
            "validation: the last 60 of the 600 lines of the 2 training files, from line 141 of"
        ),
        "{files}"
    );
    assert!(
        files.contains("part-2.txt") && files.contains("epoch 1/1:"),
        "{files}"
    );
    let folder = run(std::slice::from_ref(&shards), "folder");
    assert!(folder.contains("of the 2 training files"), "{folder}");
    // The same lines in the same order: the same data line.
    let data = |out: &str| {
        out.lines()
            .find(|l| l.starts_with("data:"))
            .unwrap()
            .to_string()
    };
    assert_eq!(data(&files), data(&folder));
}

/// A kill -9 during preparation leaves no prepared folder under its final name, only the
/// killed process's temporary one; the next preparation removes that and writes the same ids
/// as a preparation never interrupted.
#[test]
fn a_kill_during_preparation_leaves_nothing_that_is_read_later() {
    use lstm_lm::data::corpus::CorpusSource;
    use lstm_lm::data::prepare::{prepare, PrepareOptions};

    let tmp = tempfile::tempdir().unwrap();
    // About 24 MB of text: preparing it takes longer than the test waits before the kill.
    let train = tmp.path().join("big.txt");
    let mut text = String::with_capacity(25 << 20);
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    while text.len() < 24 << 20 {
        for _ in 0..12 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            text.push_str(&format!("w{} ", x % 5000));
        }
        text.push('\n');
    }
    std::fs::write(&train, &text).unwrap();
    let cache = tmp.path().join("cache");
    let mut child = lstm_lm()
        .args(["--train".as_ref(), train.as_os_str()])
        .args(["--cache-dir".as_ref(), cache.as_os_str()])
        .args([
            "--artifact-dir".as_ref(),
            tmp.path().join("run").as_os_str(),
        ])
        .args(["--preset", "tiny", "--progress", "plain"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let partial = |cache: &Path| -> Vec<String> {
        std::fs::read_dir(cache)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    while !partial(&cache).iter().any(|n| n.contains(".partial-")) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no preparation started"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Some of the stores are being written; well before all of them are on a fast machine.
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap();
    child.wait().unwrap();
    let left = partial(&cache);
    assert!(
        left.iter().all(|n| n.contains(".partial-")),
        "a folder under its final name after the kill: {left:?}"
    );

    let source = CorpusSource::Files {
        train,
        valid: None,
        test: None,
        train_fraction: 0.9,
    };
    let options = |dir: &Path| PrepareOptions {
        cache_dir: dir.to_path_buf(),
        max_vocab: 0,
        tokenizer: Default::default(),
        fixed: None,
    };
    let after = prepare(&source, &options(&cache), &mut |_| {}).unwrap();
    assert!(!after.reused);
    assert!(
        partial(&cache).iter().all(|n| !n.contains(".partial-")),
        "the killed run's folder is still there: {:?}",
        partial(&cache)
    );
    let clean = prepare(&source, &options(&tmp.path().join("clean")), &mut |_| {}).unwrap();
    assert_eq!(after.vocab, clean.vocab);
    for (a, b) in [(&after.train, &clean.train), (&after.valid, &clean.valid)] {
        assert_eq!(a.offsets(), b.offsets());
        assert!((0..a.len()).all(|i| a.ids().get(i) == b.ids().get(i)));
    }
}

/// A character model end to end: config.json keeps the tokenizer, epoch lines and `report`
/// show bits per character, `generate` writes only characters of the text (non-ASCII ones
/// included) without spaces put between them, and `eval` scores a text in bits per character.
#[test]
fn a_character_model_trains_reports_bits_per_character_and_writes_text() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("chars.txt");
    let line = "Ünïcödé sïng, ärïa: 😀 la la.\r\n\nÖde an die Freude.\n";
    std::fs::write(&train, line.repeat(60)).unwrap();
    let run = tmp.path().join("run");
    let stdout = stdout_of(
        lstm_lm()
            .args(["--train".as_ref(), train.as_os_str()])
            .args(["--artifact-dir".as_ref(), run.as_os_str()])
            .args(["--preset", "char-rnn", "--epochs", "1", "--hidden", "32"])
            .args(["--embed", "16", "--batch-size", "4", "--bptt", "20"])
            .args(["--progress", "plain"]),
    );
    assert!(stdout.contains("valid bpc"), "{stdout}");
    let config = std::fs::read_to_string(run.join("config.json")).unwrap();
    assert!(config.contains("\"tokenizer\": \"char\""), "{config}");
    let report = stdout_of(lstm_lm().arg("report").arg(&run));
    assert!(report.contains("valid bpc"), "{report}");

    let text = stdout_of(lstm_lm().arg("generate").arg(&run).args([
        "--prompt", "Ün", "--length", "200", "--seed", "2", "--no-unk",
    ]));
    assert!(text.starts_with("Ün"), "{text}");
    let known: std::collections::HashSet<char> = line.chars().collect();
    assert!(
        text.chars().all(|c| known.contains(&c)),
        "only the text's characters: {text}"
    );
    assert!(
        !text.contains("Ü n"),
        "characters are not spaced out: {text}"
    );

    let out = stdout_of(lstm_lm().arg("eval").arg(&run).arg("--text").arg(&train));
    assert!(out.contains("bits per character"), "{out}");
}

/// A BPE model end to end: the tokenizer is learned on the training text and kept in the run
/// folder, `tokenize` prints the pieces (fewer than the characters; blank lines kept),
/// `generate` decodes pieces back to text, and `eval` reports bits per character.
#[test]
fn a_bpe_model_keeps_its_tokenizer_and_writes_text() {
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("bpe.txt");
    let mut text = String::new();
    for i in 0..200 {
        text += &format!("Gödel, Escher, Bach: {} loops 😀\n", i % 13);
    }
    std::fs::write(&train, &text).unwrap();
    let run = tmp.path().join("run");
    let stdout = stdout_of(
        lstm_lm()
            .args(["--train".as_ref(), train.as_os_str()])
            .args(["--artifact-dir".as_ref(), run.as_os_str()])
            .args([
                "--preset",
                "char-rnn",
                "--tokenizer",
                "bpe",
                "--max-vocab",
                "290",
            ])
            .args(["--epochs", "1", "--hidden", "32", "--embed", "16"])
            .args(["--batch-size", "4", "--bptt", "10", "--progress", "plain"]),
    );
    assert!(stdout.contains("valid bpc"), "{stdout}");
    assert!(run.join("tokenizer.json").is_file());
    let vocab = std::fs::read_to_string(run.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().count(), 290);

    let line = text.lines().next().unwrap();
    let one = tmp.path().join("one.txt");
    std::fs::write(&one, format!("{line}\n\n")).unwrap();
    let pieces = stdout_of(lstm_lm().arg("tokenize").arg(&run).arg("--text").arg(&one));
    let first = pieces.lines().next().unwrap();
    assert!(first.split(' ').count() < line.chars().count(), "{pieces}");
    assert_eq!(
        pieces.lines().nth(1),
        Some(""),
        "the blank line stays: {pieces}"
    );

    let sample = stdout_of(lstm_lm().arg("generate").arg(&run).args([
        "--prompt", "Gödel", "--length", "100", "--seed", "1", "--no-unk",
    ]));
    assert!(sample.starts_with("Gödel"), "{sample}");
    // Pieces are decoded to bytes and text, never printed as pieces (`Ġ` marks a space in
    // byte-level BPE); the learned pieces of the text show up whole.
    assert!(!sample.contains('Ġ') && !sample.contains('Ċ'), "{sample}");
    assert!(sample.matches("Gödel").count() > 1, "{sample}");
    let out = stdout_of(lstm_lm().arg("eval").arg(&run).arg("--text").arg(&train));
    assert!(out.contains("bits per character"), "{out}");
}

/// The adaptive softmax end to end: saved in config.json, resumed, evaluated with the
/// perplexity training printed, sampled from; bad cutoffs and `--tied` refused before any
/// run folder is written.
#[test]
fn an_adaptive_softmax_run_trains_resumes_evaluates_and_generates() {
    use std::ffi::OsStr;
    let tmp = tempfile::tempdir().unwrap();
    let train = tmp.path().join("train.txt");
    let valid = tmp.path().join("valid.txt");
    let mut text = String::new();
    for i in 0..400 {
        text += &format!(
            "w{} the w{} of w{} and w{}\n",
            i % 7,
            i % 31,
            i % 97,
            i % 180
        );
    }
    std::fs::write(&train, &text).unwrap();
    std::fs::write(&valid, text.lines().take(60).collect::<Vec<_>>().join("\n")).unwrap();
    let run = tmp.path().join("run");
    let mut args = train_args(&train, &valid, &run);
    set_flag(&mut args, "--epochs", "1");
    let mut adaptive = args.clone();
    adaptive.extend([OsStr::new("--cutoffs"), OsStr::new("20,80")]);
    let out = stdout_of(lstm_lm().arg("train").args(&adaptive));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["model"]["softmax"],
        serde_json::json!({"kind": "adaptive", "cutoffs": [20, 80], "div_value": 4.0})
    );
    assert!(out.contains("valid ppl"), "{out}");
    // Resuming without the flags is a config change, refused by name; with them it goes on.
    let err = stderr_of_failure(lstm_lm().arg("train").args(&args));
    assert!(err.contains("softmax"), "{err}");
    set_flag(&mut adaptive, "--epochs", "2");
    stdout_of(lstm_lm().arg("train").args(&adaptive));

    let history = std::fs::read_to_string(run.join("history.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
    let printed = format!(
        "perplexity {:.2}",
        last["valid_perplexity"].as_f64().unwrap()
    );
    // A bucket run: scored sentence by sentence, as its validation was.
    let eval = stdout_of(
        lstm_lm()
            .arg("eval")
            .arg(&run)
            .args(["--context", "buckets"])
            .arg("--text")
            .arg(&valid),
    );
    assert!(eval.contains(&printed), "{printed} in {eval}");
    let old_flag = stdout_of(
        lstm_lm()
            .arg("eval")
            .arg(&run)
            .arg("--sentences")
            .arg("--text")
            .arg(&valid),
    );
    assert_eq!(old_flag, eval, "--sentences is --context buckets");
    let sample = stdout_of(
        lstm_lm()
            .arg("generate")
            .arg(&run)
            .args(["--length", "300", "--seed", "1", "--no-unk"]),
    );
    let words: std::collections::HashSet<&str> = sample.split_whitespace().collect();
    assert!(
        words
            .iter()
            .any(|w| w[1..].parse::<usize>().is_ok_and(|k| k >= 31)),
        "samples reach the tail clusters' words: {sample}"
    );

    for (flag, value, says) in [
        ("--cutoffs", "80,20", "increasing"),
        ("--cutoffs", "20,5000", "below the vocabulary size"),
    ] {
        let fresh = tmp.path().join(format!("bad-{value}"));
        let mut bad = train_args(&train, &valid, &fresh);
        bad.extend([OsStr::new(flag), OsStr::new(value)]);
        let err = stderr_of_failure(lstm_lm().arg("train").args(&bad));
        assert!(err.contains(says), "{err}");
        assert!(!fresh.join("config.json").exists(), "{}", listing(&fresh));
    }
    let fresh = tmp.path().join("tied");
    let mut tied = train_args(&train, &valid, &fresh);
    set_flag(&mut tied, "--hidden", "16");
    tied.extend(["--tied", "--cutoffs", "20"].map(OsStr::new));
    let err = stderr_of_failure(lstm_lm().arg("train").args(&tied));
    assert!(err.contains("--tied"), "{err}");
}

#[test]
fn a_closed_pipe_ends_the_output_quietly() {
    // `lstm-lm score RUN --text FILE | head -1`: the reader leaves after one line.
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::tiny_files(tmp.path(), 400, 60);
    let run = tmp.path().join("run");
    common::train_quietly(
        common::tiny_config(1),
        &corpus,
        &run,
        vec![burn::tensor::Device::flex()],
    )
    .unwrap();
    let text = tmp.path().join("many.txt");
    std::fs::write(&text, "the king is here\n".repeat(50_000)).unwrap();
    let mut child = lstm_lm()
        .arg("score")
        .arg(&run)
        .arg("--text")
        .arg(&text)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut first,
    )
    .unwrap();
    assert!(first.starts_with("{\"line\":1"), "{first}");
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {stderr}");
    }
}

/// The binary reserves memory from the OS 64 MiB at a time (mimalloc's default, 1 GiB arenas,
/// placed a step's large buffers far apart: `medium`'s peak RSS was 256 - 290 MiB against 244 -
/// 252), from its first allocation on, and a user's `MIMALLOC_ARENA_RESERVE` still wins.
#[test]
#[cfg(target_os = "linux")]
fn memory_is_reserved_in_small_arenas_unless_the_user_says_otherwise() {
    // mimalloc prints its statistics to stderr at exit: `reserved : <peak> <unit> ...`.
    let reserved_mib = |env: &[(&str, &str)]| -> f64 {
        let mut c = lstm_lm();
        c.arg("--version").env("MIMALLOC_SHOW_STATS", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("lstm-lm runs");
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let line = stderr
            .lines()
            .find(|l| l.trim_start().starts_with("reserved"))
            .unwrap_or_else(|| panic!("no `reserved` line in mimalloc's statistics:\n{stderr}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        // ["reserved", ":", peak, unit, ...]
        let peak: f64 = words[2].parse().expect("a number");
        match words[3] {
            "GiB" => peak * 1024.0,
            "MiB" => peak,
            "KiB" => peak / 1024.0,
            unit => panic!("unexpected unit {unit} in {line}"),
        }
    };
    let ours = reserved_mib(&[]);
    assert!(
        ours < 128.0,
        "reserved {ours} MiB at start, not one small arena"
    );
    let theirs = reserved_mib(&[("MIMALLOC_ARENA_RESERVE", "256MiB")]);
    assert!(
        theirs >= 256.0,
        "the user's 256 MiB arenas were overridden: {theirs} MiB"
    );
}
