//! Tokenisation against the golden T5 tokenisations, whole-word ids and targets.

use peapod_datasets::{id_mentions, parse_item, RecTokenizer, Task, Templates, EOS_ID};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

fn tok() -> RecTokenizer {
    RecTokenizer::from_file(format!("{DATA}/tokenizer/t5-tokenizer.json")).unwrap()
}

#[derive(serde::Deserialize)]
struct Golden {
    text: String,
    ids: Vec<u32>,
    tokens: Vec<String>,
}

fn golden() -> Vec<Golden> {
    let text =
        std::fs::read_to_string(format!("{DATA}/tokenizer/golden_t5_tokenization.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn golden_ids_and_whole_word_ids() {
    let tok = tok();
    let golden = golden();
    // Whole-word ids worked out by hand from the golden pieces (SPEC §3).
    let expected: Vec<Vec<u32>> = vec![
        // "... of user_15466 : 4 , 5 , 6 , 7 predict ...": only user_15466 is an id mention;
        // the bare numbers are not.
        [vec![0; 6], vec![1; 4], vec![0; 25]].concat(),
        // "Generate an explanation for user_1 about this product : item_1234"
        vec![0, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 2, 2, 2, 2, 0],
        vec![0; 16],
        vec![0; 10],
        vec![0; 15],
        // "user_19412 item_11924": ▁user _ 19 4 12 ▁item _ 119 24 </s>
        vec![1, 1, 1, 1, 1, 2, 2, 2, 2, 0],
        vec![0],
    ];
    assert_eq!(golden.len(), expected.len());
    for (g, want) in golden.iter().zip(&expected) {
        let enc = tok.encode_input(&g.text).unwrap();
        assert_eq!(enc.ids, g.ids, "{:?}", g.text);
        assert_eq!(g.tokens.len(), want.len(), "{:?}", g.text);
        assert_eq!(&enc.whole_word_ids, want, "{:?}", g.text);
        assert_eq!(*enc.ids.last().unwrap(), EOS_ID);
    }
}

#[test]
fn whole_word_ids_on_rendered_templates() {
    let tok = tok();
    let templates = Templates::load(format!("{DATA}/templates.json")).unwrap();
    // "Given the following purchase history of user_15466: item_4 item_5 item_17, predict …"
    // pieces: ▁Given ▁the ▁following ▁purchase ▁history ▁of | ▁user _ 154 66 | : |
    // ▁item _ 4 | ▁item _ 5 | ▁item _ 17 | , ▁predict …
    let text = templates
        .render(Task::Sequential, 0, 15466, &[4, 5, 17])
        .unwrap();
    assert!(text.contains("user_15466: item_4 item_5 item_17, predict"));
    let enc = tok.encode_input(&text).unwrap();
    let head = [
        0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 2, 2, 2, 3, 3, 3, 4, 4, 4, 0,
    ];
    assert_eq!(&enc.whole_word_ids[..head.len()], &head);
    assert!(enc.whole_word_ids[head.len()..].iter().all(|&w| w == 0));
    assert_eq!(&enc.ids[6..10], &[1139, 834, 27308, 3539]); // ▁user _ 154 66

    // "user_12." tokenises as ▁user _ 12. : the piece with the digits stays in the mention.
    let text = templates.render(Task::TopN, 3, 12, &[1, 2]).unwrap();
    let enc = tok.encode_input(&text).unwrap();
    let ww: Vec<u32> = enc
        .whole_word_ids
        .iter()
        .copied()
        .filter(|&w| w > 0)
        .collect();
    assert_eq!(ww, [1, 1, 1, 2, 2, 2, 3, 3, 3]);
    assert!(enc.ids.contains(&9368)); // "12."

    // 100 candidates: 101 mentions, numbered in order.
    let items: Vec<u32> = (1..=100).map(|i| i * 97).collect();
    let text = templates.render(Task::TopN, 4, 22363, &items).unwrap();
    let enc = tok.encode_input(&text).unwrap();
    assert_eq!(enc.whole_word_ids.iter().max(), Some(&101));
    let mut seen = enc.whole_word_ids.clone();
    seen.dedup();
    assert_eq!(seen, [(1..=101).collect::<Vec<u32>>(), vec![0]].concat());
}

#[test]
fn mentions_need_digits_and_a_word_start() {
    let text = "user_ item_12a superuser_3 (item_7) user_99";
    let spans: Vec<&str> = id_mentions(text)
        .iter()
        .map(|&(s, e)| &text[s..e])
        .collect();
    assert_eq!(spans, ["item_12", "item_7", "user_99"]);
}

#[test]
fn targets_are_digits_plus_eos_or_explanations_cut_as_pod_cuts_them() {
    let tok = tok();
    assert_eq!(tok.item_target_ids(1234).unwrap(), [586, 3710, EOS_ID]); // ▁12 34
    assert_eq!(
        tok.item_target_ids(22363).unwrap(),
        [204, 2773, 3891, EOS_ID]
    ); // ▁2 23 63
    for item in [1u32, 9, 10, 100, 433, 4444, 11_924, 18_357] {
        let ids = tok.item_target_ids(item).unwrap();
        assert_eq!(tok.decode_item(&ids), Some(item));
        assert!(ids.len() <= 4);
    }
    let long = "The board had to be put away for my 18 month old grand daughter and we used just the refrigerator for the alphabet";
    let full = tok.encode(long).unwrap();
    assert!(full.len() > 21);
    // POD's cut: tokens + eos, then the first 20 — a long explanation has no eos.
    let cut = tok.encode_target(long, 20).unwrap();
    assert_eq!(cut, &full[..20]);
    assert!(!cut.contains(&EOS_ID));
    let short = tok.encode_target("to have some good fun", 20).unwrap();
    assert_eq!(short, tok.encode("to have some good fun").unwrap());
    assert_eq!(short.last(), Some(&EOS_ID));
}

#[test]
fn explanation_targets_of_the_toys_excerpt_follow_pods_cut() {
    let tok = tok();
    let toys = peapod_datasets::Dataset::load(format!("{DATA}/toys")).unwrap();
    let exp =
        peapod_datasets::Explanations::load(format!("{DATA}/toys/explanation_excerpt.json"), &toys)
            .unwrap();
    let (mut long, mut short) = (0, 0);
    for record in exp.train.iter().chain(&exp.test) {
        let full = tok.encode(&record.explanation).unwrap(); // tokens + eos
        let target = tok.encode_target(&record.explanation, 20).unwrap();
        assert_eq!(
            target,
            &full[..full.len().min(20)],
            "{}",
            record.explanation
        );
        if full.len() > 20 {
            long += 1;
            assert_ne!(target.last(), Some(&EOS_ID));
        } else {
            short += 1;
            assert_eq!(target.last(), Some(&EOS_ID));
        }
    }
    // The excerpt has both kinds.
    assert!(long > 0 && short > 0, "{long} long, {short} short");
}

#[test]
fn parse_item_accepts_only_positive_digit_strings() {
    assert_eq!(parse_item(" 1234 "), Some(1234));
    assert_eq!(parse_item("0"), None);
    assert_eq!(parse_item("12a"), None);
    assert_eq!(parse_item("-3"), None);
    assert_eq!(parse_item(""), None);
    assert_eq!(parse_item("99999999999"), None);
}
