//! The LSTM recurrence's per-step product `[batch, k] x [k, n]` with the weight packed once a
//! call.
//!
//! Each step of the recurrence multiplies a few rows (the batch, 20 in the presets) by the
//! whole recurrent weight (`W_h` forward, its transpose backward). `gemm` packs its right-hand
//! side at every call, and its microkernels are shaped for many rows; here the weight is packed
//! once, before the first step, into panels of 16 columns (one AVX-512 vector wide, `[k, 16]`
//! each, zero-padded), and a kernel keeps up to 12 rows x 32 columns of the result in registers
//! while it streams the panels, prefetching them from L3 ahead of use: at batch 20 the weight no
//! longer fits a core's L2, so each step streams it from L3. Measured on the 2-vCPU Xeon
//! (docs/BENCHMARKS.md, 2026-12-01): `[20, 650] x [650, 1300]` at ~140 GFLOP/s on one core
//! against ~90 for `gemm`.
//!
//! Without AVX-512 (detected at run time) the packed weight is a row-major copy and the product
//! runs through [`matmul`].

use std::mem::MaybeUninit;

use super::matmul::{matmul, Mat};

/// Columns a panel holds: one AVX-512 vector of f32.
const LANES: usize = 16;
/// Most rows a kernel call keeps in registers (12 rows x 2 panels = 24 of 32 vector registers).
const MAX_ROWS: usize = 12;

/// A `[k, n]` weight packed for [`PackedWeight::mul`].
pub(crate) struct PackedWeight {
    k: usize,
    n: usize,
    /// AVX-512: `[panels, k, 16]`, zero-padded past column `n`. Otherwise `[k, n]` row-major.
    data: Vec<f32>,
    panels: bool,
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
        let panels = has_avx512();
        let data = if panels {
            pack_panels(parts, k, n)
        } else {
            let mut data = Vec::with_capacity(k * n);
            for i in 0..k {
                for m in parts {
                    data.extend((0..m.n_cols()).map(|j| m.at(i, j)));
                }
            }
            data
        };
        Self { k, n, data, panels }
    }

    /// `dst = a · W` (or `dst += a · W` with `accumulate`) on this core, where `dst` is
    /// row-major `[m, n]` with rows `ld` apart and `a` `[m, k]` has contiguous rows.
    pub fn mul(&self, dst: &mut [f32], ld: usize, accumulate: bool, a: Mat) {
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
        if !self.panels || k == 0 {
            return matmul(dst, ld, accumulate, a, Mat::new(&self.data, k, n, n), false);
        }
        let rows: Vec<&[f32]> = (0..m)
            .map(|i| {
                a.row(i)
                    .expect("PackedWeight::mul: rows of `a` must be contiguous")
            })
            .collect();
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `panels` is only set when the CPU has AVX-512F; the rows, the panels and the
        // destination were bounds-checked above.
        unsafe {
            avx512::mul(&rows, &self.data, k, n, dst, ld, accumulate)
        };
    }
}

/// The columns of `parts` side by side (`[k, n]` in all) as `ceil(n / 16)` panels `[k, 16]`,
/// zero-padded past column `n`. Each part is cut into runs of up to 16 columns that fill one
/// panel's lanes; a part whose rows are contiguous (`W_h`'s gate blocks) is read row by row
/// (each row's runs go to their panels), one whose columns are contiguous (a transposed view)
/// a run's columns at a time, in tiles of 16 rows so that the tile's 16 cache lines of the
/// panel stay in L1 while its columns fill them.
fn pack_panels(parts: &[Mat], k: usize, n: usize) -> Vec<f32> {
    let len = n.div_ceil(LANES) * k * LANES;
    // Written once below, not zeroed first: only the last panel's padding lanes are zeros.
    let mut data: Vec<f32> = Vec::with_capacity(len);
    let out = &mut data.spare_capacity_mut()[..len];
    if !n.is_multiple_of(LANES) {
        let last = (n / LANES) * k * LANES;
        for row in out[last..].chunks_exact_mut(LANES) {
            row[n % LANES..].fill(MaybeUninit::new(0.0));
        }
    }
    let mut first = 0;
    for m in parts {
        // (first column in `m`, columns, start of the panel's row 0 in `data` + lane)
        let mut runs = Vec::new();
        let mut j = 0;
        while j < m.n_cols() {
            let c = first + j;
            let run = (LANES - c % LANES).min(m.n_cols() - j);
            runs.push((j, run, (c / LANES) * k * LANES + c % LANES));
            j += run;
        }
        if m.row(0).is_some() {
            for i in 0..k {
                let row = m.row(i).expect("contiguous rows");
                for &(j, run, at) in &runs {
                    write(&mut out[at + i * LANES..][..run], &row[j..j + run]);
                }
            }
        } else {
            let columns = m.t();
            for &(j, run, at) in &runs {
                for i0 in (0..k).step_by(LANES) {
                    let i1 = (i0 + LANES).min(k);
                    for q in 0..run {
                        let column = columns.row(j + q).expect("contiguous columns");
                        for i in i0..i1 {
                            out[at + i * LANES + q].write(column[i]);
                        }
                    }
                }
            }
        }
        first += m.n_cols();
    }
    // SAFETY: the runs of all parts cover every lane below column `n` of every panel row, and
    // the padding lanes were filled above: all `len` values are written.
    unsafe { data.set_len(len) };
    data
}

/// `dst = src`: a whole panel row (16 values) as one fixed-size copy, which compiles to vector
/// moves instead of a call to `memcpy` (one per 64 bytes: what packing `W_h` spent its time
/// on); shorter runs value by value.
#[inline]
fn write(dst: &mut [MaybeUninit<f32>], src: &[f32]) {
    if let (Some(dst), Some(src)) = (dst.first_chunk_mut::<LANES>(), src.first_chunk::<LANES>()) {
        *dst = src.map(MaybeUninit::new);
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            d.write(s);
        }
    }
}

/// Whether this CPU runs the packed kernels.
fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, MAX_ROWS};

    /// Panel rows (of 16 floats, one cache line) fetched ahead of use.
    const PREFETCH: usize = 16;

    /// The product over all row blocks and panels: pairs of panels, then the odd last one.
    ///
    /// # Safety
    /// AVX-512F; every row holds `k` values, `panels` holds `ceil(n / 16)` panels of `[k, 16]`
    /// and `dst` holds `rows.len()` rows of `n` values `ld` apart.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn mul(
        rows: &[&[f32]],
        panels: &[f32],
        k: usize,
        n: usize,
        dst: &mut [f32],
        ld: usize,
        accumulate: bool,
    ) {
        let count = n.div_ceil(LANES);
        let blocks = rows.len().div_ceil(MAX_ROWS);
        let block = rows.len().div_ceil(blocks);
        let tail = (n - (count - 1) * LANES) as u32;
        let last_mask: __mmask16 = if tail == 16 {
            0xFFFF
        } else {
            (1u16 << tail) - 1
        };
        let mut p = 0;
        while p < count {
            let np = if p + 2 <= count { 2 } else { 1 };
            let mask = if p + np == count { last_mask } else { 0xFFFF };
            for r0 in (0..rows.len()).step_by(block) {
                let rs = &rows[r0..(r0 + block).min(rows.len())];
                let tile = Tile {
                    rows: rs,
                    b: panels.as_ptr().add(p * k * LANES),
                    k,
                    c: dst.as_mut_ptr().add(r0 * ld + p * LANES),
                    ld,
                    mask,
                    accumulate,
                };
                dispatch(&tile, np);
            }
            p += np;
        }
    }

    /// One call's block: `rows` x (`NP` panels from `b`) into `c`; the last panel's columns
    /// masked by `mask`.
    struct Tile<'a> {
        rows: &'a [&'a [f32]],
        b: *const f32,
        k: usize,
        c: *mut f32,
        ld: usize,
        mask: __mmask16,
        accumulate: bool,
    }

    /// Runs the kernel monomorphised for the tile's row count and `np` panels.
    #[target_feature(enable = "avx512f")]
    unsafe fn dispatch(t: &Tile, np: usize) {
        macro_rules! by_rows {
            ($np:literal: $($mr:literal)*) => {
                match t.rows.len() {
                    $($mr => kernel::<$mr, $np>(t),)*
                    other => unreachable!("a block of {other} rows"),
                }
            };
        }
        if np == 2 {
            by_rows!(2: 1 2 3 4 5 6 7 8 9 10 11 12)
        } else {
            by_rows!(1: 1 2 3 4 5 6 7 8 9 10 11 12)
        }
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
        for (r, row) in acc.iter().enumerate() {
            for (q, &v) in row.iter().enumerate() {
                let c = t.c.add(r * t.ld + q * LANES);
                let mask = if q + 1 == NP { t.mask } else { 0xFFFF };
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

    /// Every row count up to two blocks, widths that are and are not multiples of 16 (the
    /// masked last panel, an odd panel count), both `accumulate` modes, a weight given as
    /// column blocks of a transposed view or of a row-major matrix: the product matches the
    /// naive one, and the destination's padding columns are left alone.
    #[test]
    fn matches_the_naive_product_for_every_tile_shape() {
        let k = 37;
        for n in [1, 16, 23, 32, 48, 50] {
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
                let packed = PackedWeight::new(&[whole.cols(0, cut), whole.cols(cut, n)]);
                check(&packed, whole, k, n);
            }
        }
    }

    /// `packed` (of `whole`, `[k, n]`) times every row count up to two blocks, both
    /// `accumulate` modes: the naive product, the destination's padding columns left alone.
    fn check(packed: &PackedWeight, whole: Mat, k: usize, n: usize) {
        let w: Vec<f32> = (0..k)
            .flat_map(|i| (0..n).map(move |j| (i, j)))
            .map(|(i, j)| whole.at(i, j))
            .collect();
        for m in 1..=2 * MAX_ROWS + 1 {
            let a = values(m * k, m);
            let expected = naive(&a, &w, m, k, n);
            let ld = n + 3;
            for accumulate in [false, true] {
                let mut dst = vec![0.5f32; m * ld];
                packed.mul(&mut dst, ld, accumulate, Mat::new(&a, m, k, k));
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
                            "n {n}, m {m}, accumulate {accumulate}, ({i}, {j}): {got} != {want}"
                        );
                    }
                }
            }
        }
    }
}
