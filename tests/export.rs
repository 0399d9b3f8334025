//! `lstm-lm export`: PyTorch's names and shapes, all-or-nothing folders, clear refusals, and an
//! independent check: the exported weights scored by a numpy implementation written apart from
//! lstm-lm and Burn (`reference/numpy_lm.py`) give `lstm-lm eval`'s perplexity.

mod common;

use common::{stderr_of_failure, stdout_of};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lstm_lm::config::Batching;
use lstm_lm::model::Softmax;

fn lstm_lm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_lstm-lm"));
    c.stdin(Stdio::null());
    c
}

/// Trains a tiny run in `dir/name` with `edit` applied to the config; returns the run folder.
fn tiny_run(
    dir: &Path,
    name: &str,
    edit: impl FnOnce(&mut lstm_lm::config::ExperimentConfig),
) -> PathBuf {
    let corpus = common::tiny_files(dir, 400, 60);
    let mut config = common::tiny_config(1);
    edit(&mut config);
    let run = dir.join(name);
    common::train_quietly(config, &corpus, &run, vec![burn::tensor::Device::flex()]).unwrap();
    run
}

/// Names and shapes in a safetensors file, read from its header (8-byte length, JSON).
fn tensors(file: &Path) -> BTreeMap<String, Vec<usize>> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            assert_eq!(v["dtype"], "F32", "{k}");
            let shape = v["shape"].as_array().unwrap();
            (
                k.clone(),
                shape.iter().map(|d| d.as_u64().unwrap() as usize).collect(),
            )
        })
        .collect()
}

fn export(run: &Path, out: &Path) -> String {
    stdout_of(lstm_lm().arg("export").arg(run).arg("--out").arg(out))
}

#[test]
fn an_export_has_pytorchs_names_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "words", |c| c.model.n_layers = 2);
    let out = tmp.path().join("export");
    let said = export(&run, &out);
    assert!(said.contains("11 tensors"), "{said}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    let v = config["vocab_size"].as_u64().unwrap() as usize;
    let expected: BTreeMap<String, Vec<usize>> = [
        ("embed.weight", vec![v, 16]),
        ("lstm.weight_ih_l0", vec![96, 16]),
        ("lstm.weight_hh_l0", vec![96, 24]),
        ("lstm.bias_ih_l0", vec![96]),
        ("lstm.bias_hh_l0", vec![96]),
        ("lstm.weight_ih_l1", vec![96, 24]),
        ("lstm.weight_hh_l1", vec![96, 24]),
        ("lstm.bias_ih_l1", vec![96]),
        ("lstm.bias_hh_l1", vec![96]),
        ("proj.weight", vec![v, 24]),
        ("proj.bias", vec![v]),
    ]
    .into_iter()
    .map(|(k, s)| (k.to_string(), s))
    .collect();
    assert_eq!(tensors(&out.join("model.safetensors")), expected);
    let vocab = std::fs::read_to_string(out.join("vocab.txt")).unwrap();
    assert_eq!(vocab.lines().count(), v);
    assert_eq!(
        vocab.lines().take(3).collect::<Vec<_>>(),
        ["<pad>", "<eos>", "<unk>"]
    );
    assert_eq!(config["num_layers"], 2);
    assert_eq!(config["softmax"], "full");

    // The adaptive softmax: PyTorch's AdaptiveLogSoftmaxWithLoss names.
    let run = tiny_run(tmp.path(), "adaptive", |c| {
        c.model.softmax = Softmax::Adaptive {
            cutoffs: vec![50, 200],
            div_value: 2.0,
        }
    });
    let out = tmp.path().join("export-adaptive");
    export(&run, &out);
    let names = tensors(&out.join("model.safetensors"));
    assert_eq!(names["asm.head.weight"], vec![52, 24]);
    assert_eq!(names["asm.tail.0.0.weight"], vec![12, 24]);
    assert_eq!(names["asm.tail.0.1.weight"], vec![150, 12]);
    assert_eq!(names["asm.tail.1.0.weight"], vec![6, 24]);
    assert!(!names.contains_key("proj.weight"));
}

#[test]
fn an_export_refuses_an_existing_folder_and_a_missing_run() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "words", |_| {});
    let out = tmp.path().join("taken");
    std::fs::create_dir(&out).unwrap();
    let err = stderr_of_failure(lstm_lm().arg("export").arg(&run).arg("--out").arg(&out));
    assert!(err.contains("exists already"), "{err}");
    let err = stderr_of_failure(
        lstm_lm()
            .arg("export")
            .arg(tmp.path().join("nothing"))
            .arg("--out")
            .arg(tmp.path().join("x")),
    );
    assert!(err.contains("no such folder"), "{err}");
    assert!(!tmp.path().join("x").exists());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The Python with numpy and safetensors: `LSTM_LM_PYTHON`, else `python3`.
fn python() -> String {
    std::env::var("LSTM_LM_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// `lstm-lm eval --json`'s and numpy's perplexity of `text` for `run`.
fn both_perplexities(run: &Path, out: &Path, text: &Path) -> (f64, f64) {
    export(run, out);
    let ours: serde_json::Value = serde_json::from_str(&stdout_of(
        lstm_lm()
            .arg("eval")
            .arg(run)
            .arg("--json")
            .arg("--text")
            .arg(text)
            .env("LSTM_LM_CACHE_DIR", run.with_extension("cache")),
    ))
    .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/numpy_lm.py");
    let theirs: serde_json::Value = serde_json::from_str(&stdout_of(
        Command::new(python())
            .arg(script)
            .arg(out)
            .arg("--text")
            .arg(text),
    ))
    .unwrap();
    assert_eq!(ours["tokens"], theirs["tokens"], "tokens scored");
    (
        ours["perplexity"].as_f64().unwrap(),
        theirs["perplexity"].as_f64().unwrap(),
    )
}

#[test]
#[ignore = "needs python3 with numpy and safetensors (LSTM_LM_PYTHON); .ci/run installs them"]
fn numpy_scores_the_exported_weights_as_eval_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, valid) = common::tiny_corpus(tmp.path(), 400, 60);
    type Edit = fn(&mut lstm_lm::config::ExperimentConfig);
    let kinds: [(&str, Edit); 4] = [
        ("buckets", |_| {}),
        ("stream", |c| {
            c.data.batching = Batching::Stream;
            c.data.bptt = 10;
        }),
        ("tied", |c| {
            c.model.d_embed = 24;
            c.model.tied = true;
        }),
        ("adaptive", |c| {
            c.data.batching = Batching::Stream;
            c.model.softmax = Softmax::Adaptive {
                cutoffs: vec![40, 150],
                div_value: 2.0,
            };
        }),
    ];
    for (name, edit) in kinds {
        let run = tiny_run(tmp.path(), name, edit);
        let (ours, theirs) =
            both_perplexities(&run, &tmp.path().join(format!("{name}-export")), &valid);
        let rel = (ours - theirs).abs() / theirs;
        assert!(
            rel < 1e-4,
            "{name}: lstm-lm {ours}, numpy {theirs} ({rel:e})"
        );
    }
}
