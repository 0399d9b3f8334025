//! Models that leave the tool and come back. `lstm-lm export`: PyTorch's names and shapes,
//! all-or-nothing folders, clear refusals, and an independent check: the exported weights scored
//! by a numpy implementation written apart from lstm-lm and Burn (`reference/numpy_lm.py`) give
//! `lstm-lm eval`'s perplexity. `lstm-lm import`: an export comes back with the same
//! perplexity; PyTorch's own files (`tests/fixtures/import`, written by
//! `reference/make_import_fixtures.py`) import with the perplexity PyTorch computed, generate
//! and train further; bad files are refused with the tensor or file named.

mod common;

use common::{stderr_of_failure, stdout_of};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use lstm_lm::config::Batching;
use lstm_lm::data::tokenizer::Tokenizer;
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

/// A tiny run's config made tied (the embedding as wide as the hidden state).
fn tied(c: &mut lstm_lm::config::ExperimentConfig) {
    c.model.d_embed = 24;
    c.model.tied = true;
}

/// A tiny run's config with an adaptive softmax of two tail clusters.
fn adaptive(c: &mut lstm_lm::config::ExperimentConfig) {
    c.model.softmax = Softmax::Adaptive {
        cutoffs: vec![40, 150],
        div_value: 2.0,
    };
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
    assert_no_partial_folders(tmp.path());
}

/// Nothing half-written is left in `dir`: a refused export or import leaves no `*partial*` entry.
fn assert_no_partial_folders(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
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

/// `reference/numpy_lm.py`'s JSON for the export `out` on `text`, `--sentences` when asked.
fn numpy(out: &Path, text: &Path, sentences: bool) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("reference/numpy_lm.py");
    let mut command = Command::new(python());
    command.arg(script).arg(out).arg("--text").arg(text);
    if sentences {
        command.arg("--sentences");
    }
    serde_json::from_str(&stdout_of(&mut command)).unwrap()
}

/// `lstm-lm eval --json --context CONTEXT` of `run` on `text`.
fn eval_context(run: &Path, text: &Path, context: &str) -> serde_json::Value {
    let out = stdout_of(
        lstm_lm()
            .arg("eval")
            .arg(run)
            .args(["--json", "--context", context, "--text"])
            .arg(text)
            .env("LSTM_LM_CACHE_DIR", run.with_extension("cache")),
    );
    serde_json::from_str(&out).unwrap()
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// Checks `run`'s scores of `text` against numpy's on its export `out`: the file's perplexity
/// with full context and line by line, and every line's log-probability (`lstm-lm score`).
fn check_against_numpy(name: &str, run: &Path, out: &Path, text: &Path) {
    export(run, out);
    for (context, sentences) in [("carry", false), ("sentence", true)] {
        let ours = eval_context(run, text, context);
        let theirs = numpy(out, text, sentences);
        assert_eq!(
            ours["tokens"], theirs["tokens"],
            "{name} {context}: tokens scored"
        );
        let (a, b) = (
            ours["perplexity"].as_f64().unwrap(),
            theirs["perplexity"].as_f64().unwrap(),
        );
        assert!(
            relative(a, b) < 1e-4,
            "{name} {context}: lstm-lm {a}, numpy {b}"
        );
        if !sentences {
            continue;
        }
        let scores = stdout_of(lstm_lm().arg("score").arg(run).arg("--text").arg(text));
        let lines = theirs["lines"].as_array().unwrap();
        assert_eq!(
            scores.lines().count(),
            lines.len(),
            "{name}: one score per line"
        );
        for (line, theirs) in scores.lines().zip(lines) {
            let ours: serde_json::Value = serde_json::from_str(line).unwrap();
            match theirs.as_f64() {
                None => assert_eq!(ours["scored"], 0, "{name}: a blank line"),
                Some(b) => {
                    let a = ours["logprob"].as_f64().unwrap();
                    assert!(
                        relative(a, b) < 1e-4,
                        "{name} line {}: lstm-lm {a}, numpy {b}",
                        ours["line"]
                    );
                }
            }
        }
    }
}

#[test]
#[ignore = "needs python3 with numpy and safetensors (LSTM_LM_PYTHON); .ci/run installs them"]
fn numpy_scores_the_exported_weights_as_eval_and_score_do() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, valid) = common::tiny_corpus(tmp.path(), 400, 60);
    type Edit = fn(&mut lstm_lm::config::ExperimentConfig);
    let kinds: [(&str, Edit); 4] = [
        ("buckets", |_| {}),
        ("stream", |c| {
            c.data.batching = Batching::Stream;
            c.data.bptt = 10;
        }),
        ("tied", tied),
        ("adaptive", |c| {
            c.data.batching = Batching::Stream;
            adaptive(c);
        }),
    ];
    for (name, edit) in kinds {
        let run = tiny_run(tmp.path(), name, edit);
        check_against_numpy(
            name,
            &run,
            &tmp.path().join(format!("{name}-export")),
            &valid,
        );
    }
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/import")
}

fn import(model: &Path, out: &Path) -> String {
    stdout_of(lstm_lm().arg("import").arg(model).arg("--out").arg(out))
}

/// `lstm-lm eval --json` of `run` on `text` with `columns` and `bptt`.
fn eval_json(run: &Path, text: &Path, columns: usize, bptt: usize) -> serde_json::Value {
    let out = stdout_of(
        lstm_lm()
            .arg("eval")
            .arg(run)
            .arg("--json")
            .arg("--text")
            .arg(text)
            .args([
                "--columns",
                &columns.to_string(),
                "--bptt",
                &bptt.to_string(),
            ])
            .env("LSTM_LM_CACHE_DIR", run.with_extension("cache")),
    );
    serde_json::from_str(&out).unwrap()
}

#[test]
fn an_export_imports_back_with_the_same_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, valid) = common::tiny_corpus(tmp.path(), 400, 60);
    type Edit = fn(&mut lstm_lm::config::ExperimentConfig);
    let kinds: [(&str, Edit); 5] = [
        ("untied", |c| c.model.n_layers = 2),
        ("char", |c| c.data.tokenizer = Tokenizer::Char),
        ("bpe", |c| {
            c.data.tokenizer = Tokenizer::Bpe;
            c.data.max_vocab = 300;
        }),
        ("tied", tied),
        ("adaptive", adaptive),
    ];
    for (name, edit) in kinds {
        let run = tiny_run(tmp.path(), name, edit);
        let exported = tmp.path().join(format!("{name}-export"));
        export(&run, &exported);
        let back = tmp.path().join(format!("{name}-back"));
        let said = import(&exported, &back);
        assert!(!said.contains("did not have"), "{name}: {said}");
        assert_eq!(said.contains("tied output layer"), name == "tied", "{said}");
        assert_eq!(
            said.contains("adaptive softmax (cutoffs [40, 150])"),
            name == "adaptive"
        );
        let (ours, back_eval) = (
            eval_json(&run, &valid, 4, 10),
            eval_json(&back, &valid, 4, 10),
        );
        assert_eq!(ours["tokens"], back_eval["tokens"], "{name}");
        assert_eq!(
            ours["perplexity"], back_eval["perplexity"],
            "{name}: the same weights"
        );
        assert_eq!(back_eval["epoch"], 0, "an imported model is epoch 0");
        assert_eq!(
            std::fs::read_to_string(run.join("vocab.txt")).unwrap(),
            std::fs::read_to_string(back.join("vocab.txt")).unwrap()
        );
        // The same tokenizer: `score` cuts a line the same way and gives it the same score.
        let score = |run: &Path| {
            let mut child = lstm_lm()
                .arg("score")
                .arg(run)
                .args(["--text", "-"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            let mut stdin = child.stdin.take().unwrap();
            stdin
                .write_all(b"First Citizen: you are all resolved\n")
                .unwrap();
            drop(stdin);
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success(), "{name}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(score(&run), score(&back), "{name}");
    }
}

/// `expected.json` of a fixture: PyTorch's evaluation batching and its perplexity.
fn expected(fixture: &Path) -> (usize, usize, f64, u64) {
    let e: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let n = |k: &str| e[k].as_u64().unwrap();
    (
        n("columns") as usize,
        n("bptt") as usize,
        e["perplexity"].as_f64().unwrap(),
        n("tokens"),
    )
}

#[test]
fn pytorch_state_dicts_import_with_pytorchs_perplexity_generate_and_train_further() {
    let tmp = tempfile::tempdir().unwrap();
    let valid = fixtures().join("valid.txt");
    // Lines the models never saw, with words outside both vocabularies.
    let lines: Vec<&str> = lstm_lm::data::corpus::EMBEDDED_TINY_SHAKESPEARE
        .lines()
        .skip(2000)
        .take(300)
        .collect();
    let new_text = tmp.path().join("new.txt");
    std::fs::write(&new_text, lines.join("\n")).unwrap();
    for (fixture, missing) in [("torch_lm", "<pad>"), ("rnnmodel", "<pad>, <unk>")] {
        let dir = fixtures().join(fixture);
        let run = tmp.path().join(fixture);
        // torch_lm.py's folder (model.pt and vocab.txt), or RNNModel's file with its vocabulary.
        let said = match fixture {
            "torch_lm" => import(&dir, &run),
            _ => stdout_of(
                lstm_lm()
                    .arg("import")
                    .arg(dir.join("model.pt"))
                    .arg("--vocab")
                    .arg(dir.join("vocab.txt"))
                    .arg("--out")
                    .arg(&run),
            ),
        };
        assert!(
            said.contains(&format!("did not have: {missing} (probability 0")),
            "{said}"
        );
        let (columns, bptt, theirs, tokens) = expected(&dir);
        let ours = eval_json(&run, &valid, columns, bptt);
        assert_eq!(ours["tokens"].as_u64().unwrap(), tokens, "{fixture}");
        let ours = ours["perplexity"].as_f64().unwrap();
        let rel = (ours - theirs).abs() / theirs;
        assert!(
            rel < 1e-6,
            "{fixture}: lstm-lm {ours}, PyTorch {theirs} ({rel:e})"
        );

        let text = stdout_of(lstm_lm().arg("generate").arg(&run).args([
            "--prompt",
            "First Citizen:",
            "--length",
            "20",
        ]));
        let vocab = std::fs::read_to_string(run.join("vocab.txt")).unwrap();
        let words: std::collections::HashSet<&str> = vocab.lines().collect();
        let generated: Vec<&str> = text.split_whitespace().collect();
        assert!(generated.len() > 2, "beyond the prompt: {text}");
        assert!(
            generated.iter().all(|w| words.contains(w) && *w != "<pad>"),
            "{text}"
        );

        if fixture == "rnnmodel" {
            // Words outside a vocabulary without <unk> have probability 0: refused, with why.
            let err = stderr_of_failure(
                lstm_lm()
                    .arg("eval")
                    .arg(&run)
                    .arg("--text")
                    .arg(&new_text)
                    .env("LSTM_LM_CACHE_DIR", tmp.path().join("cache")),
            );
            assert!(err.contains("the imported model has no <unk>"), "{err}");
        }

        // Trains further on new text: the vocabulary stays, the optimizer starts fresh.
        let tuned = tmp.path().join(format!("{fixture}-tuned"));
        let tune = |epochs: &str| {
            stdout_of(
                lstm_lm()
                    .arg("train")
                    .args([
                        "--preset",
                        "tiny",
                        "--epochs",
                        epochs,
                        "--progress",
                        "quiet",
                    ])
                    .arg("--init-from")
                    .arg(&run)
                    .arg("--train")
                    .arg(&new_text)
                    .arg("--valid")
                    .arg(&valid)
                    .arg("--artifact-dir")
                    .arg(&tuned)
                    .env("LSTM_LM_CACHE_DIR", tmp.path().join("cache")),
            )
        };
        let out = tune("1");
        assert!(out.contains("the optimizer state starts fresh"), "{out}");
        assert_eq!(
            out.contains("the model had no <unk>"),
            fixture == "rnnmodel",
            "{out}"
        );
        assert_eq!(
            std::fs::read_to_string(tuned.join("vocab.txt")).unwrap(),
            vocab
        );
        let after = eval_json(&tuned, &valid, columns, bptt);
        let after = after["perplexity"].as_f64().unwrap();
        assert!(after.is_finite() && after > 1.0, "{fixture}: {after}");
        if fixture == "torch_lm" {
            // It resumes even after the imported run moved away: the run holds its vocabulary.
            std::fs::rename(&run, tmp.path().join("moved")).unwrap();
            let out = tune("2");
            assert!(
                out.contains("resuming from the checkpoint of epoch 1"),
                "{out}"
            );
        }
    }
}

/// A safetensors entry: its name, header entry and bytes.
type Entry = (String, serde_json::Value, Vec<u8>);

/// The tensors of a safetensors file in file order.
fn read_safetensors(file: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut tensors: Vec<_> = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let at = |i: usize| v["data_offsets"][i].as_u64().unwrap() as usize;
            (k.clone(), v.clone(), data[at(0)..at(1)].to_vec())
        })
        .collect();
    tensors.sort_by_key(|t| t.1["data_offsets"][0].as_u64());
    tensors
}

/// Writes `tensors` as a safetensors file, their offsets recomputed.
fn write_safetensors(file: &Path, tensors: &[Entry]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, entry, bytes) in tensors {
        let mut entry = entry.clone();
        entry["data_offsets"] = serde_json::json!([data.len(), data.len() + bytes.len()]);
        data.extend_from_slice(bytes);
        header.insert(name.clone(), entry);
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(&data);
    std::fs::write(file, out).unwrap();
}

#[test]
fn bad_model_files_are_refused_with_the_tensor_or_file_named() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tiny_run(tmp.path(), "words", |_| {});
    let good = tmp.path().join("export");
    export(&run, &good);
    let tensors = read_safetensors(&good.join("model.safetensors"));
    let vocab = good.join("vocab.txt");
    let proj = tensors.iter().find(|t| t.0 == "proj.weight").unwrap();
    let v = proj.1["shape"][0].as_u64().unwrap();
    let case = |name: &str, edit: &dyn Fn(&mut Vec<Entry>)| {
        let mut t = tensors.clone();
        edit(&mut t);
        let file = tmp.path().join(format!("{name}.safetensors"));
        write_safetensors(&file, &t);
        file
    };
    let no_bias = case("no-bias", &|t| t.retain(|t| t.0 != "lstm.bias_hh_l0"));
    let misshaped = case("misshaped", &|t| {
        for t in t.iter_mut().filter(|t| t.0 == "proj.weight") {
            t.1["shape"] = serde_json::json!([v * 2, 12]);
        }
    });
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a safetensors file at all").unwrap();
    let garbage_pt = tmp.path().join("garbage.pt");
    std::fs::write(&garbage_pt, b"not a zip or a pickle").unwrap();
    let onnx = tmp.path().join("model.onnx");
    std::fs::copy(good.join("model.safetensors"), &onnx).unwrap();
    let short_vocab = tmp.path().join("short.txt");
    let text = std::fs::read_to_string(&vocab).unwrap();
    let kept: Vec<&str> = text.lines().take(v as usize - 1).collect();
    std::fs::write(&short_vocab, kept.join("\n")).unwrap();

    let cases: [(&Path, &Path, &str); 6] = [
        (&no_bias, &vocab, "the tensor lstm.bias_hh_l0 is missing"),
        (
            &misshaped,
            &vocab,
            &format!(
                "the tensor proj.weight is [{}, 12], expected [{v}, 24]",
                v * 2
            ),
        ),
        (&garbage, &vocab, "as safetensors"),
        (&garbage_pt, &vocab, "as a PyTorch state dict"),
        (&onnx, &vocab, "unknown model format"),
        (
            &good.join("model.safetensors"),
            &short_vocab,
            &format!("the vocabulary has {} tokens but", v - 1),
        ),
    ];
    for (i, (model, vocab, needle)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("run-{i}"));
        let err = stderr_of_failure(
            lstm_lm()
                .arg("import")
                .arg(model)
                .arg("--vocab")
                .arg(vocab)
                .arg("--out")
                .arg(&out),
        );
        assert!(err.contains(needle), "case {i}: {err}");
        assert!(!err.contains("panicked"), "case {i}: {err}");
        assert!(!out.exists(), "case {i}: no run folder");
    }
    assert_no_partial_folders(tmp.path());
}
