//! Task-alternated batches: order, padding, masks, epoch length, determinism.

use peapod_datasets::{
    Batch, Dataset, Example, Explanations, RecTokenizer, Task, TaskAlternatingBatcher, Templates,
    EOS_ID,
};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");

struct Fixture {
    toys: Dataset,
    exp: Explanations,
    templates: Templates,
    tok: RecTokenizer,
}

fn fixture() -> Fixture {
    let toys = Dataset::load(format!("{DATA}/toys")).unwrap();
    let exp = Explanations::load(format!("{DATA}/toys/explanation_excerpt.json"), &toys).unwrap();
    Fixture {
        templates: Templates::load(format!("{DATA}/templates.json")).unwrap(),
        tok: RecTokenizer::from_file(format!("{DATA}/tokenizer/t5-tokenizer.json")).unwrap(),
        toys,
        exp,
    }
}

fn check_padding(b: &Batch) {
    let (n, len) = b.input_ids.dim();
    assert_eq!(n, b.users.len());
    for row in 0..n {
        let real = b
            .attention_mask
            .row(row)
            .iter()
            .filter(|&&m| m == 1)
            .count();
        // Mask is a prefix of ones, the last real token is eos, everything after is pad.
        assert!(b.attention_mask.row(row).iter().take(real).all(|&m| m == 1));
        assert_eq!(b.input_ids[[row, real - 1]], EOS_ID);
        assert!((real..len).all(|c| b.input_ids[[row, c]] == 0 && b.whole_word_ids[[row, c]] == 0));
        let t_real = b.target_mask.row(row).iter().filter(|&&m| m == 1).count();
        // A target ends in eos unless POD's cut kept 20 pieces of a long explanation.
        assert!(b.target_ids[[row, t_real - 1]] == EOS_ID || t_real == 20);
        assert!(t_real <= 20);
        assert!((t_real..b.target_ids.dim().1).all(|c| b.target_ids[[row, c]] == 0));
    }
    // Some row fills the width: padding is to the longest, not beyond.
    assert!((0..n).any(|r| b.attention_mask[[r, len - 1]] == 1));
}

#[test]
fn batches_alternate_explanation_sequential_topn() {
    let f = fixture();
    let mut batcher =
        TaskAlternatingBatcher::new(&f.toys, &f.templates, Some(&f.exp), &f.tok, 8, 11).unwrap();
    assert_eq!(batcher.tasks(), &Task::ALL);
    // (22 + 19412 + 19412) / 8, rounded up.
    assert_eq!(
        batcher.batches_per_epoch(),
        (22 + 2 * 19_412usize).div_ceil(8)
    );
    let mut explanation_users = Vec::new();
    for k in 0..9 {
        let b = batcher.next_batch().unwrap();
        assert_eq!(b.task, Task::ALL[k % 3]);
        assert_eq!(b.len(), 8);
        check_padding(&b);
        match b.task {
            Task::Explanation => {
                explanation_users.extend(b.users.iter().copied());
                assert!(b.target_items.iter().all(Option::is_none));
            }
            Task::Sequential => {
                for (row, item) in b.target_items.iter().enumerate() {
                    let ids = f.tok.item_target_ids(item.unwrap()).unwrap();
                    assert_eq!(
                        b.target_ids
                            .row(row)
                            .iter()
                            .take(ids.len())
                            .copied()
                            .collect::<Vec<_>>(),
                        ids
                    );
                }
            }
            Task::TopN => {
                assert!(b
                    .candidates
                    .iter()
                    .all(|c| c.as_ref().unwrap().len() == 100));
                assert_eq!(b.whole_word_ids.iter().max(), Some(&101));
            }
        }
    }
    // Three explanation batches of 8 walk all 22 records once before repeating any.
    let mut first_pass: Vec<u32> = explanation_users[..22].to_vec();
    first_pass.sort_unstable();
    let mut all: Vec<u32> = f.exp.train.iter().map(|r| r.user).collect();
    all.sort_unstable();
    assert_eq!(first_pass, all);
}

#[test]
fn batcher_is_deterministic_and_skips_missing_tasks() {
    let f = fixture();
    let run = |seed| {
        let mut b =
            TaskAlternatingBatcher::new(&f.toys, &f.templates, None, &f.tok, 4, seed).unwrap();
        (0..4).map(|_| b.next_batch().unwrap()).collect::<Vec<_>>()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a, run(2));
    let tasks: Vec<Task> = a.iter().map(|b| b.task).collect();
    assert_eq!(
        tasks,
        [Task::Sequential, Task::TopN, Task::Sequential, Task::TopN]
    );
}

#[test]
fn batch_rejects_mixed_tasks_and_empty_input() {
    let f = fixture();
    let ex = |task| Example {
        task,
        user: 1,
        input: "user_1 item_2".into(),
        target: "3".into(),
        target_item: Some(3),
        candidates: None,
    };
    let err = Batch::from_examples(&f.tok, &[ex(Task::Sequential), ex(Task::TopN)]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "a batch holds one task; got sequential and topn"
    );
    assert!(Batch::from_examples(&f.tok, &[]).is_err());
    let b = Batch::from_examples(&f.tok, &[ex(Task::Sequential)]).unwrap();
    // ▁user _ 1 ▁item _ 2 </s>
    assert_eq!(b.whole_word_ids.row(0).to_vec(), [1, 1, 1, 2, 2, 2, 0]);
    assert_eq!(
        b.target_ids.row(0).to_vec(),
        f.tok.item_target_ids(3).unwrap()
    );
}
