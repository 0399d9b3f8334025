//! Named starting points for a config (`--preset`), each written out field by field.

use crate::data::tokenizer::Tokenizer;
use crate::model::{InitScheme, LmConfig, LossNorm, Softmax};

use super::schedule::LrSchedule;
use super::{Batching, DataConfig, ExperimentConfig, OptimizerConfig, REFERENCE_BUCKETS};

/// Named starting points for a config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A good general default: 2 x 256 LSTM, Adam, 10,000-word vocabulary, 3 epochs.
    Default,
    /// The reference, MXNet's bucketing PTB example: 2 x 256 LSTM, embed 256, batch 50,
    /// SGD lr 0.01, weight decay 1e-5, Xavier(in, 2.34) init, forget bias 1, 2 epochs.
    Seed,
    /// Zaremba et al. 2014, small: 2 x 200, stream batch 20, bptt 20, uniform init 0.1, SGD lr 1
    /// for 4 epochs then x0.5 per epoch, 13 epochs, clip 5, no dropout (114.5 test ppl on PTB).
    ZarembaSmall,
    /// Zaremba et al. 2014, medium: 2 x 650, bptt 35, uniform 0.05, dropout 0.5, SGD lr 1 for
    /// 6 epochs then x0.8 per epoch, 39 epochs, clip 5 (82.7 test ppl on PTB).
    ZarembaMedium,
    /// Zaremba et al. 2014, large: 2 x 1500, bptt 35, uniform 0.04, dropout 0.65, SGD lr 1 for
    /// 14 epochs then /1.15 per epoch, 55 epochs, clip 10 (78.4 test ppl on PTB).
    ZarembaLarge,
    /// A character model after Karpathy's char-rnn defaults (`train.lua`): 2 x 128 LSTM,
    /// uniform init 0.08, sequences of 50 characters in a stream of batch 50, lr 2e-3 x0.97
    /// per epoch after epoch 10, clip 5, no dropout, 50 epochs; Adam instead of char-rnn's
    /// RMSprop (not offered here) and a 128-wide embedding instead of one-hot input.
    CharRnn,
    /// A tiny model for smoke tests: 1 x 32 LSTM, 2,000-word vocabulary, 1 epoch.
    Tiny,
}

/// MXNet's `Xavier(factor_type="in", magnitude=2.34)` with forget bias 1, as the reference.
const REFERENCE_INIT: InitScheme = InitScheme::MxXavier {
    magnitude: 2.34,
    forget_bias: 1.0,
};

/// What differs between the Zaremba et al. configurations (the paper's Section 4).
struct Zaremba {
    hidden: usize,
    bptt: usize,
    init_range: f64,
    dropout: f64,
    epochs: usize,
    constant_epochs: usize,
    decay: f64,
    clip: f64,
}

impl Zaremba {
    /// The configuration: 2 layers, embedding as wide as the LSTM, a stream of batch 20, the
    /// loss summed over time and averaged over the batch, SGD lr 1 with a step decay (as
    /// TensorFlow's `ptb_word_lm`, which reproduces the paper), every training word kept.
    fn config(self) -> ExperimentConfig {
        ExperimentConfig {
            model: LmConfig {
                vocab_size: 0,
                d_embed: self.hidden,
                d_hidden: self.hidden,
                n_layers: 2,
                init: InitScheme::Uniform {
                    range: self.init_range,
                },
                loss_norm: LossNorm::Batch,
                dropout: self.dropout,
                tied: false,
                softmax: Softmax::Full,
            },
            data: DataConfig {
                batching: Batching::Stream,
                buckets: REFERENCE_BUCKETS.to_vec(),
                bptt: self.bptt,
                batch_size: 20,
                max_vocab: 0,
                tokenizer: Tokenizer::Word,
                epoch_tokens: 0,
            },
            optimizer: OptimizerConfig::Sgd {
                lr: 1.0,
                momentum: 0.0,
                weight_decay: 0.0,
            },
            epochs: self.epochs,
            seed: 1,
            clip: self.clip,
            lr_schedule: LrSchedule::StepDecay {
                constant_epochs: self.constant_epochs,
                decay: self.decay,
            },
            init_from: None,
        }
    }
}

impl Preset {
    /// The name on the command line and in default run folders (`zaremba-small`).
    pub fn name(self) -> &'static str {
        match self {
            Preset::Default => "default",
            Preset::Seed => "seed",
            Preset::ZarembaSmall => "zaremba-small",
            Preset::ZarembaMedium => "zaremba-medium",
            Preset::ZarembaLarge => "zaremba-large",
            Preset::CharRnn => "char-rnn",
            Preset::Tiny => "tiny",
        }
    }

    /// The config of this preset.
    pub fn config(self) -> ExperimentConfig {
        match self {
            Preset::Default => default(),
            Preset::Seed => seed(),
            Preset::ZarembaSmall => Zaremba {
                hidden: 200,
                bptt: 20,
                init_range: 0.1,
                dropout: 0.0,
                epochs: 13,
                constant_epochs: 4,
                decay: 0.5,
                clip: 5.0,
            }
            .config(),
            Preset::ZarembaMedium => Zaremba {
                hidden: 650,
                bptt: 35,
                init_range: 0.05,
                dropout: 0.5,
                epochs: 39,
                constant_epochs: 6,
                decay: 0.8,
                clip: 5.0,
            }
            .config(),
            Preset::ZarembaLarge => Zaremba {
                hidden: 1500,
                bptt: 35,
                init_range: 0.04,
                dropout: 0.65,
                epochs: 55,
                constant_epochs: 14,
                decay: 1.0 / 1.15,
                clip: 10.0,
            }
            .config(),
            Preset::CharRnn => char_rnn(),
            Preset::Tiny => tiny(),
        }
    }
}

/// `--preset default`: 2 x 256, buckets, Adam.
fn default() -> ExperimentConfig {
    ExperimentConfig {
        model: LmConfig {
            vocab_size: 0,
            d_embed: 256,
            d_hidden: 256,
            n_layers: 2,
            init: REFERENCE_INIT,
            loss_norm: LossNorm::Token,
            dropout: 0.0,
            tied: false,
            softmax: Softmax::Full,
        },
        data: DataConfig {
            batching: Batching::Buckets,
            buckets: REFERENCE_BUCKETS.to_vec(),
            bptt: 35,
            batch_size: 32,
            max_vocab: 10_000,
            tokenizer: Tokenizer::Word,
            epoch_tokens: 0,
        },
        optimizer: OptimizerConfig::Adam {
            lr: 2e-3,
            weight_decay: 0.0,
        },
        epochs: 3,
        seed: 1,
        clip: 0.0,
        lr_schedule: LrSchedule::Constant,
        init_from: None,
    }
}

/// `--preset seed`: MXNet's bucketing PTB example; the default's model and buckets with the
/// reference's loss, batch, full vocabulary and SGD.
fn seed() -> ExperimentConfig {
    let base = default();
    ExperimentConfig {
        model: LmConfig {
            loss_norm: LossNorm::Batch,
            ..base.model
        },
        data: DataConfig {
            batch_size: 50,
            max_vocab: 0,
            ..base.data
        },
        optimizer: OptimizerConfig::Sgd {
            lr: 0.01,
            momentum: 0.0,
            weight_decay: 1e-5,
        },
        epochs: 2,
        ..base
    }
}

/// `--preset char-rnn`: see [`Preset::CharRnn`].
fn char_rnn() -> ExperimentConfig {
    ExperimentConfig {
        model: LmConfig {
            vocab_size: 0,
            d_embed: 128,
            d_hidden: 128,
            n_layers: 2,
            init: InitScheme::Uniform { range: 0.08 },
            loss_norm: LossNorm::Token,
            dropout: 0.0,
            tied: false,
            softmax: Softmax::Full,
        },
        data: DataConfig {
            batching: Batching::Stream,
            buckets: REFERENCE_BUCKETS.to_vec(),
            bptt: 50,
            batch_size: 50,
            max_vocab: 0,
            tokenizer: Tokenizer::Char,
            epoch_tokens: 0,
        },
        optimizer: OptimizerConfig::Adam {
            lr: 2e-3,
            weight_decay: 0.0,
        },
        epochs: 50,
        seed: 1,
        clip: 5.0,
        lr_schedule: LrSchedule::StepDecay {
            constant_epochs: 10,
            decay: 0.97,
        },
        init_from: None,
    }
}

/// `--preset tiny`: the default shrunk to 1 x 32, for smoke tests.
fn tiny() -> ExperimentConfig {
    let base = default();
    ExperimentConfig {
        model: LmConfig {
            d_embed: 32,
            d_hidden: 32,
            n_layers: 1,
            ..base.model
        },
        data: DataConfig {
            batch_size: 16,
            max_vocab: 2_000,
            ..base.data
        },
        optimizer: OptimizerConfig::Adam {
            lr: 1e-2,
            weight_decay: 0.0,
        },
        epochs: 1,
        ..base
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    #[test]
    fn seed_preset_is_the_reference() {
        let c = Preset::Seed.config();
        assert_eq!(
            (c.model.d_embed, c.model.d_hidden, c.model.n_layers),
            (256, 256, 2)
        );
        assert_eq!(c.data.batch_size, 50);
        assert_eq!(c.data.buckets, vec![10, 20, 40, 60, 80]);
        assert_eq!(
            c.optimizer,
            OptimizerConfig::Sgd {
                lr: 0.01,
                momentum: 0.0,
                weight_decay: 1e-5
            }
        );
        assert_eq!(c.epochs, 2);
    }

    #[test]
    fn zaremba_presets_are_the_papers_and_names_match_the_flag() {
        let small = Preset::ZarembaSmall.config();
        assert_eq!(
            (small.model.d_hidden, small.data.bptt, small.clip),
            (200, 20, 5.0)
        );
        assert_eq!(small.model.init, InitScheme::Uniform { range: 0.1 });
        let large = Preset::ZarembaLarge.config();
        assert_eq!((large.model.d_hidden, large.model.dropout), (1500, 0.65));
        assert_eq!(large.lr_schedule.lr_for_epoch(1.0, 15, &[]), 1.0 / 1.15);
        for p in Preset::value_variants() {
            let flag = p.to_possible_value().expect("every preset is a value");
            assert_eq!(flag.get_name(), p.name());
            assert!(p.config().validate().is_ok(), "{}", p.name());
        }
    }
}
