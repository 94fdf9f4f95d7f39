//! The paper's PeaPOD rows (T5-small; `docs/reproduce.md`), for reports that put our numbers
//! beside them.

/// One dataset's published figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaperRow {
    pub dataset: &'static str,
    /// HR@5, nDCG@5, HR@10, nDCG@10.
    pub sequential: [f64; 4],
    /// HR@1, HR@5, nDCG@5, HR@10, nDCG@10.
    pub topn: [f64; 5],
    /// BLEU-4, ROUGE-1, ROUGE-2, ROUGE-L F (×100).
    pub explanation: [f64; 4],
}

pub const PAPER_ROWS: [PaperRow; 3] = [
    PaperRow {
        dataset: "sports",
        sequential: [0.0505, 0.0400, 0.0611, 0.0432],
        topn: [0.1212, 0.2741, 0.2007, 0.3616, 0.2286],
        explanation: [0.9148, 11.2685, 1.7870, 8.8078],
    },
    PaperRow {
        dataset: "beauty",
        sequential: [0.0588, 0.0445, 0.0738, 0.0493],
        topn: [0.1097, 0.2441, 0.1780, 0.3260, 0.2039],
        explanation: [1.0050, 13.4532, 1.5863, 10.3238],
    },
    PaperRow {
        dataset: "toys",
        sequential: [0.0692, 0.0583, 0.0787, 0.0609],
        topn: [0.0728, 0.1618, 0.1190, 0.2315, 0.1411],
        explanation: [2.4295, 13.5537, 3.9567, 11.3863],
    },
];

/// The paper's row for `dataset`, if it has one.
pub fn paper_row(dataset: &str) -> Option<&'static PaperRow> {
    PAPER_ROWS.iter().find(|r| r.dataset == dataset)
}

/// The paper's figures as a report's metric map of `task` ("sequential", "topn",
/// "explanation"), keyed as our reports key them.
pub fn paper_metrics(row: &PaperRow, task: &str) -> Vec<(&'static str, f64)> {
    match task {
        "sequential" => ["hr@5", "ndcg@5", "hr@10", "ndcg@10"]
            .into_iter()
            .zip(row.sequential)
            .collect(),
        "topn" => ["hr@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10"]
            .into_iter()
            .zip(row.topn)
            .collect(),
        "explanation" => [
            "bleu_4",
            "rouge_1/f_score",
            "rouge_2/f_score",
            "rouge_l/f_score",
        ]
        .into_iter()
        .zip(row.explanation)
        .collect(),
        _ => Vec::new(),
    }
}

/// The paper's SASRec row (its non-LLM sequential baselines, beauty only): HR@5 and HR@10.
pub fn paper_sasrec(dataset: &str) -> Option<Vec<(&'static str, f64)>> {
    (dataset == "beauty").then(|| vec![("hr@5", 0.0387), ("hr@10", 0.0605)])
}
