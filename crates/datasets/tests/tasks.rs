//! Task construction (SPEC §2): training samples never reach the last two items; evaluation
//! inputs are deterministic and exact.

use peapod_datasets::{
    evaluation_examples, id_mentions, p5_negatives, sequential_eval_examples, topn_test_examples,
    topn_validation_examples, Dataset, Explanations, Split, Task, TaskSampler, Templates,
};
use proptest::prelude::*;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

fn templates() -> Templates {
    Templates::load(format!("{DATA}/templates.json")).unwrap()
}

/// Random datasets whose sequences hold distinct items, so every item has one position.
fn datasets() -> impl Strategy<Value = Vec<Vec<u32>>> {
    prop::collection::vec(
        prop::collection::vec(1u32..=400, 3..40).prop_map(|mut s| {
            let mut seen = std::collections::HashSet::new();
            s.retain(|i| seen.insert(*i));
            s
        }),
        1..6,
    )
    .prop_filter("needs 3 distinct items per user", |v| {
        v.iter().all(|s| s.len() >= 3)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn training_samples_never_reach_the_last_two_items(seqs in datasets(), seed in any::<u64>()) {
        let templates = templates();
        let data = Dataset::from_sequences("p", seqs, 400).unwrap();
        let mut sampler = TaskSampler::new(&data, &templates, None, seed);
        for user in data.users() {
            let seq = data.sequence(user);
            let train = data.train_history(user);
            let held_out = &seq[seq.len() - 2..];
            for _ in 0..8 {
                match sampler.sequential(user) {
                    Some(ex) => {
                        let target = ex.target_item.unwrap();
                        let pos = train.iter().position(|&i| i == target).unwrap();
                        prop_assert!(pos >= 1);
                        // The listed items are exactly the contiguous run right before the
                        // target, at most 20 of them, and the user is the one asked for.
                        let mentions: Vec<&str> = id_mentions(&ex.input).iter().map(|&(s, e)| &ex.input[s..e]).collect();
                        prop_assert_eq!(mentions[0], format!("user_{user}"));
                        let listed: Vec<u32> = mentions[1..].iter().map(|m| m[5..].parse().unwrap()).collect();
                        prop_assert!((1..=20).contains(&listed.len()) && listed.len() <= pos);
                        prop_assert_eq!(&listed[..], &train[pos - listed.len()..pos]);
                        prop_assert!(held_out.iter().all(|h| !listed.contains(h) && *h != target));
                    }
                    None => prop_assert!(train.len() < 2),
                }
                let ex = sampler.topn(user);
                let target = ex.target_item.unwrap();
                prop_assert!(train.contains(&target));
                let cands = ex.candidates.unwrap();
                prop_assert!(cands.contains(&target));
                let negatives: Vec<u32> = cands.iter().copied().filter(|&c| c != target).collect();
                // Negatives come from the item universe (items that occur in the data).
                prop_assert_eq!(negatives.len(), (data.item_universe().len() - seq.len()).min(99));
                prop_assert!(negatives.iter().all(|n| !seq.contains(n)));
                let mut d = negatives.clone();
                d.sort_unstable();
                d.dedup();
                prop_assert_eq!(d.len(), negatives.len());
            }
        }
    }
}

#[test]
fn sampler_is_reproducible_from_its_seed() {
    let templates = templates();
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let draw = |seed| {
        let mut s = TaskSampler::new(&toys, &templates, None, seed);
        (1..=20)
            .flat_map(|u| [s.sequential(u), Some(s.topn(u))])
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(3), draw(3));
    assert_ne!(draw(3), draw(4));
    // Random templates: over many draws every sequential template shows up.
    let mut s = TaskSampler::new(&toys, &templates, None, 9);
    let mut prefixes = std::collections::HashSet::new();
    for _ in 0..400 {
        let ex = s.sequential(3).unwrap();
        // The template's words: the prompt without its id mentions.
        let mut words = ex.input.clone();
        for &(s, e) in id_mentions(&ex.input).iter().rev() {
            words.replace_range(s..e, "");
        }
        prefixes.insert(words.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    assert_eq!(prefixes.len(), templates.count(Task::Sequential));
}

#[test]
fn sequential_eval_inputs_use_the_last_twenty_items() {
    let templates = templates();
    let seq: Vec<u32> = (1..=25).collect();
    let data = Dataset::from_sequences("t", vec![seq, vec![7, 8, 9]], 30).unwrap();
    let val = sequential_eval_examples(&data, &templates, Split::Validation).unwrap();
    let test = sequential_eval_examples(&data, &templates, Split::Test).unwrap();
    let items = |r: std::ops::RangeInclusive<u32>| {
        r.map(|i| format!("item_{i}")).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(val[0].input, format!("user_1 {}", items(4..=23)));
    assert_eq!(
        (val[0].target.as_str(), val[0].target_item),
        ("24", Some(24))
    );
    assert_eq!(test[0].input, format!("user_1 {}", items(5..=24)));
    assert_eq!(test[0].target_item, Some(25));
    assert_eq!(val[1].input, "user_2 item_7");
    assert_eq!(test[1].input, "user_2 item_7 item_8");
    assert_eq!(test[1].target, "9");
}

#[test]
fn topn_eval_inputs() {
    let templates = templates();
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let negatives = toys.test_negatives().unwrap();
    let test = topn_test_examples(&toys, &templates, negatives, 1).unwrap();
    assert_eq!(test.len(), toys.num_users());
    for ex in test.iter().take(50) {
        let mut cands = ex.candidates.clone().unwrap();
        assert_eq!(ex.target_item, Some(toys.test_item(ex.user)));
        cands.sort_unstable();
        let mut want = negatives.of(ex.user).to_vec();
        want.push(toys.test_item(ex.user));
        want.sort_unstable();
        assert_eq!(cands, want);
        assert!(ex.input.starts_with(&format!("user_{} item_", ex.user)));
        assert_eq!(ex.input.matches("item_").count(), 100);
    }
    let val = topn_validation_examples(&toys, &templates, 5);
    assert_eq!(val, topn_validation_examples(&toys, &templates, 5));
    for ex in val.iter().take(50) {
        assert_eq!(ex.target_item, Some(toys.valid_item(ex.user)));
        let cands = ex.candidates.as_ref().unwrap();
        assert_eq!(cands.len(), 100);
        assert!(cands
            .iter()
            .filter(|&&c| c != toys.valid_item(ex.user))
            .all(|c| !toys.sequence(ex.user).contains(c)));
    }
    // Without a negatives file, top-n test draws P5's negatives; with too few items for P5's
    // procedure that is an error naming the reason.
    let tiny = Dataset::from_sequences("t", vec![(1..=6).collect(); 3], 200).unwrap();
    let err = evaluation_examples(Task::TopN, Split::Test, &tiny, &templates, None, 0).unwrap_err();
    assert!(err.to_string().contains("99 distinct items"), "{err}");
    // Drawn on demand, they are P5's with its seed, and drawn once.
    let wide =
        Dataset::from_sequences("w", vec![(1..=6).collect(), (7..=120).collect()], 200).unwrap();
    let drawn = wide.test_negatives().unwrap();
    assert_eq!(
        drawn,
        &p5_negatives(&wide, peapod_datasets::P5_NEGATIVE_SEED).unwrap()
    );
    assert!(std::ptr::eq(drawn, wide.test_negatives().unwrap()));
    // Too few items for P5's procedure (99 distinct per draw): an error, not an endless loop.
    let err = p5_negatives(&tiny, 2022).unwrap_err();
    assert_eq!(err.to_string(), "dataset t: P5's negative sampling draws 99 distinct items at a time; the item universe has only 6");
    // A user with only 6 untouched items gets 99 negatives from those 6, repeated (as P5 would).
    let negs = p5_negatives(
        &Dataset::from_sequences("t", vec![(1..=6).collect(), (7..=120).collect()], 200).unwrap(),
        2022,
    )
    .unwrap();
    assert_eq!(negs.of(1).len(), 99);
    assert_eq!(negs.of(2).len(), 99);
    assert!(negs.of(2).iter().all(|i| (1..=6).contains(i)));
    let err = p5_negatives(
        &Dataset::from_sequences(
            "t",
            vec![(1..=6).collect(), (1..=99).collect(), (1..=99).collect()],
            200,
        )
        .unwrap(),
        2022,
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "dataset t: user 2 has interacted with every item of the universe; no negatives to draw"
    );
    let mut tiny = Dataset::from_sequences(
        "t",
        vec![(1..=6).collect(), (1..=7).collect(), (2..=110).collect()],
        200,
    )
    .unwrap();
    let negs = p5_negatives(&tiny, 2022).unwrap();
    tiny.set_test_negatives(negs).unwrap();
    assert_eq!(
        evaluation_examples(Task::TopN, Split::Test, &tiny, &templates, None, 0)
            .unwrap()
            .len(),
        3
    );
}

#[test]
fn explanation_examples_from_the_excerpt() {
    let templates = templates();
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let exp = Explanations::load(format!("{DATA}/toys/explanation_excerpt.json"), &toys).unwrap();
    assert_eq!(exp.train[0].user, 14577);
    assert_eq!(exp.train[0].item, 3536);
    assert_eq!(exp.train[0].feature, "markers");
    let test = evaluation_examples(
        Task::Explanation,
        Split::Test,
        &toys,
        &templates,
        Some(&exp),
        0,
    )
    .unwrap();
    assert_eq!(test.len(), 15);
    let r = &exp.test[0];
    assert_eq!(test[0].input, format!("user_{} item_{}", r.user, r.item));
    assert_eq!(test[0].target, r.explanation);
    assert!(evaluation_examples(
        Task::Explanation,
        Split::Validation,
        &toys,
        &templates,
        Some(&exp),
        0
    )
    .unwrap()
    .is_empty());
    let mut s = TaskSampler::new(&toys, &templates, Some(&exp), 1);
    let ex = s.explanation(1).unwrap();
    assert_eq!(
        (ex.user, ex.target.as_str()),
        (16422, exp.train[1].explanation.as_str())
    );
    assert!(ex.input.contains("user_16422") && ex.input.contains("item_3536"));
    assert!(s.explanation(22).is_none());
}

/// POD's `SeqSampler` over `n` training items: the probability that the target is item `e`
/// with `len` history items (start uniform in [0, n − 2], end uniform in [start + 1, n − 1],
/// history cut to 20), written out from the rule rather than from the sampler's code.
fn pod_probabilities(n: usize) -> Vec<(usize, usize, f64)> {
    let mut out = Vec::new();
    for start in 0..n - 1 {
        for end in start + 1..n {
            let p = 1.0 / (n - 1) as f64 / (n - 1 - start) as f64;
            out.push((end, (end - start).min(20), p));
        }
    }
    out
}

/// What a stream of sequential examples says about where its targets sit: the share on the
/// last training item, the mean relative position (index / (n − 1)), and the share of each
/// history length 1..=20.
#[derive(Debug, Default)]
struct TargetStats {
    last: f64,
    relative: f64,
    lengths: [f64; 21],
    weight: f64,
}

impl TargetStats {
    fn add(&mut self, n: usize, end: usize, len: usize, p: f64) {
        self.last += p * f64::from(end == n - 1);
        self.relative += p * end as f64 / (n - 1) as f64;
        self.lengths[len] += p;
        self.weight += p;
    }

    fn normalised(mut self) -> Self {
        let w = self.weight;
        self.last /= w;
        self.relative /= w;
        self.lengths.iter_mut().for_each(|l| *l /= w);
        self
    }
}

/// Item 0 of the learning issue: on beauty's real users, the sampler's targets and history
/// lengths follow POD's distribution, not the end-first draw it replaced.
#[test]
fn sequential_targets_follow_pods_sampler_on_beauty() {
    let templates = templates();
    let beauty = Dataset::load(format!("{DATA}/beauty")).unwrap();
    let mut exact = TargetStats::default();
    for user in beauty.users() {
        let n = beauty.train_history(user).len();
        for (end, len, p) in pod_probabilities(n) {
            exact.add(n, end, len, p);
        }
    }
    let exact = exact.normalised();
    // The rule puts 54.1% of beauty's targets on the last training item (the end-first draw it
    // replaced: 30.0%); the learning issue's Python runs of POD's code found a mean relative
    // position of 0.82 (end-first: 0.65) and a mean history of 2.2 items.
    assert!((exact.last - 0.5414).abs() < 1e-3, "{exact:?}");
    assert!((exact.relative - 0.82).abs() < 0.01, "{exact:?}");
    let mean_len: f64 = (1..=20).map(|l| l as f64 * exact.lengths[l]).sum();
    assert!((mean_len - 2.2).abs() < 0.05, "{mean_len}");

    let mut sampler = TaskSampler::new(&beauty, &templates, None, 2022);
    let mut drawn = TargetStats::default();
    for _epoch in 0..5 {
        for user in beauty.users() {
            let train = beauty.train_history(user);
            let ex = sampler.sequential(user).unwrap();
            let listed: Vec<u32> = id_mentions(&ex.input)[1..]
                .iter()
                .map(|&(s, e)| ex.input[s + 5..e].parse().unwrap())
                .collect();
            let target = ex.target_item.unwrap();
            let end = (listed.len()..train.len())
                .find(|&p| train[p] == target && train[p - listed.len()..p] == listed[..])
                .expect("the example is a segment of the training history");
            drawn.add(train.len(), end, listed.len(), 1.0);
        }
    }
    let drawn = drawn.normalised();
    // 111,815 draws: a share's standard error is ≤ 0.0015; the end-first draw (0.300 of the
    // targets on the last item, mean relative position 0.65) is far outside these bounds.
    assert!(
        (drawn.last - exact.last).abs() < 0.006,
        "{drawn:?} vs {exact:?}"
    );
    assert!(
        (drawn.relative - exact.relative).abs() < 0.004,
        "{drawn:?} vs {exact:?}"
    );
    for len in 1..=20 {
        let (d, e) = (drawn.lengths[len], exact.lengths[len]);
        assert!((d - e).abs() < 0.006, "history length {len}: {d} vs {e}");
    }
}
