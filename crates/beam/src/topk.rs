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

    /// Offers every token of a dense row of beam `row` whose score is `beam_score`: token `j`
    /// scores `beam_score + (values[j] − shift)` (`shift` is the row's log-sum-exp for raw
    /// logits, 0 for log-probabilities). The `banned` token, if any, is skipped. Blocks whose
    /// best entry cannot beat the current k-th best are skipped after one vectorised max, so a
    /// full row costs little more than reading it.
    pub fn offer_dense(
        &mut self,
        values: &[f32],
        beam_score: f32,
        shift: f32,
        row: u32,
        banned: Option<u32>,
    ) {
        match banned.map(|t| t as usize).filter(|&t| t < values.len()) {
            None => self.offer_segment(values, 0, beam_score, shift, row),
            Some(t) => {
                self.offer_segment(&values[..t], 0, beam_score, shift, row);
                self.offer_segment(&values[t + 1..], t as u32 + 1, beam_score, shift, row);
            }
        }
    }

    /// [`TopK::offer_dense`] over `values`, whose first entry is token `first_token`.
    fn offer_segment(
        &mut self,
        values: &[f32],
        first_token: u32,
        beam_score: f32,
        shift: f32,
        row: u32,
    ) {
        peapod_kernels::dispatch!(
            offer_segment_avx2(self, values, first_token, beam_score, shift, row),
            offer_segment(self, values, first_token, beam_score, shift, row)
        )
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

peapod_kernels::avx2_variant!(
    fn offer_segment_avx2(
        topk: &mut TopK,
        values: &[f32],
        first_token: u32,
        beam_score: f32,
        shift: f32,
        row: u32
    ) = offer_segment
);

#[inline(always)]
fn offer_segment(
    topk: &mut TopK,
    values: &[f32],
    first_token: u32,
    beam_score: f32,
    shift: f32,
    row: u32,
) {
    let mut base = first_token;
    let mut blocks = values.chunks_exact(BLOCK);
    for block in &mut blocks {
        if topk.heap.len() == topk.k {
            let m = block_max(block);
            // f32 subtraction and addition are monotone, so no entry of the block can pass if
            // its maximum fails.
            if beam_score + (m - shift) <= topk.heap[0].score {
                base += BLOCK as u32;
                continue;
            }
        }
        for (j, &x) in block.iter().enumerate() {
            topk.offer(beam_score + (x - shift), row, base + j as u32);
        }
        base += BLOCK as u32;
    }
    for (j, &x) in blocks.remainder().iter().enumerate() {
        topk.offer(beam_score + (x - shift), row, base + j as u32);
    }
}

#[inline(always)]
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
                topk.offer_dense(
                    &data[r * vocab..(r + 1) * vocab],
                    beam[r],
                    0.0,
                    r as u32,
                    None,
                );
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

    #[test]
    fn dense_selection_applies_the_shift_and_skips_the_banned_token() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for trial in 0..50 {
            let vocab = 1 + rng.random_range(0..400);
            let k = 1 + rng.random_range(0..8);
            let data: Vec<f32> = (0..vocab).map(|_| rng.random_range(-5.0..5.0)).collect();
            let (beam, shift) = (-1.25f32, rng.random_range(-3.0f32..3.0));
            let banned = rng
                .random_bool(0.7)
                .then(|| rng.random_range(0..vocab as u32 + 2));
            let mut topk = TopK::new(k);
            topk.offer_dense(&data, beam, shift, 0, banned);
            let mut got = Vec::new();
            topk.drain_sorted(&mut got);
            let mut all: Vec<Candidate> = (0..vocab as u32)
                .filter(|&t| Some(t) != banned)
                .map(|t| Candidate {
                    score: beam + (data[t as usize] - shift),
                    row: 0,
                    token: t,
                })
                .collect();
            all.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.token.cmp(&b.token)));
            all.truncate(k);
            assert_eq!(got, all, "trial {trial}");
        }
    }
}
