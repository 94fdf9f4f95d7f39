//! The ID-order rule on hand-made histories, and on the shipped beauty data against the figures
//! the evaluation issue measured.

use peapod_datasets::{
    id_order_candidates, id_order_ranking, visible_history, Dataset, Split, MAX_HISTORY,
};

#[test]
fn the_ranking_continues_after_the_largest_id_and_wraps_around() {
    assert_eq!(id_order_ranking(&[3, 7, 5], 12, 4), vec![8, 9, 10, 11]);
    // Past the last item it wraps to 1, skipping the history.
    assert_eq!(id_order_ranking(&[2, 9, 4], 10, 6), vec![10, 1, 3, 5, 6, 7]);
    assert_eq!(id_order_ranking(&[], 5, 3), vec![1, 2, 3]);
    // Never more than the items there are.
    assert_eq!(id_order_ranking(&[1, 2], 4, 10), vec![3, 4]);
}

#[test]
fn candidates_follow_the_lead_then_popularity_with_ties_by_id() {
    // History max 20: the lead is 21..=30 (num_items 40).
    let popularity = {
        let mut p = vec![0u32; 41];
        p[5] = 9;
        p[6] = 9;
        p[33] = 50;
        p
    };
    let ranked = id_order_candidates(&[20, 3], &[33, 6, 25, 5, 22, 40], 40, &popularity);
    assert_eq!(ranked, vec![22, 25, 33, 5, 6, 40]);
}

#[test]
fn the_visible_history_is_what_the_sequential_prompt_shows() {
    let d = Dataset::from_sequences("t", vec![(1..=30).collect(), vec![4, 2, 9]], 40).unwrap();
    assert_eq!(
        visible_history(&d, 1, Split::Test).unwrap(),
        &(10..=29).collect::<Vec<_>>()[..]
    );
    assert_eq!(
        visible_history(&d, 1, Split::Validation).unwrap().len(),
        MAX_HISTORY
    );
    assert_eq!(visible_history(&d, 2, Split::Validation).unwrap(), &[4]);
    assert!(visible_history(&d, 2, Split::Train).is_err());
    assert!(visible_history(&d, 3, Split::Test).is_err());
}

#[test]
fn on_beauty_the_rule_reaches_the_measured_sequential_figures() {
    // The evaluation issue: on beauty's sequential test protocol the rule reaches HR@5 0.0452,
    // nDCG@5 0.0446, HR@10 0.0462, nDCG@10 0.0449.
    let beauty = Dataset::load(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/beauty")).unwrap();
    let (mut hr, mut ndcg) = ([0f64; 2], [0f64; 2]);
    for u in beauty.users() {
        let history = visible_history(&beauty, u, Split::Test).unwrap();
        let ranked = id_order_ranking(history, beauty.num_items(), 10);
        let target = beauty.test_item(u);
        if let Some(rank) = ranked.iter().position(|&i| i == target) {
            for (k, cut) in [5usize, 10].iter().enumerate() {
                if rank < *cut {
                    hr[k] += 1.0;
                    ndcg[k] += 1.0 / (rank as f64 + 2.0).log2();
                }
            }
        }
    }
    let n = beauty.num_users() as f64;
    let got = [hr[0] / n, ndcg[0] / n, hr[1] / n, ndcg[1] / n];
    for (g, want) in got.iter().zip([0.0452, 0.0446, 0.0462, 0.0449]) {
        assert!((g - want).abs() < 5e-5, "{got:?}");
    }
}
