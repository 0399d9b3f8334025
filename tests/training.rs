//! Training through burn-train on tiny corpora: learning, checkpoints, resume, refusals.

mod common;

use std::path::Path;

use burn::tensor::Device;
use lstm_lm::config::ExperimentConfig;
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::error::Error;
use lstm_lm::run::history::read_history;
use lstm_lm::run::load_model;
use lstm_lm::train::events::EventSink;
use lstm_lm::train::{train, TrainReport, TrainRequest};

fn files(dir: &Path) -> CorpusSource {
    common::tiny_files(dir, 1500, 300)
}

fn run(
    config: ExperimentConfig,
    corpus: &CorpusSource,
    run_dir: &Path,
    device: &Device,
) -> Result<TrainReport, Error> {
    common::train_quietly(config, corpus, run_dir, vec![device.clone()])
}

#[test]
fn validation_perplexity_falls_and_the_run_folder_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    for (name, device) in common::cpu_devices() {
        let dir = tmp.path().join(name);
        let report = run(common::tiny_config(3), &corpus, &dir, &device).unwrap();
        let ppl: Vec<f64> = report.epochs.iter().map(|e| e.valid_perplexity).collect();
        assert_eq!(ppl.len(), 3, "{name}");
        assert!(
            ppl.iter().all(|p| p.is_finite() && *p > 1.0),
            "{name}: {ppl:?}"
        );
        assert!(
            ppl[2] < ppl[0],
            "{name}: valid perplexity must fall: {ppl:?}"
        );
        // A uniform guess over the vocabulary is the baseline to beat.
        assert!(ppl[2] < report.vocab_size as f64, "{name}: {ppl:?}");
        assert!(
            report.epochs.iter().all(|e| e.tokens_per_second > 0.0),
            "{name}"
        );

        for f in ["config.json", "vocab.txt"] {
            assert!(dir.join(f).is_file(), "{name}: {f}");
        }
        let ckpt = dir.join("checkpoint");
        for r in ["model", "optim", "scheduler"] {
            assert!(ckpt.join(format!("{r}-3.bpk")).is_file(), "{name}: {r}-3");
            assert!(ckpt.join(format!("{r}-2.bpk")).is_file(), "{name}: {r}-2");
            assert!(
                !ckpt.join(format!("{r}-1.bpk")).exists(),
                "{name}: keeps the last two"
            );
        }
        assert_eq!(read_history(&dir), report.epochs, "{name}: history.jsonl");
    }
}

#[test]
fn an_interrupted_run_resumes_at_the_next_epoch_with_the_saved_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let device = Device::flex();

    // The run left alone.
    let whole = tmp.path().join("whole");
    let a = run(common::tiny_config(2), &corpus, &whole, &device).unwrap();
    assert_eq!(a.resumed_from, None);

    // The same run stopped after epoch 1 (the state a kill during epoch 2 leaves), then rerun.
    let split = tmp.path().join("split");
    run(common::tiny_config(1), &corpus, &split, &device).unwrap();
    let saved = load_model(&split, Some(1), &device).unwrap();
    let b = run(common::tiny_config(2), &corpus, &split, &device).unwrap();
    assert_eq!(b.resumed_from, Some(1));
    assert_eq!(
        b.epochs.iter().map(|e| e.epoch).collect::<Vec<_>>(),
        vec![2]
    );

    // Resumed from the saved weights, optimizer state and data order: the same end point, bit
    // for bit.
    let weights = |m: &lstm_lm::model::LanguageModel| -> Vec<f32> {
        m.lstm.layers[0]
            .hidden_weight
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap()
    };
    let (wa, wb) = (
        weights(&load_model(&whole, Some(2), &device).unwrap()),
        weights(&load_model(&split, Some(2), &device).unwrap()),
    );
    assert!(wa == wb, "resumed weights differ from the run left alone");
    assert_ne!(weights(&saved), wb, "epoch 2 did train");
    let (pa, pb) = (a.epochs[1].valid_perplexity, b.epochs[0].valid_perplexity);
    assert_eq!(pa.to_bits(), pb.to_bits(), "valid perplexity {pa} vs {pb}");
    assert_eq!(read_history(&split).len(), 2);

    // Nothing left to do once all epochs are done.
    let c = run(common::tiny_config(2), &corpus, &split, &device).unwrap();
    assert!(c.epochs.is_empty());
}

#[test]
fn resuming_with_a_changed_config_or_changed_data_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let device = Device::flex();
    let dir = tmp.path().join("run");
    run(common::tiny_config(1), &corpus, &dir, &device).unwrap();
    let config_before = std::fs::read(dir.join("config.json")).unwrap();

    let mut changed = common::tiny_config(2);
    changed.model.d_hidden = 40;
    let err = run(changed, &corpus, &dir, &device).unwrap_err();
    assert!(matches!(err, Error::IncompatibleRun { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("model.d_hidden: run has 24, this command has 40"),
        "{msg}"
    );
    assert!(msg.contains("--fresh"), "{msg}");
    assert_eq!(
        std::fs::read(dir.join("config.json")).unwrap(),
        config_before,
        "run untouched"
    );

    // Another tokenizer is another model of the text: refused, named.
    let mut chars = common::tiny_config(2);
    chars.data.tokenizer = lstm_lm::data::tokenizer::Tokenizer::Char;
    let msg = run(chars, &corpus, &dir, &device).unwrap_err().to_string();
    assert!(msg.contains("tokenizer"), "{msg}");

    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let (other_train, _) = common::tiny_corpus(&other, 900, 300);
    let CorpusSource::Files { valid, .. } = &corpus else {
        unreachable!()
    };
    let changed_data = CorpusSource::Files {
        train: other_train,
        valid: valid.clone(),
        test: None,
        train_fraction: 0.9,
    };
    let msg = run(common::tiny_config(2), &changed_data, &dir, &device)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("different vocabulary"), "{msg}");

    // --fresh starts over.
    let mut changed = common::tiny_config(1);
    changed.model.d_hidden = 40;
    let report = train(TrainRequest {
        config: changed,
        corpus: corpus.clone(),
        cache_dir: dir.with_extension("cache"),
        run_dir: dir.clone(),
        fresh: true,
        devices: vec![device],
        events: EventSink::quiet(),
        interrupter: Default::default(),
        checkpoint_every: None,
    })
    .unwrap();
    assert_eq!(report.resumed_from, None);
    assert_eq!(report.epochs.len(), 1);
}

/// A learning rate far too high: the first NaN batch stops the run with an error naming the
/// epoch and batch and the remedy; no checkpoint or history line of the broken epoch is written,
/// and the same run continues from its last good epoch with a lower rate.
#[test]
fn a_blown_up_loss_stops_the_run_before_any_checkpoint_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let device = Device::flex();
    let dir = tmp.path().join("run");
    let sgd = |epochs, lr| {
        let mut c = common::tiny_config(epochs);
        c.optimizer = lstm_lm::config::OptimizerConfig::Sgd {
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
        };
        c
    };
    run(sgd(1, 0.5), &corpus, &dir, &device).unwrap();
    let good = load_model(&dir, Some(1), &device).unwrap();

    let err = run(sgd(2, 1e30), &corpus, &dir, &device).unwrap_err();
    let Error::Diverged {
        split,
        epoch,
        batch,
        ref lr,
        ..
    } = err
    else {
        panic!("expected a divergence error, got {err}");
    };
    assert_eq!((split, epoch, lr.as_str()), ("training", 2, "1e30"));
    assert!(batch >= 1);
    let message = err.to_string();
    for part in [
        "loss became",
        "at epoch 2, batch",
        "lower --lr",
        "checkpoint of epoch 1 is kept",
    ] {
        assert!(message.contains(part), "{part:?} in {message}");
    }
    assert_eq!(
        lstm_lm::run::checkpoint::last_complete_checkpoint(&dir),
        Some(1)
    );
    assert_eq!(
        read_history(&dir).len(),
        1,
        "no history line for the broken epoch"
    );
    let kept = load_model(&dir, Some(1), &device).unwrap();
    assert_eq!(
        kept.embedding.weight.val().into_data(),
        good.embedding.weight.val().into_data(),
        "the epoch-1 weights are untouched"
    );

    // The same run, a sane rate: it continues from epoch 1.
    let report = run(sgd(2, 0.25), &corpus, &dir, &device).unwrap();
    assert_eq!(report.resumed_from, Some(1));
    assert!(report.epochs[0].valid_perplexity.is_finite());
    assert_eq!(report.epochs[0].lr, 0.25);
}

/// A newest checkpoint damaged on disk (one byte changed, same size) is detected by its
/// checksum; the run resumes from the previous epoch and trains the damaged one again.
#[test]
fn a_damaged_newest_checkpoint_is_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let device = Device::flex();
    let dir = tmp.path().join("run");
    run(common::tiny_config(2), &corpus, &dir, &device).unwrap();
    let path = lstm_lm::run::checkpoint::record_path(&dir.join("checkpoint"), "model", 2);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    assert!(load_model(&dir, Some(2), &device)
        .unwrap_err()
        .to_string()
        .contains("does not match its checksum"));

    let report = run(common::tiny_config(3), &corpus, &dir, &device).unwrap();
    assert_eq!(report.resumed_from, Some(1));
    let epochs: Vec<usize> = report.epochs.iter().map(|e| e.epoch).collect();
    assert_eq!(epochs, [2, 3]);
    assert_eq!(read_history(&dir).len(), 3);
    assert!(lstm_lm::run::checkpoint::verify_checkpoint(&dir, 3).is_ok());
}
