"""P5's Amazon datasets: leave-one-out splits, fixed test negatives, item indexings."""

from ._native import Dataset

load = Dataset.load
"""`load(root, name, indexing="sequential", seed=2022)`: see `Dataset.load`."""

__all__ = ["Dataset", "load"]
