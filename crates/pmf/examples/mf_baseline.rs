//! The MF baseline on the top-n TEST protocol (SPEC §1, §7): train BPR-MF on the training
//! split, rank each user's test item among 99 sampled negatives, print one JSON line.
//!
//! `cargo run --release --example mf_baseline -- --dataset beauty [--dim 512 --iters 100]`
//!
//! Data through `peapod-datasets` (a dev-dependency: the library itself knows no dataset):
//! - Test negatives: P5's fixed negatives, `data/<dataset>/negative_samples.txt` — the
//!   published file for toys, generated once with P5's exact procedure and seed for beauty and
//!   sports (written next to the data, read on later runs).
//! - Ranking: the target's 0-based rank is the number of negatives scoring >= it (ties
//!   counted against the target, pessimistic). HR@k = rank < k; nDCG@k = 1/log2(rank + 2) when
//!   rank < k.
//! - Popularity baseline: score = number of training users of the item, same candidates, same
//!   tie rule (ties are frequent there; the optimistic/expected figures go to stderr).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use peapod_datasets::{
    id_order_candidates, id_order_ranking, visible_history, Dataset, ItemIndexing, Split,
};
use peapod_pmf::{Interactions, MfConfig, MfModel, LEAVE_ONE_OUT_HELD_OUT};

#[derive(Parser)]
#[command(
    about = "The MF (BPR) and popularity baselines on the top-n test protocol of a P5 dataset"
)]
struct Args {
    /// sports, beauty or toys
    #[arg(long, default_value = "beauty")]
    dataset: String,
    /// Folder holding <dataset>/sequential_data.txt
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"))]
    data_dir: PathBuf,
    /// Embedding size (default 512, the paper's).
    #[arg(long)]
    dim: Option<usize>,
    /// Training iterations, each a full pass and one Adam step (default 100).
    #[arg(long)]
    iters: Option<usize>,
    /// Adam learning rate (default 1e-3).
    #[arg(long)]
    lr: Option<f32>,
    /// L2 weight λ of the BPR loss (default 1e-3).
    #[arg(long)]
    l2: Option<f32>,
    /// Negatives sampled per training interaction and iteration (default 1).
    #[arg(long)]
    negatives: Option<usize>,
    /// Candidates per negative; the highest-scoring is used (default 2).
    #[arg(long)]
    negative_candidates: Option<usize>,
    /// Adam β₂ (default 0.999).
    #[arg(long)]
    beta2: Option<f32>,
    /// Standard deviation of the initial factors (default 1e-4).
    #[arg(long)]
    init_std: Option<f32>,
    /// Ridge weight of the fold-in (default 1).
    #[arg(long)]
    fold_in_l2: Option<f32>,
    /// Seed of the initialisation and the sampling (default 2022).
    #[arg(long)]
    seed: Option<u64>,
    /// Item numbering: sequential (P5's ids) or random (a permutation drawn from --seed,
    /// default 2022).
    #[arg(long, default_value = "sequential")]
    indexing: String,
    /// Skip evaluation (timing runs).
    #[arg(long)]
    no_eval: bool,
    /// Also report (on stderr) the metrics of fold-in embeddings computed from the training
    /// histories.
    #[arg(long)]
    fold_in_check: bool,
    /// Save the trained model to this safetensors file.
    #[arg(long)]
    save: Option<PathBuf>,
}

/// `(user id, item ids oldest first)` per user.
type Sequences = Vec<(u32, Vec<u32>)>;

/// 0-based pessimistic rank of `scores[0]` (the target) among `scores[1..]`.
fn rank(scores: &[f32]) -> usize {
    let t = scores[0];
    if t.is_nan() {
        return scores.len() - 1;
    }
    scores[1..]
        .iter()
        .filter(|&&s| s >= t || s.is_nan())
        .count()
}

#[derive(Default)]
struct Metrics {
    users: usize,
    hr: [f64; 3],
    ndcg: [f64; 3],
}

const KS: [usize; 3] = [1, 5, 10];

impl Metrics {
    fn add(&mut self, rank: f64) {
        self.users += 1;
        for (slot, &k) in KS.iter().enumerate() {
            if rank < k as f64 {
                self.hr[slot] += 1.0;
                self.ndcg[slot] += 1.0 / (rank + 2.0).log2();
            }
        }
    }
    fn hr(&self, k: usize) -> f64 {
        self.hr[KS.iter().position(|&x| x == k).unwrap_or(0)] / self.users.max(1) as f64
    }
    fn ndcg(&self, k: usize) -> f64 {
        self.ndcg[KS.iter().position(|&x| x == k).unwrap_or(0)] / self.users.max(1) as f64
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let dataset = Dataset::load(args.data_dir.join(&args.dataset))?;
    let indexing = ItemIndexing::parse(&args.indexing, args.seed.unwrap_or(2022))?;
    let dataset = match indexing.permutation(dataset.num_items()) {
        Some(p) => dataset.reindexed(&p)?,
        None => dataset,
    };
    let sequences: Sequences = dataset
        .users()
        .map(|u| (u, dataset.sequence(u).to_vec()))
        .collect();
    let train = Interactions::training_split(&sequences, LEAVE_ONE_OUT_HELD_OUT)?;
    let mut config = MfConfig::default();
    if let Some(v) = args.dim {
        config.dim = v;
    }
    if let Some(v) = args.iters {
        config.iterations = v;
    }
    if let Some(v) = args.lr {
        config.learning_rate = v;
    }
    if let Some(v) = args.l2 {
        config.l2 = v;
    }
    if let Some(v) = args.negatives {
        config.negatives = v;
    }
    if let Some(v) = args.negative_candidates {
        config.negative_candidates = v;
    }
    if let Some(v) = args.beta2 {
        config.beta2 = v;
    }
    if let Some(v) = args.init_std {
        config.init_std = v;
    }
    if let Some(v) = args.fold_in_l2 {
        config.fold_in_l2 = v;
    }
    if let Some(v) = args.seed {
        config.seed = v;
    }
    eprintln!(
        "{}: {} users, {} items, {} training interactions; {:?}; {} threads",
        args.dataset,
        train.num_users(),
        train.num_items(),
        train.num_interactions(),
        config,
        rayon::current_num_threads()
    );

    let start = Instant::now();
    let model = MfModel::train_with_progress(&train, &config, |p| {
        if p.iteration % 10 == 0 || p.iteration == 1 {
            eprintln!(
                "iteration {:>4}/{}  bpr loss {:.5}  {:.1}s",
                p.iteration,
                p.iterations,
                p.loss,
                start.elapsed().as_secs_f64()
            );
        }
    })?;
    let train_seconds = start.elapsed().as_secs_f64();
    if let Some(out) = &args.save {
        model.save(out)?;
    }
    if args.no_eval {
        println!(
            "{}",
            serde_json::json!({"dataset": args.dataset, "train_seconds": train_seconds})
        );
        return Ok(());
    }

    // Test candidates: the target and the user's 99 P5 negatives.
    // P5's test negatives (the file's, or drawn as P5 drew them), under the run's indexing.
    let negatives = dataset.test_negatives()?;
    let popularity = train.item_popularity();
    let popularity_by_id: Vec<u32> = (0..=dataset.num_items() as u32)
        .map(|i| train.item_row(i).map_or(0, |r| popularity[r]))
        .collect();
    let (mut mf, mut pop, mut pop_expected, mut fold, mut id_order, mut id_order_seq) = (
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
        Metrics::default(),
    );
    for (user, sequence) in &sequences {
        let Some(&target) = sequence.last() else {
            continue;
        };
        let mut candidates = vec![target];
        candidates.extend_from_slice(negatives.of(*user));
        let scores = model.score_embedding(model.embedding(*user)?, &candidates)?;
        mf.add(rank(&scores) as f64);

        let pop_scores: Vec<f32> = candidates
            .iter()
            .map(|&i| train.item_row(i).map_or(0.0, |r| popularity[r] as f32))
            .collect();
        pop.add(rank(&pop_scores) as f64);
        let greater = pop_scores[1..]
            .iter()
            .filter(|&&s| s > pop_scores[0])
            .count();
        let ties = pop_scores[1..]
            .iter()
            .filter(|&&s| s == pop_scores[0])
            .count();
        pop_expected.add(greater as f64 + ties as f64 / 2.0);

        // The ID-order rule: what P5's sequential indexing leaks (no model at all).
        let history = visible_history(&dataset, *user, Split::Test)?;
        let ranked =
            id_order_candidates(history, &candidates, dataset.num_items(), &popularity_by_id);
        let at = ranked
            .iter()
            .position(|&i| i == target)
            .unwrap_or(ranked.len());
        id_order.add(at as f64);
        // And on the sequential protocol (all items ranked, the first 20 kept).
        let ranked = id_order_ranking(history, dataset.num_items(), 20);
        let at = ranked
            .iter()
            .position(|&i| i == target)
            .unwrap_or(usize::MAX);
        id_order_seq.add(at as f64);

        if args.fold_in_check {
            let history = &sequence[..sequence.len().saturating_sub(LEAVE_ONE_OUT_HELD_OUT)];
            if let Ok(p) = model.fold_in(history) {
                let s = model.score_embedding(p.view(), &candidates)?;
                fold.add(rank(&s) as f64);
            }
        }
    }
    eprintln!(
        "popularity with ties at their expected rank: hr@1 {:.4} hr@5 {:.4} hr@10 {:.4}",
        pop_expected.hr(1),
        pop_expected.hr(5),
        pop_expected.hr(10)
    );
    if args.fold_in_check {
        eprintln!(
            "fold-in embeddings (λ = {}): hr@1 {:.4} hr@5 {:.4} hr@10 {:.4} ndcg@10 {:.4} ({} users)",
            config.fold_in_l2,
            fold.hr(1),
            fold.hr(5),
            fold.hr(10),
            fold.ndcg(10),
            fold.users
        );
    }
    let round = |x: f64| (x * 1e4).round() / 1e4;
    println!(
        "{}",
        serde_json::json!({
            "dataset": args.dataset,
            "indexing": indexing.describe(),
            "hr@1": round(mf.hr(1)),
            "hr@5": round(mf.hr(5)),
            "ndcg@5": round(mf.ndcg(5)),
            "hr@10": round(mf.hr(10)),
            "ndcg@10": round(mf.ndcg(10)),
            "pop_hr@1": round(pop.hr(1)),
            "pop_hr@10": round(pop.hr(10)),
            "id_order_hr@1": round(id_order.hr(1)),
            "id_order_hr@5": round(id_order.hr(5)),
            "id_order_hr@10": round(id_order.hr(10)),
            "id_order_ndcg@10": round(id_order.ndcg(10)),
            "id_order_sequential_hr@5": round(id_order_seq.hr(5)),
            "id_order_sequential_ndcg@5": round(id_order_seq.ndcg(5)),
            "id_order_sequential_hr@10": round(id_order_seq.hr(10)),
            "id_order_sequential_ndcg@10": round(id_order_seq.ndcg(10)),
            "train_seconds": (train_seconds * 100.0).round() / 100.0,
        })
    );
    Ok(())
}
