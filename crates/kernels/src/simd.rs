//! Runtime selection of an AVX2 build of the hot loops.
//!
//! The workspace compiles for baseline x86-64 (SSE2) so that its binaries run anywhere; the
//! row scans of the search (log-sum-exp, block maxima) are plain Rust loops over 8 f32 lanes
//! that the compiler turns into 4-wide SSE or 8-wide AVX2 code. Each hot function is compiled
//! twice: the portable body, and the same body inlined into a `#[target_feature(enable =
//! "avx2")]` wrapper, picked at run time. Both perform the same IEEE operations in the same
//! order (the lane count is fixed by the source, not the instruction set, and nothing is
//! contracted into FMA), so results are bit-identical whichever runs.

/// Whether the CPU supports AVX2 (cached by `std` after the first query).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2")
}

/// `dispatch!(variant(args), portable_expr)`: calls the AVX2 variant when the CPU has AVX2,
/// otherwise evaluates the portable expression; either way the value is the macro's.
#[macro_export]
macro_rules! dispatch {
    ($avx2:ident($($arg:expr),*), $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        let result = if $crate::simd::has_avx2() {
            // SAFETY: the variant differs from the portable code only in being compiled for
            // AVX2, which the CPU was just found to support.
            unsafe { $avx2($($arg),*) }
        } else {
            $portable
        };
        #[cfg(not(target_arch = "x86_64"))]
        let result = $portable;
        result
    }};
}

/// `avx2_variant!(fn name(args) -> R = body_fn)`: defines `name`, an AVX2 build of `body_fn`
/// (which must be `#[inline(always)]`, as must everything it calls in its loops).
#[macro_export]
macro_rules! avx2_variant {
    (fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            $body($($arg),*)
        }
    };
}
