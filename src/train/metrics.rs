//! Training metrics for burn-train: perplexity over real tokens and tokens per second.
//!
//! Both read the token count the batch carries instead of recomputing anything over the logits:
//! the negative log-likelihood is summed once in the loss and reused here.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use std::time::Instant;

use burn::tensor::{Tensor, TensorReadError};

use crate::train::guard::DivergenceGuard;
use burn::train::metric::{
    format_float, Metric, MetricAttributes, MetricMetadata, MetricName, Numeric, NumericAttributes,
    NumericEntry, SerializedEntry,
};

/// Name of the [`PerplexityMetric`].
pub const PERPLEXITY: &str = "Perplexity";
/// Name of the [`TokensPerSecond`] metric.
/// (It names a log file, so it holds no path separator.)
pub const TOKENS_PER_SECOND: &str = "TokensPerSecond";

/// Input of [`PerplexityMetric`]: one batch's summed negative log-likelihood and token count.
pub struct NllInput {
    /// Sum of the negative log-likelihood over real tokens `[1]`, in nats.
    pub nll_sum: Tensor<1>,
    /// Number of real tokens.
    pub tokens: usize,
}

/// Input of [`TokensPerSecond`]: the number of real tokens in a batch.
pub struct TokenCountInput {
    /// Number of real tokens.
    pub tokens: usize,
}

/// `exp(total NLL / total tokens)` over the epoch so far, padding excluded.
///
/// Its per-batch value is the running epoch perplexity (a steadier signal than one batch's);
/// its final value is the epoch's perplexity.
#[derive(Clone)]
pub struct PerplexityMetric {
    name: MetricName,
    nll: f64,
    tokens: usize,
    guard: Option<Guarded>,
    shared: Option<Arc<Mutex<EpochSums>>>,
}

/// The running sums of an epoch so far: what a checkpoint within an epoch saves so that the
/// epoch's perplexity comes out the same after a resume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct EpochSums {
    /// Summed negative log-likelihood, in nats.
    pub nll: f64,
    /// Real tokens.
    pub tokens: usize,
    /// Batches.
    pub batches: usize,
}

/// What a guarded metric reports to its [`DivergenceGuard`].
#[derive(Clone)]
struct Guarded {
    guard: DivergenceGuard,
    split: &'static str,
    epoch: usize,
    batch: usize,
}

impl PerplexityMetric {
    /// An empty metric.
    pub fn new() -> Self {
        Self {
            name: Arc::new(PERPLEXITY.to_string()),
            nll: 0.0,
            tokens: 0,
            guard: None,
            shared: None,
        }
    }

    /// Publishes the epoch's running sums to `shared` after every batch (cleared at the end of
    /// each epoch), and starts the first epoch from `start` (a resume within an epoch).
    pub fn tracking(mut self, shared: Arc<Mutex<EpochSums>>, start: EpochSums) -> Self {
        self.nll = start.nll;
        self.tokens = start.tokens;
        if let Some(g) = &mut self.guard {
            g.batch = start.batches;
        }
        *shared.lock().expect("sums lock") = start;
        self.shared = Some(shared);
        self
    }

    /// A metric that hands every batch's loss to `guard`, naming `split` ("training" or
    /// "validation"); its first epoch is `first_epoch`, and each `clear` (end of epoch) counts
    /// one more.
    pub fn guarded(guard: DivergenceGuard, split: &'static str, first_epoch: usize) -> Self {
        Self {
            guard: Some(Guarded {
                guard,
                split,
                epoch: first_epoch,
                batch: 0,
            }),
            ..Self::new()
        }
    }

    fn value_now(&self) -> f64 {
        if self.tokens == 0 {
            f64::NAN
        } else {
            (self.nll / self.tokens as f64).exp()
        }
    }

    fn entry(&self, final_entry: bool) -> SerializedEntry {
        let v = self.value_now();
        let serialized = if final_entry {
            NumericEntry::Final(v)
        } else {
            NumericEntry::Aggregated {
                aggregated_value: v,
                count: self.tokens,
            }
        };
        SerializedEntry::new(
            format!("epoch {}", format_float(v, 2)),
            serialized.serialize(),
        )
    }
}

impl Default for PerplexityMetric {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for PerplexityMetric {
    type Input = NllInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: None,
            higher_is_better: false,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &NllInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        let nll = item.nll_sum.clone().sum().try_into_scalar::<f64>()?;
        if let Some(g) = &mut self.guard {
            g.batch += 1;
            g.guard.check(g.split, g.epoch, g.batch, nll);
        }
        self.nll += nll;
        self.tokens += item.tokens;
        if let Some(shared) = &self.shared {
            let mut sums = shared.lock().expect("sums lock");
            sums.nll = self.nll;
            sums.tokens = self.tokens;
            sums.batches += 1;
        }
        Ok(self.entry(false))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        Ok(self.entry(true))
    }

    fn clear(&mut self) {
        self.nll = 0.0;
        self.tokens = 0;
        if let Some(g) = &mut self.guard {
            g.epoch += 1;
            g.batch = 0;
        }
        if let Some(shared) = &self.shared {
            *shared.lock().expect("sums lock") = EpochSums::default();
        }
    }
}

impl Numeric for PerplexityMetric {
    fn value(&self) -> Option<NumericEntry> {
        self.running_value()
    }

    fn running_value(&self) -> Option<NumericEntry> {
        (self.tokens > 0).then(|| NumericEntry::Aggregated {
            aggregated_value: self.value_now(),
            count: self.tokens,
        })
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.value_now())
    }
}

/// Real tokens per second of wall time since the first batch of the epoch was reported.
///
/// The first batch only starts the clock; its tokens are not counted, so the rate is not
/// inflated by time spent before the epoch began.
#[derive(Clone)]
pub struct TokensPerSecond {
    name: MetricName,
    start: Option<Instant>,
    tokens: usize,
}

impl TokensPerSecond {
    /// An empty metric.
    pub fn new() -> Self {
        Self {
            name: Arc::new(TOKENS_PER_SECOND.to_string()),
            start: None,
            tokens: 0,
        }
    }

    fn rate(&self) -> f64 {
        match self.start {
            Some(start) if self.tokens > 0 => {
                self.tokens as f64 / start.elapsed().as_secs_f64().max(1e-9)
            }
            _ => f64::NAN,
        }
    }
}

impl Default for TokensPerSecond {
    fn default() -> Self {
        Self::new()
    }
}

impl Metric for TokensPerSecond {
    type Input = TokenCountInput;

    fn name(&self) -> MetricName {
        self.name.clone()
    }

    fn attributes(&self) -> MetricAttributes {
        NumericAttributes {
            unit: Some("tok/s".into()),
            higher_is_better: true,
        }
        .into()
    }

    fn update(
        &mut self,
        item: &TokenCountInput,
        _metadata: &MetricMetadata,
    ) -> Result<SerializedEntry, TensorReadError> {
        match self.start {
            None => self.start = Some(Instant::now()),
            Some(_) => self.tokens += item.tokens,
        }
        let v = self.rate();
        Ok(SerializedEntry::new(
            format!("{v:.0} tok/s"),
            NumericEntry::Value(v).serialize(),
        ))
    }

    fn compute(&mut self) -> Result<SerializedEntry, TensorReadError> {
        let v = self.rate();
        Ok(SerializedEntry::new(
            format!("{v:.0} tok/s"),
            NumericEntry::Final(v).serialize(),
        ))
    }

    fn clear(&mut self) {
        self.start = None;
        self.tokens = 0;
    }
}

impl Numeric for TokensPerSecond {
    fn value(&self) -> Option<NumericEntry> {
        let v = self.rate();
        v.is_finite().then_some(NumericEntry::Value(v))
    }

    fn running_value(&self) -> Option<NumericEntry> {
        self.value()
    }

    fn final_value(&self) -> NumericEntry {
        NumericEntry::Final(self.rate())
    }
}
