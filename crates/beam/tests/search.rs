//! Behaviour of `beam_search`: brute-force cross-checks on tiny deterministic models,
//! hand-computed HF cases, constraints and error paths. One file of ~800 lines on purpose:
//! every case shares the reference models and the brute-force enumerator defined here.

use std::sync::Arc;

use peapod_beam::{
    beam_search, log_softmax_rows_in_place, BeamConfig, BeamError, Constraint, Hypothesis,
    PrefixTrie, StepModel, StepScores,
};
use rand::{Rng, SeedableRng};

const EOS: u32 = 1;
const START: u32 = 0;

/// Log-probabilities of a tiny deterministic "language model": a hash of (seed, input, prefix,
/// token) gives the logits, so every prefix has its own distribution.
fn toy_log_probs(seed: u64, input: usize, prefix: &[u32], vocab: usize) -> Vec<f32> {
    let mut logits = toy_logits(seed, input, prefix, vocab);
    log_softmax_rows_in_place(&mut logits, vocab).unwrap();
    logits
}

/// The unnormalised logits behind [`toy_log_probs`] (offset by a prefix-dependent constant, so
/// that normalising matters).
fn toy_logits(seed: u64, input: usize, prefix: &[u32], vocab: usize) -> Vec<f32> {
    let mut h: u64 = seed ^ 0x9E37_79B9_7F4A_7C15 ^ (input as u64).wrapping_mul(0x1000_0000_01B3);
    for &t in prefix {
        h = (h ^ u64::from(t) ^ 0xABCD).wrapping_mul(0x1000_0000_01B3);
    }
    let mut logits: Vec<f32> = (0..vocab as u64)
        .map(|tok| {
            let mut x =
                (h ^ tok.wrapping_mul(0x2545_F491_4F6C_DD1D)).wrapping_mul(0xff51_afd7_ed55_8ccd);
            x ^= x >> 29;
            x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
            x ^= x >> 32;
            ((x % 100_000) as f32 / 100_000.0) * 6.0 - 3.0
        })
        .collect();
    let offset = (h % 17) as f32 - 8.0;
    logits.iter_mut().for_each(|x| *x += offset);
    logits
}

/// Implements `StepModel` over `toy_log_probs`, keeping every row's full prefix as its state so
/// that a wrong reorder or a wrong last token shows up as an error.
struct Toy {
    seed: u64,
    vocab: usize,
    row_counts: Vec<usize>,
    /// Write raw logits ([`StepScores::Logits`]) instead of log-probabilities.
    logits: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("toy model: {0}")]
struct ToyError(String);

impl StepModel for Toy {
    /// (input, decoder prefix including the start token, whether the start has been fed).
    type State = Vec<(usize, Vec<u32>, bool)>;
    type Error = ToyError;

    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn step_scores(&self) -> StepScores {
        if self.logits {
            StepScores::Logits
        } else {
            StepScores::LogProbabilities
        }
    }

    fn step(
        &mut self,
        state: &mut Self::State,
        last_tokens: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), ToyError> {
        if state.len() != last_tokens.len() {
            return Err(ToyError(format!(
                "{} rows, {} tokens",
                state.len(),
                last_tokens.len()
            )));
        }
        self.row_counts.push(state.len());
        out.clear();
        for ((input, prefix, fed), &last) in state.iter_mut().zip(last_tokens) {
            if *fed {
                prefix.push(last);
            } else if last != START {
                return Err(ToyError(format!(
                    "first token {last} is not the decoder start"
                )));
            }
            *fed = true;
            if self.logits {
                out.extend(toy_logits(self.seed, *input, &prefix[1..], self.vocab));
            } else {
                out.extend(toy_log_probs(self.seed, *input, &prefix[1..], self.vocab));
            }
        }
        Ok(())
    }

    fn reorder(&mut self, state: &mut Self::State, indices: &[usize]) -> Result<(), ToyError> {
        *state = indices.iter().map(|&i| state[i].clone()).collect();
        Ok(())
    }
}

fn toy(seed: u64, vocab: usize) -> Toy {
    Toy {
        seed,
        vocab,
        row_counts: Vec::new(),
        logits: false,
    }
}

fn initial_state(batch: usize) -> Vec<(usize, Vec<u32>, bool)> {
    (0..batch).map(|b| (b, vec![START], false)).collect()
}

fn cfg(num_beams: usize, ret: usize, max_length: usize, lp: f32) -> BeamConfig {
    let mut c = BeamConfig::t5(num_beams, ret, max_length);
    c.length_penalty = lp;
    c
}

/// Every complete hypothesis reachable within `max_length` (EOS-terminated ones allowed by
/// `min_length`, plus unterminated ones of the full length when unconstrained), scored like HF,
/// best first.
fn brute_force(
    seed: u64,
    input: usize,
    vocab: usize,
    c: &BeamConfig,
    allowed: Option<&PrefixTrie>,
) -> Vec<Hypothesis> {
    let width = c.max_length - 1;
    let mut out = Vec::new();
    let mut stack: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
    while let Some((prefix, sum)) = stack.pop() {
        let t = prefix.len() + 1;
        let lp = toy_log_probs(seed, input, &prefix, vocab);
        for tok in 0..vocab as u32 {
            if tok == EOS && t < c.min_length {
                continue;
            }
            let mut seq = prefix.clone();
            seq.push(tok);
            if let Some(trie) = allowed {
                if !trie.allowed(&prefix).contains(&tok) {
                    continue;
                }
            }
            let s = sum + lp[tok as usize];
            let score = s / (t as f32).powf(c.length_penalty);
            if tok == EOS {
                out.push(Hypothesis { tokens: seq, score });
            } else if t == width {
                if allowed.is_none() {
                    out.push(Hypothesis { tokens: seq, score });
                }
            } else {
                stack.push((seq, s));
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

fn assert_same(got: &[Hypothesis], want: &[Hypothesis]) {
    assert_eq!(got.len(), want.len(), "got {got:?}\nwant {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.tokens, w.tokens, "got {got:?}\nwant {want:?}");
        assert!(
            (g.score - w.score).abs() <= 1e-6 * w.score.abs().max(1.0),
            "{g:?} vs {w:?}"
        );
    }
}

#[test]
fn wide_beams_return_exactly_the_brute_force_ranking() {
    // vocab 4, depth 3: 64 beams >= 4^3 make the search exhaustive.
    let vocab = 4;
    for (seed, lp, min_length, early) in [
        (1, 1.0, 0, false),
        (2, 0.0, 0, true),
        (3, 2.0, 2, false),
        (4, -0.5, 3, true),
        (5, 1.0, 4, false),
    ] {
        let mut c = cfg(64, 64, 4, lp);
        c.min_length = min_length;
        c.early_stopping = early;
        let batch = 3;
        let mut m = toy(seed, vocab);
        let got = beam_search(&mut m, initial_state(batch), batch, &c, &Constraint::None).unwrap();
        assert_eq!(got.len(), batch);
        for (b, hyps) in got.iter().enumerate() {
            let want = brute_force(seed, b, vocab, &c, None);
            assert!(!want.is_empty());
            assert_same(hyps, &want);
            for h in hyps {
                // min_length counts the decoder start: EOS is at least the min_length-th token.
                if h.tokens.last() == Some(&EOS) {
                    assert!(h.tokens.len() >= min_length.max(1));
                }
            }
        }
        // One row per input on the first step, then at most num_beams per input.
        assert_eq!(m.row_counts[0], batch);
        assert!(m.row_counts.iter().all(|&r| r <= batch * 64));
    }
}

#[test]
fn returns_the_top_of_the_brute_force_list_when_fewer_are_requested() {
    let vocab = 4;
    let c = cfg(64, 5, 4, 1.0);
    let mut m = toy(11, vocab);
    let got = beam_search(&mut m, initial_state(2), 2, &c, &Constraint::None).unwrap();
    for (b, hyps) in got.iter().enumerate() {
        assert_same(hyps, &brute_force(11, b, vocab, &c, None)[..5]);
    }
}

/// A deliberately plain transcription of HF's `BeamSearchScorer` loop (full sort of every
/// candidate, one input at a time, no caches) to cross-check the optimised search with narrow
/// beams, where it is not exhaustive.
fn reference_beam_search(seed: u64, input: usize, vocab: usize, c: &BeamConfig) -> Vec<Hypothesis> {
    let nb = c.num_beams;
    let width = c.max_length - 1;
    let mut beams: Vec<(Vec<u32>, f32)> = vec![(Vec::new(), 0.0)];
    let mut finished: Vec<(Hypothesis, usize)> = Vec::new();
    let mut order = 0;
    for t in 1..=width {
        let mut all: Vec<(f32, usize, u32)> = Vec::new();
        for (bi, (prefix, s)) in beams.iter().enumerate() {
            let lp = toy_log_probs(seed, input, prefix, vocab);
            for tok in 0..vocab as u32 {
                if tok == EOS && t < c.min_length {
                    continue;
                }
                let v = s + lp[tok as usize];
                if v > f32::NEG_INFINITY {
                    all.push((v, bi, tok));
                }
            }
        }
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then((a.1, a.2).cmp(&(b.1, b.2))));
        all.truncate(2 * nb);
        let denom = (t as f32).powf(c.length_penalty);
        let mut next = Vec::new();
        for (rank, &(v, bi, tok)) in all.iter().enumerate() {
            let mut seq = beams[bi].0.clone();
            seq.push(tok);
            if tok == EOS || t == width {
                if rank < nb {
                    let h = Hypothesis {
                        tokens: seq,
                        score: v / denom,
                    };
                    if finished.len() < nb {
                        finished.push((h, order));
                    } else {
                        let (wi, _) = finished
                            .iter()
                            .enumerate()
                            .min_by(|a, b| {
                                a.1 .0
                                    .score
                                    .total_cmp(&b.1 .0.score)
                                    .then(a.1 .1.cmp(&b.1 .1))
                            })
                            .unwrap();
                        if h.score > finished[wi].0.score {
                            finished[wi] = (h, order);
                        }
                    }
                    order += 1;
                }
            } else if next.len() < nb {
                next.push((seq, v));
            }
        }
        beams = next;
        if beams.is_empty() {
            break;
        }
        if finished.len() == nb {
            let worst = finished
                .iter()
                .map(|f| f.0.score)
                .fold(f32::INFINITY, f32::min);
            if c.early_stopping || worst >= beams[0].1 / denom {
                break;
            }
        }
    }
    finished.sort_by(|a, b| b.0.score.total_cmp(&a.0.score).then(a.1.cmp(&b.1)));
    finished
        .into_iter()
        .take(c.num_return_sequences)
        .map(|f| f.0)
        .collect()
}

#[test]
fn narrow_beams_match_a_plain_reference_implementation() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    for trial in 0..60 {
        let vocab = 3 + rng.random_range(0..150);
        let nb = 1 + rng.random_range(0..6);
        let mut c = cfg(
            nb,
            1 + rng.random_range(0..nb),
            2 + rng.random_range(0..6),
            0.0,
        );
        c.length_penalty = [0.0, 1.0, 2.0, -1.0][rng.random_range(0..4)];
        c.min_length = rng.random_range(0..4);
        c.early_stopping = rng.random_bool(0.5);
        let batch = 1 + rng.random_range(0..4);
        let seed = rng.random();
        let got = beam_search(
            &mut toy(seed, vocab),
            initial_state(batch),
            batch,
            &c,
            &Constraint::None,
        )
        .unwrap();
        for (b, hyps) in got.iter().enumerate() {
            let want = reference_beam_search(seed, b, vocab, &c);
            assert_eq!(hyps, &want, "trial {trial} input {b} cfg {c:?}");
        }
    }
}

/// The same next-token probabilities after every prefix; counts its steps.
struct Fixed(Vec<f32>, usize);

impl StepModel for Fixed {
    type State = ();
    type Error = std::convert::Infallible;
    fn vocab_size(&self) -> usize {
        self.0.len()
    }
    fn step(&mut self, _: &mut (), last: &[u32], out: &mut Vec<f32>) -> Result<(), Self::Error> {
        self.1 += 1;
        out.clear();
        for _ in last {
            out.extend(self.0.iter().map(|p| p.ln()));
        }
        Ok(())
    }
    fn reorder(&mut self, _: &mut (), _: &[usize]) -> Result<(), Self::Error> {
        Ok(())
    }
}

fn run_fixed(probs: &[f32], c: &BeamConfig) -> Vec<Hypothesis> {
    run_fixed_counting(probs, c).0
}

/// Hypotheses of a single input and the number of steps the search ran.
fn run_fixed_counting(probs: &[f32], c: &BeamConfig) -> (Vec<Hypothesis>, usize) {
    let mut m = Fixed(probs.to_vec(), 0);
    let h = beam_search(&mut m, (), 1, c, &Constraint::None)
        .unwrap()
        .remove(0);
    (h, m.1)
}

fn expect(got: &[Hypothesis], want: &[(&[u32], f32)]) {
    let want: Vec<Hypothesis> = want
        .iter()
        .map(|(t, s)| Hypothesis {
            tokens: t.to_vec(),
            score: *s,
        })
        .collect();
    assert_same(got, &want);
}

#[test]
fn hand_computed_length_penalty_and_early_stopping() {
    // vocab {0 pad, 1 EOS, 2 "a"}.
    let p = [0.1f32, 0.4, 0.5];
    let (l4, l5) = (0.4f32.ln(), 0.5f32.ln());
    // 2 beams, at most 3 generated tokens. Step 1 finishes [EOS]; step 2 finishes [a EOS]
    // (rank 1); step 3 is the last: its two best continuations [a a a] and [a a EOS] finish.
    let c = cfg(2, 2, 4, 1.0);
    expect(
        &run_fixed(&p, &c),
        &[
            (&[2, 2, 2], (l5 + l5 + l5) / 3.0),
            (&[2, 2, 1], (l5 + l5 + l4) / 3.0),
        ],
    );
    // length_penalty 0: plain sums, so the short hypotheses win and nothing longer gets in.
    expect(
        &run_fixed(&p, &cfg(2, 2, 4, 0.0)),
        &[(&[1], l4), (&[2, 1], l5 + l4)],
    );
    // length_penalty 2 divides by len²: [a a a] = -2.079/9 beats [a a EOS] = -2.303/9.
    expect(
        &run_fixed(&p, &cfg(2, 2, 4, 2.0)),
        &[
            (&[2, 2, 2], (l5 + l5 + l5) / 9.0),
            (&[2, 2, 1], (l5 + l5 + l4) / 9.0),
        ],
    );
    // early_stopping: two hypotheses are finished after step 2, so the search stops there.
    let mut early = cfg(2, 2, 4, 1.0);
    early.early_stopping = true;
    expect(
        &run_fixed(&p, &early),
        &[(&[2, 1], (l5 + l4) / 2.0), (&[1], l4)],
    );
    // min_length 3 forbids EOS at steps 1 and 2: the early-stopping run must go to the end.
    early.min_length = 3;
    expect(
        &run_fixed(&p, &early),
        &[
            (&[2, 2, 2], (l5 + l5 + l5) / 3.0),
            (&[2, 2, 1], (l5 + l5 + l4) / 3.0),
        ],
    );
    let (_, steps) = run_fixed_counting(&p, &early);
    assert_eq!(steps, 3);
    early.min_length = 0;
    assert_eq!(run_fixed_counting(&p, &early).1, 2);
    // HF's heuristic (early_stopping false), lp 0, room for 5 tokens: after step 2 the best live
    // beam [a a] = -1.386 still beats the worst finished [a EOS] = -1.609, so step 3 runs; its
    // candidates (-2.079, -2.303) cannot enter and its best live beam (-2.079) can no longer
    // win: the search stops after 3 of 5 possible steps.
    let (h, steps) = run_fixed_counting(&p, &cfg(2, 2, 6, 0.0));
    expect(&h, &[(&[1], l4), (&[2, 1], l5 + l4)]);
    assert_eq!(steps, 3);
    // lp 1 with room for 5 tokens: each step's [a…a EOS] replaces the worst finished one and
    // the live [a…a] keeps scoring ln 0.5 per token, so the search runs to max_length.
    let (h, steps) = run_fixed_counting(&p, &cfg(2, 2, 6, 1.0));
    expect(
        &h,
        &[
            (&[2, 2, 2, 2, 2], (l5 + l5 + l5 + l5 + l5) / 5.0),
            (&[2, 2, 2, 2, 1], (l5 + l5 + l5 + l5 + l4) / 5.0),
        ],
    );
    assert_eq!(steps, 5);
}

#[test]
fn eos_ranked_below_num_beams_is_not_finished() {
    // p = (0.1, 0.2 EOS, 0.3, 0.4). With 2 beams EOS is ranked third at step 1: HF discards it
    // although its score (ln 0.2) beats everything found later.
    let p = [0.1f32, 0.2, 0.3, 0.4];
    let (l2, l3, l4) = (0.2f32.ln(), 0.3f32.ln(), 0.4f32.ln());
    let c = cfg(2, 2, 3, 0.0);
    expect(
        &run_fixed(&p, &c),
        &[(&[3, 3], l4 + l4), (&[3, 2], l4 + l3)],
    );
    // With 3 beams it is within the top num_beams ranks and wins.
    let got = run_fixed(&p, &cfg(3, 2, 3, 0.0));
    expect(&got, &[(&[1], l2), (&[3, 3], l4 + l4)]);
}

fn random_trie(rng: &mut impl Rng, vocab: u32, n: usize, max_len: usize) -> PrefixTrie {
    let seqs: Vec<Vec<u32>> = (0..n)
        .map(|_| {
            let len = 1 + rng.random_range(0..max_len);
            (0..len)
                .map(|_| 2 + rng.random_range(0..vocab - 2))
                .collect()
        })
        .collect();
    PrefixTrie::new(seqs, EOS).unwrap()
}

#[test]
fn a_model_writing_logits_gets_exactly_the_results_of_its_log_softmax() {
    // The search's own normalisation must reproduce log_softmax_rows_in_place bit for bit,
    // with EOS banned (min_length), with and without constraints, on vocabularies wider than
    // the selection's blocks (and one that is not a multiple of them).
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut found = 0;
    for trial in 0..24u64 {
        let vocab = [7usize, 64, 300, 1_037][trial as usize % 4];
        let batch = 1 + rng.random_range(0..4);
        let nb = 1 + rng.random_range(0..8);
        let mut c = cfg(
            nb,
            1 + rng.random_range(0..nb),
            2 + rng.random_range(0..5),
            1.0,
        );
        c.min_length = rng.random_range(0..4);
        c.early_stopping = rng.random_bool(0.5);
        let constraint = if trial % 3 == 0 {
            Constraint::Shared(Arc::new(random_trie(&mut rng, vocab as u32, 20, 4)))
        } else {
            Constraint::None
        };
        let want = beam_search(
            &mut toy(trial, vocab),
            initial_state(batch),
            batch,
            &c,
            &constraint,
        )
        .unwrap();
        let mut raw = toy(trial, vocab);
        raw.logits = true;
        let got = beam_search(&mut raw, initial_state(batch), batch, &c, &constraint).unwrap();
        assert_eq!(got, want, "trial {trial}");
        found += usize::from(want.iter().any(|h| !h.is_empty()));
    }
    // (Some settings allow no sequence at all, e.g. min_length beyond every allowed item.)
    assert!(found >= 16, "only {found} of 24 trials found hypotheses");
}

#[test]
fn constrained_wide_beams_match_brute_force_over_the_allowed_set() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let vocab = 6;
    for seed in 0..8u64 {
        let trie = Arc::new(random_trie(&mut rng, vocab as u32, 12, 4));
        let mut c = cfg(32, 32, 5, [0.0, 1.0][seed as usize % 2]);
        c.min_length = (seed % 3) as usize;
        let got = beam_search(
            &mut toy(seed, vocab),
            initial_state(2),
            2,
            &c,
            &Constraint::Shared(trie.clone()),
        )
        .unwrap();
        for (b, hyps) in got.iter().enumerate() {
            assert_same(hyps, &brute_force(seed, b, vocab, &c, Some(&trie)));
        }
    }
}

#[test]
fn constrained_search_emits_only_allowed_distinct_sequences() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for trial in 0..40 {
        let vocab = 8 + rng.random_range(0..60u32);
        let batch = 1 + rng.random_range(0..5);
        let tries: Vec<Arc<PrefixTrie>> = (0..batch)
            .map(|_| {
                let n = 3 + rng.random_range(0..30);
                Arc::new(random_trie(&mut rng, vocab, n, 5))
            })
            .collect();
        let nb = 1 + rng.random_range(0..10);
        let mut c = cfg(
            nb,
            1 + rng.random_range(0..nb),
            3 + rng.random_range(0..5),
            1.0,
        );
        c.early_stopping = rng.random_bool(0.5);
        let got = beam_search(
            &mut toy(trial, vocab as usize),
            initial_state(batch),
            batch,
            &c,
            &Constraint::PerInput(tries.clone()),
        )
        .unwrap();
        for (b, hyps) in got.iter().enumerate() {
            for (i, h) in hyps.iter().enumerate() {
                assert!(
                    tries[b].contains(&h.tokens),
                    "trial {trial}: {h:?} not allowed for {b}"
                );
                assert_eq!(h.tokens.last(), Some(&EOS));
                assert!(
                    hyps[..i].iter().all(|o| o.tokens != h.tokens),
                    "duplicate {h:?}"
                );
                assert!(i == 0 || hyps[i - 1].score >= h.score);
            }
            // With at least as many beams as allowed sequences the search is exhaustive.
            if nb >= tries[b].len() {
                let want = brute_force(trial, b, vocab as usize, &c, Some(&tries[b]));
                assert_same(hyps, &want[..want.len().min(c.num_return_sequences)]);
            }
        }
    }
}

#[test]
fn per_input_constraints_restrict_each_input_to_its_own_candidates() {
    // Two inputs with disjoint candidate lists: each must answer from its own list only.
    let a = Arc::new(PrefixTrie::new([vec![2, 3], vec![4], vec![5, 5, 2]], EOS).unwrap());
    let b = Arc::new(PrefixTrie::new([vec![6, 1], vec![7, 2]], EOS).unwrap());
    let c = cfg(4, 4, 6, 1.0);
    let got = beam_search(
        &mut toy(3, 8),
        initial_state(2),
        2,
        &c,
        &Constraint::PerInput(vec![a.clone(), b.clone()]),
    )
    .unwrap();
    let mut first: Vec<Vec<u32>> = got[0].iter().map(|h| h.tokens.clone()).collect();
    let mut second: Vec<Vec<u32>> = got[1].iter().map(|h| h.tokens.clone()).collect();
    first.sort();
    second.sort();
    assert_eq!(first, vec![vec![2, 3, 1], vec![4, 1], vec![5, 5, 2, 1]]);
    assert_eq!(second, vec![vec![6, 1], vec![7, 2, 1]]);
    // A shared trie gives both inputs the union's choices, ranked by their own model scores.
    let both = Arc::new(PrefixTrie::new([vec![2, 3], vec![6]], EOS).unwrap());
    let got = beam_search(
        &mut toy(3, 8),
        initial_state(2),
        2,
        &c,
        &Constraint::Shared(both),
    )
    .unwrap();
    for (i, hyps) in got.iter().enumerate() {
        assert_same(
            hyps,
            &brute_force(
                3,
                i,
                8,
                &c,
                Some(&PrefixTrie::new([vec![2, 3], vec![6]], EOS).unwrap()),
            ),
        );
    }
}

#[test]
fn constrained_beams_cut_by_max_length_are_dropped() {
    // The only allowed sequence needs 4 generated tokens; max_length 4 allows 3.
    let t = Arc::new(PrefixTrie::new([vec![2, 3, 2]], EOS).unwrap());
    let got = beam_search(
        &mut toy(1, 5),
        initial_state(1),
        1,
        &cfg(2, 1, 4, 1.0),
        &Constraint::Shared(t.clone()),
    )
    .unwrap();
    assert!(got[0].is_empty());
    let got = beam_search(
        &mut toy(1, 5),
        initial_state(1),
        1,
        &cfg(2, 1, 5, 1.0),
        &Constraint::Shared(t),
    )
    .unwrap();
    assert_eq!(got[0][0].tokens, vec![2, 3, 2, 1]);
    // min_length beyond the only sequence's length kills its beam: nothing is returned.
    let t = Arc::new(PrefixTrie::new([vec![2]], EOS).unwrap());
    let mut c = cfg(2, 1, 6, 1.0);
    c.min_length = 3;
    let got = beam_search(
        &mut toy(1, 5),
        initial_state(1),
        1,
        &c,
        &Constraint::Shared(t),
    )
    .unwrap();
    assert!(got[0].is_empty());
}

#[test]
fn rows_follow_the_documented_layout() {
    // 3 inputs, 4 beams, vocab large enough that no input finishes early: one row per input,
    // then 4 per input.
    let mut m = toy(8, 50);
    let mut c = cfg(4, 2, 5, 1.0);
    c.min_length = 5;
    let got = beam_search(&mut m, initial_state(3), 3, &c, &Constraint::None).unwrap();
    assert_eq!(m.row_counts, vec![3, 12, 12, 12]);
    assert!(got.iter().all(|h| h.len() == 2 && h[0].tokens.len() == 4));
    assert!(
        beam_search(&mut m, initial_state(0), 0, &c, &Constraint::None)
            .unwrap()
            .is_empty()
    );
}

struct Broken {
    extra: usize,
    fail: bool,
}

impl StepModel for Broken {
    type State = ();
    type Error = std::io::Error;
    fn vocab_size(&self) -> usize {
        4
    }
    fn step(&mut self, _: &mut (), last: &[u32], out: &mut Vec<f32>) -> Result<(), Self::Error> {
        if self.fail {
            return Err(std::io::Error::other("device lost"));
        }
        *out = vec![-1.0; last.len() * 4 + self.extra];
        Ok(())
    }
    fn reorder(&mut self, _: &mut (), _: &[usize]) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[test]
fn errors_are_reported_not_panicked() {
    let ok = cfg(2, 2, 4, 1.0);
    let run = |m: &mut Broken, c: &BeamConfig, k: &Constraint| beam_search(m, (), 2, c, k);
    let mut good = Broken {
        extra: 0,
        fail: false,
    };
    assert!(run(&mut good, &ok, &Constraint::None).is_ok());
    assert!(matches!(
        run(
            &mut Broken {
                extra: 1,
                fail: false
            },
            &ok,
            &Constraint::None
        ),
        Err(BeamError::StepOutputSize {
            rows: 2,
            vocab: 4,
            got: 9
        })
    ));
    let err = run(
        &mut Broken {
            extra: 0,
            fail: true,
        },
        &ok,
        &Constraint::None,
    )
    .unwrap_err();
    assert!(matches!(err, BeamError::Model(_)) && err.to_string().contains("device lost"));
    for bad in [
        cfg(0, 1, 4, 1.0),
        cfg(2, 3, 4, 1.0),
        cfg(2, 0, 4, 1.0),
        cfg(2, 2, 1, 1.0),
        cfg(2, 2, 4, f32::NAN),
        BeamConfig {
            eos_token_id: 4,
            ..ok.clone()
        },
    ] {
        assert!(
            matches!(
                run(&mut good, &bad, &Constraint::None),
                Err(BeamError::InvalidConfig { .. })
            ),
            "{bad:?}"
        );
    }
    let t = Arc::new(PrefixTrie::new([vec![2]], EOS).unwrap());
    assert!(matches!(
        run(&mut good, &ok, &Constraint::PerInput(vec![t.clone()])),
        Err(BeamError::ConstraintCount {
            expected: 2,
            got: 1
        })
    ));
    let wide = Arc::new(PrefixTrie::new([vec![9]], EOS).unwrap());
    assert!(matches!(
        run(&mut good, &ok, &Constraint::Shared(wide)),
        Err(BeamError::InvalidConstraint(_))
    ));
    let other_eos = Arc::new(PrefixTrie::new([vec![2]], 3).unwrap());
    assert!(matches!(
        run(&mut good, &ok, &Constraint::Shared(other_eos)),
        Err(BeamError::InvalidConstraint(_))
    ));
}

#[test]
fn prefix_trie_answers_allowed_continuations() {
    let t = PrefixTrie::new([vec![5, 3], vec![5, 4, 1], vec![5, 3, 1], vec![7]], EOS).unwrap();
    assert_eq!(t.len(), 3, "[5 3] and [5 3 EOS] are the same sequence");
    assert_eq!(t.allowed(&[]), &[5, 7]);
    assert_eq!(t.allowed(&[5]), &[3, 4]);
    assert_eq!(t.allowed(&[5, 3]), &[EOS]);
    assert_eq!(t.allowed(&[5, 3, EOS]), &[] as &[u32]);
    assert_eq!(t.allowed(&[6]), &[] as &[u32]);
    assert!(t.contains(&[5, 4]) && t.contains(&[5, 4, EOS]) && t.contains(&[7]));
    assert!(!t.contains(&[5]) && !t.contains(&[5, 4, 2]));
    assert_eq!(t.max_token(), 7);
    assert!(matches!(
        PrefixTrie::new([vec![]], EOS),
        Err(BeamError::InvalidSequence { index: 0, .. })
    ));
    assert!(PrefixTrie::new([vec![2], vec![EOS]], EOS).is_err());
    assert!(PrefixTrie::new([vec![2, EOS, 3]], EOS).is_err());
    assert!(PrefixTrie::new(Vec::<Vec<u32>>::new(), EOS)
        .unwrap()
        .is_empty());
}
