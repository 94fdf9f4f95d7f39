use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Dataset, DatasetError, Explanations, Negatives, Templates, NUM_TEST_NEGATIVES};

/// Longest item history in a sequential input (SPEC §2).
pub const MAX_HISTORY: usize = 20;

/// The three PeaPOD tasks, with the task ids of SPEC §2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u32)]
pub enum Task {
    Explanation = 0,
    Sequential = 1,
    TopN = 2,
}

impl Task {
    /// The three tasks in the order of task-alternated training.
    pub const ALL: [Task; 3] = [Task::Explanation, Task::Sequential, Task::TopN];

    /// The task id (explanation 0, sequential 1, top-n 2): the row of the task prompt.
    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn from_id(id: u32) -> Option<Task> {
        Task::ALL.get(id as usize).copied()
    }

    pub fn name(self) -> &'static str {
        match self {
            Task::Explanation => "explanation",
            Task::Sequential => "sequential",
            Task::TopN => "topn",
        }
    }

    /// The task named `name` (as [`Task::name`] spells it, or `top-n`).
    pub fn parse(name: &str) -> Result<Task, DatasetError> {
        match name.trim() {
            "explanation" => Ok(Task::Explanation),
            "sequential" => Ok(Task::Sequential),
            "topn" | "top-n" => Ok(Task::TopN),
            other => Err(DatasetError::InvalidRequest(format!(
                "unknown task `{other}` (sequential, topn, explanation)"
            ))),
        }
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which part of the leave-one-out split (or of the explanation file) to draw from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Validation,
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The split named `name` (as [`Split::name`] spells it, or `valid`).
    pub fn parse(name: &str) -> Result<Split, DatasetError> {
        match name.trim() {
            "train" => Ok(Split::Train),
            "validation" | "valid" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            other => Err(DatasetError::InvalidRequest(format!(
                "unknown split `{other}` (train, validation or test)"
            ))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One sequence-to-sequence pair before tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub task: Task,
    pub user: u32,
    /// The rendered prompt.
    pub input: String,
    /// The target text: an item id as digits, or the (untruncated) explanation.
    pub target: String,
    /// The target item for sequential and top-n examples.
    pub target_item: Option<u32>,
    /// The top-n candidate list (the positive among the negatives, shuffled).
    pub candidates: Option<Vec<u32>>,
}

/// Draws training examples as SPEC §2 describes, from its own seeded RNG: the same seed and the
/// same sequence of calls give the same examples.
///
/// ```
/// use peapod_datasets::{Dataset, Task, TaskSampler, Templates};
/// # let templates_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/templates.json");
/// let templates = Templates::load(templates_path).unwrap();
/// let data = Dataset::from_sequences("tiny", vec![vec![1, 2, 3, 4, 5, 6]], 6).unwrap();
/// let mut sampler = TaskSampler::new(&data, &templates, None, 7);
/// let ex = sampler.sequential(1).unwrap();
/// // The target never reaches the validation (5) or test (6) item.
/// assert!(matches!(ex.target_item, Some(2..=4)));
/// assert_eq!(ex.target, ex.target_item.unwrap().to_string());
/// ```
pub struct TaskSampler<'a> {
    dataset: &'a Dataset,
    templates: &'a Templates,
    explanations: Option<&'a Explanations>,
    rng: ChaCha8Rng,
}

impl<'a> TaskSampler<'a> {
    pub fn new(
        dataset: &'a Dataset,
        templates: &'a Templates,
        explanations: Option<&'a Explanations>,
        seed: u64,
    ) -> Self {
        TaskSampler {
            dataset,
            templates,
            explanations,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    pub fn dataset(&self) -> &'a Dataset {
        self.dataset
    }

    pub fn explanations(&self) -> Option<&'a Explanations> {
        self.explanations
    }

    /// How many training units a task has: explanation train records, or users. Sequential
    /// counts only users whose training history has at least two items (a target and a
    /// history item).
    pub fn training_units(&self, task: Task) -> Vec<u32> {
        match task {
            Task::Explanation => match self.explanations {
                Some(e) => (0..e.train.len() as u32).collect(),
                None => Vec::new(),
            },
            Task::Sequential => self
                .dataset
                .users()
                .filter(|&u| self.dataset.train_history(u).len() >= 2)
                .collect(),
            Task::TopN => self.dataset.users().collect(),
        }
    }

    /// A training example of `task` for `unit` (a user id, or an explanation train record index
    /// for [`Task::Explanation`]); None when that unit has no training example.
    pub fn sample(&mut self, task: Task, unit: u32) -> Option<Example> {
        match task {
            Task::Explanation => self.explanation(unit as usize),
            Task::Sequential => self.sequential(unit),
            Task::TopN => Some(self.topn(unit)),
        }
    }

    /// A random contiguous segment of the training history (ending at least two items before
    /// the end of the sequence), cut to its last ≤ 21 items: the last is the target, the rest
    /// the history; random template. None if the training history has fewer than two items.
    ///
    /// The segment is drawn as POD's `SeqSampler` draws it ([`pod_segment`]): its start first,
    /// then its end after the start, which puts the paper's targets near the recent end of the
    /// history, where the test item follows.
    pub fn sequential(&mut self, user: u32) -> Option<Example> {
        let train = self.dataset.train_history(user);
        let (start, end) = pod_segment(train.len(), &mut self.rng)?;
        let template = self
            .rng
            .random_range(0..self.templates.count(Task::Sequential));
        let target = train[end];
        let input = self
            .templates
            .render(Task::Sequential, template, user, &train[start..end])
            .ok()?;
        Some(Example {
            task: Task::Sequential,
            user,
            input,
            target: target.to_string(),
            target_item: Some(target),
            candidates: None,
        })
    }

    /// One random positive from the training history and 99 fresh negatives the user never
    /// touched, shuffled together; random template.
    pub fn topn(&mut self, user: u32) -> Example {
        let train = self.dataset.train_history(user);
        let positive = train[self.rng.random_range(0..train.len())];
        let template = self.rng.random_range(0..self.templates.count(Task::TopN));
        topn_example(
            self.dataset,
            self.templates,
            template,
            user,
            positive,
            &mut self.rng,
        )
    }

    /// The explanation train record `index` with a random template; None if there is no such
    /// record.
    pub fn explanation(&mut self, index: usize) -> Option<Example> {
        let record = self.explanations?.train.get(index)?;
        let template = self
            .rng
            .random_range(0..self.templates.count(Task::Explanation));
        explanation_example(
            self.templates,
            template,
            record.user,
            record.item,
            &record.explanation,
        )
    }
}

/// The training segment `items[start..=end]` of a history of `n` items, cut to its last
/// [`MAX_HISTORY`] + 1 items, as POD's `SeqSampler` draws it (SPEC §2): `start` uniform in
/// `[0, n − 2]`, then `end` uniform in `[start + 1, n − 1]`. Returns the cut start and the end
/// (the target's index); None when `n < 2`.
///
/// ```
/// use rand::SeedableRng;
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
/// let (start, end) = peapod_datasets::pod_segment(40, &mut rng).unwrap();
/// assert!(start < end && end < 40 && end - start <= 20);
/// assert!(peapod_datasets::pod_segment(1, &mut rng).is_none());
/// ```
pub fn pod_segment<R: Rng>(n: usize, rng: &mut R) -> Option<(usize, usize)> {
    if n < 2 {
        return None;
    }
    let start = rng.random_range(0..n - 1);
    let end = rng.random_range(start + 1..n);
    Some((start.max(end.saturating_sub(MAX_HISTORY)), end))
}

fn topn_example(
    dataset: &Dataset,
    templates: &Templates,
    template: usize,
    user: u32,
    positive: u32,
    rng: &mut ChaCha8Rng,
) -> Example {
    let mut candidates = sample_negatives(dataset, user, NUM_TEST_NEGATIVES, rng);
    candidates.push(positive);
    candidates.shuffle(rng);
    topn_from_candidates(templates, template, user, positive, candidates)
}

fn topn_from_candidates(
    templates: &Templates,
    template: usize,
    user: u32,
    positive: u32,
    candidates: Vec<u32>,
) -> Example {
    // Template indices come from `count`, so rendering cannot fail.
    let input = templates
        .render(Task::TopN, template, user, &candidates)
        .unwrap_or_default();
    Example {
        task: Task::TopN,
        user,
        input,
        target: positive.to_string(),
        target_item: Some(positive),
        candidates: Some(candidates),
    }
}

fn explanation_example(
    templates: &Templates,
    template: usize,
    user: u32,
    item: u32,
    explanation: &str,
) -> Option<Example> {
    let input = templates
        .render(Task::Explanation, template, user, &[item])
        .ok()?;
    Some(Example {
        task: Task::Explanation,
        user,
        input,
        target: explanation.to_string(),
        target_item: None,
        candidates: None,
    })
}

/// `count` distinct items drawn uniformly from the item universe minus everything the user
/// interacted with (fewer if not that many exist).
pub fn sample_negatives<R: Rng>(
    dataset: &Dataset,
    user: u32,
    count: usize,
    rng: &mut R,
) -> Vec<u32> {
    let seq = dataset.sequence(user);
    let universe = dataset.item_universe();
    let touched_in_universe = {
        let mut s = seq.to_vec();
        s.sort_unstable();
        s.dedup();
        s.len()
    };
    let available = universe.len().saturating_sub(touched_in_universe);
    if available < 2 * count {
        // Few items left: enumerate them rather than reject-sample (which could spin).
        let mut pool: Vec<u32> = universe
            .iter()
            .copied()
            .filter(|i| !seq.contains(i))
            .collect();
        pool.shuffle(rng);
        pool.truncate(count);
        return pool;
    }
    let mut out = Vec::with_capacity(count + 1);
    while out.len() < count {
        let item = universe[rng.random_range(0..universe.len())];
        if !seq.contains(&item) && !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

/// Sequential validation/test inputs, one per user in dataset order: the last ≤ 20 items
/// before the target (the validation item, or the test item), plain template.
pub fn sequential_eval_examples(
    dataset: &Dataset,
    templates: &Templates,
    split: Split,
) -> Result<Vec<Example>, DatasetError> {
    let cut_from_end = match split {
        Split::Validation => 2,
        Split::Test => 1,
        Split::Train => return Err(train_split_error(Task::Sequential)),
    };
    let template = templates.eval_index(Task::Sequential);
    dataset
        .users()
        .map(|user| {
            let seq = dataset.sequence(user);
            let target_pos = seq.len() - cut_from_end;
            let history = &seq[target_pos.saturating_sub(MAX_HISTORY)..target_pos];
            let target = seq[target_pos];
            Ok(Example {
                task: Task::Sequential,
                user,
                input: templates.render(Task::Sequential, template, user, history)?,
                target: target.to_string(),
                target_item: Some(target),
                candidates: None,
            })
        })
        .collect()
}

/// Top-n validation inputs: the validation item among 99 negatives sampled from `seed`
/// (deterministic), shuffled; plain template; users in dataset order.
pub fn topn_validation_examples(
    dataset: &Dataset,
    templates: &Templates,
    seed: u64,
) -> Vec<Example> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let template = templates.eval_index(Task::TopN);
    dataset
        .users()
        .map(|user| {
            topn_example(
                dataset,
                templates,
                template,
                user,
                dataset.valid_item(user),
                &mut rng,
            )
        })
        .collect()
}

/// Top-n test inputs: the test item among the user's fixed negatives, in an order shuffled
/// from `seed`; plain template; users in dataset order.
pub fn topn_test_examples(
    dataset: &Dataset,
    templates: &Templates,
    negatives: &Negatives,
    seed: u64,
) -> Result<Vec<Example>, DatasetError> {
    if negatives.num_users() != dataset.num_users() {
        return Err(DatasetError::InvalidRequest(format!(
            "negatives cover {} users, dataset {} has {}",
            negatives.num_users(),
            dataset.name(),
            dataset.num_users()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let template = templates.eval_index(Task::TopN);
    Ok(dataset
        .users()
        .map(|user| {
            let positive = dataset.test_item(user);
            let mut candidates = negatives.of(user).to_vec();
            candidates.push(positive);
            candidates.shuffle(&mut rng);
            topn_from_candidates(templates, template, user, positive, candidates)
        })
        .collect())
}

/// Explanation inputs for every record of a split, plain template, in file order.
pub fn explanation_eval_examples(
    explanations: &Explanations,
    templates: &Templates,
    split: Split,
) -> Vec<Example> {
    let template = templates.eval_index(Task::Explanation);
    explanations
        .split(split)
        .iter()
        .filter_map(|r| explanation_example(templates, template, r.user, r.item, &r.explanation))
        .collect()
}

/// Deterministic validation or test examples of any task. Explanation without data gives an
/// empty list; top-n test reads the dataset's test negatives ([`Dataset::test_negatives`]).
pub fn evaluation_examples(
    task: Task,
    split: Split,
    dataset: &Dataset,
    templates: &Templates,
    explanations: Option<&Explanations>,
    seed: u64,
) -> Result<Vec<Example>, DatasetError> {
    if split == Split::Train {
        return Err(train_split_error(task));
    }
    match task {
        Task::Explanation => Ok(explanations
            .map(|e| explanation_eval_examples(e, templates, split))
            .unwrap_or_default()),
        Task::Sequential => sequential_eval_examples(dataset, templates, split),
        Task::TopN => match split {
            Split::Validation => Ok(topn_validation_examples(dataset, templates, seed)),
            _ => topn_test_examples(dataset, templates, dataset.test_negatives()?, seed),
        },
    }
}

fn train_split_error(task: Task) -> DatasetError {
    DatasetError::InvalidRequest(format!(
        "{} training examples are sampled (TaskSampler), not enumerated",
        task.name()
    ))
}
