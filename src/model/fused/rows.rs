//! Passes over the rows of a row-major `[n, v]` buffer on every core: a vector added to every
//! row, and column sums by fixed blocks of rows (the same sums on any number of cores).

use rayon::prelude::*;

/// Rows per task of [`sum_columns`]: each task keeps its own partial sums (`[v]`), added in
/// block order afterwards.
const BLOCK_ROWS: usize = 32;

/// `d[r] += row` for every row `r` of `d` (`[n, v]`, `v` = `row.len()`), on every core with
/// `parallel`.
pub(super) fn add_to_rows(d: &mut [f32], row: &[f32], parallel: bool) {
    let v = row.len().max(1);
    if parallel {
        d.par_chunks_mut(v).for_each(|r| add_row(r, row));
    } else {
        d.chunks_mut(v).for_each(|r| add_row(r, row));
    }
}

/// The column sums `[v]` of `d` (`[n, v]`): each block of [`BLOCK_ROWS`] rows into its own
/// partial, the partials added in block order, so the sums are the same on any number of cores.
pub(super) fn sum_columns(d: &[f32], v: usize, parallel: bool) -> Vec<f32> {
    let width = v.max(1);
    let rows = BLOCK_ROWS * width;
    let mut partials = vec![0.0f32; d.len().div_ceil(rows) * width];
    let block = |(rows, sums): (&[f32], &mut [f32])| {
        for row in rows.chunks(width) {
            add_row(sums, row);
        }
    };
    if parallel {
        (d.par_chunks(rows).zip(partials.par_chunks_mut(width))).for_each(block);
    } else {
        (d.chunks(rows).zip(partials.chunks_mut(width))).for_each(block);
    }
    add_in_order(&partials, v)
}

/// `sums += row`.
fn add_row(sums: &mut [f32], row: &[f32]) {
    for (s, &x) in sums.iter_mut().zip(row) {
        *s += x;
    }
}

/// The blocks' partial sums (`[v]` each, side by side) added in block order.
fn add_in_order(partials: &[f32], v: usize) -> Vec<f32> {
    let mut sums = vec![0.0f32; v];
    for partial in partials.chunks(v.max(1)) {
        add_row(&mut sums, partial);
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vector is added to every row; the column sums match a plain loop, on one core and
    /// on several, for row counts around the block size.
    #[test]
    fn adds_to_rows_and_sums_columns() {
        let row: Vec<f32> = (0..7).map(|j| j as f32 - 2.5).collect();
        for n in [0, 1, 31, 32, 33, 100] {
            for parallel in [false, true] {
                let mut d = vec![1.0f32; n * 7];
                add_to_rows(&mut d, &row, parallel);
                let ones: Vec<f32> = row.iter().map(|x| x + 1.0).collect();
                assert_eq!(d, ones.repeat(n), "{n} rows");
                add_to_rows(&mut d, &[-1.0; 7], parallel);
                assert_eq!(d, row.repeat(n), "{n} rows");
                let plain = sum_columns(&d, 7, parallel);
                for j in 0..7 {
                    let want = row[j] * n as f32;
                    assert!((plain[j] - want).abs() < 1e-3, "{n} rows, column {j}");
                }
            }
        }
    }
}
