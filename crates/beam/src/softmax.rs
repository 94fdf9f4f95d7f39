use crate::BeamError;

/// Turns each row of `values` (row-major, `width` columns, e.g. raw logits of shape
/// rows × vocab) into log-probabilities in place: `x - max - ln Σ exp(x - max)`.
///
/// A row that is entirely `-inf` (fully masked) is left as is. Errors when `values.len()` is
/// not a multiple of `width`.
// `usize::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#[allow(clippy::manual_is_multiple_of)]
pub fn log_softmax_rows_in_place(values: &mut [f32], width: usize) -> Result<(), BeamError> {
    if width == 0 || values.len() % width != 0 {
        return Err(BeamError::RaggedRows {
            len: values.len(),
            width,
        });
    }
    for row in values.chunks_exact_mut(width) {
        let max = row
            .iter()
            .copied()
            .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m });
        if max == f32::NEG_INFINITY {
            continue;
        }
        // Accumulate in f64: a 32k-wide sum in f32 loses ~1e-4 relative accuracy.
        let sum: f64 = row.iter().map(|&x| f64::from((x - max).exp())).sum();
        let shift = max + sum.ln() as f32;
        for x in row.iter_mut() {
            *x -= shift;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
