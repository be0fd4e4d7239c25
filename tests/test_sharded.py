"""Sharded FAISS indexes and filtered search, checked against one index and brute force (numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError
from genoembed.build import index
from genoembed.indexing import build_sharded, merge_ondisk
from genoembed.search import filtered_search, subset_mask
from genoembed.vector_index import ShardedIndex
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec, build_index, prepare

TILING = TilingSpec(window=200, stride=100)


def write_multi_genome_store(root, fastas, embedder, shard_rows=300):
    """A store holding several genomes, each appended after the last (tile ids continue)."""
    for fasta in fastas:
        index(fasta, root, embedder=embedder, tiling=TILING, index_spec=None, shard_rows=shard_rows, append=True)
    return Store.open(root)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharded")
    fastas = []
    for number, lengths in enumerate([{"chrA": 60_000, "chrB": 30_000, "tiny": 1_500}, {"chrA": 50_000}]):
        fastas.append(write_fasta(root / f"g{number}.fa", random_genome(lengths, seed=number + 1)))
    return write_multi_genome_store(root / "store", fastas, KmerEmbedder(k=3))


@pytest.fixture(scope="module")
def matrix(store):
    ids, vectors = zip(*store.iter_embeddings())
    assert (np.concatenate(ids) == np.arange(store.num_tiles)).all()
    return prepare(np.concatenate(vectors), "ip")


@pytest.fixture(scope="module")
def queries(matrix):
    rng = np.random.default_rng(0)
    return matrix[rng.choice(len(matrix), 40, replace=False)] + rng.normal(0, 0.02, (40, matrix.shape[1]))


def brute_force(matrix, queries, k, mask=None):
    scores = prepare(queries, "ip") @ matrix.T
    if mask is not None:
        scores[:, ~mask] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("shards_per_index", [1, 2])
def test_flat_shards_equal_one_index(store, queries, shards_per_index):
    layout = build_sharded(store, IndexSpec("Flat"), shards_per_index=shards_per_index)
    assert len(layout["shards"]) == -(-len(store.shard_paths) // shards_per_index) > 1
    assert layout["ntotal"] == store.num_tiles
    single = build_index(store, IndexSpec("Flat"))
    want_scores, want_ids = single.search(prepare(queries, "ip"), 10)
    scores, ids = ShardedIndex.open(store).search(prepare(queries, "ip"), 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_ivf_shards_equal_one_ivf_and_recall(store, matrix, queries):
    """Shards cloned from one trained quantizer answer as one IVF index would; recall vs exact."""
    import faiss

    from genoembed.vector_index import train_index

    spec = IndexSpec("IVF16,Flat", train_size=2000)
    template = train_index(store, spec)
    build_sharded(store, spec, shards_per_index=1, template=template)
    single = faiss.clone_index(template)
    single.add(matrix)
    _, truth = brute_force(matrix, queries, 10)
    sharded = ShardedIndex.open(store, keep_loaded=False)
    for nprobe, least_recall in ((4, 0.6), (16, 1.0)):
        single.nprobe = sharded.nprobe = nprobe
        want_scores, want_ids = single.search(prepare(queries, "ip"), 10)
        scores, ids = sharded.search(prepare(queries, "ip"), 10)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert np.mean([set(a) == set(b) for a, b in zip(ids, want_ids)]) == 1.0
        assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)]) >= least_recall
    merged = faiss.read_index(str(merge_ondisk(store)))
    merged.nprobe = 4
    single.nprobe = 4
    np.testing.assert_array_equal(np.sort(merged.search(prepare(queries, "ip"), 10)[1], axis=1),
                                  np.sort(single.search(prepare(queries, "ip"), 10)[1], axis=1))


@pytest.mark.parametrize(("genome", "chrom"), [("g1", None), ("g0", "chrB"), (None, "tiny"), (None, "chrA")])
def test_filtered_search_returns_k_hits_equal_to_brute_force(store, matrix, queries, genome, chrom):
    index = build_index(store, IndexSpec("Flat"))
    tiles = store.tiles(np.arange(store.num_tiles)).to_pandas()
    subset = np.ones(len(tiles), dtype=bool)
    if genome:
        subset &= (tiles["genome"] == genome).to_numpy()
    if chrom:
        subset &= (tiles["chrom"] == chrom).to_numpy()
    k = 12
    stats = {}
    scores, ids = filtered_search(store, queries, k, genome=genome, chrom=chrom, index=index, stats=stats)
    assert (ids >= 0).all() and ids.shape == (len(queries), k)
    assert subset[ids].all()
    want_scores, want_ids = brute_force(matrix, queries, k, subset)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    np.testing.assert_array_equal(ids, want_ids)
    if chrom == "tiny":  # 14 tiles out of ~1900: the fetch had to grow
        assert stats["rounds"] > 1


def test_filtered_search_over_shards(store, matrix, queries):
    build_sharded(store, IndexSpec("Flat"), shards_per_index=3)
    mask = subset_mask(store, genome="g0", chrom="chrA")
    scores, ids = filtered_search(store, queries, 5, index=ShardedIndex.open(store), mask=mask)
    _, want_ids = brute_force(matrix, queries, 5, mask)
    np.testing.assert_array_equal(ids, want_ids)


def test_filtered_search_with_fewer_tiles_than_k_pads(store, queries):
    index = build_index(store, IndexSpec("Flat"))
    _, ids = filtered_search(store, queries[:2], 20, chrom="tiny", index=index)
    assert ((ids >= 0).sum(axis=1) == 14).all() and (ids[:, 14:] == -1).all()


def test_unknown_subset_is_refused(store, queries):
    with pytest.raises(InputError, match="no tiles match genome='nope'"):
        filtered_search(store, queries, 3, genome="nope", index=build_index(store, IndexSpec("Flat")))


def test_sharded_layout_is_tuned_to_the_recall_target_and_searched_with_it(store, matrix, queries):
    """A sharded IVF layout gets the same build-time tuning as one index: the setting is recorded in
    layout.json, opened as the default, reaches the target against brute force where FAISS's nprobe = 1
    does not, and an explicit nprobe still wins."""
    import json

    from genoembed.vector_index import SHARDED_INDEX_DIR, SHARDED_LAYOUT

    layout = build_sharded(store, IndexSpec("IVF16,Flat", train_size=2000, recall_target=0.95), shards_per_index=1)
    recorded = json.loads((store.root / SHARDED_INDEX_DIR / SHARDED_LAYOUT).read_text())["search"]
    assert recorded == layout["search"] and 1 < recorded["nprobe"] <= 16 and recorded["recall_at_10"] >= 0.95
    sharded = ShardedIndex.open(store, keep_loaded=False)
    assert sharded.nprobe == recorded["nprobe"]
    _, truth = brute_force(matrix, queries, 10)
    recall = lambda ids: np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, truth)])
    assert recall(sharded.search(queries, 10)[1]) >= 0.9 > recall(sharded.search(queries, 10, nprobe=1)[1])
