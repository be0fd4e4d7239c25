"""Recall against exact search: exact top-k over streamed vectors, recall@k, and tuning an approximate index's
search settings (nprobe, efSearch, a refine stage's k_factor) to a recall target at the least memory traffic.

Apart from :mod:`genoembed.vector_index` because it measures indexes rather than being one: the store's build
(:mod:`genoembed.indexing`) tunes with it, filtered search (:mod:`genoembed.subsets`) answers small subsets
exactly with it, and benchmarks and evaluation score recall with it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from genoembed.vector_index import Metric, first_stage, import_faiss, prepare, refine_stage, search_index, search_knob


def flat_block(ids: np.ndarray, vectors: np.ndarray, metric: Metric | str) -> tuple[np.ndarray, object]:
    """``(ids, exact FAISS index of the vectors)``: a block :func:`exact_search` searches without rebuilding it
    (a subset searched again and again keeps one)."""
    faiss = import_faiss()
    vectors = prepare(vectors, metric)
    flat = faiss.IndexFlatIP(vectors.shape[1]) if Metric(metric) is Metric.ip else faiss.IndexFlatL2(vectors.shape[1])
    flat.add(vectors)
    return ids, flat


def exact_search(blocks, queries: np.ndarray, k: int, metric: Metric | str) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the exact top-``k`` of each query over ``(ids, vectors)`` blocks (vectors as an array, or
    a :func:`flat_block` index), streamed with a running merge; ids of -1 where the blocks hold fewer than ``k``."""
    faiss = import_faiss()
    metric = Metric(metric)
    queries = prepare(queries, metric)
    heap = faiss.ResultHeap(len(queries), k, keep_max=metric is Metric.ip)
    for ids, vectors in blocks:
        if not len(ids):
            continue
        _, flat = (ids, vectors) if hasattr(vectors, "ntotal") else flat_block(ids, vectors, metric)
        scores, local = flat.search(queries, min(k, len(ids)))
        found = np.where(local >= 0, ids[np.maximum(local, 0)], -1)
        if scores.shape[1] < k:  # a block smaller than k: pad so every block adds k columns
            pad = k - scores.shape[1]
            worst = -np.inf if metric is Metric.ip else np.inf
            scores = np.hstack([scores, np.full((len(queries), pad), worst, dtype=np.float32)])
            found = np.hstack([found, np.full((len(queries), pad), -1, dtype=np.int64)])
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(found, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I


def exact_neighbours(blocks, queries: np.ndarray, k: int, metric: Metric | str) -> np.ndarray:
    """Ids of the exact top-``k`` of each query over ``(ids, vectors)`` blocks (:func:`exact_search`)."""
    return exact_search(blocks, queries, k, metric)[1]


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of each query's exact top-``k`` that the search returned in its top-``k``."""
    shares = query_recalls(found, exact, k)
    return float(shares.mean()) if len(shares) else 1.0


def query_recalls(found: np.ndarray, exact: np.ndarray, k: int) -> np.ndarray:
    """Each query's share of its exact top-``k`` that the search returned in its top-``k``."""
    return np.array([len(set(row[:k]) & set(truth[:k]) - {-1}) / k for row, truth in zip(found, exact)])


# Standard errors of the tuning sample's mean recall kept below it when judging a setting: the cheapest setting
# whose sample mean just reaches the target (one pick among dozens tried) fell short on other queries (618 k
# tiles: 0.951 on the 1,000 tuning windows, 0.948 on 1,000 others; benchmarks/RESULTS.md, issue 24).
TUNING_MARGIN_SE = 2.0


def recall_floor(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """The sample's mean recall@``k`` less :data:`TUNING_MARGIN_SE` standard errors: a setting whose floor reaches
    the target reaches it on other queries like these with ~98 % confidence."""
    shares = query_recalls(found, exact, k)
    if len(shares) < 2:
        return float(shares.mean()) if len(shares) else 1.0
    return float(shares.mean() - TUNING_MARGIN_SE * shares.std(ddof=1) / np.sqrt(len(shares)))


# Shortlist factors tried for a refine stage, widest first: k = 10 re-ranks at most 2,560 candidates. 64 (640) was
# the widest until 2026-12-07: at 618 k tiles of the human-scale benchmark PQ32's top 640 missed so many of the
# exact top 10 that no nprobe reached 0.95 (0.916 at nprobe 512 of 1024); re-ranking 2,560 float16 vectors
# reads ~1.3 MB per query at 256-d, less than the PQ lists that nprobe 512 scans (~10 MB) (benchmarks/RESULTS.md).
K_FACTORS = (256, 128, 64, 32, 16, 8, 4, 2, 1)


def bytes_read(index, k: int, knob: str | None, value: int | None, k_factor: int | None) -> float:
    """Codes a query reads at a setting, in bytes: the inverted lists probed (IVF) or at least efSearch
    candidates (HNSW) times the code size, plus the ``k * k_factor`` shortlist times the refine code size.
    Memory traffic is what these searches cost; unlike timings on a shared machine it is reproducible."""
    faiss = import_faiss()
    refine = refine_stage(index)
    scanned = 0.0
    if knob == "nprobe":
        ivf = faiss.try_extract_index_ivf(index)
        scanned = value * ivf.ntotal / ivf.nlist * ivf.code_size
    elif knob == "ef_search":
        scanned = value * faiss.downcast_index(first_stage(index).storage).sa_code_size()
    if refine is not None:
        scanned += k * k_factor * faiss.downcast_index(refine.refine_index).sa_code_size()
    return scanned


def tune_search(index, metric: Metric | str, queries: np.ndarray, exact: np.ndarray, target: float,
                k: int = 10, search: Callable | None = None) -> dict:
    """The cheapest nprobe (IVF) or efSearch (HNSW), and ``k_factor`` for a refine stage, whose recall@``k``
    against ``exact`` reaches ``target`` with a margin for the sample (:func:`recall_floor`, the mean less two
    standard errors); cheapest = fewest :func:`bytes_read` per query.

    The widest shortlist (:data:`K_FACTORS` [0]) is swept first, up to the setting that reaches the target;
    narrower shortlists then start from there (they need at least as wide a search) and stop once they
    would read more than the best pair so far. When nothing reaches the target, the aim is the best floor
    reached less :data:`PLATEAU` (:func:`recall_aim`; the caller warns). Returns ``{"nprobe"|"ef_search": value, ["k_factor": f,]
    "recall_at_10": the sample's mean at it, "target": target}``; exact indexes return ``{}``.

    ``search(queries, k, **settings)`` answers instead of ``index`` when given (a :class:`FaissIndex` whose
    parts are all like ``index``, one of them: the knob and the bytes read are taken from it).
    """
    knob, values = search_knob(index)
    k_factors = K_FACTORS if refine_stage(index) is not None else (None,)
    if knob is None and k_factors == (None,):
        return {}
    recalls: dict[tuple, float] = {}
    floors: dict[tuple, float] = {}

    def measure(value, k_factor) -> float:
        settings = {name: v for name, v in ((knob, value), ("k_factor", k_factor)) if name is not None}
        _, found = search(queries, k, **settings) if search else search_index(index, queries, k, metric, **settings)
        recalls[value, k_factor] = recall_at(found, exact, k)
        floors[value, k_factor] = recall_floor(found, exact, k)
        return floors[value, k_factor]

    for value in values:
        if measure(value, k_factors[0]) >= target:
            break
    aim = recall_aim(max(floors.values()), target)
    cost = lambda pair: bytes_read(index, k, knob, *pair)
    best = min((pair for pair, floor in floors.items() if floor >= aim), key=cost)
    start = values.index(best[0])
    for k_factor in k_factors[1:]:
        for position in range(start, len(values)):
            if cost((values[position], k_factor)) >= cost(best):
                break
            if measure(values[position], k_factor) >= aim:
                best, start = (values[position], k_factor), position
                break
    tuned = {knob: best[0]} if knob else {}
    if best[1] is not None:
        tuned["k_factor"] = best[1]
    return {**tuned, f"recall_at_{k}": round(recalls[best], 4), "target": target}


# Recall within this of the best a setting reached counts as the best: PQ layouts plateau far below a
# high target, and the widest search (a full scan at nprobe = nlist) costs ~100x for the last 0.1 %.
PLATEAU = 0.005


def recall_aim(best: float, target: float) -> float:
    """What tuning settles for: ``target``, or when the best recall reached falls short, that less :data:`PLATEAU`."""
    return target if best >= target else best - PLATEAU
