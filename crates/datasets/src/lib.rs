//! The data side of PeaPOD: the P5 leave-one-out splits of the Amazon datasets, P5's exact
//! test negatives, the three tasks as prompt/target pairs (SPEC §2), T5 tokenisation with
//! whole-word ids (SPEC §3) and task-alternated batches (SPEC §6).
//!
//! ```
//! use peapod_datasets::{Dataset, RecTokenizer, Task, TaskAlternatingBatcher, Templates};
//! let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");
//! let toys = Dataset::load(format!("{root}/toys")).unwrap();
//! assert_eq!((toys.num_users(), toys.num_items()), (19_412, 11_924));
//! let templates = Templates::load(format!("{root}/templates.json")).unwrap();
//! let tok = RecTokenizer::from_file(format!("{root}/tokenizer/t5-tokenizer.json")).unwrap();
//! let mut batches = TaskAlternatingBatcher::new(&toys, &templates, None, &tok, 64, 2022).unwrap();
//! let batch = batches.next_batch().unwrap();
//! assert_eq!(batch.task, Task::Sequential);
//! assert_eq!(batch.input_ids.dim().0, 64);
//! ```

mod baselines;
mod batch;
mod dataset;
mod error;
mod explanations;
mod files;
mod indexing;
mod negatives;
mod tasks;
mod templates;
mod tokenizer;

pub use baselines::{
    history_before, id_order_candidates, id_order_ranking, visible_history, ID_ORDER_LEAD,
};
pub use batch::{Batch, TaskAlternatingBatcher};
pub use dataset::{
    load_or_generate_negatives, p5_negatives, Dataset, DATAMAPS_FILE, MIN_ITEMS_PER_USER,
    SEQUENTIAL_FILE,
};
pub use error::DatasetError;
pub use explanations::{ExplanationRecord, Explanations};
pub use indexing::{ItemIndexing, ItemPermutation};
pub use negatives::{
    Negatives, NumpyMt19937, NEGATIVES_FILE, NUM_TEST_NEGATIVES, P5_NEGATIVE_SEED,
};
pub use tasks::{
    evaluation_examples, explanation_eval_examples, pod_segment, sample_negatives,
    sequential_eval_examples, topn_test_examples, topn_validation_examples, Example, Split, Task,
    TaskSampler, MAX_HISTORY,
};
pub use templates::Templates;
pub use tokenizer::{
    id_mentions, parse_item, EncodedInput, RecTokenizer, EOS_ID, MAX_EXPLANATION_TOKENS, PAD_ID,
    VOCAB_SIZE, WHOLE_WORD_VOCAB,
};
