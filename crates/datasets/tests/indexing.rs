//! Item indexing: a seeded permutation renumbers every item consistently (sequences, keys,
//! negatives, explanations), round-trips, and removes the ID-order leak.

use peapod_datasets::{
    id_order_ranking, visible_history, Dataset, Explanations, ItemIndexing, ItemPermutation, Split,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

#[test]
fn a_seeded_permutation_is_a_bijection_that_round_trips() {
    let p = ItemPermutation::seeded(1000, 7);
    let mut seen = vec![false; 1001];
    for old in 1..=1000u32 {
        let new = p.new_id(old);
        assert!((1..=1000).contains(&new) && !seen[new as usize]);
        seen[new as usize] = true;
        assert_eq!(p.old_id(new), old);
    }
    assert_eq!(p, ItemPermutation::seeded(1000, 7), "deterministic");
    assert_ne!(p, ItemPermutation::seeded(1000, 8));
    assert_eq!((p.new_id(0), p.new_id(1001)), (0, 0));
    assert_eq!(ItemIndexing::Sequential.permutation(10), None);
    assert_eq!(
        ItemIndexing::parse("random", 3).unwrap(),
        ItemIndexing::Random { seed: 3 }
    );
    assert!(ItemIndexing::parse("semantic", 3).is_err());
}

#[test]
fn reindexing_maps_sequences_keys_negatives_and_explanations() {
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let p = ItemIndexing::Random { seed: 11 }
        .permutation(toys.num_items())
        .unwrap();
    let re = toys.reindexed(&p).unwrap();
    assert_eq!(
        (re.num_users(), re.num_items()),
        (toys.num_users(), toys.num_items())
    );
    let (old_neg, new_neg) = (toys.test_negatives().unwrap(), re.test_negatives().unwrap());
    for u in toys.users().step_by(97) {
        let mapped: Vec<u32> = toys.sequence(u).iter().map(|&i| p.new_id(i)).collect();
        assert_eq!(re.sequence(u), &mapped[..]);
        // The same items under new ids: same candidates, same Amazon keys.
        let negs: Vec<u32> = old_neg.of(u).iter().map(|&i| p.new_id(i)).collect();
        assert_eq!(new_neg.of(u), &negs[..]);
        let item = toys.test_item(u);
        assert_eq!(re.item_key(p.new_id(item)), toys.item_key(item));
    }
    let exp = Explanations::load(format!("{DATA}/toys/explanation_excerpt.json"), &toys).unwrap();
    let re_exp = exp.reindexed(&p);
    assert_eq!(re_exp.test[3].item, p.new_id(exp.test[3].item));
    assert_eq!(re_exp.test[3].explanation, exp.test[3].explanation);
    // A permutation of another size is refused.
    assert!(toys.reindexed(&ItemPermutation::seeded(10, 1)).is_err());
}

#[test]
fn under_random_indexing_the_id_order_rule_falls_to_chance() {
    let beauty = Dataset::load(format!("{DATA}/beauty")).unwrap();
    let hit_rate = |d: &Dataset| {
        let hits = d
            .users()
            .filter(|&u| {
                let history = visible_history(d, u, Split::Test).unwrap();
                id_order_ranking(history, d.num_items(), 10).contains(&d.test_item(u))
            })
            .count();
        hits as f64 / d.num_users() as f64
    };
    let sequential = hit_rate(&beauty);
    let p = ItemPermutation::seeded(beauty.num_items(), 2022);
    let random = hit_rate(&beauty.reindexed(&p).unwrap());
    // Chance: 10 of 12,101 items, 0.0008.
    assert!(sequential > 0.04, "{sequential}");
    assert!(random < 0.003, "{random}");
}
