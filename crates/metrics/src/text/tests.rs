//! Unit tests of the text metrics (kept beside `text.rs` so that it stays readable).
use super::*;

const EPS: f64 = 1e-12;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= EPS * b.abs().max(1.0)
}

#[test]
fn tokenize_matches_python_split() {
    let t: Vec<&str> = tokenize("  a\tb\n\nc \u{a0}d\u{1f}e\u{3000}f  ").collect();
    assert_eq!(t, ["a", "b", "c", "d", "e", "f"]);
    assert_eq!(tokenize("   ").count(), 0);
    assert_eq!(tokenize("").count(), 0);
}

#[test]
fn interning_is_shared_across_sides() {
    let c = TextCorpus::new(&["a b c"], &["c d a a"]).unwrap();
    // a, b, c, d.
    assert_eq!(c.vocabulary_size(), 4);
    assert_eq!(c.references.get(0), [0u32, 1, 2]);
    assert_eq!(c.candidates.get(0), [2u32, 3, 0, 0]);
}

#[test]
fn pair_counts_by_hand() {
    // candidate  a a b c     reference  a b b d
    // unigrams: cand {a:2, b:1, c:1}, ref {a:1, b:2, d:1}
    //   clipped = min(2,1) + min(1,2) + 0 = 2; sets 3 / 3, overlap {a, b} = 2.
    let mut s = Scratch::default();
    let c = [0, 0, 1, 2];
    let r = [0, 1, 1, 3];
    let one = order_counts(&c, &r, 1, &mut s);
    assert_eq!(
        one,
        OrderCounts {
            clipped: 2,
            candidate_set: 3,
            reference_set: 3,
            set_overlap: 2
        }
    );
    // bigrams: cand {aa, ab, bc}, ref {ab, bb, bd}: clipped 1 (ab), sets 3 / 3, overlap 1.
    let two = order_counts(&c, &r, 2, &mut s);
    assert_eq!((two.clipped, two.set_overlap), (1, 1));
    // 5-grams take the slice path: none exist in 4-token sentences.
    assert_eq!(order_counts(&c, &r, 5, &mut s), OrderCounts::default());
    // Slice path agrees with the packed path on a repeated 5-gram:
    // cand = x^6 has two (identical) 5-grams, ref = x^5 has one: clipped 1, sets 1/1.
    let x6 = [7; 6];
    let x5 = [7; 5];
    assert_eq!(
        order_counts(&x6, &x5, 5, &mut s),
        OrderCounts {
            clipped: 1,
            candidate_set: 1,
            reference_set: 1,
            set_overlap: 1
        }
    );
}

#[test]
fn lcs_by_hand() {
    let mut row = Vec::new();
    // "a b c d e" vs "a c e f": LCS a c e = 3.
    assert_eq!(lcs_len(&[0, 1, 2, 3, 4], &[0, 2, 4, 5], &mut row), 3);
    // Crossed orders: "a b" vs "b a" → 1.
    assert_eq!(lcs_len(&[0, 1], &[1, 0], &mut row), 1);
    assert_eq!(lcs_len(&[], &[1, 0], &mut row), 0);
    assert_eq!(lcs_len(&[1, 0], &[], &mut row), 0);
}

#[test]
fn bleu_one_pair_by_hand() {
    // ref  "the cat sat on the mat"  (r = 6)
    // cand "the cat the mat"         (c = 4)
    // 1-grams: the×2 (ref has 2) + cat + mat = 4 of 4 → p1 = 1
    // 2-grams: "the cat" ✓, "cat the" ✗, "the mat" ✓ → 2/3
    // 3-grams: "the cat the" ✗, "cat the mat" ✗ → 0/2
    // BP = exp(1 − 6/4) = exp(−0.5) = 0.6065306597126334
    // BLEU-1 = 100·BP = 60.65306597126334
    // BLEU-2 = 100·BP·sqrt(1·2/3) = 60.653066·0.8164966 = 49.52336...
    // BLEU-3 = 0: one precision is 0 and there is no smoothing.
    let refs = ["the cat sat on the mat"];
    let cands = ["the cat the mat"];
    let c = TextCorpus::new(&refs, &cands).unwrap();
    let bp = (-0.5f64).exp();
    assert!(close(c.bleu(1, Smoothing::None).unwrap(), 100.0 * bp));
    let b2 = 100.0 * bp * (2.0f64 / 3.0).sqrt();
    assert!((c.bleu(2, Smoothing::None).unwrap() - b2).abs() < 1e-9);
    assert_eq!(c.bleu(3, Smoothing::None).unwrap(), 0.0);
    // Add-one: p = (4+1)/(4+1), (2+1)/(3+1), (0+1)/(2+1), (0+1)/(1+1)
    // BLEU-4 = 100·BP·(1 · 3/4 · 1/3 · 1/2)^(1/4) = 100·0.60653066·0.125^0.25
    //        = 100·0.60653066·0.59460356 = 36.06452...
    let s4 = 100.0 * bp * (0.75f64 * (1.0 / 3.0) * 0.5).powf(0.25);
    assert!((c.bleu(4, Smoothing::AddOne).unwrap() - s4).abs() < 1e-9);
    assert_eq!(c.bleu(0, Smoothing::None), Err(MetricsError::ZeroOrder));
}

#[test]
fn bleu_sums_counts_over_the_corpus() {
    // pair 1: ref "a b c d" cand "a b"        → 1-gram 2/2, 2-gram 1/1
    // pair 2: ref "e f"     cand "e x f y z"  → 1-gram 2/5, 2-gram 0/4
    // corpus 1-gram (2+2)/(2+5) = 4/7; c = 7 > r = 6 → BP = 1.
    // BLEU-1 = 100·4/7 = 57.142857...  (a mean of sentence BLEUs would differ)
    // BLEU-2 = 100·sqrt(4/7 · 1/5) = 100·sqrt(4/35) = 33.806170...
    let refs = ["a b c d", "e f"];
    let cands = ["a b", "e x f y z"];
    assert!(close(
        bleu(&refs, &cands, 1, Smoothing::None).unwrap(),
        400.0 / 7.0
    ));
    assert!(close(
        bleu(&refs, &cands, 2, Smoothing::None).unwrap(),
        100.0 * (4.0f64 / 35.0).sqrt()
    ));
}

#[test]
fn bleu_brevity_penalty_boundary() {
    // c = r exactly: ratio 1 is not > 1, BP = exp(1 − 1) = 1.
    assert!(close(
        bleu(&["a b c"], &["a b c"], 3, Smoothing::None).unwrap(),
        100.0
    ));
    // Candidate longer than the reference: ref "a b", cand "a b c d" → BP 1, p1 = 2/4.
    assert!(close(
        bleu(&["a b"], &["a b c d"], 1, Smoothing::None).unwrap(),
        50.0
    ));
}

#[test]
fn bleu_edge_cases() {
    // Empty candidate in a corpus: it adds r = 2, nothing to c or the counts.
    // pair 1: ref "a b" cand "a b"; pair 2: ref "c d" cand "" → p1 = 2/2, c = 2, r = 4,
    // BP = exp(1 − 4/2) = exp(−1) → BLEU-1 = 36.787944...
    assert!(close(
        bleu(&["a b", "c d"], &["a b", ""], 1, Smoothing::None).unwrap(),
        100.0 * (-1.0f64).exp()
    ));
    // Every candidate empty: c = 0 → 0 (the script would divide by zero), smoothed too.
    assert_eq!(bleu(&["a b"], &[""], 1, Smoothing::None).unwrap(), 0.0);
    assert_eq!(bleu(&["a b"], &[""], 4, Smoothing::AddOne).unwrap(), 0.0);
    // Empty reference: r = 0 < c = 2 → BP 1, but no match → 0; smoothed: p1 = 1/3.
    assert_eq!(bleu(&[""], &["a b"], 1, Smoothing::None).unwrap(), 0.0);
    assert!(close(
        bleu(&[""], &["a b"], 1, Smoothing::AddOne).unwrap(),
        100.0 / 3.0
    ));
    // All-identical corpus of 3-word sentences: BLEU-1..3 = 100, but BLEU-4 = 0 since no
    // 4-gram exists (possible = 0 → precision 0), as the reference computes; add-one
    // smoothing gives (0+1)/(0+1) = 1 → 100.
    let same = ["x y z", "x y z"];
    assert!(close(
        bleu(&same, &same, 3, Smoothing::None).unwrap(),
        100.0
    ));
    assert_eq!(bleu(&same, &same, 4, Smoothing::None).unwrap(), 0.0);
    assert!(close(
        bleu(&same, &same, 4, Smoothing::AddOne).unwrap(),
        100.0
    ));
    // Mismatch and empty corpus are errors.
    assert_eq!(
        bleu(&["a"], &["a", "b"], 1, Smoothing::None),
        Err(MetricsError::LengthMismatch {
            references: 1,
            candidates: 2
        })
    );
    let none: [&str; 0] = [];
    assert_eq!(
        bleu(&none, &none, 1, Smoothing::None),
        Err(MetricsError::Empty("pairs"))
    );
}

#[test]
fn rouge_one_pair_by_hand() {
    // ref  "the cat sat on the mat"  → unigram set {the, cat, sat, on, mat} (5), m = 6
    // cand "the cat the mat"         → unigram set {the, cat, mat} (3), n = 4
    // ROUGE-1: overlap 3 → P = 3/3 = 1, R = 3/5 = 0.6,
    //          F = 2·(0.6/(1.6+1e-8)) = 0.74999999531...
    // ROUGE-2: cand {the cat, cat the, the mat}, ref {the cat, cat sat, sat on, on the,
    //          the mat}: overlap 2 → P = 2/3, R = 2/5,
    //          F = 2·((4/15)/(16/15 + 1e-8)) = 0.4999999953...
    // ROUGE-L: LCS "the cat the mat" = 4 → R = 4/6, P = 4/4 = 1, β = P/R = 1.5 (+ O(1e-12)),
    //          F = (1+2.25)·(2/3)·1/(2/3 + 2.25·1) = (13/6)/(35/12) = 26/35 = 0.742857...
    let r = rouge(&["the cat sat on the mat"], &["the cat the mat"]).unwrap();
    let f1 = 2.0 * (0.6 / (1.6 + 1e-8));
    assert!(close(r.rouge_1.f_score, 100.0 * f1));
    assert!(close(r.rouge_1.p_score, 100.0));
    assert!(close(r.rouge_1.r_score, 60.0));
    let (p2, r2) = (2.0 / 3.0, 0.4);
    assert!(close(
        r.rouge_2.f_score,
        100.0 * 2.0 * ((p2 * r2) / (p2 + r2 + 1e-8))
    ));
    assert!(close(r.rouge_2.p_score, 100.0 * p2));
    assert!(close(r.rouge_2.r_score, 40.0));
    assert!((r.rouge_l.f_score - 100.0 * 26.0 / 35.0).abs() < 1e-8);
    assert!(close(r.rouge_l.p_score, 100.0));
    assert!(close(r.rouge_l.r_score, 100.0 * 4.0 / 6.0));
    // Exact epsilon arithmetic of ROUGE-L:
    let (rl, pl) = (4.0f64 / 6.0, 1.0f64);
    let beta = pl / (rl + 1e-12);
    let fl = ((1.0 + beta * beta) * rl * pl) / (rl + beta * beta * pl + 1e-12);
    assert!(close(r.rouge_l.f_score, 100.0 * fl));
}

#[test]
fn rouge_is_a_mean_over_pairs() {
    // pair 1 identical "a b": ROUGE-1 P = R = 1, F = 2/(2+1e-8).
    // pair 2 disjoint "c" vs "d": all 0.
    // mean: P = R = 50, F = 50·2/(2+1e-8) = 49.99999975.
    let r = rouge(&["a b", "c"], &["a b", "d"]).unwrap();
    assert!(close(r.rouge_1.p_score, 50.0));
    assert!(close(r.rouge_1.f_score, 50.0 * 2.0 / (2.0 + 1e-8)));
    // ROUGE-2: pair 1 sets {ab}/{ab} → 1; pair 2 sets are empty → 0. Mean 50.
    assert!(close(r.rouge_2.r_score, 50.0));
    // ROUGE-L: pair 1 l = 2, R = P = 1; pair 2 l = 0 → F = 0/(0 + 1e-12) = 0.
    assert!(close(r.rouge_l.r_score, 50.0));
}

#[test]
fn rouge_sets_ignore_repeats() {
    // cand "a a a" → set {a}; ref "a b" → set {a, b}: P = 1, R = 1/2.
    // ROUGE-L: LCS = 1, P = 1/3, R = 1/2.
    let r = rouge(&["a b"], &["a a a"]).unwrap();
    assert!(close(r.rouge_1.p_score, 100.0));
    assert!(close(r.rouge_1.r_score, 50.0));
    assert!(close(r.rouge_l.p_score, 100.0 / 3.0));
    assert!(close(r.rouge_l.r_score, 50.0));
}

#[test]
fn rouge_edge_cases() {
    // Empty candidate and/or empty reference: every score of that pair is 0.
    for (re, ca) in [("a b", ""), ("", "a b"), ("", "")] {
        let r = rouge(&[re], &[ca]).unwrap();
        assert_eq!(r, RougeScores::default(), "{re:?} vs {ca:?}");
    }
    // One-word sentences have no bigram: ROUGE-2 = 0, ROUGE-1 = identical.
    let r = rouge(&["a"], &["a"]).unwrap();
    assert_eq!(r.rouge_2, Prf::default());
    assert!(close(r.rouge_1.p_score, 100.0));
    // All-identical corpus: P = R = 100 and F just under 100 by the epsilons.
    let same = ["x y z", "u v"];
    let r = rouge(&same, &same).unwrap();
    for prf in [r.rouge_1, r.rouge_2, r.rouge_l] {
        assert!(close(prf.p_score, 100.0) && close(prf.r_score, 100.0));
        assert!(prf.f_score < 100.0 && prf.f_score > 100.0 - 1e-6);
    }
    assert!(close(r.rouge_1.f_score, 100.0 * 2.0 / (2.0 + 1e-8)));
}

#[test]
fn unique_sentence_ratio_by_hand() {
    // "a b", "a  b" (same tokens), "b a", "" → distinct {a b, b a, ""} = 3 of 4.
    let usr = unique_sentence_ratio(&["a b", "a  b", "b a", ""]).unwrap();
    assert_eq!(usr, 0.75);
    assert_eq!(unique_sentence_ratio(&["z"]).unwrap(), 1.0);
    assert_eq!(unique_sentence_ratio(&["z", "z", "z"]).unwrap(), 1.0 / 3.0);
    let none: [&str; 0] = [];
    assert_eq!(
        unique_sentence_ratio(&none),
        Err(MetricsError::Empty("candidates"))
    );
}

#[test]
fn distinct_n_by_hand() {
    // "a b a", "b a c": unigrams a b a b a c → {a, b, c} 3 / 6 = 0.5
    //                   bigrams ab ba ba ac → {ab, ba, ac} 3 / 4 = 0.75
    //                   trigrams aba bac → 2 / 2 = 1
    let cands = ["a b a", "b a c"];
    assert_eq!(distinct_n(&cands, 1).unwrap(), 0.5);
    assert_eq!(distinct_n(&cands, 2).unwrap(), 0.75);
    assert_eq!(distinct_n(&cands, 3).unwrap(), 1.0);
    // 5-grams (slice path): "a a a a a a" twice → 2 + 2 = 4 five-grams, all equal → 1/4.
    assert_eq!(
        distinct_n(&["a a a a a a", "a a a a a a"], 5).unwrap(),
        0.25
    );
    // No candidate long enough: 0.
    assert_eq!(distinct_n(&["a", ""], 2).unwrap(), 0.0);
    assert_eq!(distinct_n(&cands, 0), Err(MetricsError::ZeroOrder));
}

#[test]
fn report_agrees_with_single_metrics_and_keys() {
    let refs = ["the cat sat on the mat", "great value for the price", "a b"];
    let cands = ["the cat the mat", "great value", "a b"];
    let c = TextCorpus::new(&refs, &cands).unwrap();
    let rep = c.report();
    assert_eq!(rep.bleu_1, c.bleu(1, Smoothing::None).unwrap());
    assert_eq!(rep.bleu_4, c.bleu(4, Smoothing::None).unwrap());
    let r = c.rouge();
    assert_eq!(
        (rep.rouge_1, rep.rouge_2, rep.rouge_l),
        (r.rouge_1, r.rouge_2, r.rouge_l)
    );
    assert_eq!(rep.usr, 1.0);
    assert_eq!(rep.distinct_1, c.distinct_n(1).unwrap());
    let json = serde_json::to_value(rep).unwrap();
    let keys: Vec<&String> = json.as_object().unwrap().keys().collect();
    let mut expected = vec![
        "bleu_1",
        "bleu_4",
        "rouge_1/f_score",
        "rouge_1/p_score",
        "rouge_1/r_score",
        "rouge_2/f_score",
        "rouge_2/p_score",
        "rouge_2/r_score",
        "rouge_l/f_score",
        "rouge_l/p_score",
        "rouge_l/r_score",
        "usr",
        "distinct_1",
        "distinct_2",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(json["rouge_1/p_score"], rep.rouge_1.p_score);
}
