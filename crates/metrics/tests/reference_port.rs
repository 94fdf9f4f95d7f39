//! Cross-checks against straightforward ports of the reference scripts (POD's `bleu.py`,
//! `rouge.py` and `utils.py`), written for clarity with hash maps and no interning, on random
//! corpora small enough to have many repeats and overlaps.

use std::collections::{HashMap, HashSet};

use peapod_metrics::{hit_ratio_at, ndcg_at, rank_metrics, Smoothing, TextCorpus, NOT_AN_ITEM};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const WORDS: [&str; 7] = ["the", "a", "good", "great", "price", "fit", "is"];

fn sentence(rng: &mut StdRng, min_len: usize, max_len: usize) -> String {
    let len = rng.random_range(min_len..=max_len);
    let words: Vec<&str> = (0..len)
        .map(|_| WORDS[rng.random_range(0..WORDS.len())])
        .collect();
    // Irregular spacing: tokenisation must not depend on it.
    words.join(if rng.random_bool(0.2) { "  " } else { " " })
}

fn ngram_counts(tokens: &[&str], max_order: usize) -> HashMap<Vec<String>, usize> {
    let mut counts = HashMap::new();
    for order in 1..=max_order {
        for w in tokens.windows(order) {
            *counts
                .entry(w.iter().map(|s| s.to_string()).collect())
                .or_insert(0) += 1;
        }
    }
    counts
}

/// `compute_bleu` with one reference per translation, ×100 as `bleu_score` returns it.
fn port_bleu(refs: &[String], cands: &[String], max_order: usize, smooth: bool) -> f64 {
    let mut matches = vec![0usize; max_order];
    let mut possible = vec![0usize; max_order];
    let (mut reference_length, mut translation_length) = (0usize, 0usize);
    for (r, c) in refs.iter().zip(cands) {
        let r: Vec<&str> = r.split_whitespace().collect();
        let c: Vec<&str> = c.split_whitespace().collect();
        reference_length += r.len();
        translation_length += c.len();
        let rc = ngram_counts(&r, max_order);
        let cc = ngram_counts(&c, max_order);
        for (gram, n) in &cc {
            if let Some(m) = rc.get(gram) {
                matches[gram.len() - 1] += n.min(m);
            }
        }
        for order in 1..=max_order {
            if c.len() + 1 > order {
                possible[order - 1] += c.len() + 1 - order;
            }
        }
    }
    let precisions: Vec<f64> = (0..max_order)
        .map(|i| {
            if smooth {
                (matches[i] as f64 + 1.0) / (possible[i] as f64 + 1.0)
            } else if possible[i] > 0 {
                matches[i] as f64 / possible[i] as f64
            } else {
                0.0
            }
        })
        .collect();
    let geo_mean = if precisions.iter().cloned().fold(f64::INFINITY, f64::min) > 0.0 {
        let s: f64 = precisions
            .iter()
            .map(|p| (1.0 / max_order as f64) * p.ln())
            .sum();
        s.exp()
    } else {
        0.0
    };
    let ratio = translation_length as f64 / reference_length as f64;
    let bp = if ratio > 1.0 {
        1.0
    } else {
        (1.0 - 1.0 / ratio).exp()
    };
    geo_mean * bp * 100.0
}

/// `rouge.py` on the space-joined token strings, including its `"".split(" ") == [""]`.
fn port_rouge(refs: &[String], cands: &[String]) -> [[f64; 3]; 3] {
    fn words(s: &str) -> Vec<String> {
        let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
        joined.split(' ').map(str::to_string).collect()
    }
    fn set(w: &[String], n: usize) -> HashSet<Vec<String>> {
        if w.len() < n {
            return HashSet::new();
        }
        w.windows(n).map(|g| g.to_vec()).collect()
    }
    fn lcs(x: &[String], y: &[String]) -> usize {
        let mut t = vec![vec![0usize; y.len() + 1]; x.len() + 1];
        for i in 1..=x.len() {
            for j in 1..=y.len() {
                t[i][j] = if x[i - 1] == y[j - 1] {
                    t[i - 1][j - 1] + 1
                } else {
                    t[i - 1][j].max(t[i][j - 1])
                };
            }
        }
        t[x.len()][y.len()]
    }
    let mut sums = [[0.0f64; 3]; 3];
    for (r, c) in refs.iter().zip(cands) {
        let (rw, cw) = (words(r), words(c));
        for n in 1..=2 {
            let (es, rs) = (set(&cw, n), set(&rw, n));
            let overlap = es.intersection(&rs).count() as f64;
            let p = if es.is_empty() {
                0.0
            } else {
                overlap / es.len() as f64
            };
            let rr = if rs.is_empty() {
                0.0
            } else {
                overlap / rs.len() as f64
            };
            let f = 2.0 * ((p * rr) / (p + rr + 1e-8));
            for (k, v) in [f, p, rr].into_iter().enumerate() {
                sums[n - 1][k] += v;
            }
        }
        let l = lcs(&cw, &rw) as f64;
        let (m, n) = (rw.len() as f64, cw.len() as f64);
        let (rl, pl) = (l / m, l / n);
        let beta = pl / (rl + 1e-12);
        let f = ((1.0 + beta.powi(2)) * rl * pl) / (rl + beta.powi(2) * pl + 1e-12);
        for (k, v) in [f, pl, rl].into_iter().enumerate() {
            sums[2][k] += v;
        }
    }
    let n = refs.len() as f64;
    sums.map(|row| row.map(|s| s / n * 100.0))
}

fn assert_close(ours: f64, port: f64, what: &str) {
    assert!(
        (ours - port).abs() <= 1e-9 * port.abs().max(1.0),
        "{what}: ours {ours} vs port {port}"
    );
}

#[test]
fn text_metrics_match_the_reference_port() {
    let mut rng = StdRng::seed_from_u64(7);
    for round in 0..40 {
        let pairs = rng.random_range(1..30);
        // References are never empty in the protocol (the scripts would score an empty pair
        // 100 on ROUGE, see `TextCorpus::rouge`); candidates may be.
        let refs: Vec<String> = (0..pairs).map(|_| sentence(&mut rng, 1, 12)).collect();
        let mut cands: Vec<String> = (0..pairs).map(|_| sentence(&mut rng, 0, 14)).collect();
        if round % 5 == 0 {
            // Copies make high-order matches and all-identical pairs likely.
            cands[0] = refs[0].clone();
        }
        let corpus = TextCorpus::new(&refs, &cands).unwrap();
        for n in 1..=4 {
            for (smoothing, smooth) in [(Smoothing::None, false), (Smoothing::AddOne, true)] {
                let port = port_bleu(&refs, &cands, n, smooth);
                let ours = corpus.bleu(n, smoothing).unwrap();
                assert_close(ours, port, &format!("round {round} BLEU-{n} {smoothing:?}"));
            }
        }
        let port = port_rouge(&refs, &cands);
        let ours = corpus.rouge();
        for (name, prf, row) in [
            ("ROUGE-1", ours.rouge_1, port[0]),
            ("ROUGE-2", ours.rouge_2, port[1]),
            ("ROUGE-L", ours.rouge_l, port[2]),
        ] {
            assert_close(prf.f_score, row[0], &format!("round {round} {name} F"));
            assert_close(prf.p_score, row[1], &format!("round {round} {name} P"));
            assert_close(prf.r_score, row[2], &format!("round {round} {name} R"));
        }
        let report = corpus.report();
        assert_eq!(report.bleu_4, corpus.bleu(4, Smoothing::None).unwrap());
        assert_eq!(report.rouge_l, ours.rouge_l);
    }
}

#[test]
fn diversity_matches_a_hash_set_count() {
    let mut rng = StdRng::seed_from_u64(11);
    let cands: Vec<String> = (0..200).map(|_| sentence(&mut rng, 0, 4)).collect();
    let tokens: Vec<Vec<&str>> = cands
        .iter()
        .map(|c| c.split_whitespace().collect())
        .collect();
    let unique: HashSet<&Vec<&str>> = tokens.iter().collect();
    let usr = peapod_metrics::unique_sentence_ratio(&cands).unwrap();
    assert_eq!(usr, unique.len() as f64 / 200.0);
    assert!(usr < 1.0, "short sentences over 7 words must repeat");
    for n in 1..=6 {
        let all: Vec<&[&str]> = tokens.iter().flat_map(|t| t.windows(n)).collect();
        let distinct: HashSet<&[&str]> = all.iter().copied().collect();
        let expected = if all.is_empty() {
            0.0
        } else {
            distinct.len() as f64 / all.len() as f64
        };
        assert_eq!(
            peapod_metrics::distinct_n(&cands, n).unwrap(),
            expected,
            "n = {n}"
        );
    }
}

/// POD's `evaluate_hr` / `evaluate_ndcg` for one ground-truth item per user.
fn port_pod_ranking(lists: &[(u32, Vec<u32>)], k: usize) -> (f64, f64) {
    let dcgs: Vec<f64> = (0..k).map(|i| 1.0 / ((i + 2) as f64).log2()).collect();
    let (mut hr, mut ndcg) = (0.0, 0.0);
    for (target, ranked) in lists {
        let mut count = 0;
        let mut dcg = 0.0;
        for (idx, item) in ranked.iter().take(k).enumerate() {
            if item == target {
                dcg += dcgs[idx];
                count += 1;
            }
        }
        if count > 0 {
            dcg /= dcgs[..count].iter().sum::<f64>();
        }
        ndcg += dcg;
        hr += count as f64;
    }
    let n = lists.len() as f64;
    (hr / n, ndcg / n)
}

#[test]
fn ranking_matches_pod_without_repeats_and_is_bounded_with_them() {
    let mut rng = StdRng::seed_from_u64(3);
    // Distinct ids per list (what beam search gives when every sequence decodes differently),
    // with some non-items mixed in.
    let distinct: Vec<(u32, Vec<u32>)> = (0..300)
        .map(|_| {
            let mut pool: Vec<u32> = (1..=30).collect();
            let mut ranked = Vec::new();
            for _ in 0..20 {
                if rng.random_bool(0.1) {
                    ranked.push(NOT_AN_ITEM);
                } else {
                    let i = rng.random_range(0..pool.len());
                    ranked.push(pool.swap_remove(i));
                }
            }
            (rng.random_range(1..=30), ranked)
        })
        .collect();
    for k in [1usize, 5, 10, 20] {
        let map = rank_metrics(&distinct, &[k]).unwrap();
        let (hr, ndcg) = port_pod_ranking(&distinct, k);
        assert_close(map[&format!("hr@{k}")], hr, "HR");
        if k > 1 {
            assert_close(map[&format!("ndcg@{k}")], ndcg, "nDCG");
        }
    }
    // With repeats POD can count a user more than once; the protocol's HR stays a fraction.
    let repeats: Vec<(u32, Vec<u32>)> = (0..300)
        .map(|_| {
            let ranked: Vec<u32> = (0..20).map(|_| rng.random_range(1..=5)).collect();
            (rng.random_range(1..=5), ranked)
        })
        .collect();
    let map = rank_metrics(&repeats, &[10]).unwrap();
    let (pod_hr, _) = port_pod_ranking(&repeats, 10);
    assert!(map["hr@10"] <= 1.0 && pod_hr > 1.0);
    let by_hand: f64 = repeats
        .iter()
        .map(|(t, r)| hit_ratio_at(r, *t, 10))
        .sum::<f64>()
        / 300.0;
    assert_close(map["hr@10"], by_hand, "HR with repeats");
    let nd: f64 = repeats.iter().map(|(t, r)| ndcg_at(r, *t, 10)).sum::<f64>() / 300.0;
    assert_close(map["ndcg@10"], nd, "nDCG with repeats");
}
