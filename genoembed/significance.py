"""How surprising an embedding score is: a per-store null, turned into an E-value per hit.

A cosine of 0.5 means a near-copy in one store and noise in another (it depends on the model, the
window, the query's length and composition, and the store's size). So each store gets its own null,
like BLAST's Karlin-Altschul statistics but measured instead of derived: ``NULL_QUERIES`` random
sequences of the query's length bin and GC bin (i.i.d. bases at that GC, no homolog anywhere by
construction) are embedded with the store's model and searched against the store, keeping each one's
top ``NULL_DEPTH`` scores. The E-value of a score ``s`` is the number of (null query, store tile) pairs
scoring at least ``s``, per null query: the expected number of hits that good a query with no homolog
gets from this store. Beyond the best null score the count is extrapolated by an exponential tail
(log E linear in ``s``, fitted to the top tenth of null scores, the shape of BLAST's extreme-value
tail), so strong hits get E-values far below ``1 / NULL_QUERIES``.

The null is computed once per store index, model, length bin and GC bin, and cached as
``cache/null-KEY.npy`` in the store (written to a temporary name and renamed, so concurrent searches never
read half a file; a read-only store recomputes it in memory). benchmarks/RESULTS.md ("Issue 26") reports
how well it is calibrated on real queries with no homolog in the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoembed.files import atomic_file
from genoembed.store import Store

NULL_QUERIES = 200
NULL_DEPTH = 50
DEFAULT_EVALUE = 10.0  # BLAST's default: a query with no homolog keeps ~10 hits at most, on average
_TAIL = 0.1  # fraction of the null scores the tail is fitted to
log = logging.getLogger("genoembed")


def length_bin(length: int, window: int) -> int:
    """Lengths in half-octave bins (a null per bin, not per length), capped at one window."""
    length = max(16, min(length, window))
    return min(window, int(round(2 ** (round(2 * math.log2(length)) / 2))))


def gc_bin(sequence: str) -> float:
    """GC fraction of the called bases, in steps of 0.05."""
    upper = sequence.upper()
    called = sum(upper.count(base) for base in "ACGT")
    gc = (upper.count("G") + upper.count("C")) / called if called else 0.5
    return round(round(gc * 20) / 20, 2)


class Null:
    """Sorted null scores (higher is better) of one store, length bin and GC bin, and the tail fitted to them."""

    def __init__(self, scores: np.ndarray, queries: int):
        self.scores = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
        self.queries = queries
        top = self.scores[:max(2, int(len(self.scores) * _TAIL))]
        counts = np.arange(1, len(top) + 1) / queries
        slope, intercept = np.polyfit(top, np.log(counts), 1) if np.ptp(top) > 0 else (-50.0, 0.0)
        self.slope, self.intercept = min(slope, -1e-3), intercept

    def evalue(self, scores: np.ndarray) -> np.ndarray:
        """Expected hits scoring at least each score, per query with no homolog."""
        scores = np.asarray(scores, dtype=np.float64)
        counted = np.searchsorted(-self.scores, -scores, side="right") / self.queries
        tail = np.exp(self.intercept + self.slope * scores)
        return np.where(scores > self.scores[0], np.minimum(tail, 1.0 / self.queries), counted)


def null_for(store: Store, length: int, gc: float, embedder, search_settings: dict | None = None) -> Null:
    """The cached null of ``store`` for a length bin and GC bin (computed and cached on first use)."""
    key_fields = [store.manifest.get("index", {}).get("sha256"), store.num_tiles, embedder.fingerprint,
                  length, gc, NULL_QUERIES, NULL_DEPTH]
    key = hashlib.sha256(json.dumps(key_fields).encode()).hexdigest()[:20]
    path = store.root / "cache" / f"null-{key}.npy"
    if path.is_file():
        try:
            return Null(np.load(path, allow_pickle=False), NULL_QUERIES)
        except (OSError, ValueError):
            log.warning("%s: unreadable null cache, recomputing it", path)
    scores = null_scores(store, length, gc, embedder, search_settings or {}, seed=int(key[:8], 16))
    try:
        path.parent.mkdir(exist_ok=True)
        with atomic_file(path, "null cache") as partial, open(partial, "wb") as handle:
            np.save(handle, scores)
    except Exception as error:  # a read-only store recomputes the null next time
        log.debug("null cache not written to %s: %s", path, error)
    return Null(scores, NULL_QUERIES)


def null_scores(store: Store, length: int, gc: float, embedder, search_settings: dict, seed: int) -> np.ndarray:
    """Top ``NULL_DEPTH`` store scores of each of ``NULL_QUERIES`` random sequences (higher is better)."""
    rng = np.random.default_rng(seed)
    weights = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    letters = np.frombuffer(b"ACGT", dtype=np.uint8)
    sequences = [letters[rng.choice(4, size=length, p=weights)].tobytes().decode() for _ in range(NULL_QUERIES)]
    scores, ids = store.vector_index().search(embedder.embed(sequences), min(NULL_DEPTH, store.num_tiles),
                                              **search_settings)
    scores = scores[ids >= 0].astype(np.float64)
    return scores if store.metric == "ip" else -scores  # L2: smaller distance is better


def add_evalues(store: Store, queries: list, hits: pa.Table, embedder, search_settings: dict | None = None,
                lengths: dict[str, int] | None = None, multiplier: dict[str, float] | None = None) -> pa.Table:
    """``hits`` with ``score_evalue``: the E-value of each hit's embedding score under the store's null for its
    query's length and GC bins. ``lengths`` overrides a query's length (a mapped query's tiles are one window
    long); ``multiplier`` scales a query's E-values (a mapped query searched as several tiles). Rows whose
    ``tile_id`` is -1 (placed by seeds, not by a vector) get null."""
    window = store.provenance["tiling"]["window"]
    by_name = {query.name: query for query in queries}
    names = hits.column("query").to_pylist()
    scores = hits.column("score").to_numpy().astype(np.float64)
    if store.metric != "ip":
        scores = -scores
    evalues = np.full(len(names), np.nan)
    bins: dict[tuple[int, float], list[int]] = {}
    for row, name in enumerate(names):
        query = by_name[name]
        length = (lengths or {}).get(name, len(query.sequence))
        bins.setdefault((length_bin(length, window), gc_bin(query.sequence)), []).append(row)
    for (length, gc), rows in bins.items():
        null = null_for(store, length, gc, embedder, search_settings)
        evalues[rows] = null.evalue(scores[rows])
    if multiplier:
        evalues *= np.array([multiplier.get(name, 1.0) for name in names])
    seeded = hits.column("tile_id").to_numpy() < 0
    column = pa.array(np.where(seeded, np.nan, evalues), pa.float64(), mask=seeded)
    return hits.append_column(pa.field("score_evalue", pa.float64(), nullable=True), column)


def significant(hits: pa.Table, max_evalue: float | None = None, min_score: float | None = None,
                higher_is_better: bool = True) -> pa.Table:
    """Hits whose E-value is at most ``max_evalue`` and whose embedding score reaches ``min_score``.

    The E-value that decides is the alignment's (``evalue``, with ``--align``) where the hit aligned, else the
    embedding score's (``score_evalue``); a hit with neither (a seed placement, unaligned) is kept."""
    keep = pa.array(np.ones(hits.num_rows, dtype=bool))
    if max_evalue is not None:
        deciding = hits["score_evalue"] if "score_evalue" in hits.column_names else pa.nulls(hits.num_rows, pa.float64())
        if "evalue" in hits.column_names:
            deciding = pc.coalesce(hits["evalue"], deciding)
        keep = pc.fill_null(pc.less_equal(deciding, max_evalue), True)
    if min_score is not None:
        good = pc.greater_equal(hits["score"], min_score) if higher_is_better else pc.less_equal(hits["score"], min_score)
        keep = pc.and_(keep, good)
    return hits.filter(keep)
