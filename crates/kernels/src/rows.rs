//! Row scans over f32 slices: log-sum-exp, in-place log-softmax and a vectorisable `exp`.
//!
//! Shared by the beam search (normalising and ranking a step's logits) and the fused ops
//! (softmax, cross-entropy, attention). Plain Rust with no dependency, so that crates without
//! candle can use them.

use crate::error::RaggedRows;

/// Turns each row of `values` (row-major, `width` columns, e.g. raw logits of shape
/// rows × vocab) into log-probabilities in place: `x - max - ln Σ exp(x - max)`.
///
/// A row that is entirely `-inf` (fully masked) is left as is. Errors when `values.len()` is
/// not a multiple of `width`.
// `usize::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#[allow(clippy::manual_is_multiple_of)]
pub fn log_softmax_rows_in_place(values: &mut [f32], width: usize) -> Result<(), RaggedRows> {
    if width == 0 || values.len() % width != 0 {
        return Err(RaggedRows {
            len: values.len(),
            width,
        });
    }
    crate::dispatch!(log_softmax_rows_avx2(values, width), {
        log_softmax_rows(values, width)
    });
    Ok(())
}

#[inline(always)]
fn log_softmax_rows(values: &mut [f32], width: usize) {
    for row in values.chunks_exact_mut(width) {
        let shift = log_sum_exp_portable(row);
        if shift == f32::NEG_INFINITY {
            continue;
        }
        for x in row.iter_mut() {
            *x -= shift;
        }
    }
}

crate::avx2_variant!(fn log_softmax_rows_avx2(values: &mut [f32], width: usize) = log_softmax_rows);

/// ln Σ exp(x) over `row`, computed stably (max shift, f64 block sums); −∞ for an empty or
/// fully −∞ row. Shared with training code that needs a row's normaliser without rewriting it
/// (e.g. a fused cross-entropy).
pub fn log_sum_exp(row: &[f32]) -> f32 {
    crate::dispatch!(log_sum_exp_avx2(row), log_sum_exp_portable(row))
}

crate::avx2_variant!(fn log_sum_exp_avx2(row: &[f32]) -> f32 = log_sum_exp_portable);

/// [`log_sum_exp`] in plain Rust, inlined into each instruction-set variant.
#[inline(always)]
fn log_sum_exp_portable(row: &[f32]) -> f32 {
    // One pass over memory: each block's maximum, then its exponentials while the block is in
    // L1; the running sum is rescaled when the maximum grows. (Two passes over a 32k-wide row
    // read it twice from memory when the matrix is larger than the cache.)
    let mut max = f32::NEG_INFINITY;
    let mut total = 0f64;
    for block in row.chunks(SUM_BLOCK) {
        let block_max = row_max(block);
        if block_max > max {
            if total > 0.0 {
                total *= f64::from(max - block_max).exp();
            }
            max = block_max;
        }
        if max > f32::NEG_INFINITY {
            total += f64::from(sum_exp_shifted(block, max));
        }
    }
    if max == f32::NEG_INFINITY {
        return max;
    }
    max + total.ln() as f32
}

/// Values per block of [`log_sum_exp`]: 2 KiB, well inside L1, and short enough that one f32
/// accumulator per lane keeps ~1e-7 relative accuracy; blocks are added in f64.
const SUM_BLOCK: usize = 512;

/// Lanes of the manual reductions: plain loops over `[f32; LANES]` accumulators vectorise,
/// a float fold does not (its order is fixed).
const LANES: usize = 8;

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    tail.iter()
        .chain(acc.iter())
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// Σ exp(x − max) over one block (x ≤ max), in f32 lanes.
#[inline(always)]
fn sum_exp_shifted(block: &[f32], max: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = block.chunks_exact(LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += exp_non_positive(x - max);
        }
    }
    let tail: f32 = tail.iter().map(|&x| exp_non_positive(x - max)).sum();
    acc.iter().sum::<f32>() + tail
}

/// e^x for x ≤ 0, within 3 ulp of `f32::exp` and branch-free so that loops over it vectorise
/// (libm's `expf` is a scalar call: it was a quarter of a 20-beam decoding step). Inputs below
/// −87 (including −∞) return e^−87 ≈ 1.6e−38 instead of 0, harmless in a sum of terms ≥ 1.
#[inline(always)]
pub fn exp_non_positive(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // ln 2 split in a high part exact in f32 and a low correction (Cody–Waite).
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 0.0);
    let t = x * LOG2E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    // Taylor series of e^r on |r| ≤ ln2/2: the r^7 term is below 1.2e-7 relative.
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from the integer in t's low bits: n + 127 is the biased exponent (1 ..= 127 here).
    let scale = f32::from_bits(t.to_bits().wrapping_add(127) << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pseudo_random as pseudo_random_row;

    #[test]
    fn rows_normalise_and_match_the_definition() {
        let mut v = vec![1.0f32, 2.0, 3.0, 0.0, 0.0, f32::NEG_INFINITY];
        log_softmax_rows_in_place(&mut v, 3).unwrap();
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (got, want) in v[..3].iter().zip([1.0 - z, 2.0 - z, 3.0 - z]) {
            assert!((f64::from(*got) - want).abs() < 1e-6);
        }
        assert!((v[3] - (-std::f32::consts::LN_2)).abs() < 1e-6);
        assert_eq!(v[5], f32::NEG_INFINITY);
        let mut masked = vec![f32::NEG_INFINITY; 4];
        log_softmax_rows_in_place(&mut masked, 2).unwrap();
        assert!(masked.iter().all(|&x| x == f32::NEG_INFINITY));
        assert!(log_softmax_rows_in_place(&mut [0.0; 5], 2).is_err());
        assert!(log_softmax_rows_in_place(&mut [], 0).is_err());
    }

    #[test]
    fn log_sum_exp_matches_f64_and_handles_masked_rows() {
        let row = [0.5f32, -3.0, 12.25, 12.0, f32::NEG_INFINITY];
        let want = row.iter().map(|&x| f64::from(x).exp()).sum::<f64>().ln();
        assert!((f64::from(log_sum_exp(&row)) - want).abs() < 1e-6);
        assert_eq!(log_sum_exp(&[]), f32::NEG_INFINITY);
        // The maximum grows from block to block (each rescales the running sum), then falls.
        let ramp: Vec<f32> = (0..3000)
            .map(|i| {
                if i < 2000 {
                    i as f32 * 0.05
                } else {
                    -(i as f32)
                }
            })
            .collect();
        let want = ramp
            .iter()
            .map(|&x| f64::from(x) - 99.95)
            .map(f64::exp)
            .sum::<f64>()
            .ln()
            + 99.95;
        let got = f64::from(log_sum_exp(&ramp));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY; 3]), f32::NEG_INFINITY);
    }

    #[test]
    fn the_dispatched_build_matches_the_portable_one_bit_for_bit() {
        // Whichever instruction set runs, the same operations happen in the same order.
        for (seed, width) in [1usize, 7, 8, 511, 512, 513, 4_099].into_iter().enumerate() {
            let row = pseudo_random_row(seed as u64, width, 40.0);
            assert_eq!(
                log_sum_exp(&row).to_bits(),
                log_sum_exp_portable(&row).to_bits(),
                "width {width}"
            );
            let mut dispatched = row.repeat(3);
            let mut portable = dispatched.clone();
            log_softmax_rows_in_place(&mut dispatched, width).unwrap();
            log_softmax_rows(&mut portable, width);
            assert!(dispatched
                .iter()
                .zip(&portable)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }

    #[test]
    fn fast_exp_is_within_three_ulp_of_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let want = x.exp();
            worst = worst.max((exp_non_positive(x) - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert!(exp_non_positive(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn wide_rows_match_an_f64_reference() {
        // A vocabulary-sized row with a spread like real logits, odd width for the tails.
        let width = 32_129;
        let mut row = pseudo_random_row(0x9e37_79b9, width, 30.0);
        row[17] = f32::NEG_INFINITY;
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let lse = max
            + row
                .iter()
                .map(|&x| (f64::from(x) - max).exp())
                .sum::<f64>()
                .ln();
        let want: Vec<f64> = row.iter().map(|&x| f64::from(x) - lse).collect();
        log_softmax_rows_in_place(&mut row, width).unwrap();
        for (i, (&got, &w)) in row.iter().zip(&want).enumerate() {
            if w.is_finite() {
                assert!((f64::from(got) - w).abs() < 2e-5, "{i}: {got} vs {w}");
            } else {
                assert_eq!(got, f32::NEG_INFINITY);
            }
        }
    }
}
