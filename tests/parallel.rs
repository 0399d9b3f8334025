//! Data-parallel training on several devices through burn-train's multi-device strategy, shown
//! with two CPU workers (two flex devices): each computes half of a step, burn-train sums the
//! gradients on the first device, which steps the optimizer and runs validation.

mod common;

use std::path::Path;

use burn::tensor::Device;
use lstm_lm::config::schedule::LrSchedule;
use lstm_lm::config::{Batching, ExperimentConfig, OptimizerConfig};
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::run::load_model;
use lstm_lm::train::TrainReport;

fn corpus(dir: &Path) -> CorpusSource {
    common::tiny_files(dir, 1200, 200)
}

use common::train_quietly as run;

/// A stream run with SGD, clipping that never triggers and a rate halved after epoch 1.
fn stream_config(epochs: usize) -> ExperimentConfig {
    let mut c = common::tiny_config(epochs);
    c.data.batching = Batching::Stream;
    c.data.batch_size = 8;
    c.data.bptt = 10;
    c.optimizer = OptimizerConfig::Sgd {
        lr: 1.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    c.clip = 1e6;
    c.lr_schedule = LrSchedule::StepDecay {
        constant_epochs: 1,
        decay: 0.5,
    };
    c
}

fn curve(report: &TrainReport) -> Vec<(f64, f64, f64)> {
    report
        .epochs
        .iter()
        .map(|e| (e.train_perplexity, e.valid_perplexity, e.lr))
        .collect()
}

/// Two devices take 4 of a stream's 8 columns each, and each contributes half of the gradient:
/// the update is the one-device update, so the loss curve is the same up to float rounding
/// (tolerance 0.2% per epoch). The rate schedule counts the same steps per epoch (epoch 2 is
/// at half the rate on both). Checkpoints are ordinary ones: the run trains epoch 1 on two
/// devices, resumes epoch 2 on one and epoch 3 on two again, and ends where one device ends.
#[test]
fn two_cpu_devices_follow_the_one_device_curve_on_a_stream_and_resume_either_way() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let one = run(
        stream_config(3),
        &corpus,
        &tmp.path().join("one"),
        vec![Device::flex()],
    )
    .unwrap();

    let dir = tmp.path().join("mixed");
    let two = || vec![Device::flex(), Device::flex()];
    let mut mixed = Vec::new();
    for (epochs, devices) in [(1, two()), (2, vec![Device::flex()]), (3, two())] {
        let report = run(stream_config(epochs), &corpus, &dir, devices).unwrap();
        assert_eq!(report.resumed_from, (epochs > 1).then_some(epochs - 1));
        mixed.extend(curve(&report));
    }

    let one = curve(&one);
    assert_eq!(mixed.len(), 3);
    for (epoch, (a, b)) in one.iter().zip(&mixed).enumerate() {
        let close = |x: f64, y: f64| (x - y).abs() <= 2e-3 * x;
        assert!(
            close(a.0, b.0) && close(a.1, b.1),
            "epoch {}: one device {a:?}, two/one/two devices {b:?}",
            epoch + 1
        );
        assert_eq!(a.2, b.2, "epoch {}: the same rate", epoch + 1);
    }
    assert!(one[2].1 < one[0].1, "the model learns: {one:?}");

    let model = load_model(&dir, None, &Device::flex()).unwrap();
    assert_eq!(
        model.devices, 1,
        "the device count is not part of the checkpoint"
    );
}

/// Clipping that is active on every step (`--clip 0.05`): the devices' gradients are summed
/// first and the global norm of the sum, the mean gradient, is clipped, as one device clips its
/// own. Two devices follow one device's clipped curve (0.2% per epoch), which is far from the
/// unclipped one, so the clipping did act.
#[test]
fn two_cpu_devices_clip_the_summed_gradient_as_one_device_clips() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let clipped = || ExperimentConfig {
        clip: 0.05,
        ..stream_config(2)
    };
    let one_dev = vec![Device::flex()];
    let one = run(clipped(), &corpus, &tmp.path().join("one"), one_dev.clone()).unwrap();
    let two = run(
        clipped(),
        &corpus,
        &tmp.path().join("two"),
        vec![Device::flex(), Device::flex()],
    )
    .unwrap();
    let free = run(stream_config(2), &corpus, &tmp.path().join("free"), one_dev).unwrap();
    let (one, two, free) = (curve(&one), curve(&two), curve(&free));
    for (epoch, (a, b)) in one.iter().zip(&two).enumerate() {
        let close = |x: f64, y: f64| (x - y).abs() <= 2e-3 * x;
        assert!(
            close(a.0, b.0) && close(a.1, b.1),
            "epoch {}: one device {a:?}, two devices {b:?}",
            epoch + 1
        );
    }
    assert!(
        (one[1].1 - free[1].1).abs() > 0.05 * free[1].1,
        "clipping acted: clipped {one:?}, unclipped {free:?}"
    );
}

/// With buckets, a step takes one batch per device: two devices with batches of 16 sentences
/// see the epoch in half the steps, like one device with batches of 32, and learn as it does
/// (final validation perplexity within 10% of it).
#[test]
fn two_cpu_devices_train_on_buckets_like_one_device_with_twice_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = corpus(tmp.path());
    let mut config = common::tiny_config(3);
    config.data.batch_size = 16;
    let two = run(
        config.clone(),
        &corpus,
        &tmp.path().join("two"),
        vec![Device::flex(), Device::flex()],
    )
    .unwrap();
    config.data.batch_size = 32;
    let one = run(
        config,
        &corpus,
        &tmp.path().join("one"),
        vec![Device::flex()],
    )
    .unwrap();

    let (one, two) = (curve(&one), curve(&two));
    assert!(two[2].1 < two[0].1, "two devices learn: {two:?}");
    let ratio = two[2].1 / one[2].1;
    assert!(
        (0.9..1.1).contains(&ratio),
        "final valid perplexity, two devices x 16 vs one x 32: {two:?} vs {one:?}"
    );
}

#[test]
fn a_stream_whose_columns_do_not_split_evenly_is_refused_with_the_remedy() {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = stream_config(1);
    config.data.batch_size = 9;
    let e = run(
        config,
        &corpus(tmp.path()),
        &tmp.path().join("run"),
        vec![Device::flex(), Device::flex()],
    )
    .expect_err("9 columns on 2 devices")
    .to_string();
    assert!(
        e.contains("multiple of the 2 devices") && e.contains("--batch-size 10"),
        "{e}"
    );
}
