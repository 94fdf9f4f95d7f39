//! How a program uses the CPU: one policy, with defaults chosen by measurement, set once by the
//! program and passed to where each setting is used.
//!
//! Two kinds of setting live here. Process-wide ones ([`CpuPolicy::retain_freed_memory`],
//! [`CpuPolicy::worker_spin_limit`]) change the C allocator and candle's worker pool; a program
//! applies them once, first thing in `main`, with [`CpuPolicy::apply_to_process`]. The others
//! say how work is split into concurrent pieces; the code that splits takes them as arguments
//! (`T5ForRec::encode_in_parts`, `peapod::decode::generate`)
//! and never decides on its own. The one split that changes results — training batches
//! backpropagated as slices, each with its own dropout stream — is a training setting
//! (`peapod::TrainConfig::batch_slices`), stored in checkpoints, not a runtime choice.
//!
//! All defaults were measured on the 2-core development machine (`docs/performance.md`).
//!
//! # Memory: why freed memory is kept
//! A training step allocates and frees tensors of tens to hundreds of megabytes (attention
//! scores are batch × heads × T × T). glibc serves every block over 32 MB with a fresh `mmap`
//! and unmaps it on free, so each step pays page faults and kernel page zeroing for all of
//! them again: measured on the tiny config at 420 → 6 tokens, batch 32, over half the step time
//! was spent in the kernel. Keeping freed memory in the heap makes the next step reuse it.
//! Trimming is off altogether (threshold −1): the largest positive threshold, `i32::MAX`, still
//! gave every heap top over 2 GB back on free, and a batch-64 step at 426 tokens frees more than
//! that each time (4.3 s a step instead of 2.1 s, and three times the page faults).
//!
//! # Worker spinning
//! candle runs element-wise operations on its own pool of worker threads, which spin (up to
//! 25,000 `spin_loop` hints by default) after each job before sleeping. Beam-search decoding
//! alternates short element-wise operations with gemm calls that want every core: a spinning
//! worker takes a core from the gemm. Measured with `bench_decode --config tiny` (2 cores):
//! 0.96 s per batch at the default limit, 0.84–0.85 s at 0–1,000. Training showed no difference.

/// Spin iterations an idle candle worker waits before sleeping, by default.
pub const WORKER_SPIN_LIMIT: u32 = 1_000;

/// The environment variable candle reads, once, when it starts its CPU workers.
const SPIN_LIMIT_VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Concurrent beam searches per decoding call on the CPU, by default. Two hide each other's
/// single-threaded stretches while their matrix products share all cores; more parts shrink
/// every product and gain little or lose (`bench_decode --device cpu --parts 1|2|4|16`, batch
/// 32, 20 beams, on a 16-core host: t5-small 1.61 / 1.55 / 1.56 / 2.63 s per batch, tiny
/// 0.280 / 0.230 / 0.214 / 0.239 s; on 2 cores, 2 parts: t5-small 5.9–6.4 → 5.3–5.4 s).
pub const DECODE_PARTS: usize = 2;

/// Concurrent pieces of an inference batch's encoder pass on the CPU, by default (encoder +
/// first step of a t5-small batch 0.79–0.86 → 0.67–0.80 s on 2 cores).
pub const ENCODE_PARTS: usize = 2;

/// How the program uses the CPU. `CpuPolicy::default()` holds the measured choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuPolicy {
    /// Keep freed memory in the heap for reuse (glibc: no `mmap` for large blocks, no heap
    /// trimming, one arena for all threads — a thread's own arena cannot hold a block over
    /// 64 MB and maps each one afresh). The process then holds its peak memory until it exits,
    /// the right trade for a training or evaluation run. Process-wide.
    pub retain_freed_memory: bool,
    /// Spins of an idle candle worker before it sleeps; `None` leaves candle's default. A value
    /// the user set in `CANDLE_BARRIER_POOL_SPIN_LIMIT` always wins. Process-wide.
    pub worker_spin_limit: Option<u32>,
    /// Pieces of an inference batch encoded concurrently on the CPU.
    pub encode_parts: usize,
    /// Beam searches run concurrently on the CPU, each over a slice of the inputs.
    pub decode_parts: usize,
}

impl Default for CpuPolicy {
    fn default() -> Self {
        Self {
            retain_freed_memory: true,
            worker_spin_limit: Some(WORKER_SPIN_LIMIT),
            encode_parts: ENCODE_PARTS,
            decode_parts: DECODE_PARTS,
        }
    }
}

/// What [`CpuPolicy::apply_to_process`] put in effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedPolicy {
    /// Whether the allocator accepted the settings (only on Linux with glibc).
    pub retains_freed_memory: bool,
    /// The spin limit in effect, as `CANDLE_BARRIER_POOL_SPIN_LIMIT` spells it (empty: candle's
    /// default).
    pub worker_spin_limit: String,
}

impl CpuPolicy {
    /// One piece everywhere, nothing process-wide: the plain behaviour, e.g. for tests that
    /// compare against a single pass.
    pub fn sequential() -> Self {
        Self {
            retain_freed_memory: false,
            worker_spin_limit: None,
            encode_parts: 1,
            decode_parts: 1,
        }
    }

    /// Applies the process-wide settings. Call it first thing in `main`, while the process has
    /// a single thread, before large allocations and before the first tensor operation (candle
    /// reads its spin limit once, when its workers start).
    pub fn apply_to_process(&self) -> AppliedPolicy {
        let retains_freed_memory = self.retain_freed_memory && retain_freed_memory();
        let current = std::env::var(SPIN_LIMIT_VAR).ok();
        let worker_spin_limit = match spin_limit_to_set(current.as_deref(), self.worker_spin_limit)
        {
            Some(value) => {
                // Sound while no other thread reads the environment: the caller promises a
                // single-threaded process (see above).
                std::env::set_var(SPIN_LIMIT_VAR, &value);
                value
            }
            None => current.unwrap_or_default(),
        };
        AppliedPolicy {
            retains_freed_memory,
            worker_spin_limit,
        }
    }

    /// Concurrent pieces for the encoder on a device: the policy's count on the CPU (at most
    /// one per thread of the current pool), one elsewhere (a GPU gains nothing from them).
    pub fn encode_parts_on(&self, is_cpu: bool) -> usize {
        parts_on(self.encode_parts, is_cpu)
    }

    /// Concurrent beam searches on a device, as [`CpuPolicy::encode_parts_on`].
    pub fn decode_parts_on(&self, is_cpu: bool) -> usize {
        parts_on(self.decode_parts, is_cpu)
    }
}

/// `0..len` cut into `parts` contiguous ranges whose lengths differ by at most one (at least one
/// range; empty ones only when `parts > len`): how every concurrent split cuts its batch.
pub fn even_slices(len: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.max(1);
    (0..parts)
        .map(|p| p * len / parts..(p + 1) * len / parts)
        .collect()
}

fn parts_on(parts: usize, is_cpu: bool) -> usize {
    if !is_cpu {
        return 1;
    }
    #[cfg(feature = "candle")]
    let threads = rayon::current_num_threads();
    #[cfg(not(feature = "candle"))]
    let threads = usize::MAX;
    parts.min(threads).max(1)
}

/// glibc's allocator settings (see the module docs); whether all took effect.
fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only adjusts allocator parameters; these are documented as
        // settable at any time and affect future allocations and frees.
        unsafe {
            let no_mmap = libc::mallopt(libc::M_MMAP_MAX, 0) == 1;
            // -1 disables trimming (mallopt(3)); i32::MAX would still trim a heap top over 2 GB.
            let no_trim = libc::mallopt(libc::M_TRIM_THRESHOLD, -1) == 1;
            let one_arena = libc::mallopt(libc::M_ARENA_MAX, 1) == 1;
            no_mmap && no_trim && one_arena
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// The spin limit to set, if any: the user's own (non-empty) setting wins, and `None` in the
/// policy leaves the variable alone.
fn spin_limit_to_set(current: Option<&str>, wanted: Option<u32>) -> Option<String> {
    match (current, wanted) {
        (Some(v), _) if !v.trim().is_empty() => None,
        (_, Some(limit)) => Some(limit.to_string()),
        (_, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_spin_setting_wins_and_an_empty_one_does_not_count() {
        assert_eq!(spin_limit_to_set(Some("50"), Some(1000)), None);
        assert_eq!(
            spin_limit_to_set(None, Some(1000)),
            Some("1000".to_string())
        );
        assert_eq!(
            spin_limit_to_set(Some("  "), Some(7)),
            Some("7".to_string())
        );
        assert_eq!(spin_limit_to_set(None, None), None);
    }

    #[test]
    fn even_slices_cover_the_range_in_order() {
        assert_eq!(even_slices(5, 2), vec![0..2, 2..5]);
        assert_eq!(even_slices(6, 3), vec![0..2, 2..4, 4..6]);
        assert_eq!(even_slices(4, 1), vec![0..4]);
        assert_eq!(even_slices(0, 0), vec![0..0]);
        assert_eq!(even_slices(2, 3), vec![0..0, 0..1, 1..2]);
    }

    #[test]
    fn parts_are_one_off_the_cpu_and_never_zero() {
        let policy = CpuPolicy {
            decode_parts: 0,
            ..CpuPolicy::default()
        };
        assert_eq!(policy.decode_parts_on(true), 1);
        assert_eq!(CpuPolicy::default().decode_parts_on(false), 1);
        assert_eq!(CpuPolicy::default().encode_parts_on(false), 1);
        assert_eq!(CpuPolicy::sequential().encode_parts_on(true), 1);
    }

    #[test]
    fn memory_retention_takes_effect_on_linux_gnu() {
        let applied = CpuPolicy {
            worker_spin_limit: None,
            ..CpuPolicy::default()
        }
        .apply_to_process();
        assert_eq!(
            applied.retains_freed_memory,
            cfg!(all(target_os = "linux", target_env = "gnu")),
            "mallopt refused the settings"
        );
        // Large allocations still work afterwards.
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
