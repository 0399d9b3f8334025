//! Element kernels compiled three times (AVX-512, AVX2 + FMA, baseline) and picked at run time,
//! so the binary stays portable and still uses the widest vectors the CPU has.

/// Defines `fn name(args) -> ret` whose body is compiled for AVX-512F, for AVX2 + FMA and for
/// the baseline target, and dispatches on the CPU's features at run time. The body sees a
/// `const FMA: bool`, true in the versions whose CPU has fused multiply-add, to pass on to
/// [`exp`], [`sigmoid`] and [`tanh`].
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp<const FMA: bool>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { imp::<true>($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { imp::<true>($($arg),*) }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp::<{ $crate::model::fused::simd::BASELINE_FMA }>($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// Whether the baseline target has fused multiply-add (`f32::mul_add` one instruction, not a
/// library call): aarch64 always does; x86-64 only from AVX2 on (its own versions above).
pub(crate) const BASELINE_FMA: bool = cfg!(target_arch = "aarch64");

/// Asks the CPU to fetch the cache lines of `len` values from `start` in the state for writing
/// (x86-64 `PREFETCHW`, where the CPU has it; otherwise nothing), so that the stores that
/// follow find them owned instead of each waiting for its line. A hint: it reads and writes
/// nothing and never faults, whatever the address.
#[inline]
pub fn prefetch_for_write(start: *const f32, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if has_prefetchw() {
        for i in (0..len).step_by(16) {
            // SAFETY: a prefetch touches no memory the program sees and cannot fault.
            unsafe {
                std::arch::asm!(
                    "prefetchw [{0}]",
                    in(reg) start.wrapping_add(i),
                    options(nostack, readonly, preserves_flags)
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, len);
}

/// Whether the CPU runs `PREFETCHW` (CPUID 0x8000_0001, ECX bit 8), read once a process.
#[cfg(target_arch = "x86_64")]
fn has_prefetchw() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // CPUID exists on every x86-64 CPU; leaf 0x8000_0000 gives the highest extended leaf,
        // checked before 0x8000_0001 is read.
        use std::arch::x86_64::__cpuid;
        __cpuid(0x8000_0000).eax >= 0x8000_0001 && __cpuid(0x8000_0001).ecx & (1 << 8) != 0
    })
}

/// `a · b + c`: rounded once with `FMA` (one instruction where the CPU has it), else twice.
#[inline(always)]
fn mul_add<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x`, relative error below 5e-7 on [-87, 88] (inputs are clamped to it):
/// `e^x = 2^n · e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, and a degree-6 polynomial
/// for `e^r`, evaluated with fused multiply-adds when `FMA` (half the instructions and half the
/// dependency chain: the LSTM's gate kernel ran 1.7x as fast, docs/BENCHMARKS.md). Branch-free
/// and without float-to-int casts (Rust's saturating `as i32` compiled to one scalar conversion
/// and compare per value): `n` is rounded by adding `1.5 · 2^23`, which leaves it in the low bits
/// of the sum, so loops over it vectorise.
#[inline(always)]
pub fn exp<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    /// `1.5 · 2^23`: adding it rounds to an integer (ties to even) held in the mantissa.
    const ROUNDER: f32 = 12_582_912.0;
    /// `1 / i!` for i = 6 down to 0.
    const COEFFS: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let x = x.clamp(-87.0, 88.0);
    let shifted = mul_add::<FMA>(x, LOG2E, ROUNDER);
    let n = shifted - ROUNDER;
    let r = mul_add::<FMA>(-n, LN2_LO, mul_add::<FMA>(-n, LN2_HI, x));
    let p = COEFFS[1..]
        .iter()
        .fold(COEFFS[0], |p, &c| mul_add::<FMA>(p, r, c));
    // The mantissa's low bits of `shifted` are n + 2^22 (n in [-126, 127]): the exponent
    // field of 2^n is n + 127.
    let biased = shifted
        .to_bits()
        .wrapping_sub(ROUNDER.to_bits())
        .wrapping_add(127);
    p * f32::from_bits(biased << 23)
}

/// The logistic function `1 / (1 + e^-x)`.
#[inline(always)]
pub fn sigmoid<const FMA: bool>(x: f32) -> f32 {
    1.0 / (1.0 + exp::<FMA>(-x))
}

/// `tanh x`, as `1 - 2 / (e^2x + 1)`: absolute error below 1e-6.
#[inline(always)]
pub fn tanh<const FMA: bool>(x: f32) -> f32 {
    1.0 - 2.0 / (exp::<FMA>(2.0 * x) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ways of evaluating (with and without fused multiply-add) meet the documented
    /// error bounds over the whole clamped range, and saturate cleanly outside it.
    #[test]
    fn exp_sigmoid_tanh_are_accurate() {
        accurate::<false>();
        accurate::<true>();
    }

    /// A write prefetch is only a hint: at addresses the process cannot touch (null, unmapped,
    /// past a buffer's end) it does nothing, and a buffer prefetched keeps its values.
    #[test]
    fn prefetch_for_write_never_faults_and_changes_nothing() {
        prefetch_for_write(std::ptr::null(), 64);
        prefetch_for_write(usize::MAX as *const f32, 1);
        let values: Vec<f32> = (0..100).map(|i| i as f32).collect();
        prefetch_for_write(values.as_ptr(), 1000);
        assert!(values.iter().enumerate().all(|(i, &v)| v == i as f32));
    }

    fn accurate<const FMA: bool>() {
        let (mut worst_exp, mut worst_sig, mut worst_tanh) = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            worst_exp = worst_exp.max(((exp::<FMA>(x) as f64 - want) / want).abs());
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            worst_sig = worst_sig.max((sigmoid::<FMA>(x) as f64 - s).abs());
            worst_tanh = worst_tanh.max((tanh::<FMA>(x) as f64 - (x as f64).tanh()).abs());
            x += 0.0137;
        }
        assert!(
            worst_exp < 5e-7,
            "exp (FMA {FMA}): worst relative error {worst_exp}"
        );
        assert!(
            worst_sig < 1e-6,
            "sigmoid (FMA {FMA}): worst absolute error {worst_sig}"
        );
        assert!(
            worst_tanh < 1e-6,
            "tanh (FMA {FMA}): worst absolute error {worst_tanh}"
        );
        assert!(exp::<FMA>(-1000.0) < 1e-37, "underflows to ~0");
        assert_eq!(sigmoid::<FMA>(-1000.0), 0.0f32.max(sigmoid::<FMA>(-1000.0)));
        assert!((tanh::<FMA>(50.0) - 1.0).abs() < 1e-7 && (tanh::<FMA>(-50.0) + 1.0).abs() < 1e-7);
    }
}
