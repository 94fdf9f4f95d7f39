"""PeaPOD's exact P5 protocol from Python.

P5's splits and test negatives byte for byte, the leak-free item indexing, HR/nDCG/BLEU/ROUGE
as the reference scripts compute them, and the popularity, ID-order, MF and SASRec baselines,
all computed by the Rust crates of the PeaPOD workspace (`peapod-*`) — no second
implementation.

    import peapod
    beauty = peapod.datasets.load("data", "beauty")
    lists = [my_ranker(beauty.history(u)) for u in beauty.users()]  # your model's lists
    report = peapod.evaluate(beauty, "test", "sequential", lists)
    print(report["model"]["ndcg@10"], report["id_order"]["ndcg@10"], report["mf"]["ndcg@10"])
"""

from . import datasets, metrics
from ._native import DataError, Dataset, PeapodError, Recommender, __version__, evaluate

__all__ = [
    "DataError",
    "Dataset",
    "PeapodError",
    "Recommender",
    "__version__",
    "datasets",
    "evaluate",
    "metrics",
]
