use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::tokenizer::{EncodedInput, MAX_EXPLANATION_TOKENS, PAD_ID};
use crate::{
    Dataset, DatasetError, Example, Explanations, RecTokenizer, Task, TaskSampler, Templates,
};

/// A padded batch of one task, ready for the model (row i = example i).
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub task: Task,
    pub users: Vec<u32>,
    /// `[batch, input_len]` token ids, eos-terminated, right-padded with 0.
    pub input_ids: Array2<u32>,
    /// 1 over real input tokens, 0 over padding.
    pub attention_mask: Array2<u32>,
    /// SPEC §3 whole-word ids (0 on padding).
    pub whole_word_ids: Array2<u32>,
    /// `[batch, target_len]` target ids (item digits or the explanation cut to 20 tokens,
    /// then eos), right-padded with 0.
    pub target_ids: Array2<u32>,
    /// 1 over real target tokens (eos included), 0 over padding.
    pub target_mask: Array2<u32>,
    pub target_items: Vec<Option<u32>>,
    /// Top-n candidate lists (None for the other tasks).
    pub candidates: Vec<Option<Vec<u32>>>,
}

impl Batch {
    /// Tokenises and pads examples of one task.
    pub fn from_examples(
        tokenizer: &RecTokenizer,
        examples: &[Example],
    ) -> Result<Batch, DatasetError> {
        let task = examples
            .first()
            .ok_or_else(|| DatasetError::InvalidRequest("empty batch".into()))?
            .task;
        if let Some(other) = examples.iter().find(|e| e.task != task) {
            return Err(DatasetError::InvalidRequest(format!(
                "a batch holds one task; got {} and {}",
                task.name(),
                other.task.name()
            )));
        }
        let inputs: Vec<EncodedInput> = examples
            .iter()
            .map(|e| tokenizer.encode_input(&e.input))
            .collect::<Result<_, _>>()?;
        let targets: Vec<Vec<u32>> = examples
            .iter()
            .map(|e| tokenizer.encode_target(&e.target, MAX_EXPLANATION_TOKENS))
            .collect::<Result<_, _>>()?;
        let n = examples.len();
        let in_len = inputs.iter().map(|e| e.ids.len()).max().unwrap_or(0);
        let out_len = targets.iter().map(Vec::len).max().unwrap_or(0);
        let mut input_ids = Array2::from_elem((n, in_len), PAD_ID);
        let mut attention_mask = Array2::zeros((n, in_len));
        let mut whole_word_ids = Array2::zeros((n, in_len));
        let mut target_ids = Array2::from_elem((n, out_len), PAD_ID);
        let mut target_mask = Array2::zeros((n, out_len));
        for (row, (input, target)) in inputs.iter().zip(&targets).enumerate() {
            for (col, (&id, &ww)) in input.ids.iter().zip(&input.whole_word_ids).enumerate() {
                input_ids[[row, col]] = id;
                attention_mask[[row, col]] = 1;
                whole_word_ids[[row, col]] = ww;
            }
            for (col, &id) in target.iter().enumerate() {
                target_ids[[row, col]] = id;
                target_mask[[row, col]] = 1;
            }
        }
        Ok(Batch {
            task,
            users: examples.iter().map(|e| e.user).collect(),
            input_ids,
            attention_mask,
            whole_word_ids,
            target_ids,
            target_mask,
            target_items: examples.iter().map(|e| e.target_item).collect(),
            candidates: examples.iter().map(|e| e.candidates.clone()).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// One task's training units, consumed in a shuffled order and reshuffled when used up.
struct Queue {
    units: Vec<u32>,
    next: usize,
}

/// Task-alternated training batches (SPEC §6): batch k is explanation, sequential, top-n in
/// turn, skipping a task that has no data. Each task walks its units (explanation records,
/// users) in a shuffled order, reshuffling when it has used them all; a unit's example is drawn
/// fresh each time. Everything is drawn from `seed`.
///
/// ```
/// use peapod_datasets::{Dataset, RecTokenizer, Task, TaskAlternatingBatcher, Templates};
/// # let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data");
/// let templates = Templates::load(format!("{root}/templates.json")).unwrap();
/// let tok = RecTokenizer::from_file(format!("{root}/tokenizer/t5-tokenizer.json")).unwrap();
/// let seqs = (0..8u32).map(|u| (1..=6).map(|i| (u * 6 + i) % 300 + 1).collect()).collect();
/// let data = Dataset::from_sequences("tiny", seqs, 300).unwrap();
/// let mut batcher = TaskAlternatingBatcher::new(&data, &templates, None, &tok, 4, 42).unwrap();
/// assert_eq!(batcher.tasks(), &[Task::Sequential, Task::TopN]); // no explanations given
/// assert_eq!(batcher.batches_per_epoch(), 4); // (0 + 8 + 8) / 4
/// let batch = batcher.next_batch().unwrap();
/// assert_eq!((batch.task, batch.len()), (Task::Sequential, 4));
/// assert_eq!(batcher.next_batch().unwrap().task, Task::TopN);
/// ```
pub struct TaskAlternatingBatcher<'a> {
    sampler: TaskSampler<'a>,
    tokenizer: &'a RecTokenizer,
    batch_size: usize,
    tasks: Vec<Task>,
    queues: Vec<Queue>,
    order_rng: ChaCha8Rng,
    step: usize,
    units_per_epoch: usize,
}

impl<'a> TaskAlternatingBatcher<'a> {
    pub fn new(
        dataset: &'a Dataset,
        templates: &'a Templates,
        explanations: Option<&'a Explanations>,
        tokenizer: &'a RecTokenizer,
        batch_size: usize,
        seed: u64,
    ) -> Result<Self, DatasetError> {
        if batch_size == 0 {
            return Err(DatasetError::InvalidRequest(
                "batch size must be positive".into(),
            ));
        }
        let sampler = TaskSampler::new(dataset, templates, explanations, seed);
        // Separate streams for the visiting order and for the examples, so that changing one
        // (e.g. the batch size) does not shift the other more than necessary.
        let mut order_rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
        let mut tasks = Vec::new();
        let mut queues = Vec::new();
        let mut units_per_epoch = 0;
        for task in Task::ALL {
            let mut units = sampler.training_units(task);
            if units.is_empty() {
                continue;
            }
            // SPEC §6 counts every user once for sequential, even those too short to sample.
            units_per_epoch += match task {
                Task::Explanation => units.len(),
                _ => dataset.num_users(),
            };
            units.shuffle(&mut order_rng);
            tasks.push(task);
            queues.push(Queue { units, next: 0 });
        }
        if tasks.is_empty() {
            return Err(DatasetError::InvalidRequest(format!(
                "dataset {} has no training data",
                dataset.name()
            )));
        }
        Ok(TaskAlternatingBatcher {
            sampler,
            tokenizer,
            batch_size,
            tasks,
            queues,
            order_rng,
            step: 0,
            units_per_epoch,
        })
    }

    /// The tasks that have data, in alternation order.
    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    /// `ceil((|explanation train| + |users| + |users|) / batch_size)`, counting only tasks with
    /// data (SPEC §6).
    pub fn batches_per_epoch(&self) -> usize {
        self.units_per_epoch.div_ceil(self.batch_size)
    }

    /// The task of the next batch.
    pub fn next_task(&self) -> Task {
        self.tasks[self.step % self.tasks.len()]
    }

    /// The next batch's examples, untokenised.
    pub fn next_examples(&mut self) -> Vec<Example> {
        let slot = self.step % self.tasks.len();
        let task = self.tasks[slot];
        self.step += 1;
        let mut out = Vec::with_capacity(self.batch_size);
        while out.len() < self.batch_size {
            let queue = &mut self.queues[slot];
            if queue.next == queue.units.len() {
                queue.units.shuffle(&mut self.order_rng);
                queue.next = 0;
            }
            let unit = queue.units[queue.next];
            queue.next += 1;
            // Units come from `training_units`, which keeps only those that can be sampled.
            if let Some(example) = self.sampler.sample(task, unit) {
                out.push(example);
            }
        }
        out
    }

    /// The next batch, tokenised and padded.
    pub fn next_batch(&mut self) -> Result<Batch, DatasetError> {
        let examples = self.next_examples();
        Batch::from_examples(self.tokenizer, &examples)
    }
}
