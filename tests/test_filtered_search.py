"""Filtered search inside FAISS (genome, contigs, SQL WHERE): k hits from every layout, exact = numpy brute force."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError
from genoembed.indexing import build_store_index
from genoembed.search import Query, search
from genoembed.sql import run_sql
from genoembed.store import Store
from genoembed.subset_search import search_subset
from genoembed.subsets import EXACT_SUBSET_TILES, filtered_search, resolve, tile_filter
from genoembed.synthetic import random_sequence, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec, index_parts, prepare

TILING = TilingSpec(window=200, stride=100)
EMBEDDER = KmerEmbedder(k=3)
K = 10
# Every layout a store can have; "parts" = an IVF index whose base is split in files of <= 700 vectors.
LAYOUTS = {"Flat": IndexSpec("Flat"), "IVF": IndexSpec("IVF16,Flat", train_size=2000),
           "IVF-PQ": IndexSpec("IVF16,PQ8x4", train_size=2000), "HNSW": IndexSpec("HNSW8"),
           "refine": IndexSpec("IVF16,PQ8x4,Refine(Flat)", train_size=2000),
           "parts": IndexSpec("IVF16,Flat", train_size=2000, part_rows=700)}


def genome(gc: float, lengths: dict[str, int], seed: int) -> dict[str, str]:
    return {name: random_sequence(length, seed=seed + number, gc=gc) for number, (name, length) in enumerate(lengths.items())}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Three genomes of different GC sharing contig names (as assemblers name them), one genome per append."""
    root = tmp_path_factory.mktemp("filtered")
    contents = [(0.3, {"contig_1": 40_000, "contig_2": 20_000, "tiny": 1_000}), (0.7, {"contig_1": 30_000}),
                (0.5, {"contig_1": 25_000, "contig_2": 8_000})]
    for number, (gc, lengths) in enumerate(contents):
        fasta = write_fasta(root / f"g{number}.fa", genome(gc, lengths, seed=10 * number))
        index(fasta, root / "store", embedder=EMBEDDER, tiling=TILING, index_spec=None, shard_rows=300, append=True)
    store = Store.open(root / "store")
    build_store_index(store, IndexSpec("Flat"))
    return store.refresh()


@pytest.fixture(scope="module")
def tiles(store):
    table = run_sql(store, "SELECT tile_id, genome, chrom, gc FROM tiles ORDER BY tile_id").to_pandas()
    assert (table["tile_id"].to_numpy() == np.arange(store.num_tiles)).all()
    return table


@pytest.fixture(scope="module")
def matrix(store):
    return prepare(np.concatenate([vectors for _, vectors in store.iter_embeddings()]), "ip")


@pytest.fixture(scope="module")
def queries(matrix):
    """Queries near tiles of every genome, so the nearest tiles of most are outside any one subset."""
    rng = np.random.default_rng(0)
    return matrix[rng.choice(len(matrix), 30, replace=False)] + rng.normal(0, 0.02, (30, matrix.shape[1]))


def brute_force(matrix, queries, k, subset):
    """The exact top-k within ``subset`` (ids -1, scores -inf past its size), by numpy."""
    scores = prepare(queries, "ip") @ matrix.T
    scores[:, ~subset] = -np.inf
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    best = np.take_along_axis(scores, ids, axis=1)
    ids[:, subset.sum():] = -1
    return best, ids


def subset_of(tiles, genome=None, chroms=(), gc_above=None):
    inside = np.ones(len(tiles), dtype=bool)
    if genome:
        inside &= (tiles["genome"] == genome).to_numpy()
    if chroms:
        inside &= tiles["chrom"].isin(chroms).to_numpy()
    if gc_above is not None:
        inside &= (tiles["gc"] > gc_above).to_numpy()
    return inside


def recall(found, truth):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)])


FILTERS = [dict(genome="g1"), dict(genome="g0", chroms=("contig_2",)), dict(chroms=("tiny",)),
           dict(chroms=("contig_2", "tiny")), dict(gc_above=0.55)]


def as_filter(wanted: dict):
    where = f"gc > {wanted['gc_above']}" if "gc_above" in wanted else None
    return tile_filter(wanted.get("genome"), wanted.get("chroms"), where)


@pytest.fixture(scope="module")
def built(store):
    """Each layout's index over the store (built once, then reopened as a search would)."""
    indexes = {}
    for name, spec in LAYOUTS.items():
        build_store_index(store, spec)
        indexes[name] = store.refresh().vector_index()  # opened now: later builds leave this snapshot's files mapped
    return indexes


@pytest.mark.parametrize("wanted", FILTERS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()))
def test_flat_filtered_search_is_exact_search_of_the_subset(store, tiles, matrix, queries, built, wanted):
    subset = resolve(store, as_filter(wanted))
    inside = subset_of(tiles, **wanted)
    assert subset.size == inside.sum() and (subset.contains(np.arange(len(tiles))) == inside).all()
    stats = {}
    scores, ids = filtered_search(store, queries, K, subset, index=built["Flat"], stats=stats)
    want_scores, want_ids = brute_force(matrix, queries, K, inside)
    assert stats == {"method": "selector", "exact_rows": 0}  # Flat: the selector itself is exact
    np.testing.assert_array_equal(ids, want_ids)
    found = ids >= 0
    np.testing.assert_allclose(scores[found], want_scores[found], atol=1e-5)


@pytest.mark.parametrize("layout", [name for name in LAYOUTS if name != "Flat"])
@pytest.mark.parametrize("wanted", FILTERS, ids=lambda w: ",".join(f"{k}={v}" for k, v in w.items()))
def test_approximate_layouts_return_k_hits_of_the_subset(store, tiles, matrix, queries, built, layout, wanted):
    """Through the FAISS selector (exact_below=0) at the least breadth (nprobe 1, efSearch 16), every layout
    returns k hits of the subset whenever it holds k; small subsets are searched exactly and equal numpy."""
    subset = resolve(store, as_filter(wanted))
    inside = subset_of(tiles, **wanted)
    want_scores, want_ids = brute_force(matrix, queries, K, inside)
    stats = {}
    scores, ids = filtered_search(store, queries, K, subset, index=built[layout], exact_below=0, stats=stats,
                                  settings={"nprobe": 1, "ef_search": 16, "k_factor": 1})
    expected = min(K, int(inside.sum()))
    assert ((ids >= 0).sum(axis=1) == expected).all(), layout
    assert inside[ids[ids >= 0]].all()
    assert stats["method"] == "selector"
    if layout in ("IVF", "parts"):  # IVF-Flat through the selector at nprobe = nlist is exact search of the subset
        wide = filtered_search(store, queries, K, subset, index=built[layout], exact_below=0, settings={"nprobe": 16})
        np.testing.assert_array_equal(wide[1], want_ids)
    exact_scores, exact_ids = filtered_search(store, queries, K, subset, index=built[layout], stats=stats)
    assert stats["method"] == "exact" and subset.size <= EXACT_SUBSET_TILES
    np.testing.assert_array_equal(exact_ids, want_ids)
    np.testing.assert_allclose(exact_scores[exact_ids >= 0], want_scores[want_ids >= 0], atol=1e-5)


def test_genome_filter_on_ivf_tuned_narrow_returns_k_hits(store, tiles, matrix, built):
    """The reported failure: two genomes of different GC, IVF searched at a narrow nprobe, --genome of the other
    one returned 0 hits (its tiles were not in the probed lists). Each query probes the lists holding g1's tiles."""
    low_gc = matrix[subset_of(tiles, genome="g0")][:20]
    subset = resolve(store, tile_filter("g1"))
    scores, ids = search_subset(built["IVF"], low_gc, K, subset, nprobe=1)
    assert (ids >= 0).all() and subset.contains(ids).all()
    unfiltered = built["IVF"].search(low_gc, K, nprobe=1)[1]
    assert not subset.contains(unfiltered).any()  # over-fetching from these lists found nothing of g1


def test_parts_layout_has_several_parts(built):
    assert len(built["parts"].parts) > 1 and built["parts"].ntotal == built["Flat"].ntotal
    assert all(part.ntotal <= 700 for part in built["parts"].parts)


def test_search_api_filters_by_genome_chroms_and_where(store, tiles, built):
    build_store_index(store, LAYOUTS["IVF"])
    store.refresh()
    query = Query("q", random_sequence(200, seed=99, gc=0.3))
    hits = search(store, [query], k=K, chrom=["contig_2", "tiny"], where="gc > 0.2")
    assert hits.num_rows == K and set(hits["chrom"].to_pylist()) <= {"contig_2", "tiny"}
    gc = tiles.set_index("tile_id")["gc"]
    assert (gc[hits["tile_id"].to_pylist()] > 0.2).all()
    assert set(search(store, [query], k=K, genome="g2", chrom="contig_1")["genome"].to_pylist()) == {"g2"}
    with pytest.raises(InputError, match="no tiles match genome='g1', chrom in \\['contig_1'\\], where 'gc > 2'"):
        search(store, [query], k=K, genome="g1", chrom="contig_1", where="gc > 2")
    with pytest.raises(InputError, match="no contig 'contig_2' in genome 'g1'"):
        search(store, [query], k=K, genome="g1", chrom="contig_2")
    with pytest.raises(InputError, match="no contig 'contig_9'"):
        search(store, [query], k=K, chrom="contig_9")
    with pytest.raises(InputError, match="no genome 'g9'"):
        search(store, [query], k=K, genome="g9")
    with pytest.raises(InputError, match="SQL: "):
        search(store, [query], k=K, where="no_such_column > 1")


def test_where_runs_read_only_in_the_sql_sandbox(store):
    query = Query("q", random_sequence(200, seed=98))
    with pytest.raises(InputError, match="exactly one statement"):
        search(store, [query], k=3, where="true); DROP VIEW tiles; SELECT (1")
    with pytest.raises(InputError, match="SQL: "):
        search(store, [query], k=3, where="tile_id IN (SELECT 1 FROM read_csv('/etc/passwd'))")


def test_cli_chrom_is_repeatable_and_where_filters(store, tiles):
    runner = CliRunner()
    result = runner.invoke(app, ["search", str(store.root), "--sequence", random_sequence(200, seed=97), "-k", "6",
                                 "--chrom", "contig_2", "--chrom", "tiny", "--where", "gc < 0.45", "--tiles",
                                 "--no-annotate", "--no-save", "--format", "jsonl", "--evalue", "1e9"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines() if line.strip()]
    assert len(hits) == 6 and {hit["chrom"] for hit in hits} <= {"contig_2", "tiny"}
    assert (tiles.set_index("tile_id")["gc"][[hit["tile_id"] for hit in hits]] < 0.45).all()
    bad = runner.invoke(app, ["search", str(store.root), "--sequence", "ACGT" * 50, "--where", "gc >", "--no-save"])
    assert bad.exit_code != 0 and "SQL:" in bad.output and len(bad.output.strip().splitlines()) == 1


def test_index_parts_cover_the_store(store, built):
    assert sum(part["ntotal"] for part in index_parts(store.refresh().manifest["index"])) == store.num_tiles


def test_a_snapshot_resolves_a_filter_once_and_keeps_small_subsets_vectors(store, queries, built, monkeypatch):
    import sys

    from genoembed.subsets import SUBSETS_KEPT

    store.refresh()
    first = resolve(store, tile_filter(chrom=["contig_2"], where="gc > 0.2"))
    assert resolve(store, tile_filter(chrom=("contig_2",), where="gc > 0.2")) is first
    want = filtered_search(store, queries, K, first, index=built["IVF"])
    monkeypatch.setattr(sys.modules["genoembed.subsets"], "_read_subset_vectors",
                        lambda *_: pytest.fail("read the shards again"))
    np.testing.assert_array_equal(filtered_search(store, queries, K, first, index=built["IVF"])[1], want[1])
    for number in range(SUBSETS_KEPT):  # the least recently used subset leaves the snapshot's cache
        resolve(store, tile_filter(where=f"tile_id > {number}"))
    assert resolve(store, tile_filter(chrom=["contig_2"], where="gc > 0.2")) is not first
