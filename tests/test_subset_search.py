"""Filtered search keeps the recall the index was tuned to, also for a subset lying away from the query: two seeded
Gaussian clusters, queries in one, subsets of 0.5-50 % of the store drawn from either; recall@10 against numpy's
exact top-10 of the subset, for every layout a store can have (one file and several parts)."""

from __future__ import annotations

import numpy as np
import pytest

from genoembed.recall import exact_neighbours, recall_at, tune_search
from genoembed.subset_search import TileSubset, search_subset
from genoembed.vector_index import FaissIndex, import_faiss, prepare, with_tile_ids

K, N, DIM = 10, 8_000, 16
# IVF-PQ without a refine stage is left out: its codes cap its recall unfiltered too (see plateau_advice).
LAYOUTS = {"Flat": ("Flat", 1), "IVF": ("IVF32,Flat", 1), "IVF-PQ+refine": ("IVF32,PQ8x4,Refine(Flat)", 1),
           "HNSW": ("HNSW16", 1),
           "IVF in parts": ("IVF32,Flat", 3), "HNSW in parts": ("HNSW16", 3)}


@pytest.fixture(scope="module")
def data():
    """Two clusters (half the vectors each), queries near the first one and held-out tuning queries like them (so
    the tuned setting reaches recall@10 0.95 unfiltered on such queries: what a filtered search must keep)."""
    rng = np.random.default_rng(24)
    centres = rng.normal(size=(2, DIM))
    cluster = rng.integers(0, 2, N)
    vectors = prepare(centres[cluster] + rng.normal(0, 0.15, (N, DIM)), "ip")
    queries = prepare(centres[0] + rng.normal(0, 0.15, (100, DIM)), "ip")
    tuning = prepare(centres[0] + rng.normal(0, 0.15, (300, DIM)), "ip")
    return vectors, cluster, queries, tuning


def built(factory: str, parts: int, vectors: np.ndarray, tuning: np.ndarray) -> FaissIndex:
    """``factory`` over the vectors (ids = row numbers) in ``parts`` consecutive parts, tuned to recall@10 0.95 by
    the store's own tuning (held-out queries, unfiltered)."""
    faiss = import_faiss()
    template = faiss.index_factory(DIM, factory, faiss.METRIC_INNER_PRODUCT)
    template.train(vectors)
    bounds = np.linspace(0, N, parts + 1).astype(int)
    pieces = []
    for low, high in zip(bounds[:-1], bounds[1:]):
        piece = with_tile_ids(faiss.clone_index(template))
        piece.add_with_ids(vectors[low:high], np.arange(low, high))
        pieces.append(piece)
    index = FaissIndex(pieces, "ip")
    exact = exact_neighbours([(np.arange(N), vectors)], tuning, K, "ip")
    tuned = tune_search(pieces[0], "ip", tuning, exact, 0.95, K, search=index.search)
    index.defaults = {name: tuned[name] for name in ("nprobe", "ef_search", "k_factor") if name in tuned}
    return index


def exact_top(vectors: np.ndarray, queries: np.ndarray, inside: np.ndarray) -> np.ndarray:
    scores = queries @ vectors.T
    scores[:, ~inside] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :K]


@pytest.mark.slow
@pytest.mark.parametrize("layout", LAYOUTS)
def test_filtered_recall_holds_for_subsets_near_and_away_from_the_query(data, layout):
    vectors, cluster, queries, tuning = data
    index = built(*LAYOUTS[layout], vectors, tuning)
    rng = np.random.default_rng(1)
    for side in (0, 1):  # 0: the queries' own cluster, 1: the other one
        for share in (0.005, 0.05, 0.5):
            inside = (cluster == side) & (rng.random(N) < 2 * share)
            subset = TileSubset(int(inside.sum()), mask=inside)
            _, ids = search_subset(index, queries, K, subset)
            assert (ids >= 0).all() and inside[ids].all(), (layout, side, share)
            reached = recall_at(ids, exact_top(vectors, queries, inside), K)
            assert reached >= 0.95, f"{layout}: recall@10 {reached:.3f} for {share:.1%} of cluster {side}"


def test_hnsw_searched_by_share_alone_misses_a_subset_away_from_the_query(data):
    """Why the breadth is chosen per query: efSearch scaled by the subset's share (what search did before) walks
    the query's own cluster and finds little of the other one."""
    vectors, cluster, queries, tuning = data
    index = built("HNSW16", 1, vectors, tuning)
    inside = cluster == 1
    subset = TileSubset(int(inside.sum()), mask=inside)
    faiss = import_faiss()
    params = faiss.SearchParametersHNSW()
    params.efSearch = 2 * index.defaults["ef_search"]  # tuned / share 0.5
    translated = faiss.IDSelectorTranslated(index.parts[0].id_map, subset.selector())
    params.sel = translated
    by_share = index.parts[0].index.search(queries, K, params=params)[1]
    by_share = np.where(by_share >= 0, faiss.vector_to_array(index.parts[0].id_map)[np.maximum(by_share, 0)], -1)
    truth = exact_top(vectors, queries, inside)
    assert recall_at(by_share, truth, K) < 0.9
    assert recall_at(search_subset(index, queries, K, subset)[1], truth, K) >= 0.95


def test_parts_without_members_are_skipped_and_whole_parts_searched_unfiltered(data):
    vectors, _, queries, tuning = data
    index = built("IVF32,Flat", 4, vectors, tuning)  # parts of 2,000 ids each
    subset = TileSubset(2_000, low=2_000, high=4_000)  # exactly the second part
    scores, ids = search_subset(index, queries, K, subset)
    assert [entry[1].count for entry in subset.in_parts.values()] == [0, 2_000, 0, 0]
    alone = FaissIndex([index.parts[1]], "ip", index.defaults).search(queries, K)
    np.testing.assert_array_equal(ids, alone[1])


def test_hnsw_over_compressed_codes_leaves_exact_answers_to_the_caller(data):
    """An HNSW part over SQ codes has no float vectors to scan: queries it cannot walk to the subset come back
    as rows of -1 (filtered_search answers them from the shards); answered rows are the subset's."""
    vectors, cluster, queries, tuning = data
    index = built("HNSW16,SQ8", 1, vectors, tuning)
    inside = (cluster == 1) & (np.random.default_rng(2).random(N) < 0.02)
    _, ids = search_subset(index, queries, K, TileSubset(int(inside.sum()), mask=inside))
    answered = (ids >= 0).all(axis=1)
    assert ((ids >= 0).any(axis=1) == answered).all() and not answered.all()
    assert inside[ids[answered]].all()
