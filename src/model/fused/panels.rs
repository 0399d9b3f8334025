//! The LSTM recurrence's per-step product `[batch, k] x [k, n]` with the weight packed once a
//! call.
//!
//! Each step of the recurrence multiplies a few rows (the batch, 20 in the presets) by the
//! whole recurrent weight (`W_h` forward, its transpose backward). `gemm` packs its right-hand
//! side at every call, and its microkernels are shaped for many rows; here the weight is packed
//! once, before the first step, into panels one vector wide (`[k, 16]` each with AVX-512, `[k,
//! 8]` with AVX2 + FMA; zero-padded), and a kernel keeps a block of rows x two panels of the
//! result in registers while it streams the panels: at batch 20 the weight no longer fits a
//! core's L2, so each step streams it from L3 (the AVX-512 kernel prefetches it ahead of use;
//! on Zen 3 the hardware prefetchers did better alone), all but the part that the last step,
//! sweeping the other way, left in L2 ([`Sweep`]). Measured (docs/BENCHMARKS.md): `[20,
//! 650] x [650, 1300]` at ~140 GFLOP/s a core against ~90 for `gemm` on a Xeon (AVX-512,
//! 2026-12-01); on a Zen 3 EPYC (AVX2) 81 - 92 against 36 - 72 (2026-12-02 11:00).
//!
//! Without either (detected at run time) the packed weight is a row-major copy and the product
//! runs through [`matmul`]. `LSTM_LM_RECURRENT_KERNEL=avx512|avx2|gemm` picks another kind the
//! CPU runs (docs/DEVELOPING.md, "Run-time overrides").

use std::mem::MaybeUninit;

use super::matmul::{matmul, Mat};

/// How a weight is laid out and multiplied, by what the CPU has (detected at run time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isa {
    /// Panels of 16 columns, AVX-512F kernels.
    Avx512,
    /// Panels of 8 columns, AVX2 + FMA kernels.
    Avx2,
    /// Row-major, multiplied by [`matmul`].
    Other,
}

impl Isa {
    /// The kernels every weight is packed for: the widest this CPU runs, unless
    /// `LSTM_LM_RECURRENT_KERNEL=avx512|avx2|gemm` names another it runs (read once a process;
    /// a value it cannot honour prints a warning and leaves the widest).
    fn chosen() -> Self {
        static CHOSEN: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let value = std::env::var("LSTM_LM_RECURRENT_KERNEL").ok();
            Isa::from_override(value.as_deref()).unwrap_or_else(|why| {
                let widest = Isa::widest();
                eprintln!("warning: {why}; the recurrence uses {}", widest.name());
                widest
            })
        })
    }

    /// What `LSTM_LM_RECURRENT_KERNEL` asks for (unset or empty: the widest), or why it cannot
    /// be had.
    fn from_override(value: Option<&str>) -> Result<Self, String> {
        let wanted = match value.map(str::trim) {
            None | Some("") => return Ok(Isa::widest()),
            Some("avx512") => Isa::Avx512,
            Some("avx2") => Isa::Avx2,
            Some("gemm") => Isa::Other,
            Some(other) => {
                return Err(format!(
                    "LSTM_LM_RECURRENT_KERNEL={other:?} is none of avx512, avx2, gemm"
                ))
            }
        };
        if wanted.runs_here() {
            Ok(wanted)
        } else {
            Err(format!(
                "LSTM_LM_RECURRENT_KERNEL={}: this CPU lacks its instructions",
                wanted.name()
            ))
        }
    }

    /// The widest kind this CPU runs.
    fn widest() -> Self {
        [Isa::Avx512, Isa::Avx2]
            .into_iter()
            .find(|isa| isa.runs_here())
            .unwrap_or(Isa::Other)
    }

    /// Whether this CPU has the instructions of this kind's kernels.
    fn runs_here(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Isa::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
                Isa::Other => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Other
        }
    }

    /// The name `LSTM_LM_RECURRENT_KERNEL` gives this kind.
    fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Other => "gemm",
        }
    }

    /// Columns a panel holds (one vector of f32), or `None` for the row-major layout.
    fn lanes(self) -> Option<usize> {
        match self {
            Isa::Avx512 => Some(16),
            Isa::Avx2 => Some(8),
            Isa::Other => None,
        }
    }
}

/// A `[k, n]` weight packed for [`PackedWeight::mul`].
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    /// With panels: `[panels, k, lanes]`, zero-padded past column `n`. Otherwise `[k, n]`
    /// row-major.
    data: Vec<f32>,
    isa: Isa,
}

impl PackedWeight {
    /// Packs the matrix whose columns are those of `parts` side by side (every part has the
    /// same number of rows `k`, and contiguous rows or contiguous columns): e.g. one block of
    /// units of each of the four gates of `W_h`, or a block of columns of its transpose.
    pub fn new(parts: &[Mat]) -> Self {
        let k = parts.first().map_or(0, |m| m.n_rows());
        assert!(
            parts.iter().all(|m| m.n_rows() == k),
            "PackedWeight: parts of different heights"
        );
        assert!(
            parts
                .iter()
                .all(|m| k * m.n_cols() == 0 || m.row(0).is_some() || m.t().row(0).is_some()),
            "PackedWeight: a part with neither contiguous rows nor contiguous columns"
        );
        let n: usize = parts.iter().map(|m| m.n_cols()).sum();
        Self::with_isa(parts, k, n, Isa::chosen())
    }

    /// [`PackedWeight::new`] for the kernels of `isa` (which the CPU must run).
    fn with_isa(parts: &[Mat], k: usize, n: usize, isa: Isa) -> Self {
        let data = if let Some(lanes) = isa.lanes() {
            pack_panels(parts, k, n, lanes)
        } else {
            let mut data = Vec::with_capacity(k * n);
            for i in 0..k {
                for m in parts {
                    data.extend((0..m.n_cols()).map(|j| m.at(i, j)));
                }
            }
            data
        };
        Self { k, n, data, isa }
    }

    /// `dst = a · W` (or `dst += a · W` with `accumulate`) on this core, where `dst` is
    /// row-major `[m, n]` with rows `ld` apart and `a` `[m, k]` has contiguous rows; the panels
    /// are visited in the order `sweep` says (the row-major layout ignores it).
    pub fn mul(&self, dst: &mut [f32], ld: usize, accumulate: bool, a: Mat, sweep: Sweep) {
        let (m, k, n) = (a.n_rows(), self.k, self.n);
        assert_eq!(a.n_cols(), k, "PackedWeight::mul: inner dimensions differ");
        assert!(n <= ld, "PackedWeight::mul: destination rows too short");
        if m == 0 || n == 0 {
            return;
        }
        assert!(
            (m - 1) * ld + n <= dst.len(),
            "PackedWeight::mul: destination too small"
        );
        // The panels' width is the one they were packed with (`with_isa`).
        let Some(lanes) = self.isa.lanes().filter(|_| k > 0) else {
            return matmul(dst, ld, accumulate, a, Mat::new(&self.data, k, n, n), false);
        };
        let rows: Vec<&[f32]> = (0..m)
            .map(|i| {
                a.row(i)
                    .expect("PackedWeight::mul: rows of `a` must be contiguous")
            })
            .collect();
        let product = Product {
            rows: &rows,
            panels: &self.data,
            k,
            n,
            c: dst.as_mut_ptr(),
            ld,
            accumulate,
            sweep,
        };
        // SAFETY: `isa` is one the CPU runs (`Isa::chosen`, or the tests' choice among those);
        // the rows, the panels and the destination were bounds-checked above.
        #[allow(unused_unsafe)]
        unsafe {
            match self.isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512 => product.run(lanes, avx512::MAX_ROWS, avx512::dispatch),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2 => product.run(lanes, avx2::MAX_ROWS, avx2::dispatch),
                isa => unreachable!("panels of {lanes}: no kernel for {isa:?}"),
            }
        }
    }
}

/// `rows` `[m, k]` times the panels of a `[k, n]` weight into `c` (`[m, n]`, rows `ld` apart),
/// or added onto it with `accumulate`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Product<'a> {
    rows: &'a [&'a [f32]],
    panels: &'a [f32],
    k: usize,
    n: usize,
    c: *mut f32,
    ld: usize,
    accumulate: bool,
    sweep: Sweep,
}

/// The order in which a product visits its weight's panels.
///
/// The recurrence multiplies by the same weight at every step, and a core's part of `medium`'s
/// `W_h` (3.4 MB) does not fit its L2 (2 MiB on the Xeon of docs/BENCHMARKS.md): swept the same
/// way every step, each panel has been evicted by the time it comes round again, and the whole
/// part streams from L3. Sweeping back on alternate steps starts each step on the panels the last
/// one ended on, still in L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// First panel to last.
    Forward,
    /// Last panel to first.
    Backward,
}

impl Sweep {
    /// The sweep of a recurrence's step `t`: forward on even steps, back on odd ones.
    pub fn of_step(t: usize) -> Self {
        if t.is_multiple_of(2) {
            Sweep::Forward
        } else {
            Sweep::Backward
        }
    }
}

/// One kernel call's block: `rows` x (up to two panels from `b`) into `c`; the tile's last
/// panel holds `tail` valid columns (the panel width but in the weight's last panel).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile<'a> {
    rows: &'a [&'a [f32]],
    b: *const f32,
    k: usize,
    c: *mut f32,
    ld: usize,
    tail: usize,
    accumulate: bool,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Product<'_> {
    /// Runs the product as tiles of pairs of panels (then the odd last one) by blocks of at most
    /// `max_rows` rows, each through `kernel(tile, panels in it)`, panels `lanes` wide.
    ///
    /// # Safety
    /// `kernel` runs on this CPU; every row holds `k` values, `panels` holds `ceil(n / lanes)`
    /// panels of `[k, lanes]` and `c` holds `rows.len()` rows of `n` values `ld` apart.
    unsafe fn run(&self, lanes: usize, max_rows: usize, kernel: unsafe fn(&Tile, usize)) {
        let (k, n, m) = (self.k, self.n, self.rows.len());
        let count = n.div_ceil(lanes);
        let blocks = m.div_ceil(max_rows);
        let block = m.div_ceil(blocks);
        let pairs = count.div_ceil(2);
        for q in 0..pairs {
            let q = match self.sweep {
                Sweep::Forward => q,
                Sweep::Backward => pairs - 1 - q,
            };
            let p = 2 * q;
            let np = if p + 2 <= count { 2 } else { 1 };
            let tail = if p + np == count {
                n - (count - 1) * lanes
            } else {
                lanes
            };
            for r0 in (0..m).step_by(block) {
                let tile = Tile {
                    rows: &self.rows[r0..(r0 + block).min(m)],
                    // SAFETY (both): inside the panels and the destination (the caller's
                    // promise).
                    b: unsafe { self.panels.as_ptr().add(p * k * lanes) },
                    k,
                    c: unsafe { self.c.add(r0 * self.ld + p * lanes) },
                    ld: self.ld,
                    tail,
                    accumulate: self.accumulate,
                };
                // SAFETY: the caller's promise; the tile lies inside the product.
                unsafe { kernel(&tile, np) };
            }
        }
    }
}

/// Rows of a part with contiguous rows that [`pack_panels`] copies together, panel by panel.
const ROWS_AT_ONCE: usize = 16;

/// The columns of `parts` side by side (`[k, n]` in all) as `ceil(n / lanes)` panels `[k,
/// lanes]`, zero-padded past column `n`. Each part is cut into runs of up to `lanes` columns
/// that fill one panel's lanes; a part whose rows are contiguous (`W_h`'s gate blocks) is read
/// [`ROWS_AT_ONCE`] rows at a time, and each panel gets those rows' runs one after the other (a
/// kilobyte in one place, from rows still in L1), one whose columns are contiguous (a transposed
/// view) a run at a time by [`transpose_run`]. Row by row (each row's runs to their panels), a
/// `medium` forward call's packing took 1.1 ms on Zen 3 against 1.5 writing one panel after the
/// other; 16 rows at a time took it from 0.78 - 0.87 to 0.58 - 0.63 ms on the 2 MiB-L2 Xeon
/// (docs/BENCHMARKS.md).
fn pack_panels(parts: &[Mat], k: usize, n: usize, lanes: usize) -> Vec<f32> {
    let len = n.div_ceil(lanes) * k * lanes;
    // Written once below, not zeroed first: only the last panel's padding lanes are zeros.
    let mut data: Vec<f32> = Vec::with_capacity(len);
    let out = &mut data.spare_capacity_mut()[..len];
    if !n.is_multiple_of(lanes) {
        let last = (n / lanes) * k * lanes;
        for row in out[last..].chunks_exact_mut(lanes) {
            row[n % lanes..].fill(MaybeUninit::new(0.0));
        }
    }
    let mut first = 0;
    for m in parts {
        // (first column in `m`, columns, lane, start of the panel in `data`)
        let mut runs = Vec::new();
        let mut j = 0;
        while j < m.n_cols() {
            let (c, lane) = (first + j, (first + j) % lanes);
            let run = (lanes - lane).min(m.n_cols() - j);
            runs.push((j, run, lane, (c / lanes) * k * lanes));
            j += run;
        }
        if m.row(0).is_some() {
            for i0 in (0..k).step_by(ROWS_AT_ONCE) {
                for &(j, run, lane, at) in &runs {
                    for i in i0..(i0 + ROWS_AT_ONCE).min(k) {
                        let row = m.row(i).expect("contiguous rows");
                        write(&mut out[at + i * lanes + lane..][..run], &row[j..j + run]);
                    }
                }
            }
        } else {
            for &(j, run, lane, at) in &runs {
                let panel = &mut out[at..][..k * lanes];
                transpose_run(m.cols(j, j + run), panel, lanes, lane);
            }
        }
        first += m.n_cols();
    }
    // SAFETY: the runs of all parts cover every lane below column `n` of every panel row, and
    // the padding lanes were filled above: all `len` values are written.
    unsafe { data.set_len(len) };
    data
}

/// Writes `run` (`[k, r]` with contiguous columns, `r <= lanes - lane`) into lanes from
/// `lane` of `panel` (`[k, lanes]`): by 8 x 8 blocks transposed in AVX registers where the CPU
/// has AVX, the rest value by value. (Packing `medium`'s backward `W_hᵀ` block, `[2600, 336]`,
/// took 1.0 ms against 1.9 value by value on Zen 3, in training: docs/BENCHMARKS.md.)
fn transpose_run(run: Mat, panel: &mut [MaybeUninit<f32>], lanes: usize, lane: usize) {
    let (k, r) = (run.n_rows(), run.n_cols());
    let columns: Vec<&[f32]> = (0..r)
        .map(|q| run.t().row(q).expect("contiguous columns"))
        .collect();
    // Rows done by the AVX blocks (only x86-64 has them).
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_mut))]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        for q0 in (0..r - r % 8).step_by(8) {
            let block: &[&[f32]; 8] = columns[q0..q0 + 8].try_into().expect("8 columns");
            for i0 in (0..k - k % 8).step_by(8) {
                let dst = &mut panel[i0 * lanes + lane + q0..][..7 * lanes + 8];
                // SAFETY: the CPU has AVX; rows `i0..i0 + 8` of the 8 columns and lanes
                // `lane + q0..lane + q0 + 8` of panel rows `i0..i0 + 8` are in bounds.
                unsafe { avx::transpose_8x8(block, i0, dst, lanes) };
            }
        }
        done = k - k % 8;
    }
    for (i, dst) in panel.chunks_exact_mut(lanes).enumerate() {
        let q0 = if i < done { r - r % 8 } else { 0 };
        for q in q0..r {
            dst[lane + q].write(columns[q][i]);
        }
    }
}

/// `dst = src`: a whole panel row (16 or 8 values) as one fixed-size copy, which compiles to
/// vector moves instead of a call to `memcpy` (one per 64 bytes: what packing `W_h` spent its
/// time on); shorter runs value by value.
#[inline]
fn write(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    if let (16, Some(dst), Some(src)) = (
        dst.len(),
        dst.first_chunk_mut::<16>(),
        src.first_chunk::<16>(),
    ) {
        *dst = src.map(MaybeUninit::new);
    } else if let (8, Some(dst), Some(src)) = (
        dst.len(),
        dst.first_chunk_mut::<8>(),
        src.first_chunk::<8>(),
    ) {
        *dst = src.map(MaybeUninit::new);
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(s);
        }
    }
}

/// `kernel::<rows, panels>(tile)` for the tile's row count (one of `$mr`) and `$np` panels.
#[cfg(target_arch = "x86_64")]
macro_rules! dispatch {
    ($kernel:ident, $t:expr, $np:expr; $($mr:literal)*) => {
        match ($np, $t.rows.len()) {
            $((2, $mr) => $kernel::<$mr, 2>($t),)*
            $((1, $mr) => $kernel::<$mr, 1>($t),)*
            (np, rows) => unreachable!("a tile of {rows} rows x {np} panels"),
        }
    };
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// Rows `i0..i0 + 8` of the 8 `columns` into the first 8 lanes of 8 destination rows
    /// `ld` apart (`dst[ii * ld + q] = columns[q][i0 + ii]`).
    ///
    /// # Safety
    /// AVX; every column holds `i0 + 8` values and `dst` holds `7 * ld + 8`.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_8x8(
        columns: &[&[f32]; 8],
        i0: usize,
        dst: &mut [MaybeUninit<f32>],
        ld: usize,
    ) {
        let r = columns.map(|c| _mm256_loadu_ps(c[i0..i0 + 8].as_ptr()));
        // Pairs of columns interleaved, then quadruples, then the 128-bit halves swapped.
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let s = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        assert!(dst.len() >= 7 * ld + 8);
        let out = dst.as_mut_ptr().cast::<f32>();
        for ii in 0..4 {
            let lo = _mm256_permute2f128_ps::<0x20>(s[ii], s[ii + 4]);
            let hi = _mm256_permute2f128_ps::<0x31>(s[ii], s[ii + 4]);
            _mm256_storeu_ps(out.add(ii * ld), lo);
            _mm256_storeu_ps(out.add((ii + 4) * ld), hi);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// Columns a panel holds: one AVX-512 vector of f32.
    const LANES: usize = 16;
    /// Most rows a kernel call keeps in registers: 12 rows x 2 panels are 24 of the 32 vector
    /// registers.
    pub(super) const MAX_ROWS: usize = 12;
    /// Panel rows (of 16 floats, one cache line) fetched ahead of use.
    const PREFETCH: usize = 16;

    /// Runs the kernel for the tile's rows (`MAX_ROWS` at most) and `np` panels.
    ///
    /// # Safety
    /// AVX-512F; the tile lies inside its product's rows, panels and destination.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn dispatch(t: &Tile, np: usize) {
        dispatch!(kernel, t, np; 1 2 3 4 5 6 7 8 9 10 11 12)
    }

    /// `MR` rows x `NP` panels, accumulated in registers over all of `k`.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn kernel<const MR: usize, const NP: usize>(t: &Tile) {
        let k = t.k;
        let mut a = [std::ptr::null::<f32>(); MR];
        for (r, p) in a.iter_mut().enumerate() {
            *p = t.rows[r].as_ptr();
        }
        let mut acc = [[_mm512_setzero_ps(); NP]; MR];
        for i in 0..k {
            let mut b = [_mm512_setzero_ps(); NP];
            for (q, v) in b.iter_mut().enumerate() {
                let at = t.b.add((q * k + i) * LANES);
                *v = _mm512_loadu_ps(at);
                _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH * LANES) as *const i8);
            }
            for r in 0..MR {
                let x = _mm512_set1_ps(*a[r].add(i));
                for q in 0..NP {
                    acc[r][q] = _mm512_fmadd_ps(x, b[q], acc[r][q]);
                }
            }
        }
        let last_mask: __mmask16 = ((1u32 << t.tail) - 1) as u16;
        for (r, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                let c = t.c.add(r * t.ld + q * LANES);
                let mask = if q + 1 == NP { last_mask } else { 0xFFFF };
                let v = if t.accumulate {
                    _mm512_add_ps(_mm512_maskz_loadu_ps(mask, c), v)
                } else {
                    v
                };
                _mm512_mask_storeu_ps(c, mask, v);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Tile;

    /// Columns a panel holds: one AVX2 vector of f32.
    const LANES: usize = 8;
    /// Most rows a kernel call keeps in registers: 6 rows x 2 panels are 12 of the 16 vector
    /// registers, beside the two panels' values and the broadcast row value.
    pub(super) const MAX_ROWS: usize = 6;

    /// Runs the kernel for the tile's rows (`MAX_ROWS` at most) and `np` panels.
    ///
    /// # Safety
    /// AVX2 and FMA; the tile lies inside its product's rows, panels and destination.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dispatch(t: &Tile, np: usize) {
        dispatch!(kernel, t, np; 1 2 3 4 5 6)
    }

    /// `MR` rows x `NP` panels, accumulated in registers over all of `k`.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn kernel<const MR: usize, const NP: usize>(t: &Tile) {
        let k = t.k;
        let mut a = [std::ptr::null::<f32>(); MR];
        for (r, p) in a.iter_mut().enumerate() {
            *p = t.rows[r].as_ptr();
        }
        let mut acc = [[_mm256_setzero_ps(); NP]; MR];
        for i in 0..k {
            let mut b = [_mm256_setzero_ps(); NP];
            for (q, v) in b.iter_mut().enumerate() {
                let at = t.b.add((q * k + i) * LANES);
                *v = _mm256_loadu_ps(at);
            }
            for r in 0..MR {
                let x = _mm256_broadcast_ss(&*a[r].add(i));
                for q in 0..NP {
                    acc[r][q] = _mm256_fmadd_ps(x, b[q], acc[r][q]);
                }
            }
        }
        // Lane j of the last panel is stored if j < tail (all ones in its 32 bits).
        let last_mask = _mm256_cmpgt_epi32(
            _mm256_set1_epi32(t.tail as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        );
        for (r, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                let c = t.c.add(r * t.ld + q * LANES);
                if q + 1 == NP && t.tail < LANES {
                    let v = if t.accumulate {
                        _mm256_add_ps(_mm256_maskload_ps(c, last_mask), v)
                    } else {
                        v
                    };
                    _mm256_maskstore_ps(c, last_mask, v);
                } else {
                    let v = if t.accumulate {
                        _mm256_add_ps(_mm256_loadu_ps(c), v)
                    } else {
                        v
                    };
                    _mm256_storeu_ps(c, v);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut c = vec![0.0f32; m * n];
        for i in 0..m {
            for p in 0..k {
                for j in 0..n {
                    c[i * n + j] += a[i * k + p] * b[p * n + j];
                }
            }
        }
        c
    }

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.0) - 1.0)
            .collect()
    }

    /// The layouts this CPU runs: each is tested where it can run.
    fn isas() -> Vec<Isa> {
        [Isa::Other, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|isa| isa.runs_here())
            .collect()
    }

    /// `LSTM_LM_RECURRENT_KERNEL`: unset, empty or `gemm` is always honoured, a kernel kind
    /// only where the CPU runs it, and anything else is refused with the values it takes.
    #[test]
    fn the_override_names_a_kernel_this_cpu_runs() {
        assert_eq!(Isa::from_override(None), Ok(Isa::widest()));
        assert_eq!(Isa::from_override(Some(" ")), Ok(Isa::widest()));
        assert_eq!(Isa::from_override(Some("gemm")), Ok(Isa::Other));
        for isa in [Isa::Avx2, Isa::Avx512] {
            let got = Isa::from_override(Some(isa.name()));
            if isa.runs_here() {
                assert_eq!(got, Ok(isa));
            } else {
                assert!(got.unwrap_err().contains("lacks its instructions"));
            }
        }
        let err = Isa::from_override(Some("sse")).unwrap_err();
        assert!(
            err.contains("\"sse\"") && err.contains("avx512, avx2, gemm"),
            "{err}"
        );
        assert!(Isa::widest().runs_here());
    }

    /// Both panel widths, whatever the CPU runs (packing only moves values): parts with
    /// contiguous rows or contiguous columns, of widths that straddle panels, over heights with
    /// and without a remainder of 8 (the transposes' blocks) land in their panels' lanes, and
    /// the padding lanes are zeros.
    #[test]
    fn packs_every_column_into_its_panel_lane() {
        for lanes in [8, 16] {
            for k in [1, 7, 8, 29, 40] {
                for n in [1, 8, 13, 16, 27, 50] {
                    let w_t = values(n * k, n + k);
                    let w_rows = values(k * (n + 3), n);
                    for whole in [
                        Mat::new(&w_t, n, k, k).t(),
                        Mat::new(&w_rows, k, n + 3, n + 3).cols(1, n + 1),
                    ] {
                        let cut = (n / 3).max(1).min(n);
                        let packed =
                            pack_panels(&[whole.cols(0, cut), whole.cols(cut, n)], k, n, lanes);
                        assert_eq!(packed.len(), n.div_ceil(lanes) * k * lanes);
                        for (at, &got) in packed.iter().enumerate() {
                            let (p, i, q) = (at / (k * lanes), at / lanes % k, at % lanes);
                            let j = p * lanes + q;
                            let want = if j < n { whole.at(i, j) } else { 0.0 };
                            assert_eq!(got, want, "lanes {lanes}, k {k}, n {n}: ({i}, {j})");
                        }
                    }
                }
            }
        }
    }

    /// For each layout the CPU runs: every row count up to 25 (two blocks of 12 and one row
    /// more, four of 6 and one more), widths that are and are not multiples of the panels' (the
    /// masked last panel, an odd panel count), both `accumulate` modes, a weight given as
    /// column blocks of a transposed view or of a row-major matrix: the product matches the
    /// naive one, and the destination's padding columns are left alone.
    #[test]
    fn matches_the_naive_product_for_every_tile_shape() {
        let k = 37;
        for n in [1, 8, 12, 16, 23, 32, 48, 50] {
            // W as the transpose of `[n, k]` (contiguous columns), or row-major with rows
            // longer than W's (contiguous rows), packed from column blocks whose runs straddle
            // panels.
            let w_t = values(n * k, n);
            let w_rows = values(k * (n + 5), n + 1);
            for whole in [
                Mat::new(&w_t, n, k, k).t(),
                Mat::new(&w_rows, k, n + 5, n + 5).cols(2, n + 2),
            ] {
                let cut = n / 3;
                for isa in isas() {
                    let packed = PackedWeight::with_isa(
                        &[whole.cols(0, cut), whole.cols(cut, n)],
                        k,
                        n,
                        isa,
                    );
                    check(&packed, whole, k, n);
                }
            }
        }
    }

    /// `packed` (of `whole`, `[k, n]`) times every row count up to 25, both `accumulate` modes,
    /// both sweeps: the naive product, the destination's padding columns left alone.
    fn check(packed: &PackedWeight, whole: Mat, k: usize, n: usize) {
        let isa = packed.isa;
        let w: Vec<f32> = (0..k)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| whole.at(i, j))
            .collect();
        for m in 1..=25 {
            let a = values(m * k, m);
            let expected = naive(&a, &w, m, k, n);
            let ld = n + 3;
            for (accumulate, sweep) in [false, true]
                .into_iter()
                .flat_map(|acc| [(acc, Sweep::Forward), (acc, Sweep::Backward)])
            {
                let mut dst = vec![0.5f32; m * ld];
                packed.mul(&mut dst, ld, accumulate, Mat::new(&a, m, k, k), sweep);
                for i in 0..m {
                    for j in 0..ld {
                        let got = dst[i * ld + j];
                        let want = match (j < n, accumulate) {
                            (false, _) => 0.5,
                            (true, true) => expected[i * n + j] + 0.5,
                            (true, false) => expected[i * n + j],
                        };
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa:?}: n {n}, m {m}, accumulate {accumulate}, {sweep:?}, \
                             ({i}, {j}): {got} != {want}"
                        );
                    }
                }
            }
        }
    }
}
