"""The protocol's ranking and text metrics: the Rust crate `peapod-metrics`'s own functions."""

from ._native import bleu, hit_ratio_at, ndcg_at, rank_metrics, rouge, text_report

__all__ = ["bleu", "hit_ratio_at", "ndcg_at", "rank_metrics", "rouge", "text_report"]
