//! Truncated BPTT with carried state, dropout, tied weights, clipping, schedules and full-context
//! evaluation, on tiny models and corpora.

mod common;

use std::path::Path;

use burn::data::dataloader::DataLoader;
use burn::module::Param;
use burn::tensor::{Device, Int, Tensor, TensorData};
use burn::train::{InferenceStep, TrainStep};
use lstm_lm::commands::eval::{evaluate_run, EvalRequest};
use lstm_lm::config::schedule::LrSchedule;
use lstm_lm::config::{Batching, ExperimentConfig};
use lstm_lm::data::corpus::CorpusSource;
use lstm_lm::data::stream::{Stream, StreamLoader};
use lstm_lm::model::{InitScheme, LmConfig, LossNorm};
use lstm_lm::run::history::read_history;
use lstm_lm::run::load_model;
use lstm_lm::train::evaluate::evaluate_stream;
use lstm_lm::train::events::EventSink;
use lstm_lm::train::{train, TrainReport, TrainRequest};

/// Sentences of ids as a split's tokens.
fn tokens(sentences: &[Vec<usize>]) -> std::sync::Arc<lstm_lm::data::store::Tokens> {
    std::sync::Arc::new(lstm_lm::data::store::Tokens::from_sentences(sentences))
}

fn lm(vocab: usize, dropout: f64, tied: bool) -> LmConfig {
    LmConfig {
        vocab_size: vocab,
        d_embed: 8,
        d_hidden: 8,
        n_layers: 2,
        init: InitScheme::Uniform { range: 0.3 },
        loss_norm: LossNorm::Batch,
        dropout,
        tied,
        softmax: Default::default(),
    }
}

fn ids(device: &Device, batch: usize, seq: usize, f: impl Fn(usize) -> i64) -> Tensor<2, Int> {
    let v: Vec<i64> = (0..batch * seq).map(f).collect();
    Tensor::from_data(TensorData::new(v, [batch, seq]), device)
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    (a - b).abs().max().into_scalar::<f32>()
}

/// The state carry: window 2 started from window 1's final state gives exactly the logits of
/// one long window over the same tokens.
#[test]
fn the_second_window_from_the_carried_state_equals_one_long_window() {
    for (name, device) in common::cpu_devices() {
        let model = lm(17, 0.0, false).init(3, &device);
        let long = ids(&device, 3, 10, |i| (i * 7 % 17) as i64);
        let (all, _) = model.forward(long.clone(), None);
        let (_, state) = model.forward(long.clone().slice([0..3, 0..4]), None);
        let (second, _) = model.forward(long.slice([0..3, 4..10]), Some(state));
        let d = max_abs_diff(all.slice([0..3, 4..10]), second.clone());
        assert!(d < 1e-5, "{name}: carried state differs by {d}");
        // Without the carry the second window is a different prediction.
        let (fresh, _) = model.forward(
            ids(&device, 3, 6, |i| {
                ((i / 6 * 10 + i % 6 + 4) * 7 % 17) as i64
            }),
            None,
        );
        assert!(
            max_abs_diff(fresh, second) > 1e-3,
            "{name}: state must matter"
        );
    }
}

/// The same carry inside burn-train's steps: the loader's windows, scored one after another by
/// `InferenceStep` (which hands the state on through the batch), give the loss of one window
/// over the whole stream; and `TrainStep` carries it the same way.
#[test]
fn steps_carry_the_state_from_window_to_window() {
    let device = Device::flex();
    let model = lm(23, 0.0, false).init(5, &device);
    let sentences: Vec<Vec<usize>> = (0..12)
        .map(|s| (0..7).map(|w| 3 + (s * 5 + w * 3) % 20).collect())
        .collect();
    let nll = |bptt: usize| -> f64 {
        let loader =
            StreamLoader::evaluation(Stream::new(tokens(&sentences), 3), bptt, device.clone());
        loader
            .iter()
            .map(|b| {
                InferenceStep::step(&model, b.unwrap())
                    .nll_sum
                    .into_scalar::<f64>()
            })
            .sum()
    };
    let whole = nll(1000);
    let windows = nll(4);
    assert!(
        (whole - windows).abs() / whole < 1e-5,
        "{whole} vs {windows}"
    );

    let ad = device.clone().autodiff();
    let trainee = lm(23, 0.0, false).init(5, &ad);
    let loader = StreamLoader::training(Stream::new(tokens(&sentences), 3), 4, 1, 1, ad.clone());
    let trained: f64 = loader
        .iter()
        .map(|b| {
            TrainStep::step(&trainee, b.unwrap())
                .item
                .nll_sum
                .into_scalar::<f64>()
        })
        .sum();
    assert!(
        (whole - trained).abs() / whole < 1e-5,
        "{whole} vs {trained}"
    );
}

/// Clipping in the update (`TrainStep::optimize`, which burn-train calls with the step's
/// gradient, summed over the devices): with plain SGD at rate 1 the parameters move by the
/// clipped gradient, whose global norm is the limit (PyTorch's clip_grad_norm_); below the limit
/// they move by the gradient itself, and the step's own gradient is never clipped.
#[test]
fn the_update_clips_the_global_gradient_norm() {
    let device = Device::flex().autodiff();
    let sentences: Vec<Vec<usize>> = (0..6)
        .map(|s| (0..9).map(|w| 3 + (s + w * 5) % 14).collect())
        .collect();
    let sgd = lstm_lm::config::OptimizerConfig::Sgd {
        lr: 1.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    // (global norm of the step's gradient, global norm of the parameters' move)
    let norms = |max: f64| -> (f64, f64) {
        let mut model = lm(17, 0.0, false).init(2, &device);
        model.max_grad_norm = max;
        // Plain SGD on the CPU: the clipping scale is applied in the optimizer's own pass. The
        // embedding's gradient stays dense here, so that the step's gradients hold all of it
        // (the row-sparse one clips the same: `row_sparse_embedding_updates_follow_...`).
        let mut optim = lstm_lm::train::step::optimizer(&sgd, &mut model);
        model.sparse_embedding = None;
        let loader =
            StreamLoader::training(Stream::new(tokens(&sentences), 2), 5, 1, 1, device.clone());
        let batch = loader.iter().next().unwrap().unwrap();
        let out = TrainStep::step(&model, batch);
        let mut sum = 0.0;
        let mut visit = GradNorm {
            grads: &out.grads,
            sum: &mut sum,
        };
        burn::module::Module::visit(&model, &mut visit);
        let before = values(&model);
        let after = values(&model.clone().optimize(&mut optim, 1.0.into(), out.grads));
        let moved: f64 = before
            .iter()
            .zip(&after)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        (sum.sqrt(), moved.sqrt())
    };
    let (free, moved) = norms(0.0);
    assert!(free > 0.1, "{free}");
    assert!(
        (moved - free).abs() / free < 1e-4,
        "moved {moved}, gradient {free}"
    );
    let (gradient, clipped) = norms(0.05);
    assert!(
        (gradient - free).abs() / free < 1e-6,
        "the step's gradient is not clipped"
    );
    assert!((clipped - 0.05).abs() < 1e-4, "clipped to {clipped}");
    let (_, below) = norms(free * 2.0);
    assert!(
        (below - free).abs() / free < 1e-4,
        "below the limit nothing changes"
    );
}

/// An untied model trained with plain SGD (adaptive or full softmax) collects its embedding
/// gradient as rows and updates only those rows: over three clipped steps (and three unclipped)
/// its parameters follow the dense gradient's within float rounding, the rows no batch looked
/// up keep their exact values, and the step's loss is the same. A tied model keeps the dense
/// gradient.
#[test]
fn row_sparse_embedding_updates_follow_the_dense_gradient() {
    let device = Device::flex().autodiff();
    let sentences: Vec<Vec<usize>> = (0..6)
        .map(|s| (0..9).map(|w| 3 + (s * 7 + w * 5) % 30).collect())
        .collect();
    let sgd = lstm_lm::config::OptimizerConfig::Sgd {
        lr: 1.0,
        momentum: 0.0,
        weight_decay: 0.0,
    };
    let adaptive = LmConfig {
        softmax: lstm_lm::model::Softmax::Adaptive {
            cutoffs: vec![10, 25],
            div_value: 2.0,
        },
        ..lm(40, 0.0, false)
    };
    // A tied model keeps the dense gradient: its output layer uses every row.
    let mut tied = lm(40, 0.0, true).init(2, &device);
    lstm_lm::train::step::optimizer(&sgd, &mut tied);
    assert!(tied.sparse_embedding.is_none());
    for (config, max_norm) in [
        (&adaptive, 0.05),
        (&adaptive, 0.0),
        (&lm(40, 0.0, false), 0.05),
    ] {
        let train = |sparse: bool| {
            let mut model = config.init(2, &device);
            model.max_grad_norm = max_norm;
            let mut optim = lstm_lm::train::step::optimizer(&sgd, &mut model);
            assert!(model.sparse_embedding.is_some());
            if !sparse {
                model.sparse_embedding = None;
            }
            let loader =
                StreamLoader::training(Stream::new(tokens(&sentences), 2), 5, 1, 1, device.clone());
            let mut losses = Vec::new();
            for batch in loader.iter().take(3) {
                let out = TrainStep::step(&model, batch.unwrap());
                losses.push(out.item.loss.clone().into_scalar::<f32>());
                model = model.optimize(&mut optim, 1.0.into(), out.grads);
            }
            (values(&model), losses, model.embedding.weight.val())
        };
        let (dense, dense_losses, _) = train(false);
        let (sparse, sparse_losses, embedding) = train(true);
        for (a, b) in dense_losses.iter().zip(&sparse_losses) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs(),
                "max norm {max_norm}: {a} vs {b}"
            );
        }
        let scale = dense.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = dense
            .iter()
            .zip(&sparse)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(err <= 1e-5 * scale, "max norm {max_norm}: {err}");
        // Ids 0-2 (specials) and 33-39 are never looked up: untouched, bit for bit.
        let initial = config.init(2, &device).embedding.weight.val();
        for id in [0usize, 1, 2, 33, 39] {
            let row = |t: &Tensor<2>| t.clone().narrow(0, id, 1).into_data();
            assert_eq!(row(&embedding), row(&initial), "row {id}");
        }
        assert_ne!(
            embedding.narrow(0, 3, 1).into_data(),
            initial.narrow(0, 3, 1).into_data()
        );
    }
}

/// Every parameter value of `model`, in visiting order.
fn values(model: &lstm_lm::model::LanguageModel) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl burn::module::ModuleVisitor for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let v = param.val().into_data().try_to_vec::<f32>().unwrap();
            self.0.extend(v);
        }
    }
    let mut out = Values(Vec::new());
    burn::module::Module::visit(model, &mut out);
    out.0
}

struct GradNorm<'a> {
    grads: &'a burn::optim::GradientsParams,
    sum: &'a mut f64,
}

impl burn::module::ModuleVisitor for GradNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            *self.sum += g.square().sum().into_scalar::<f64>();
        }
    }
}

/// Dropout acts only when training (autodiff device and a batch seed), its masks follow the
/// seed, and it keeps the expected scale.
#[test]
fn dropout_masks_follow_the_seed_and_stay_off_in_evaluation() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let model = lm(19, 0.5, false).init(4, &ad);
    let x = ids(&ad, 4, 9, |i| (3 + i % 16) as i64);
    let run = |seed| model.forward_with_dropout(x.clone(), None, seed).0.inner();
    let (plain, a, a2, b) = (run(None), run(Some(1)), run(Some(1)), run(Some(2)));
    assert_eq!(max_abs_diff(a.clone(), a2), 0.0, "same seed, same masks");
    assert!(
        max_abs_diff(a.clone(), b) > 1e-3,
        "another seed, other masks"
    );
    assert!(
        max_abs_diff(plain.clone(), a) > 1e-3,
        "dropout changes the training forward"
    );
    let eval_model = lm(19, 0.5, false).init(4, &device);
    let xe = ids(&device, 4, 9, |i| (3 + i % 16) as i64);
    let (e1, _) = eval_model.forward_with_dropout(xe.clone(), None, Some(1));
    assert!(
        max_abs_diff(e1, eval_model.forward(xe, None).0) < 1e-6,
        "no dropout in evaluation"
    );
}

/// Full-context evaluation against a hand computation: a model whose output ignores the context
/// (zero output weights) and whose bias gives p = [0.1, 0.2, 0.3, 0.4] over the 4 ids.
/// The stream "a a <eos> a <eos>" = ids 3 3 1 3 1 scores targets 3 1 3 1:
/// perplexity = (0.4 * 0.2 * 0.4 * 0.2)^(-1/4) = 1 / sqrt(0.08).
#[test]
fn full_context_evaluation_matches_a_hand_computed_perplexity() {
    let device = Device::flex();
    let mut model = lm(4, 0.0, false).init(1, &device);
    let out = model.output.as_mut().unwrap();
    out.weight = Param::from_tensor(Tensor::zeros([8, 4], &device));
    let bias: Vec<f32> = [0.1f32, 0.2, 0.3, 0.4].iter().map(|p| p.ln()).collect();
    out.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [4]),
        &device,
    )));
    let sentences = vec![vec![3, 3, 1], vec![3, 1]];
    let expected = 1.0 / 0.08f64.sqrt();
    for bptt in [1, 2, 3, 10] {
        let e = evaluate_stream(&model, &tokens(&sentences), 1, bptt, &device);
        assert_eq!(e.tokens, 4, "bptt {bptt}");
        assert!(
            (e.perplexity - expected).abs() < 1e-4,
            "bptt {bptt}: {} vs {expected}",
            e.perplexity
        );
    }
}

fn files(dir: &Path) -> CorpusSource {
    let (train, valid) = common::tiny_corpus(dir, 1200, 300);
    CorpusSource::Files {
        train,
        valid: Some(valid),
        test: Some(dir.join("valid.txt")),
        train_fraction: 0.9,
    }
}

fn stream_config(epochs: usize) -> ExperimentConfig {
    let mut c = common::tiny_config(epochs);
    c.data.batching = Batching::Stream;
    c.data.batch_size = 8;
    c.data.bptt = 12;
    c.model.d_embed = 24;
    c.model.dropout = 0.2;
    c.model.tied = true;
    c.clip = 1.0;
    c.lr_schedule = LrSchedule::StepDecay {
        constant_epochs: 1,
        decay: 0.5,
    };
    c
}

fn run(config: ExperimentConfig, corpus: &CorpusSource, dir: &Path) -> TrainReport {
    train(TrainRequest {
        config,
        corpus: corpus.clone(),
        cache_dir: dir.with_extension("cache"),
        run_dir: dir.to_path_buf(),
        fresh: false,
        devices: vec![Device::flex()],
        events: EventSink::quiet(),
        interrupter: Default::default(),
        checkpoint_every: None,
    })
    .unwrap()
}

/// A stream run with dropout, tied weights, clipping and a step schedule learns, records its
/// learning rates, scores the test split with full context, and a run resumed after epoch 1
/// ends where the run left alone ends (dropout masks and window order follow the seed and
/// epoch; each epoch starts from the zero state).
#[test]
fn a_stream_run_learns_follows_its_schedule_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let whole = tmp.path().join("whole");
    let a = run(stream_config(3), &corpus, &whole);
    let ppl: Vec<f64> = a.epochs.iter().map(|e| e.valid_perplexity).collect();
    assert!(ppl[2] < ppl[0] && ppl[2] < a.vocab_size as f64, "{ppl:?}");
    let lrs: Vec<f64> = a.epochs.iter().map(|e| e.lr).collect();
    assert_eq!(lrs, vec![1e-2, 5e-3, 2.5e-3]);
    assert_eq!(read_history(&whole), a.epochs);
    let test = a.test.expect("test split scored");
    assert!(test.perplexity.is_finite() && test.tokens > 1000);

    let split = tmp.path().join("split");
    run(stream_config(1), &corpus, &split);
    let b = run(stream_config(3), &corpus, &split);
    assert_eq!(b.resumed_from, Some(1));
    assert_eq!(
        b.epochs.iter().map(|e| e.lr).collect::<Vec<_>>(),
        vec![5e-3, 2.5e-3]
    );
    let max_diff = max_abs_diff(saved_embedding(&whole, 3), saved_embedding(&split, 3));
    assert!(max_diff < 1e-5, "resumed weights differ by {max_diff}");

    // `lstm-lm eval` on the run: full context, the test split's perplexity again.
    let r = evaluate_run(&EvalRequest {
        run_dir: whole.clone(),
        text: vec![tmp.path().join("valid.txt")],
        cache_dir: tmp.path().join("cache"),
        epoch: None,
        context: lstm_lm::commands::eval::EvalContext::Carry,
        columns: 1,
        bptt: Some(50),
        device: Device::flex(),
    })
    .unwrap();
    assert_eq!(r.epoch, 3);
    assert!((r.evaluation.perplexity - test.perplexity).abs() / test.perplexity < 1e-4);
}

/// The embedding weights a run saved for `epoch`.
fn saved_embedding(dir: &Path, epoch: usize) -> Tensor<2> {
    load_model(dir, Some(epoch), &Device::flex())
        .unwrap()
        .embedding
        .weight
        .val()
}

/// Training steps each epoch of a run took, from burn-train's per-batch log (a line a batch,
/// then a final line).
fn steps_of_epochs(dir: &Path, epochs: usize) -> Vec<usize> {
    (1..=epochs)
        .map(|e| {
            let log = dir.join(format!("train/epoch-{e}/Perplexity.log"));
            std::fs::read_to_string(log).unwrap().lines().count() - 1
        })
        .collect()
}

/// `--epoch-tokens`: epochs of a set number of tokens read the text on across epochs. An epoch
/// of a whole pass's tokens trains exactly as the default does; shorter ones take the steps asked
/// for, and a run resumed at an epoch boundary in the middle of a pass ends where the run left
/// alone ends.
#[test]
fn epochs_of_a_set_number_of_tokens_read_on_and_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let corpus = files(tmp.path());
    let config = |epochs: usize, windows: u64| {
        let mut c = stream_config(epochs);
        c.data.epoch_tokens = windows * (c.data.batch_size * c.data.bptt) as u64;
        c
    };
    let pass = tmp.path().join("pass");
    run(stream_config(1), &corpus, &pass);
    let per_pass = steps_of_epochs(&pass, 1)[0];
    let same = tmp.path().join("same");
    run(config(1, per_pass as u64), &corpus, &same);
    assert_eq!(
        saved_embedding(&same, 1).into_data(),
        saved_embedding(&pass, 1).into_data(),
        "an epoch of one pass is the default"
    );

    // Epochs of 2/5 of a pass: five of them read the text twice.
    let short = (per_pass * 2 / 5) as u64;
    let whole = tmp.path().join("whole");
    let a = run(config(5, short), &corpus, &whole);
    assert_eq!(a.epochs.len(), 5);
    assert_eq!(steps_of_epochs(&whole, 5), vec![short as usize; 5]);
    assert_ne!(
        saved_embedding(&whole, 5).into_data(),
        saved_embedding(&pass, 1).into_data()
    );
    let split = tmp.path().join("split");
    run(config(3, short), &corpus, &split);
    let b = run(config(5, short), &corpus, &split);
    assert_eq!(b.resumed_from, Some(3));
    let max_diff = max_abs_diff(saved_embedding(&whole, 5), saved_embedding(&split, 5));
    assert!(max_diff < 1e-5, "resumed weights differ by {max_diff}");
}

/// The whole model's gradient (fused kernels, embedding, carried state, tied output) against
/// central finite differences of its loss, for one element of every parameter tensor.
#[test]
fn gradients_match_finite_differences() {
    let device = Device::flex();
    let ad = device.clone().autodiff();
    let sentences: Vec<Vec<usize>> = (0..4)
        .map(|s| (0..6).map(|w| 3 + (s * 3 + w * 5) % 10).collect())
        .collect();
    for tied in [false, true] {
        let config = lm(13, 0.0, tied);
        let stream = Stream::new(tokens(&sentences), 2);
        let loss_of = |model: &lstm_lm::model::LanguageModel, dev: &Device| -> Tensor<1> {
            // Two windows, the state carried and not detached (finite differences see through
            // it), so the second window's loss depends on the first window's tokens too.
            let (_, state) = model.loss_with_state(&stream.window(0, 4).to_device(dev), None);
            model
                .loss_with_state(&stream.window(1, 4).to_device(dev), Some(state))
                .0
                .loss
        };
        let model = config.init(9, &ad);
        let grads = loss_of(&model, &ad).backward();
        let base = config.init(9, &device);

        let mut checked = 0;
        let mut check =
            |name: &str,
             analytic: f32,
             perturbed: &dyn Fn(f32) -> lstm_lm::model::LanguageModel| {
                let eps = 1e-2f32;
                let up = loss_of(&perturbed(eps), &device).into_scalar::<f64>();
                let down = loss_of(&perturbed(-eps), &device).into_scalar::<f64>();
                let numeric = ((up - down) / (2.0 * eps as f64)) as f32;
                let tol = 2e-2 * analytic.abs().max(numeric.abs()).max(1e-2);
                assert!(
                    (analytic - numeric).abs() <= tol,
                    "tied {tied}, {name}: autodiff {analytic} vs finite difference {numeric}"
                );
                checked += 1;
            };
        fn bumped<const D: usize>(
            p: &Param<Tensor<D>>,
            index: usize,
            eps: f32,
        ) -> Param<Tensor<D>> {
            let t = p.val();
            let shape = t.shape();
            let mut v = t.into_data().try_to_vec::<f32>().unwrap();
            v[index] += eps;
            Param::from_tensor(Tensor::from_data(
                TensorData::new(v, shape),
                &Device::flex(),
            ))
        }
        fn grad_at<const D: usize>(
            p: &Param<Tensor<D>>,
            grads: &burn::tensor::Gradients,
            index: usize,
        ) -> f32 {
            p.val()
                .grad(grads)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap()[index]
        }
        // Embedding of a token in the windows (id 3 + ...); in both LSTM layers an element of
        // each gate (i, f, g, o: column blocks of 8 = d_hidden) of the input weights, the
        // recurrent weights and the bias; and the output layer's weight and bias.
        let emb_index = 8 * 8 + 2;
        check(
            "embedding",
            grad_at(&model.embedding.weight, &grads, emb_index),
            &|e| {
                let mut m = base.clone();
                m.embedding.weight = bumped(&base.embedding.weight, emb_index, e);
                m
            },
        );
        let (h, gates) = (8, 4 * 8);
        for layer in 0..2 {
            for (gate, gate_name) in ["i", "f", "g", "o"].into_iter().enumerate() {
                let column = gate * h + (3 * gate + 1) % h;
                for (kind, index) in [
                    ("input_weight", gates + column),
                    ("hidden_weight", 2 * gates + column),
                    ("bias", column),
                ] {
                    let l = &model.lstm.layers[layer];
                    let analytic = match kind {
                        "input_weight" => grad_at(&l.input_weight, &grads, index),
                        "hidden_weight" => grad_at(&l.hidden_weight, &grads, index),
                        _ => grad_at(&l.bias, &grads, index),
                    };
                    let name = format!("layer {layer} {kind}, gate {gate_name}");
                    check(&name, analytic, &|e| {
                        let mut m = base.clone();
                        let b = &base.lstm.layers[layer];
                        let t = &mut m.lstm.layers[layer];
                        match kind {
                            "input_weight" => t.input_weight = bumped(&b.input_weight, index, e),
                            "hidden_weight" => t.hidden_weight = bumped(&b.hidden_weight, index, e),
                            _ => t.bias = bumped(&b.bias, index, e),
                        }
                        m
                    });
                }
            }
        }
        // Token 5 is a target in the windows; the bias of a target row has a large gradient.
        let bias_index = 5;
        if let Some(out) = &model.output {
            check("output weight", grad_at(&out.weight, &grads, 20), &|e| {
                let mut m = base.clone();
                let o = m.output.as_mut().unwrap();
                o.weight = bumped(&base.output.as_ref().unwrap().weight, 20, e);
                m
            });
            let bias = out.bias.as_ref().expect("the output layer has a bias");
            check("output bias", grad_at(bias, &grads, bias_index), &|e| {
                let mut m = base.clone();
                let o = m.output.as_mut().unwrap();
                let b = base.output.as_ref().unwrap().bias.as_ref().unwrap();
                o.bias = Some(bumped(b, bias_index, e));
                m
            });
        } else {
            let bias = model
                .tied_bias
                .as_ref()
                .expect("a tied model has its own bias");
            check(
                "tied output bias",
                grad_at(bias, &grads, bias_index),
                &|e| {
                    let mut m = base.clone();
                    m.tied_bias = Some(bumped(base.tied_bias.as_ref().unwrap(), bias_index, e));
                    m
                },
            );
        }
        assert_eq!(checked, 1 + 2 * 4 * 3 + if tied { 1 } else { 2 });
    }
}
