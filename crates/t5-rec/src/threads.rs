//! candle's CPU worker threads.
//!
//! candle runs element-wise operations on its own pool of worker threads, which spin (up to
//! 25,000 `spin_loop` hints by default) after each job before sleeping. Beam-search decoding
//! alternates short element-wise operations with gemm calls that want every core: a spinning
//! worker takes a core from the gemm. Measured with `bench_decode --config tiny` (2 cores):
//! 0.96 s per batch at the default limit, 0.84–0.85 s at 0–1,000. Training showed no difference.

/// Spin iterations an idle candle worker waits before sleeping, set by
/// [`limit_worker_spinning`].
pub const WORKER_SPIN_LIMIT: u32 = 1_000;

/// The environment variable candle reads, once, when it starts its CPU workers.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's idle CPU workers sleep after [`WORKER_SPIN_LIMIT`] spins instead of 25,000,
/// unless the user already chose a value in `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Returns the
/// value in effect, as the variable spells it.
///
/// Call it first thing in `main`, while the process has a single thread and before the first
/// tensor operation (candle reads the setting once, when its workers start).
pub fn limit_worker_spinning() -> String {
    let current = std::env::var(SPIN_LIMIT_VAR).ok();
    match spin_limit_to_set(current.as_deref()) {
        Some(value) => {
            // Setting the environment is sound while no other thread reads it: the caller
            // promises a single-threaded process (see above).
            std::env::set_var(SPIN_LIMIT_VAR, &value);
            value
        }
        None => current.unwrap_or_default(),
    }
}

/// The value to set, if any: the user's own (non-empty) setting wins.
fn spin_limit_to_set(current: Option<&str>) -> Option<String> {
    match current {
        Some(v) if !v.trim().is_empty() => None,
        _ => Some(WORKER_SPIN_LIMIT.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_setting_wins_and_an_empty_one_does_not_count() {
        assert_eq!(spin_limit_to_set(Some("50")), None);
        assert_eq!(spin_limit_to_set(None), Some("1000".to_string()));
        assert_eq!(spin_limit_to_set(Some("  ")), Some("1000".to_string()));
    }
}
