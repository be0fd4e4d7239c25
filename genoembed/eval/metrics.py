"""Retrieval metrics, pure functions over plain Python/numpy values (checked on hand-made cases).

A search hit is **correct** when it overlaps one of the tile's true reference
spans on the same contig (*either-strand*), and additionally on the true
strand (*same-strand*). A hit merged from both strands of one locus (:func:`distinct_loci`) has
strand ``'+-'`` and is same-strand correct for either.
"""


from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from genoembed.errors import InputError


from genoembed.eval.truth import IDENTITY_BINS, Span


def _overlaps(hit: Span, true: Span, same_strand: bool) -> bool:
    return hit[0] == true[0] and hit[1] < true[2] and true[1] < hit[2] and (not same_strand or true[3] in hit[3])


def distinct_loci(hits: Sequence[Span]) -> list[Span]:
    """Hits with each locus once (first place kept; strand = every strand it was hit on, e.g. '+-').

    A both-strand reference holds every locus twice; under strand-invariant vectors the two rows
    tie, so without this a locus takes two of the top-k places and recall@k is deflated.
    """
    merged: dict[tuple, str] = {}
    for chrom, start, end, strand in hits:
        key = (chrom, start, end)
        merged[key] = merged.get(key, "") + ("" if strand in merged.get(key, "") else strand)
    return [(*key, strands) for key, strands in merged.items()]


def correct_ranks(hit_spans: Sequence[Sequence[Span]], truth: Sequence[Sequence[Span]],
                  same_strand: bool = False) -> np.ndarray:
    """1-based rank of each query's first correct hit (0 when none is correct).

    ``hit_spans[i]`` are query i's hits best first; ``truth[i]`` its true spans.
    A hit is correct when it overlaps a true span (and, with ``same_strand``,
    has the true span's strand).
    """
    if len(hit_spans) != len(truth):
        raise InputError(f"{len(hit_spans)} hit lists but {len(truth)} truth lists; give one of each per query")
    ranks = np.zeros(len(hit_spans), dtype=np.int64)
    for i, (hits, spans) in enumerate(zip(hit_spans, truth)):
        for rank, hit in enumerate(hits, 1):
            if any(_overlaps(hit, true, same_strand) for true in spans):
                ranks[i] = rank
                break
    return ranks


def _ranks(hit_spans, truth, same_strand, ranks):
    return np.asarray(ranks) if ranks is not None else correct_ranks(hit_spans, truth, same_strand)


def recall_at_k(hit_spans=None, truth=None, k: int = 1, same_strand: bool = False,
                ranks: np.ndarray | None = None) -> float:
    """Fraction of queries with a correct hit among the top ``k`` (from spans, or precomputed ``ranks``)."""
    ranks = _ranks(hit_spans, truth, same_strand, ranks)
    if len(ranks) == 0:
        return math.nan
    return float(np.mean((ranks >= 1) & (ranks <= k)))


def mrr(hit_spans=None, truth=None, same_strand: bool = False, ranks: np.ndarray | None = None) -> float:
    """Mean reciprocal rank of the first correct hit (0 for a query with none)."""
    ranks = _ranks(hit_spans, truth, same_strand, ranks)
    if len(ranks) == 0:
        return math.nan
    return float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0)))


def identity_bin(identity: float) -> str | None:
    """'100', '95-99' or '<95' for a percent identity (None for NaN)."""
    if identity != identity:
        return None
    for name, low, high in IDENTITY_BINS:
        if low <= identity < high or (name == "100" and identity >= 100.0):
            return name
    return None


def binned_recall(ranks: np.ndarray, identities: Sequence[float], k: int) -> dict[str, tuple[float, int]]:
    """Recall@k per identity bin: ``{bin: (recall, queries)}`` (NaN recall for an empty bin)."""
    ranks = np.asarray(ranks)
    labels = np.array([identity_bin(x) for x in identities], dtype=object)
    result = {}
    for name, _low, _high in IDENTITY_BINS:
        mask = labels == name
        result[name] = (recall_at_k(ranks=ranks[mask], k=k) if mask.any() else math.nan, int(mask.sum()))
    return result


def ann_recall(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` ids that the approximate search also returned in its top ``k``."""
    approx_ids, exact_ids = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if approx_ids.shape[0] != exact_ids.shape[0]:
        raise InputError(f"{approx_ids.shape[0]} approximate vs {exact_ids.shape[0]} exact result rows")
    found = 0
    for approx, exact in zip(approx_ids, exact_ids):
        wanted = exact[exact >= 0]
        found += len(np.intersect1d(approx[approx >= 0], wanted)) / max(len(wanted), 1)
    return found / max(len(exact_ids), 1)

