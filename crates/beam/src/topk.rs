//! Bounded selection of the best `k` candidates of one input, without sorting whole rows.

/// One continuation: beam `row` (rank within its input) extended by `token`, with the summed
/// log-probability `score`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Candidate {
    pub score: f32,
    pub row: u32,
    pub token: u32,
}

impl Candidate {
    /// Total order used for ranking: higher score first, then the lower flat index
    /// (`row * vocab + token`), which makes ties deterministic.
    #[inline]
    fn better_than(&self, other: &Candidate) -> bool {
        self.score > other.score
            || (self.score == other.score && (self.row, self.token) < (other.row, other.token))
    }
}

/// Lanes of the block maximum: independent accumulators let the compiler use SIMD max
/// instructions (a single running max is a serial dependency it may not reorder).
const LANES: usize = 8;
/// Floats per block whose maximum is tested before looking at single entries.
const BLOCK: usize = 64;

/// A binary min-heap (worst candidate on top) holding at most `k` candidates.
#[derive(Debug)]
pub(crate) struct TopK {
    k: usize,
    heap: Vec<Candidate>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self {
            k,
            heap: Vec::with_capacity(k),
        }
    }

    pub fn clear(&mut self) {
        self.heap.clear();
    }

    /// Offers one candidate. Candidates must be offered in increasing flat index so that a tie
    /// with the current worst keeps the earlier one (strict `>` below).
    #[inline]
    pub fn offer(&mut self, score: f32, row: u32, token: u32) {
        // -inf (masked) and NaN never become hypotheses.
        if score.is_nan() || score == f32::NEG_INFINITY {
            return;
        }
        let c = Candidate { score, row, token };
        if self.heap.len() < self.k {
            self.heap.push(c);
            self.sift_up(self.heap.len() - 1);
        } else if score > self.heap[0].score {
            self.heap[0] = c;
            self.sift_down(0);
        }
    }

    /// Offers every token of a dense log-probability row of beam `row` whose score is `beam_score`.
    /// Blocks whose best entry cannot beat the current k-th best are skipped after one
    /// vectorised max, so a full row costs little more than reading it.
    pub fn offer_dense(&mut self, log_probs: &[f32], beam_score: f32, row: u32) {
        let mut base = 0u32;
        let mut blocks = log_probs.chunks_exact(BLOCK);
        for block in &mut blocks {
            if self.heap.len() == self.k {
                let m = block_max(block);
                // f32 addition is monotone, so no entry of the block can pass if its max fails.
                if beam_score + m <= self.heap[0].score {
                    base += BLOCK as u32;
                    continue;
                }
            }
            for (j, &x) in block.iter().enumerate() {
                self.offer(beam_score + x, row, base + j as u32);
            }
            base += BLOCK as u32;
        }
        for (j, &x) in blocks.remainder().iter().enumerate() {
            self.offer(beam_score + x, row, base + j as u32);
        }
    }

    /// Moves the candidates into `out`, best first.
    pub fn drain_sorted(&mut self, out: &mut Vec<Candidate>) {
        out.clear();
        out.extend_from_slice(&self.heap);
        self.heap.clear();
        // At most 2 x num_beams entries: sorting them is negligible next to the row scans.
        out.sort_unstable_by(|a, b| {
            if a.better_than(b) {
                std::cmp::Ordering::Less
            } else if b.better_than(a) {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        });
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let p = (i - 1) / 2;
            // The worse candidate goes to the top.
            if self.heap[p].better_than(&self.heap[i]) {
                self.heap.swap(p, i);
                i = p;
            } else {
                break;
            }
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut worst = i;
            if l < n && self.heap[worst].better_than(&self.heap[l]) {
                worst = l;
            }
            if r < n && self.heap[worst].better_than(&self.heap[r]) {
                worst = r;
            }
            if worst == i {
                break;
            }
            self.heap.swap(i, worst);
            i = worst;
        }
    }
}

#[inline]
fn block_max(block: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    for lane in block.chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(lane) {
            // `x > a ? x : a` is exactly the semantics of the SIMD max instruction.
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter()
        .copied()
        .fold(f32::NEG_INFINITY, |m, x| if x > m { x } else { m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn dense_selection_matches_full_sort() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for trial in 0..50 {
            let vocab = 1 + rng.random_range(0..300);
            let rows = 1 + rng.random_range(0..5);
            let k = 1 + rng.random_range(0..12);
            // Coarse values force many ties, exercising the tie-break.
            let data: Vec<f32> = (0..rows * vocab)
                .map(|_| {
                    if rng.random_bool(0.1) {
                        f32::NEG_INFINITY
                    } else {
                        -(rng.random_range(0..20) as f32) / 4.0
                    }
                })
                .collect();
            let beam: Vec<f32> = (0..rows)
                .map(|_| -(rng.random_range(0..4) as f32))
                .collect();
            let mut topk = TopK::new(k);
            for r in 0..rows {
                topk.offer_dense(&data[r * vocab..(r + 1) * vocab], beam[r], r as u32);
            }
            let mut got = Vec::new();
            topk.drain_sorted(&mut got);
            let mut all: Vec<Candidate> = (0..rows * vocab)
                .map(|i| Candidate {
                    score: beam[i / vocab] + data[i],
                    row: (i / vocab) as u32,
                    token: (i % vocab) as u32,
                })
                .filter(|c| c.score > f32::NEG_INFINITY)
                .collect();
            all.sort_by(|a, b| {
                b.score
                    .partial_cmp(&a.score)
                    .unwrap()
                    .then((a.row, a.token).cmp(&(b.row, b.token)))
            });
            all.truncate(k);
            assert_eq!(got, all, "trial {trial}");
        }
    }
}
