//! Which library multiplies a product's blocks: the `gemm` crate, or (feature `openblas`) the
//! system's OpenBLAS, kept shape by shape after timing both on the shape's first calls.
//!
//! Neither library wins everywhere, and which one wins depends on the machine: on a 2-vCPU AMD
//! EPYC Zen 3 OpenBLAS ran `medium`'s weight-gradient products 15 - 45% faster than `gemm` and
//! its other products 0 - 15% faster, while on an Intel Xeon the same Debian build fell back to
//! older kernels and lost (docs/BENCHMARKS.md). So each product shape of at least
//! [`MIN_MEASURED`] multiply-adds is run [`TRIALS`] times through each library, alternating,
//! and then always through the one with the lower median time. `LSTM_LM_SGEMM=gemm|openblas`
//! names one library for every product instead (docs/DEVELOPING.md, "Run-time overrides").
//!
//! The two libraries round differently, so until a shape's choice is made its values depend on
//! which library ran that call, and OpenBLAS's also on where the product is cut between the
//! cores (which follows their speeds): runs with the feature agree with each other at float
//! rounding, not bit for bit (`loss 300.401` against `300.404` after 12 `medium` bench steps
//! with `LSTM_LM_SGEMM=openblas`). `LSTM_LM_SGEMM=gemm` makes them repeatable bit for bit.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, OnceLock};
use std::time::Instant;

/// A library that multiplies one block of a product on the calling thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Library {
    /// The `gemm` crate, always built in.
    Gemm,
    /// The system's OpenBLAS through its CBLAS interface (feature `openblas`).
    #[cfg(feature = "openblas")]
    OpenBlas,
}

impl Library {
    /// Every library in this build, `gemm` first.
    pub const ALL: &'static [Library] = &[
        Library::Gemm,
        #[cfg(feature = "openblas")]
        Library::OpenBlas,
    ];

    /// The name `LSTM_LM_SGEMM` gives this library.
    pub fn name(self) -> &'static str {
        match self {
            Library::Gemm => "gemm",
            #[cfg(feature = "openblas")]
            Library::OpenBlas => "openblas",
        }
    }

    /// This library's place in [`Library::ALL`].
    fn index(self) -> usize {
        Library::ALL
            .iter()
            .position(|&l| l == self)
            .expect("every library is listed in ALL")
    }
}

/// How products pick their library (`LSTM_LM_SGEMM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// Time each library on a shape's first calls, then keep the faster (the default).
    Measure,
    /// One library for every product it can take.
    Always(Library),
}

impl Policy {
    /// The policy of this process: `LSTM_LM_SGEMM`, read once; a value it cannot honour prints
    /// a warning and leaves [`Policy::Measure`].
    fn chosen() -> Self {
        static CHOSEN: OnceLock<Policy> = OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let value = std::env::var("LSTM_LM_SGEMM").ok();
            Policy::from_override(value.as_deref()).unwrap_or_else(|why| {
                eprintln!("warning: {why}; each product shape is timed through every library");
                Policy::Measure
            })
        })
    }

    /// What `LSTM_LM_SGEMM` asks for (unset, empty or `auto`: [`Policy::Measure`]), or why it
    /// cannot be had.
    fn from_override(value: Option<&str>) -> Result<Self, String> {
        let name = match value.map(str::trim) {
            None | Some("") | Some("auto") => return Ok(Policy::Measure),
            Some(name) => name,
        };
        if let Some(&library) = Library::ALL.iter().find(|l| l.name() == name) {
            return Ok(Policy::Always(library));
        }
        if name == "openblas" {
            return Err(
                "LSTM_LM_SGEMM=openblas: this build has no OpenBLAS (install \
                        libopenblas-dev and build with `--features openblas`)"
                    .into(),
            );
        }
        Err(format!(
            "LSTM_LM_SGEMM={name:?} is none of auto, gemm, openblas"
        ))
    }
}

/// A product's shape, under which its timings are filed: `[m, k] x [k, n]`, with whether each
/// operand is read transposed (its columns contiguous).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    /// Rows of the left operand and of the result.
    pub m: usize,
    /// The inner dimension.
    pub k: usize,
    /// Columns of the right operand and of the result.
    pub n: usize,
    /// The left operand is stored as `[k, m]`.
    pub a_t: bool,
    /// The right operand is stored as `[n, k]`.
    pub b_t: bool,
}

impl Shape {
    /// Multiply-adds of one product of this shape.
    fn macs(&self) -> usize {
        self.m.saturating_mul(self.k).saturating_mul(self.n)
    }
}

impl std::fmt::Display for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let operand = |rows, cols, t: bool| {
            if t {
                format!("[{cols}, {rows}]ᵀ")
            } else {
                format!("[{rows}, {cols}]")
            }
        };
        write!(
            f,
            "{} x {}",
            operand(self.m, self.k, self.a_t),
            operand(self.k, self.n, self.b_t)
        )
    }
}

/// Products of fewer multiply-adds than this (~4 M, a third of a millisecond on a core) are left
/// to `gemm` when measuring: their times are too short to compare reliably, and the recurrence's
/// per-step products run through their own kernels anyway.
pub(crate) const MIN_MEASURED: usize = 1 << 22;

/// Calls each library makes of a shape before the faster is kept: alternating, three each, so
/// that one slow moment of the machine does not decide (the median is compared). They follow
/// one untimed call through `gemm`: a shape's first call meets fresh buffers (page faults) and
/// cold caches, which cost `gemm` up to three times its later calls in `small`'s first steps.
pub(crate) const TRIALS: usize = 3;

/// One shape's timings so far, in nanoseconds per library ([`Library::ALL`]'s order), and the
/// library kept once every one has [`TRIALS`].
#[derive(Debug, Clone, Default)]
struct Trial {
    nanos: [Vec<u64>; Library::ALL.len()],
    kept: Option<Library>,
    /// Whether the untimed first call was handed out.
    warmed: bool,
}

impl Trial {
    /// Whether this is the shape's first call (untimed; true once).
    fn first_call(&mut self) -> bool {
        !std::mem::replace(&mut self.warmed, true)
    }

    /// The library the next call runs through: the kept one, or the one timed least so far.
    fn next(&self) -> Library {
        self.kept.unwrap_or_else(|| {
            let fewest = (0..Library::ALL.len())
                .min_by_key(|&i| self.nanos[i].len())
                .expect("at least gemm");
            Library::ALL[fewest]
        })
    }

    /// Files one call's time; keeps the library with the lowest median once all have
    /// [`TRIALS`] calls.
    fn record(&mut self, library: Library, nanos: u64) {
        if self.kept.is_some() {
            return;
        }
        self.nanos[library.index()].push(nanos);
        if self.nanos.iter().all(|t| t.len() >= TRIALS) {
            let medians = self.medians();
            self.kept = (0..medians.len())
                .min_by(|&i, &j| medians[i].total_cmp(&medians[j]))
                .map(|i| Library::ALL[i]);
        }
    }

    /// Each library's median time in milliseconds (NaN when not timed yet).
    fn medians(&self) -> Vec<f64> {
        self.nanos
            .iter()
            .map(|t| {
                let mut t = t.clone();
                t.sort_unstable();
                t.get(t.len().saturating_sub(1) / 2)
                    .map_or(f64::NAN, |&n| n as f64 / 1e6)
            })
            .collect()
    }
}

/// Every measured shape's trial, for the whole process.
static TRIALS_BY_SHAPE: LazyLock<Mutex<HashMap<Shape, Trial>>> = LazyLock::new(Default::default);

/// The trials, even when a panicking thread poisoned the lock (a trial is only timings).
fn trials() -> std::sync::MutexGuard<'static, HashMap<Shape, Trial>> {
    TRIALS_BY_SHAPE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `product` once, through the library `shape` should use now: `LSTM_LM_SGEMM`'s, or
/// under [`Policy::Measure`] the one its trial gives (timing the call while the trial is open).
/// `openblas_takes` says whether OpenBLAS can read the operands (`Mat::cblas`); when it
/// cannot, `gemm` runs the product.
pub(crate) fn run(shape: Shape, openblas_takes: bool, product: impl FnOnce(Library)) {
    let eligible = openblas_takes && Library::ALL.len() > 1;
    match Policy::chosen() {
        Policy::Always(library) if eligible => return product(library),
        Policy::Measure if eligible && shape.macs() >= MIN_MEASURED => {}
        _ => return product(Library::Gemm),
    }
    let (library, timed) = {
        let mut trials = trials();
        let trial = trials.entry(shape).or_default();
        if trial.first_call() {
            (Library::Gemm, false)
        } else {
            (trial.next(), trial.kept.is_none())
        }
    };
    if !timed {
        return product(library);
    }
    let start = Instant::now();
    product(library);
    let nanos = start.elapsed().as_nanos() as u64;
    if let Some(trial) = trials().get_mut(&shape) {
        trial.record(library, nanos);
    }
}

/// Whether any measured shape is still being timed (its library not yet kept).
pub(crate) fn trials_open() -> bool {
    trials().values().any(|t| t.kept.is_none())
}

/// One measured shape: the library kept (if chosen yet) and each library's median time.
#[derive(Debug, Clone)]
pub(crate) struct Decision {
    /// The product's shape, as `[m, k] x [k, n]` with `ᵀ` on an operand read transposed.
    pub shape: String,
    /// The library the shape runs through from now on (`None` while still timed).
    pub kept: Option<&'static str>,
    /// Each library's name and median milliseconds a call so far.
    pub medians: Vec<(&'static str, f64)>,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.shape, self.kept.unwrap_or("still timed"))?;
        let medians: Vec<String> = (self.medians.iter())
            .map(|(name, ms)| format!("{name} {ms:.2} ms"))
            .collect();
        write!(f, " (medians: {})", medians.join(", "))
    }
}

/// Every shape measured in this process so far, largest first.
pub(crate) fn decisions() -> Vec<Decision> {
    let mut shapes: Vec<(Shape, Trial)> = trials().iter().map(|(s, t)| (*s, t.clone())).collect();
    shapes.sort_by_key(|(s, _)| std::cmp::Reverse((s.macs(), s.m, s.n, s.a_t, s.b_t)));
    shapes
        .into_iter()
        .map(|(shape, trial)| Decision {
            shape: shape.to_string(),
            kept: trial.kept.map(Library::name),
            medians: Library::ALL
                .iter()
                .map(|l| l.name())
                .zip(trial.medians())
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `LSTM_LM_SGEMM`: unset, empty or `auto` measures, `gemm` is always honoured, `openblas`
    /// only in a build with the feature, and anything else is refused with the values it takes.
    #[test]
    fn the_override_names_a_library_of_this_build() {
        assert_eq!(Policy::from_override(None), Ok(Policy::Measure));
        assert_eq!(Policy::from_override(Some(" auto ")), Ok(Policy::Measure));
        assert_eq!(
            Policy::from_override(Some("gemm")),
            Ok(Policy::Always(Library::Gemm))
        );
        let openblas = Policy::from_override(Some("openblas"));
        #[cfg(feature = "openblas")]
        assert_eq!(openblas, Ok(Policy::Always(Library::OpenBlas)));
        #[cfg(not(feature = "openblas"))]
        assert!(openblas.unwrap_err().contains("--features openblas"));
        let err = Policy::from_override(Some("mkl")).unwrap_err();
        assert!(
            err.contains("\"mkl\"") && err.contains("auto, gemm, openblas"),
            "{err}"
        );
    }

    /// A trial alternates between the libraries, starting with `gemm`, and after [`TRIALS`]
    /// calls each keeps the one with the lower median, which one slow call does not sway.
    #[test]
    fn a_trial_alternates_then_keeps_the_lower_median() {
        let mut trial = Trial::default();
        assert!(
            trial.first_call() && !trial.first_call(),
            "one untimed first call"
        );
        let n = Library::ALL.len();
        // The last library is fast but for one very slow call; the others steady.
        for call in 0..TRIALS * n {
            let library = trial.next();
            assert_eq!(library, Library::ALL[call % n], "call {call}");
            let last = library.index() == n - 1;
            let nanos = match (last, call / n) {
                (true, 0) if n > 1 => 90_000_000,
                (true, _) if n > 1 => 8_000_000,
                _ => 10_000_000,
            };
            assert_eq!(trial.kept, None);
            trial.record(library, nanos);
        }
        assert_eq!(trial.kept, Library::ALL.last().copied());
        assert_eq!(trial.next(), *Library::ALL.last().unwrap());
        // Later calls change nothing.
        trial.record(Library::Gemm, 1);
        assert_eq!(trial.kept, Library::ALL.last().copied());
        assert_eq!(trial.medians()[0], 10.0);
    }

    /// Shapes print as a user reads them: operands read transposed carry their stored shape.
    #[test]
    fn shapes_print_with_their_stored_layouts() {
        let shape = Shape {
            m: 650,
            k: 700,
            n: 10_000,
            a_t: true,
            b_t: false,
        };
        assert_eq!(shape.to_string(), "[700, 650]ᵀ x [700, 10000]");
        let shape = Shape {
            m: 700,
            k: 10_000,
            n: 650,
            a_t: false,
            b_t: true,
        };
        assert_eq!(shape.to_string(), "[700, 10000] x [650, 10000]ᵀ");
    }

    /// Through `product` (the fused ops' path), a shape big enough to be measured gives the
    /// naive product's values on every call, whichever library runs it; with more than one
    /// library in the build it is timed through each and then keeps one (unless
    /// `LSTM_LM_SGEMM` names one), with only `gemm` nothing is timed.
    #[test]
    fn a_measured_shape_keeps_a_library_and_its_values() {
        use super::super::tests::{naive, values};
        use super::super::{product, Mat};
        // A shape no other test uses, just over the measured size.
        let (m, k, n) = (130, 250, 131);
        assert!(m * k * n >= MIN_MEASURED);
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let want = naive(&a, &b, m, k, n);
        for call in 0..2 + TRIALS * Library::ALL.len() {
            let got = product(Mat::new(&a, m, k, k), Mat::new(&b, k, n, n), true);
            let err = (got.iter().zip(&want))
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert!(err < 1e-3, "call {call}: {err}");
        }
        let shape = "[130, 250] x [250, 131]";
        let decision = decisions().into_iter().find(|d| d.shape == shape);
        match (Library::ALL.len(), Policy::chosen()) {
            (1, _) | (_, Policy::Always(_)) => assert!(decision.is_none(), "{decision:?}"),
            (_, Policy::Measure) => {
                let decision = decision.expect("the shape was timed");
                assert!(decision.kept.is_some(), "{decision}");
                assert!(
                    decision.medians.iter().all(|(_, ms)| *ms > 0.0),
                    "{decision}"
                );
            }
        }
    }
}
