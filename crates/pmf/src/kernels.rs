//! Small dense kernels on f32 slices. Reductions keep 8 independent partial sums so that the
//! compiler can vectorise them (a single running sum would force strict left-to-right order);
//! the summation order is fixed, so results stay bit-identical from run to run.

const LANES: usize = 8;

/// `Σ a[k] · b[k]` over the common length.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    let mut s = 0.0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

/// bfloat16 (the upper half of an f32) to f32: exact.
#[inline(always)]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// f32 to bfloat16, rounding to nearest even (NaN stays NaN).
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) as u16
}

/// `Σ a[k] · b[k]` with `b` in bfloat16.
pub(crate) fn dot_bf16(a: &[f32], b: &[u16]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * from_bf16(y[l]);
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * from_bf16(*y);
    }
    let mut s = 0.0f32;
    for v in acc {
        s += v;
    }
    s + tail
}

/// `y += alpha · x` with `x` in bfloat16.
pub(crate) fn axpy_bf16(alpha: f32, x: &[u16], y: &mut [f32]) {
    for (yk, xk) in y.iter_mut().zip(x) {
        *yk += alpha * from_bf16(*xk);
    }
}

/// `y += alpha · (a − b)` with `a`, `b` in bfloat16.
pub(crate) fn axpy_diff_bf16(alpha: f32, a: &[u16], b: &[u16], y: &mut [f32]) {
    for ((yk, ak), bk) in y.iter_mut().zip(a).zip(b) {
        *yk += alpha * (from_bf16(*ak) - from_bf16(*bk));
    }
}

/// Asks the cache hierarchy for a row that will be read soon. A hint only: it never faults
/// and changes no memory, whatever the address.
#[inline(always)]
pub(crate) fn prefetch<T>(row: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for line in row.chunks((64 / std::mem::size_of::<T>().max(1)).max(1)) {
        // SAFETY: PREFETCHT0 is architecturally a hint; it cannot fault or write memory.
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                line.as_ptr().cast::<i8>(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

/// `y += alpha · x`.
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (yk, xk) in y.iter_mut().zip(x) {
        *yk += alpha * xk;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_and_rounding() {
        for x in [0.0f32, 1.0, -2.5, 1e-4, 3.0e38, -7.0e-20] {
            let b = to_bf16(x);
            assert!((from_bf16(b) - x).abs() <= x.abs() / 256.0, "{x}");
        }
        // 1 + 2^-8 is halfway between two bf16 values: ties go to the even one (1.0).
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    #[test]
    fn kernels_match_naive_loops_including_tails() {
        for n in [0usize, 1, 7, 8, 9, 17, 64] {
            let a: Vec<f32> = (0..n).map(|k| (k as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n).map(|k| (k as f32 * 0.11).cos()).collect();
            let u: Vec<f32> = (0..n).map(|k| 0.5 - k as f32 * 0.01).collect();
            let ab: Vec<u16> = a.iter().map(|&x| to_bf16(x)).collect();
            let bb: Vec<u16> = b.iter().map(|&x| to_bf16(x)).collect();
            let a16: Vec<f32> = ab.iter().map(|&x| from_bf16(x)).collect();
            let b16: Vec<f32> = bb.iter().map(|&x| from_bf16(x)).collect();
            let naive = |x: &[f32], y: &[f32]| -> f64 {
                x.iter()
                    .zip(y)
                    .map(|(p, q)| (*p as f64) * (*q as f64))
                    .sum()
            };
            assert!((dot(&a, &b) as f64 - naive(&a, &b)).abs() < 1e-4);
            assert!((dot_bf16(&u, &bb) as f64 - naive(&u, &b16)).abs() < 1e-4);
            let mut y = u.clone();
            axpy(2.0, &a, &mut y);
            for k in 0..n {
                assert!((y[k] - (u[k] + 2.0 * a[k])).abs() < 1e-6);
            }
            let mut y = u.clone();
            axpy_bf16(2.0, &ab, &mut y);
            for k in 0..n {
                assert!((y[k] - (u[k] + 2.0 * a16[k])).abs() < 1e-6);
            }
            let mut y = u.clone();
            axpy_diff_bf16(-0.5, &ab, &bb, &mut y);
            for k in 0..n {
                assert!((y[k] - (u[k] - 0.5 * (a16[k] - b16[k]))).abs() < 1e-6);
            }
        }
    }
}
