//! The GPU path on a real wgpu adapter: `cargo test --features wgpu --test wgpu`.
//!
//! CI has no GPU; it installs lavapipe (Debian's `mesa-vulkan-drivers`), a Vulkan driver that
//! runs on the CPU, so these tests run Burn's wgpu backend through Vulkan and compiled shaders
//! exactly as on a GPU, only slower. Shader compilation and autotune results are cached in
//! `~/.cache/cubecl` between the tests of a run.

#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;
use std::process::Command;

use burn::tensor::Device;
use lstm_lm::commands::eval::{evaluate_run, EvalRequest};
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::device::{adapters, choose_device, describe, DeviceChoice};
use lstm_lm::model::fused::lstm_layer::{errors_against_composed, has_fused_layer};
use lstm_lm::train::TrainReport;

/// Relative tolerance between wgpu and flex: both compute in f32, in different orders of
/// summation and with different `exp`/`tanh`, over a few dozen optimizer steps. On lavapipe the
/// perplexities differ by about 1e-8 of their value (2026-11-27).
const TOLERANCE: f64 = 1e-5;

fn wgpu() -> Device {
    choose_device(DeviceChoice::Wgpu)
        .expect("a wgpu adapter: install a Vulkan driver (CI: apt-get install mesa-vulkan-drivers)")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= TOLERANCE * a.abs().max(b.abs())
}

/// One epoch of the tiny model (about 40 steps of Adam) on `device`.
fn tiny_run(dir: &Path, corpus: &CorpusSource, device: Device) -> TrainReport {
    let mut config = common::tiny_config(1);
    config.data.batch_size = 8;
    common::train_quietly(config, corpus, dir, vec![device]).unwrap()
}

fn evaluate(run: &Path, text: &Path, device: Device) -> f64 {
    evaluate_run(&EvalRequest {
        run_dir: run.to_path_buf(),
        text: vec![text.to_path_buf()],
        cache_dir: run.with_extension("cache"),
        epoch: None,
        context: lstm_lm::commands::eval::EvalContext::Buckets,
        columns: 1,
        bptt: None,
        device,
    })
    .unwrap()
    .evaluation
    .perplexity
}

/// The same tiny model, from the same initial weights, trained on wgpu and on flex: the
/// training and validation perplexities agree within [`TOLERANCE`]. A checkpoint written on
/// wgpu scores the validation text on flex as on wgpu, and one written on flex on wgpu as on
/// flex: checkpoints move between backends.
#[test]
fn wgpu_trains_like_flex_and_checkpoints_cross_between_them() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::tiny_files(tmp.path(), 300, 60);
    let valid_file = tmp.path().join("valid.txt");
    let on_gpu = tmp.path().join("wgpu");
    let on_cpu = tmp.path().join("flex");
    let g = tiny_run(&on_gpu, &corpus, wgpu()).epochs[0].clone();
    let c = tiny_run(&on_cpu, &corpus, Device::flex()).epochs[0].clone();
    println!("wgpu: {g:?}\nflex: {c:?}");
    assert!(
        close(g.train_perplexity, c.train_perplexity)
            && close(g.valid_perplexity, c.valid_perplexity),
        "wgpu {g:?} vs flex {c:?}"
    );
    assert!(
        g.valid_perplexity < 500.0,
        "the model learned something: {g:?}"
    );

    for (run, trained) in [(&on_gpu, &g), (&on_cpu, &c)] {
        let gpu = evaluate(run, &valid_file, wgpu());
        let cpu = evaluate(run, &valid_file, Device::flex());
        println!("{}: wgpu {gpu}, flex {cpu}", run.display());
        assert!(
            close(gpu, cpu),
            "{}: wgpu {gpu} vs flex {cpu}",
            run.display()
        );
        // Validation during training scored the same sentences the same way.
        assert!(
            close(cpu, trained.valid_perplexity),
            "{}: {cpu} vs {trained:?}",
            run.display()
        );
    }
}

/// burn-train's multi-device strategy on the GPU backend: two workers on the wgpu device (the
/// path two GPUs take: the model forked to each, gradients moved to the first) train a stream
/// as one worker does, within [`TOLERANCE`] per epoch.
#[test]
fn two_wgpu_workers_train_a_stream_like_one() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = common::tiny_files(tmp.path(), 300, 60);
    let mut config = common::tiny_config(2);
    config.data.batching = lstm_lm::config::Batching::Stream;
    config.data.batch_size = 8;
    config.data.bptt = 20;
    let curve = |devices: Vec<Device>, dir: &str| -> Vec<(f64, f64)> {
        common::train_quietly(config.clone(), &corpus, &tmp.path().join(dir), devices)
            .unwrap()
            .epochs
            .iter()
            .map(|e| (e.train_perplexity, e.valid_perplexity))
            .collect()
    };
    let one = curve(vec![wgpu()], "one");
    let two = curve(vec![wgpu(), wgpu()], "two");
    println!("one worker {one:?}\ntwo workers {two:?}");
    assert_eq!(one.len(), 2);
    for (a, b) in one.iter().zip(&two) {
        assert!(close(a.0, b.0) && close(a.1, b.1), "{one:?} vs {two:?}");
    }
}

/// The LSTM layer's GPU kernels (`src/fused/lstm_layer/cube.rs`) against Burn's composed ops on
/// flex: the hidden states, the last state and the gradients in all four inputs, and the values
/// without autodiff (evaluation and generation).
fn check_layer_kernels(steps: usize, batch: usize, hidden: usize, scale: f32) {
    let gpu = wgpu();
    assert!(has_fused_layer(&gpu));
    for (name, e) in errors_against_composed(&gpu, steps, batch, hidden, scale) {
        assert!(
            e < 1e-4,
            "{name}: relative error {e} ({steps} x {batch} x {hidden}, scale {scale})"
        );
    }
}

#[test]
fn the_lstm_layer_kernels_match_burn_ops() {
    check_layer_kernels(1, 1, 3, 1.0); // one step, one row (generation)
    check_layer_kernels(4, 3, 5, 1.0);
    // Rows and width that fill no workgroup evenly; scale 4: saturated gates.
    check_layer_kernels(6, 19, 37, 4.0);
}

fn lstm_lm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lstm-lm"));
    // One token cache for this test process, not the user's.
    let cache = std::env::temp_dir().join(format!("lstm-lm-test-cache-{}", std::process::id()));
    c.env("LSTM_LM_CACHE_DIR", cache);
    c
}

/// `--list-devices` names the adapters wgpu sees; `--device auto` passes over a software
/// adapter and says so in one line; with no Vulkan driver at all, `--device wgpu` and
/// `--devices gpu:0,gpu:1` fail with an error that names the remedy, and `--device auto` still
/// trains on the CPU. Nothing panics.
#[test]
fn device_choice_never_panics() {
    let found = adapters();
    assert!(!found.is_empty(), "CI installs lavapipe");
    // The training log and bench reports name the kernel compiler next to the device.
    let named = describe(&wgpu());
    assert!(named.ends_with("(wgpu<wgsl>)"), "{named}");
    let out = lstm_lm().arg("--list-devices").output().unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for a in &found {
        assert!(listed.contains(&a.name), "{listed}");
    }

    let tmp = tempfile::tempdir().unwrap();
    let (train_file, valid_file) = common::tiny_corpus(tmp.path(), 200, 40);
    let tiny = |cmd: &mut Command, device: &[&str], dir: &str| {
        cmd.args(["--train"])
            .arg(&train_file)
            .arg("--valid")
            .arg(&valid_file)
            .args(["--preset", "tiny", "--epochs", "1", "--progress", "plain"])
            .args(device)
            .arg("--artifact-dir")
            .arg(tmp.path().join(dir))
            .output()
            .unwrap()
    };
    if found.iter().all(|a| !a.is_gpu) {
        let out = tiny(&mut lstm_lm(), &["--device", "auto"], "auto");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        let says: Vec<&str> = text.lines().filter(|l| l.starts_with("no GPU:")).collect();
        assert_eq!(says.len(), 1, "{text}");
        assert!(
            says[0].contains("software") && says[0].contains("CPU (flex)"),
            "{text}"
        );
    }

    // No driver at all: the Vulkan loader finds no ICD file and glvnd no EGL vendor (wgpu's
    // OpenGL fallback, which Burn takes when Vulkan has no adapter).
    let no_driver = |cmd: &mut Command| {
        cmd.env("VK_ICD_FILENAMES", "/nonexistent.json")
            .env("VK_DRIVER_FILES", "/nonexistent.json")
            .env("__EGL_VENDOR_LIBRARY_FILENAMES", "/nonexistent.json");
    };
    for device in [&["--device", "wgpu"][..], &["--devices", "gpu:0,gpu:1"]] {
        let mut cmd = lstm_lm();
        no_driver(&mut cmd);
        let out = tiny(&mut cmd, device, "none");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{device:?}: {err}");
        assert!(!err.contains("panicked"), "{device:?}: {err}");
        assert!(err.contains("--device flex"), "{device:?}: {err}");
    }
    let mut cmd = lstm_lm();
    no_driver(&mut cmd);
    let out = tiny(&mut cmd, &["--device", "auto"], "auto-none");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("no GPU: wgpu sees no GPU adapter; training on the CPU (flex)"),
        "{text}"
    );
}

/// The adaptive softmax on wgpu (Burn's ops for every part, each cluster's rows padded to a
/// power of two): its loss and gradients against the full log-probabilities, as on flex.
/// (About 100 s on lavapipe, nearly all of it compiling shaders.)
#[test]
fn the_adaptive_softmax_matches_its_reference() {
    for (what, err) in lstm_lm::model::adaptive::errors_against_reference(&wgpu()) {
        let bound = if what == "values" { 1e-5 } else { 1e-4 };
        assert!(err < bound, "{what}: {err}");
    }
}
