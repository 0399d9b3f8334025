//! One block of a product through the system's OpenBLAS (feature `openblas`), on the calling
//! thread.
//!
//! The products are already cut into one block per rayon thread; OpenBLAS is set to one thread
//! of its own, once, so that it never runs threads of its own beside rayon's (its idle workers
//! spin before they sleep, which would take a core from the next parallel kernel).

use std::ffi::{c_char, c_int, CStr};
use std::sync::Once;

use cblas_sys::{cblas_sgemm, CBLAS_LAYOUT, CBLAS_TRANSPOSE};

#[link(name = "openblas")]
extern "C" {
    /// OpenBLAS's own thread count for the calls that follow (not part of CBLAS).
    fn openblas_set_num_threads(threads: c_int);
    /// The library's build options and the kernels it picked for this CPU (not part of CBLAS).
    fn openblas_get_config() -> *const c_char;
}

/// The linked OpenBLAS's version, build options and the kernels it picked for this CPU at load
/// time, e.g. `OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64` (a
/// `DYNAMIC_ARCH` build reads `OPENBLAS_CORETYPE` to pick others).
pub(crate) fn config() -> String {
    // SAFETY: OpenBLAS returns a NUL-terminated string it owns for the process's lifetime.
    let config = unsafe { CStr::from_ptr(openblas_get_config()) };
    config.to_string_lossy().trim().to_string()
}

/// An operand as row-major CBLAS reads it: `[rows, cols]` stored row by row (`ld` apart), or
/// with `transposed` its transpose `[cols, rows]` stored so.
#[derive(Debug, Clone, Copy)]
pub(super) struct Operand<'a> {
    /// The stored values, from the operand's first.
    pub data: &'a [f32],
    /// Rows of the operand as multiplied.
    pub rows: usize,
    /// Columns of the operand as multiplied.
    pub cols: usize,
    /// Whether the stored matrix is the operand's transpose.
    pub transposed: bool,
    /// Distance between stored rows.
    pub ld: usize,
}

impl Operand<'_> {
    /// Whether OpenBLAS can read this operand: its leading dimension covers a stored row, the
    /// stored values hold every element, and every size fits a C `int`.
    pub fn readable(&self) -> bool {
        let (stored_rows, stored_cols) = if self.transposed {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let fits = |x: usize| c_int::try_from(x).is_ok();
        let inside = stored_rows == 0
            || stored_cols == 0
            || (stored_rows - 1) * self.ld + stored_cols <= self.data.len();
        self.ld >= stored_cols.max(1)
            && inside
            && [self.ld, self.rows, self.cols].map(fits) == [true; 3]
    }

    fn trans(&self) -> CBLAS_TRANSPOSE {
        if self.transposed {
            CBLAS_TRANSPOSE::CblasTrans
        } else {
            CBLAS_TRANSPOSE::CblasNoTrans
        }
    }
}

/// OpenBLAS's product of `a` `[rows, k]` and `b` `[k, cols]` into the row-major `dst` (rows
/// `ld` apart), added to it with `accumulate`, on this thread.
///
/// # Safety
/// Both operands are [`Operand::readable`], and `dst` holds `a.rows` rows of `b.cols` values,
/// `ld` apart, that nothing else touches meanwhile (initialised when `accumulate` is set).
pub(super) unsafe fn sgemm_into(
    dst: *mut f32,
    ld: usize,
    accumulate: bool,
    a: Operand,
    b: Operand,
) {
    static ONE_THREAD: Once = Once::new();
    // SAFETY: a plain setter of OpenBLAS's thread count, called before its first product here.
    ONE_THREAD.call_once(|| unsafe { openblas_set_num_threads(1) });
    assert!(
        a.readable() && b.readable(),
        "OpenBLAS was handed operands it cannot read"
    );
    assert_eq!(a.cols, b.rows, "inner dimensions differ");
    assert!(ld >= b.cols, "destination rows too short");
    let int = |x: usize| c_int::try_from(x).expect("a size past a C int");
    // SAFETY: the operands' elements lie inside their slices (`readable`) and `dst` holds the
    // `[rows, cols]` block, `ld` apart (the caller's promise). With beta 0 OpenBLAS only
    // writes `dst`.
    unsafe {
        cblas_sgemm(
            CBLAS_LAYOUT::CblasRowMajor,
            a.trans(),
            b.trans(),
            int(a.rows),
            int(b.cols),
            int(a.cols),
            1.0,
            a.data.as_ptr(),
            int(a.ld),
            b.data.as_ptr(),
            int(b.ld),
            if accumulate { 1.0 } else { 0.0 },
            dst,
            int(ld),
        );
    }
}
