"""Types of PeaPOD's native module (the Rust core); import from `peapod` instead."""

from os import PathLike
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

class PeapodError(RuntimeError):
    """A failure inside the Rust core that is neither bad input nor bad data."""

class DataError(ValueError):
    """A malformed or inconsistent data or checkpoint file; the message names file and line."""

Rankings = Union[npt.NDArray[np.integer], Sequence[Sequence[int]]]
Metrics = Dict[str, float]

class Dataset:
    """A P5 dataset with its templates and tokenizer, under one item indexing."""

    @staticmethod
    def load(
        root: Union[str, PathLike[str]],
        name: str,
        indexing: str = "sequential",
        seed: int = 2022,
    ) -> "Dataset":
        """Loads `root/name`, `root/templates.json` and `root/tokenizer/t5-tokenizer.json`.

        `indexing="random"` renumbers items through a permutation drawn from `seed` (leak-free).
        Raises FileNotFoundError, peapod.DataError (malformed file: file, line, what) or
        ValueError (unknown indexing).
        """
    @property
    def name(self) -> str: ...
    @property
    def num_users(self) -> int: ...
    @property
    def num_items(self) -> int: ...
    @property
    def indexing(self) -> str: ...
    def users(self) -> List[int]:
        """Every user id (1-based), in the file's order."""
    def sequence(self, user: int) -> List[int]:
        """The user's whole chronological sequence, validation and test items included."""
    def history(self, user: int, split: str = "test") -> List[int]:
        """The last 20 items before the split's target: what the protocol shows a model."""
    def target(self, user: int, split: str = "test") -> int:
        """The split's held-out item of the user."""
    def candidates(self, split: str = "test", seed: int = 2022) -> npt.NDArray[np.uint32]:
        """Top-n candidates, shape (num_users, 100): the target among 99 negatives."""
    def test_negatives(self) -> npt.NDArray[np.uint32]:
        """P5's fixed test negatives, shape (num_users, 99); row u-1 is user u."""
    def p5_item(self, item: int) -> int:
        """The item's id under P5's sequential numbering."""
    def item_from_p5(self, p5_item: int) -> int:
        """The id under this indexing of P5's item `p5_item` (inverse of p5_item)."""
    def item_key(self, item: int) -> Optional[str]:
        """The item's Amazon ASIN."""
    def user_key(self, user: int) -> Optional[str]:
        """The user's Amazon reviewer id."""
    def __len__(self) -> int: ...

class Recommender:
    """A trained PeaPOD (run directory or checkpoint file) on the dataset it names."""

    @staticmethod
    def load(
        path: Union[str, PathLike[str]], data_root: Union[str, PathLike[str]]
    ) -> "Recommender":
        """Loads a run directory (its best, else last checkpoint) or a checkpoint file.

        The user queries come from the run directory's MF model, else MF retrained at the
        paper's settings from the checkpoint's seed (as the shipped checkpoint's run made them).
        """
    @property
    def dataset(self) -> Dataset: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def step(self) -> int: ...
    @property
    def variant(self) -> str: ...
    def recommend(
        self,
        users: Optional[Sequence[int]] = None,
        split: str = "test",
        k: int = 20,
        constrained: bool = False,
        num_beams: int = 20,
        batch_size: int = 32,
    ) -> List[List[int]]:
        """Next-item lists by the protocol's beam search (0: a beam that named no item)."""
    def rank_candidates(
        self,
        users: Optional[Sequence[int]] = None,
        split: str = "test",
        seed: int = 2022,
        candidates: Optional[Sequence[Sequence[int]]] = None,
    ) -> List[List[int]]:
        """Top-n by exact teacher-forced likelihood: the protocol's candidates of each user, or
        `candidates[i]` for `users[i]` when given."""
    def explain(self, users: Sequence[int], items: Sequence[int]) -> List[str]:
        """Explanations for (users[i], items[i]); meaningful for models trained on explanations."""
    def component_weights(self, users: Sequence[int]) -> Optional[npt.NDArray[np.float32]]:
        """The user prompt's weights alpha, shape (len(users), components), in [-1, 1]."""

def evaluate(
    dataset: Dataset,
    split: str,
    task: str,
    rankings: Rankings,
    users: Optional[Sequence[int]] = None,
    seed: int = 2022,
    baselines: bool = True,
    mf_cache: Optional[Union[str, PathLike[str]]] = None,
    sasrec: Optional[Union[str, PathLike[str]]] = None,
) -> Dict[str, Union[Metrics, int, str]]:
    """Scores ranked lists (row i for users[i], or for Dataset.users()[i]) by the protocol.

    Item id 0 marks a generated sequence that names no item: it holds its rank, never hits.

    `task` is "sequential" (HR/nDCG@5/10) or "topn" (HR@1/5/10, nDCG@1/5/10; lists may hold
    only the user's candidates). With `baselines`, popularity, ID order and MF (of `seed`,
    cached in `mf_cache` when given) rank the same users and candidates; `sasrec` names a SASRec
    checkpoint (read when trained on this data and seed, else trained and written there).
    Returns {"model": {...}, "popularity": {...}, "id_order": {...}, "mf": {...},
    "sasrec": {...}, "users": n, "split": ..., "task": ..., "indexing": ...}.
    """

def hit_ratio_at(ranked: Sequence[int], target: int, k: int) -> float: ...
def ndcg_at(ranked: Sequence[int], target: int, k: int) -> float: ...
def rank_metrics(
    rankings: Rankings, targets: Sequence[int], cutoffs: Sequence[int] = ...
) -> Metrics:
    """Mean HR@k and nDCG@k over users: keys "hr@k", "ndcg@k"."""
def bleu(
    references: Sequence[str], candidates: Sequence[str], n: int = 4, smoothing: str = "none"
) -> float:
    """Corpus BLEU-n x100 (the reference script's compute_bleu); smoothing "none" or "add-one"."""
def rouge(references: Sequence[str], candidates: Sequence[str]) -> Dict[str, Metrics]:
    """ROUGE-1/2/L x100: {"rouge_1": {"f_score", "p_score", "r_score"}, ...}."""
def text_report(references: Sequence[str], candidates: Sequence[str]) -> Metrics:
    """BLEU-1/4, ROUGE-1/2/L (x100), USR, Distinct-1/2, under the reports' keys."""
