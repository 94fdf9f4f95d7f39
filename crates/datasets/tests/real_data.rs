//! The shipped datasets: counts against the paper's Table 1 and the leave-one-out split.

use peapod_datasets::Dataset;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

fn check_counts(name: &str, users: usize, items: usize, interactions: usize) {
    let d = Dataset::load(format!("{DATA}/{name}")).unwrap();
    assert_eq!(d.name(), name);
    assert_eq!(
        (d.num_users(), d.num_items(), d.num_interactions()),
        (users, items, interactions)
    );
    // Every item of the id map occurs in some sequence, so the universe is all of them.
    assert_eq!(d.item_universe().len(), items);
    let users_in_order: Vec<u32> = d.users().collect();
    assert_eq!(users_in_order, (1..=users as u32).collect::<Vec<_>>());
    let total: usize = d.users().map(|u| d.sequence(u).len()).sum();
    assert_eq!(total, interactions);
    assert!(d.users().all(|u| d.sequence(u).len() >= 5));
}

#[test]
fn sports_counts_match_table_1() {
    check_counts("sports", 35_598, 18_357, 296_337);
}

#[test]
fn beauty_counts_match_table_1() {
    check_counts("beauty", 22_363, 12_101, 198_502);
}

#[test]
fn toys_counts_match_table_1() {
    check_counts("toys", 19_412, 11_924, 167_597);
}

#[test]
fn toys_split_and_keys_read_from_the_files() {
    let d = Dataset::load(format!("{DATA}/toys")).unwrap();
    // Line 1 of toys/sequential_data.txt is "1 1 2 3 4 5 6 7", line 3 "3 13 14 … 22".
    assert_eq!(d.sequence(1), &[1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(d.train_history(1), &[1, 2, 3, 4, 5]);
    assert_eq!((d.valid_item(1), d.test_item(1)), (6, 7));
    assert_eq!(d.train_history(3), &[13, 14, 15, 16, 17, 18, 19, 20]);
    assert_eq!((d.valid_item(3), d.test_item(3)), (21, 22));
    assert_eq!(&d.item_universe()[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(d.user_key(1), Some("AQW172A5SG5OC"));
    assert_eq!(d.user_key(2), Some("A3E9UK6ANIX73Q"));
    assert!(d.item_key(11_924).is_some() && d.item_key(11_925).is_none());
    // toys ships P5's published negatives, which load picks up.
    let neg = d.test_negatives().unwrap();
    assert_eq!(&neg.of(1)[..4], &[10341, 1132, 1630, 7626]);
    assert!(d.users().all(|u| neg.of(u).len() == 99));
}
