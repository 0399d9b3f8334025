//! f32 matrix products on host slices for the fused ops, split over the cores by hand.
//!
//! The fused ops run their products through the `gemm` crate (as flex does) on the buffers they
//! own. Measured on the 2-core Zen 4 build machine (README, "Speed"): cutting a product into one
//! block of columns (or rows) per core, each computed single-threaded, ran the output layer's
//! shapes at 171 - 207 GFLOP/s against 176 - 178 with gemm's own threading, and a recurrent
//! step's `[20, 256] x [256, 1024]` at 158 against 124.
//!
//! The blocks run through the `gemm` crate or, with the `openblas` feature, through the
//! system's OpenBLAS, whichever measured faster for the product's shape ([`library`]).

mod library;
#[cfg(feature = "openblas")]
mod openblas;

use library::Shape;
pub(crate) use library::{decisions, trials_open, Library};

use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// The system OpenBLAS the products may run through (feature `openblas`): its version, build
/// options and the kernels it picked for this CPU; `None` in a build without it.
pub(crate) fn openblas_config() -> Option<String> {
    #[cfg(feature = "openblas")]
    return Some(openblas::config());
    #[cfg(not(feature = "openblas"))]
    None
}

/// A read-only f32 matrix view into a slice: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// The row-major `[rows, cols]` matrix at the start of `data`, rows `ld` apart (`cols <= ld`).
    pub fn new(data: &'a [f32], rows: usize, cols: usize, ld: usize) -> Self {
        assert!(
            cols <= ld,
            "a row of {cols} values does not fit a stride of {ld}"
        );
        let m = Self {
            data,
            rows,
            cols,
            rs: ld,
            cs: 1,
        };
        m.check();
        m
    }

    /// The transposed view `[cols, rows]` (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

    /// Number of rows.
    pub fn n_rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn n_cols(&self) -> usize {
        self.cols
    }

    /// Element `(i, j)`.
    pub fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }

    /// Row `i` as a slice, when the view's rows are contiguous (`None` otherwise).
    pub fn row(&self, i: usize) -> Option<&'a [f32]> {
        (self.cs == 1 && i < self.rows).then(|| &self.data[i * self.rs..][..self.cols])
    }

    /// Rows `start..end` (a view).
    pub fn rows(self, start: usize, end: usize) -> Self {
        assert!(start <= end && end <= self.rows);
        Self {
            data: &self.data[(start * self.rs).min(self.data.len())..],
            rows: end - start,
            ..self
        }
    }

    /// Columns `start..end` (a view).
    pub fn cols(self, start: usize, end: usize) -> Self {
        assert!(start <= end && end <= self.cols);
        Self {
            data: &self.data[(start * self.cs).min(self.data.len())..],
            cols: end - start,
            ..self
        }
    }

    /// Every element lies inside `data`.
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// A raw pointer to a destination matrix that disjoint blocks are written through from
/// several threads.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: each thread writes a block of the destination that no other thread touches.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// The element `offset` past the start (a method, so closures capture the whole `DstPtr`).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst = a · b` (or `dst += a · b` with `accumulate`), where `dst` is row-major `[m, n]` with
/// rows `ld` apart, `a` is `[m, k]` and `b` is `[k, n]`. With `parallel`, the product is cut into
/// one block of columns (or of rows, when `b` is too narrow to give each at least 64 columns)
/// per rayon thread, each computed on one core and sized by how fast that core ran the last
/// products; a product over 4096 columns wide has equal blocks and ends in small ones that the
/// threads take as they free up. These cuts never change a value. A product whose `k` is at
/// least twice `m` and `n` is cut along `k` instead, one equal span a thread
/// ([`product_along_k`]): its values then depend on the number of threads (the order of the
/// sum), never on their speeds, so a run repeats bit for bit on the same machine.
pub(crate) fn matmul(dst: &mut [f32], ld: usize, accumulate: bool, a: Mat, b: Mat, parallel: bool) {
    matmul_using(None, dst, ld, accumulate, a, b, parallel);
}

/// [`matmul`] through `library`, or with `None` the one [`library::run`] picks for the shape.
fn matmul_using(
    library: Option<Library>,
    dst: &mut [f32],
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    parallel: bool,
) {
    let (m, n) = (a.rows, b.cols);
    assert!(n <= ld, "matmul: destination rows too short");
    assert!(
        m == 0 || n == 0 || (m - 1) * ld + n <= dst.len(),
        "matmul: destination too small"
    );
    let dst = DstPtr(dst.as_mut_ptr());
    // SAFETY: `dst` holds the `[m, n]` block (checked above) and is initialised.
    unsafe { product_into(dst, ld, accumulate, a, b, parallel, library) }
}

/// `a · b` as a new row-major `[m, n]` buffer, written once by the product (not zeroed first: a
/// serial pass over the whole result on one core). Threaded as [`matmul`].
pub(crate) fn product(a: Mat, b: Mat, parallel: bool) -> Vec<f32> {
    let len = a.rows * b.cols;
    let mut out = Vec::<f32>::with_capacity(len);
    // SAFETY: the spare capacity holds `len` values; with `accumulate` false every one of them
    // is written before `set_len` (neither library reads its destination then: `gemm` skips it,
    // OpenBLAS with beta 0 writes zeros first).
    unsafe {
        let dst = DstPtr(out.spare_capacity_mut().as_mut_ptr().cast());
        product_into(dst, b.cols, false, a, b, parallel, None);
        out.set_len(len);
    }
    out
}

/// [`matmul`] into `dst`, through `library`, or with `None` the one [`library::run`] picks for
/// the product's shape.
///
/// # Safety
/// `dst` points to `m` rows of `n` values, `ld` apart, that nothing else touches meanwhile;
/// they must be initialised when `accumulate` is set (otherwise they are only written).
unsafe fn product_into(
    dst: DstPtr,
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    parallel: bool,
    library: Option<Library>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions differ");
    assert!(n <= ld, "matmul: destination rows too short");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                // SAFETY: row i's `n` values lie inside the destination (the caller's promise).
                unsafe { std::ptr::write_bytes(dst.at(i * ld), 0, n) };
            }
        }
        return;
    }
    let cores = if parallel {
        rayon::current_num_threads()
    } else {
        1
    };
    if cores > 1 && k >= 2 * m.max(n) {
        // SAFETY: passed on from the caller.
        return unsafe { product_along_k(dst, ld, accumulate, a, b, cores, library) };
    }
    // By columns whenever each block gets at least 64: each core then packs only its part of
    // `b`. Cut by rows, every core packs all of `b`: the output layer's input gradient
    // `[700, 10000] x [10000, 650]` ran at 110 - 136 GFLOP/s a core that way against 147 - 150
    // by columns (docs/BENCHMARKS.md).
    let by_cols = n >= m || n >= 64 * cores;
    let len = if by_cols { n } else { m };
    // Products over 4096 columns wide (the output layer's logits and weight gradient) end in
    // small blocks that the cores take as they free up, so that a core the machine slowed down
    // does not leave the other idle at the end: alternating with equal blocks in one process,
    // the two products took 7% less time on average (5 runs, -17% to +2%, docs/BENCHMARKS.md).
    // Narrower products keep one block a core (there every extra block's packing of `a` cost
    // more than the balance saved), each sized by how fast its core ran the last products
    // ([`SPEEDS`]; with the tails as well, those two products were no faster).
    let with_tail = by_cols && n >= 4096 && cores > 1;
    let weights = if with_tail || cores == 1 {
        vec![1.0; cores]
    } else {
        SPEEDS.get(cores)
    };
    let spans = spans(len, &weights, with_tail);
    // SAFETY: passed on from the caller.
    let blocks =
        |library| unsafe { product_in_blocks(library, dst, ld, accumulate, a, b, by_cols, &spans) };
    match library {
        Some(library) => blocks(library),
        None => library::run(Shape::of(&a, &b), openblas_takes(&a, &b), blocks),
    }
}

/// [`product_into`] for a product whose inner dimension is at least twice as long as either of
/// the others (the input gradients of the output layer, `[700, 10000] x [10000, 650]`, and of
/// `medium`'s LSTM layers, `[700, 2600] x [2600, 650]`): cut along `k` into one equal span a
/// core, each core's product into a buffer of its own (the first core's into `dst`), then the
/// buffers added onto `dst`. Cut by columns, every core packed all of the long `a` (28 MB for the
/// output layer's); cut along `k`, each packs its share of both operands, and the added partial
/// results are small (`[m, n]`). The spans are equal, not sized by the cores' speeds: where `k`
/// is cut changes the values at rounding level, and equal spans keep every run's values the
/// same. In `medium` training, 0.4 ms less a step for the output layer's and 0.2 for the LSTM
/// layers' (docs/BENCHMARKS.md).
///
/// # Safety
/// As [`product_into`].
unsafe fn product_along_k(
    dst: DstPtr,
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    cores: usize,
    library: Option<Library>,
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let spans = equal_spans(k, cores, 16);
    let mut partials: Vec<Vec<f32>> = (1..spans.len())
        .map(|_| Vec::with_capacity(m * n))
        .collect();
    let into: Vec<DstPtr> = partials
        .iter_mut()
        .map(|p| DstPtr(p.spare_capacity_mut().as_mut_ptr().cast()))
        .collect();
    spans
        .par_iter()
        .enumerate()
        .with_max_len(1)
        .for_each(|(i, &(k0, k1))| {
            let (a, b) = (a.cols(k0, k1), b.rows(k0, k1));
            // SAFETY: span 0 goes to `dst` as the caller asked; each other span to its own
            // buffer of `[m, n]` values, only written (`accumulate` off).
            unsafe {
                match i {
                    0 => product_into(dst, ld, accumulate, a, b, false, library),
                    _ => product_into(into[i - 1], n, false, a, b, false, library),
                }
            }
        });
    for p in &mut partials {
        // SAFETY: the product above wrote all `m * n` values.
        unsafe { p.set_len(m * n) };
    }
    (0..m).into_par_iter().with_min_len(16).for_each(|i| {
        // SAFETY: row i of `dst` (`n` values) lies inside it and only this task touches it.
        let row = unsafe { std::slice::from_raw_parts_mut(dst.at(i * ld), n) };
        for p in &partials {
            for (d, &v) in row.iter_mut().zip(&p[i * n..][..n]) {
                *d += v;
            }
        }
    });
}

/// Whether OpenBLAS (in this build) can read the operands `a` and `b`.
fn openblas_takes(a: &Mat, b: &Mat) -> bool {
    #[cfg(feature = "openblas")]
    return a.cblas().is_some() && b.cblas().is_some();
    #[cfg(not(feature = "openblas"))]
    {
        let _ = (a, b);
        false
    }
}

#[cfg(feature = "openblas")]
impl<'a> Mat<'a> {
    /// This view as OpenBLAS reads it (rows or columns contiguous), if it can.
    fn cblas(&self) -> Option<openblas::Operand<'a>> {
        let (transposed, ld) = match (self.cs, self.rs) {
            (1, rs) => (false, rs),
            (cs, 1) => (true, cs),
            _ => return None,
        };
        let operand = openblas::Operand {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            transposed,
            ld,
        };
        operand.readable().then_some(operand)
    }
}

impl Shape {
    /// The shape of the product `a · b`.
    fn of(a: &Mat, b: &Mat) -> Self {
        Self {
            m: a.rows,
            k: a.cols,
            n: b.cols,
            a_t: a.cs != 1,
            b_t: b.cs != 1,
        }
    }
}

/// [`product_into`] with the product cut into `spans` of its columns (`by_cols`) or rows, run
/// by [`run_blocks`], each block through `library`.
///
/// # Safety
/// As [`product_into`]; `spans` lie inside `0..n` (`by_cols`) or `0..m` and do not overlap;
/// `library` takes the operands (OpenBLAS: `Mat::cblas` reads both).
#[allow(clippy::too_many_arguments)]
unsafe fn product_in_blocks(
    library: Library,
    dst: DstPtr,
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    by_cols: bool,
    spans: &[(usize, usize)],
) {
    let (m, n) = (a.rows, b.cols);
    let run = |(start, end): (usize, usize)| {
        let (a, b, offset, rows, cols) = if by_cols {
            (a, b.cols(start, end), start, m, end - start)
        } else {
            (a.rows(start, end), b, start * ld, end - start, n)
        };
        let dst = dst.at(offset);
        // SAFETY: `a` and `b` were bounds-checked; the block `rows x cols` at `offset` lies
        // inside `dst` (the caller's promise) and no other block overlaps it.
        match library {
            Library::Gemm => unsafe {
                gemm_into(
                    dst,
                    ld,
                    accumulate,
                    a,
                    b,
                    rows,
                    cols,
                    ::gemm::Parallelism::None,
                )
            },
            #[cfg(feature = "openblas")]
            Library::OpenBlas => {
                let (Some(a), Some(b)) = (a.cblas(), b.cblas()) else {
                    panic!("OpenBLAS was handed operands it cannot read (`openblas_takes`)");
                };
                // SAFETY: as for `gemm_into`; both operands are readable (checked by `cblas`).
                unsafe { openblas::sgemm_into(dst, ld, accumulate, a, b) }
            }
        }
    };
    run_blocks(spans, run);
}

/// Runs `run` on every one of `spans` once: a single block on this thread, more on rayon's
/// threads, where thread `i` first takes `spans[i]` (one block a thread, see [`spans`]), then
/// any block nobody has taken yet (the tail blocks in order, then other threads' blocks not yet
/// started). How fast each thread ran its blocks feeds [`SPEEDS`].
fn run_blocks(spans: &[(usize, usize)], run: impl Fn((usize, usize)) + Sync) {
    if let [only] = spans[..] {
        run(only);
        return;
    }
    let cores = rayon::current_num_threads();
    let owned = cores.min(spans.len());
    let taken: Vec<AtomicBool> = spans.iter().map(|_| AtomicBool::new(false)).collect();
    // Per thread: columns (or rows) done and nanoseconds taken.
    let done: Vec<(AtomicUsize, AtomicU64)> = (0..owned)
        .map(|_| (AtomicUsize::new(0), AtomicU64::new(0)))
        .collect();
    (0..owned).into_par_iter().with_max_len(1).for_each(|_| {
        let me = rayon::current_thread_index().filter(|&i| i < owned);
        let order = me.into_iter().chain(owned..spans.len()).chain(0..owned);
        for i in order {
            if taken[i].swap(true, Ordering::AcqRel) {
                continue;
            }
            let start = Instant::now();
            run(spans[i]);
            if let Some(me) = me {
                done[me]
                    .0
                    .fetch_add(spans[i].1 - spans[i].0, Ordering::Relaxed);
                let nanos = start.elapsed().as_nanos() as u64;
                done[me].1.fetch_add(nanos, Ordering::Relaxed);
            }
        }
    });
    if owned == cores {
        let rates: Vec<f64> = done
            .iter()
            .map(|(len, nanos)| {
                let nanos = nanos.load(Ordering::Relaxed);
                let len = len.load(Ordering::Relaxed);
                if nanos == 0 || len == 0 {
                    0.0
                } else {
                    len as f64 / nanos as f64
                }
            })
            .collect();
        SPEEDS.update(&rates);
    }
}

/// The most rayon threads whose speeds [`SPEEDS`] follows; with more, blocks are equal.
const MAX_TRACKED: usize = 64;

/// Each of rayon's threads' speed relative to the others' (1 = their mean), smoothed over the
/// last products it ran a block of: the machine this runs on slows now one core, now the other,
/// by 15 - 50% for tens of products at a time (a thread's speed ratio from one product to the
/// next correlated at 0.72 over 230 `medium` products), while every product's blocks were
/// equal, so one core idled 8% of the products' time waiting for the other
/// (docs/BENCHMARKS.md). Where a product is cut changes none of its values: each element's
/// sum runs over `k` in the same order whichever block it falls in.
static SPEEDS: Speeds = Speeds([const { AtomicU32::new(0) }; MAX_TRACKED]);

/// [`SPEEDS`]: f32 bits, 0 for "never measured" (taken as 1).
struct Speeds([AtomicU32; MAX_TRACKED]);

impl Speeds {
    /// How much of a product each of `cores` threads should get: relative speeds, all 1 when
    /// nothing was measured or `cores` is more than [`MAX_TRACKED`].
    fn get(&self, cores: usize) -> Vec<f64> {
        if cores > MAX_TRACKED {
            return vec![1.0; cores];
        }
        self.0[..cores]
            .iter()
            .map(|s| match f32::from_bits(s.load(Ordering::Relaxed)) {
                s if s > 0.0 => f64::from(s),
                _ => 1.0,
            })
            .collect()
    }

    /// Folds one product's rates (work per nanosecond, thread by thread; 0 when a thread ran
    /// nothing of its own, which leaves every speed as it was) into the speeds: half the last
    /// speed, half this product's rate over the threads' mean rate, kept within 1/4 - 4.
    fn update(&self, rates: &[f64]) {
        if rates.len() > MAX_TRACKED || rates.iter().any(|&r| r <= 0.0) {
            return;
        }
        let mean = rates.iter().sum::<f64>() / rates.len() as f64;
        let old = self.get(rates.len());
        for ((slot, rate), old) in self.0.iter().zip(rates).zip(old) {
            let new = (0.5 * old + 0.5 * rate / mean).clamp(0.25, 4.0);
            slot.store((new as f32).to_bits(), Ordering::Relaxed);
        }
    }
}

/// `0..len` cut into blocks for `weights.len()` cores, each a multiple of 16 (one AVX-512
/// vector) long but the last: first one block a core, core `i`'s in proportion to `weights[i]`,
/// covering all of `len` or, `with_tail`, about 85% of it; then the rest in blocks of about
/// 15% / cores. Fewer blocks than cores when `len` is too short to give each at least 16.
fn spans(len: usize, weights: &[f64], with_tail: bool) -> Vec<(usize, usize)> {
    let cores = weights.len();
    let round = |x: f64| ((x / 16.0).round() as usize * 16).max(16);
    let share = if with_tail { 0.85 } else { 1.0 };
    let total: f64 = weights.iter().sum();
    let mut spans = Vec::new();
    let mut start = 0;
    for (i, w) in weights.iter().enumerate() {
        if start >= len {
            break;
        }
        let size = if i + 1 == cores && !with_tail {
            len - start
        } else {
            round(len as f64 * share * w / total)
        };
        spans.push((start, (start + size).min(len)));
        start += size;
    }
    let small = round(len.saturating_sub(start) as f64 / cores as f64);
    while start < len {
        spans.push((start, (start + small).min(len)));
        start += small;
    }
    spans
}

/// `0..len` cut into `parts` equal blocks (fewer when rounding leaves nothing for the last),
/// each a multiple of `multiple` long but the last.
pub(crate) fn equal_spans(len: usize, parts: usize, multiple: usize) -> Vec<(usize, usize)> {
    let size = len.div_ceil(parts.max(1)).div_ceil(multiple).max(1) * multiple;
    (0..len)
        .step_by(size)
        .map(|start| (start, (start + size).min(len)))
        .collect()
}

/// `gemm`'s product of the views `a` `[rows, k]` and `b` `[k, cols]` into the row-major `dst`
/// (rows `ld` apart), added to it with `accumulate`, threaded as `parallelism` says.
///
/// # Safety
/// `a` and `b` lie inside their slices (their `check`), and `dst` holds `rows` rows of `cols`
/// values, `ld` apart, that nothing else touches meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
    rows: usize,
    cols: usize,
    parallelism: ::gemm::Parallelism,
) {
    unsafe {
        ::gemm::gemm(
            rows,
            cols,
            a.cols,
            dst,
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// A product `c = a · b` of row-major `[n, n]` matrices on every core.
pub(crate) type SquareProduct = fn(&mut [f32], &[f32], &[f32], usize);

/// The paths a `[n, n] x [n, n]` f32 product can take in this build, by name, to measure the
/// machine's ceiling (`lstm-lm bench`): the fused ops' own (one block per core) through each
/// library built in, and `gemm`'s own threading.
pub(crate) fn ceiling_paths() -> Vec<(&'static str, SquareProduct)> {
    let mut paths: Vec<(&'static str, SquareProduct)> =
        vec![("gemm, one block per core", |c, a, b, n| {
            square_in_blocks(Library::Gemm, c, a, b, n)
        })];
    #[cfg(feature = "openblas")]
    paths.push(("OpenBLAS, one block per core", |c, a, b, n| {
        square_in_blocks(Library::OpenBlas, c, a, b, n)
    }));
    paths.push(("gemm, its own threads", |c, a, b, n| {
        let (a, b) = (Mat::new(a, n, n, n), Mat::new(b, n, n, n));
        assert!(c.len() >= n * n, "the product needs n * n values");
        // SAFETY: `Mat::new` checked `a` and `b`; `c` holds `n` rows of `n`.
        unsafe {
            gemm_into(
                c.as_mut_ptr(),
                n,
                false,
                a,
                b,
                n,
                n,
                ::gemm::Parallelism::Rayon(0),
            )
        };
    }));
    paths
}

/// `c = a · b` for row-major `[n, n]` matrices, one block per core through `library`.
fn square_in_blocks(library: Library, c: &mut [f32], a: &[f32], b: &[f32], n: usize) {
    let (a, b) = (Mat::new(a, n, n, n), Mat::new(b, n, n, n));
    matmul_using(Some(library), c, n, false, a, b, true);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a` `[m, k]` times `b` `[k, n]`, both row-major, by the definition.
    pub(super) fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn the_bench_names_the_openblas_it_runs_and_its_kernels_only_when_built_in() {
        let config = openblas_config();
        #[cfg(feature = "openblas")]
        {
            let config = config.expect("a build with the feature has OpenBLAS");
            // `OpenBLAS <version> <options> <the kernels picked for this CPU> MAX_THREADS=...`.
            assert!(config.starts_with("OpenBLAS 0."), "{config}");
            assert!(config.split_whitespace().count() >= 3, "{config}");
        }
        #[cfg(not(feature = "openblas"))]
        assert_eq!(config, None);
    }

    /// `n` test values in `[-2, 2)`, different for each `seed`.
    pub(super) fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 - 500.0) / 250.0)
            .collect()
    }

    /// The blocks cover `0..len` once, in order, each a multiple of 16 but the last; with a
    /// tail, every core's first block is the biggest, and the tail is about 15% of `len`.
    #[test]
    fn spans_cover_the_range_once_big_blocks_first() {
        for (len, cores, with_tail) in [
            (10_000, 2, true),
            (4109, 2, true),
            (650, 2, false),
            (10, 4, false),
            (5000, 3, true),
        ] {
            let spans = spans(len, &vec![1.0; cores], with_tail);
            assert_eq!(spans.first().map(|s| s.0), Some(0));
            assert_eq!(spans.last().map(|s| s.1), Some(len));
            assert!(spans
                .windows(2)
                .all(|w| w[0].1 == w[1].0 && (w[0].1 - w[0].0) % 16 == 0));
            if with_tail {
                let big = spans[0].1 - spans[0].0;
                assert!(spans[..cores].iter().all(|s| s.1 - s.0 == big));
                assert!(spans[cores..].iter().all(|s| s.1 - s.0 < big));
                let tail = len - spans[cores - 1].1;
                assert!(
                    tail * 100 >= 10 * len && tail * 100 <= 16 * len,
                    "{len}: tail {tail}"
                );
            } else {
                assert!(spans.len() <= cores);
            }
        }
    }

    /// Each core's block follows its speed: a core three times as fast as the other gets three
    /// quarters of the product (of the 85% before the tail, with one).
    #[test]
    fn spans_follow_the_cores_speeds() {
        assert_eq!(
            spans(6400, &[3.0, 1.0], false),
            vec![(0, 4800), (4800, 6400)]
        );
        let tailed = spans(6400, &[3.0, 1.0], true);
        assert_eq!(tailed[..2], [(0, 4080), (4080, 5440)]);
        assert_eq!(tailed.last().map(|s| s.1), Some(6400));
        // Too short for every core: fewer blocks, still covering everything.
        assert_eq!(spans(20, &[1.0, 1.0, 1.0], false), vec![(0, 16), (16, 20)]);
    }

    /// A thread's speed moves halfway from where it was towards its rate in the last product
    /// over the threads' mean rate; a product where a thread ran nothing of its own changes
    /// nothing.
    #[test]
    fn speeds_move_halfway_towards_each_products_rates() {
        let speeds = Speeds([const { AtomicU32::new(0) }; MAX_TRACKED]);
        assert_eq!(speeds.get(2), vec![1.0, 1.0]);
        speeds.update(&[2.0, 1.0]);
        let got = speeds.get(2);
        assert!((got[0] - 7.0 / 6.0).abs() < 1e-6 && (got[1] - 5.0 / 6.0).abs() < 1e-6);
        speeds.update(&[3.0, 0.0]);
        assert_eq!(speeds.get(2), got);
        assert_eq!(speeds.get(MAX_TRACKED + 1), vec![1.0; MAX_TRACKED + 1]);
    }

    /// However a product is cut (equal blocks, skewed blocks, tails, more blocks than threads,
    /// by rows or columns), every block runs once and every value comes out bit for bit the same:
    /// the speeds that move the cuts never move the results.
    #[test]
    fn a_products_values_do_not_depend_on_where_it_is_cut() {
        let (m, k, n) = (150, 650, 700);
        let (a, b) = (values(m * k, 3), values(k * n, 4));
        let (a, b) = (Mat::new(&a, m, k, k), Mat::new(&b, k, n, n));
        let cut = |by_cols: bool, spans: &[(usize, usize)]| {
            let mut c = vec![1.0f32; m * n];
            // SAFETY: `c` holds `[m, n]`; the spans cover `0..n` or `0..m` without overlap.
            unsafe {
                product_in_blocks(
                    Library::Gemm,
                    DstPtr(c.as_mut_ptr()),
                    n,
                    true,
                    a,
                    b,
                    by_cols,
                    spans,
                )
            };
            c
        };
        let whole = cut(true, &[(0, n)]);
        for spans in [
            spans(n, &[1.0, 1.0], false),
            spans(n, &[3.7, 0.4], false),
            spans(n, &[0.6, 1.4], true),
            (0..n).step_by(48).map(|s| (s, (s + 48).min(n))).collect(),
        ] {
            assert_eq!(cut(true, &spans), whole, "by columns, {spans:?}");
        }
        assert_eq!(cut(false, &spans(m, &[2.5, 1.0], false)), whole, "by rows");
    }

    /// Every library of this build (`gemm`, and OpenBLAS with the feature), on one core or cut
    /// by columns or rows, with operands read as stored or transposed, into a fresh or a strided
    /// destination, gives the naive product's values.
    #[test]
    fn blocks_by_columns_and_rows_and_transposed_views_match_the_naive_product() {
        // (9, 7, 4109): wider than 4096 columns, two blocks a core; (30, 301, 70): cut along
        // `k` (parallel).
        for &(m, k, n) in &[
            (3, 5, 7),
            (70, 33, 301),
            (301, 17, 40),
            (1, 1, 1),
            (9, 7, 4109),
            (30, 301, 70),
        ] {
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let want = naive(&a, &b, m, k, n);
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            for (&library, parallel) in Library::ALL
                .iter()
                .zip([false, true])
                .chain(Library::ALL.iter().zip([true, false]))
            {
                let name = library.name();
                let mut c = vec![0.0f32; m * n];
                let (am, bm) = (Mat::new(&a, m, k, k), Mat::new(&b, k, n, n));
                matmul_using(Some(library), &mut c, n, false, am, bm, parallel);
                let err = c
                    .iter()
                    .zip(&want)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f32::max);
                assert!(err < 1e-3, "{m}x{k}x{n} {name} parallel {parallel}: {err}");
                // a given transposed ([k, m] stored), b given transposed ([n, k] stored), and
                // accumulation into a strided destination.
                let ld = n + 3;
                let mut c = vec![1.0f32; m * ld];
                let (am, bm) = (Mat::new(&at, k, m, m).t(), Mat::new(&bt, n, k, k).t());
                matmul_using(Some(library), &mut c, ld, true, am, bm, parallel);
                for i in 0..m {
                    for j in 0..n {
                        let got = c[i * ld + j] - 1.0;
                        assert!((got - want[i * n + j]).abs() < 1e-3, "{name} transposed");
                    }
                    assert!(
                        c[i * ld + n..(i + 1) * ld].iter().all(|&x| x == 1.0),
                        "{name}: padding kept"
                    );
                }
            }
            // The library each shape picks: into a new buffer that nothing zeroed, the same
            // values as into a zeroed one, bit for bit (both are below the measured size, so
            // both run through `gemm`).
            for parallel in [false, true] {
                let (am, bm) = (Mat::new(&a, m, k, k), Mat::new(&b, k, n, n));
                let mut c = vec![0.0f32; m * n];
                matmul(&mut c, n, false, am, bm, parallel);
                assert_eq!(
                    product(am, bm, parallel),
                    c,
                    "{m}x{k}x{n} {parallel}: product"
                );
            }
        }
        // An empty inner dimension: zeros.
        assert_eq!(
            product(Mat::new(&[], 2, 0, 0), Mat::new(&[], 0, 3, 3), true),
            vec![0.0; 6]
        );
    }
}
