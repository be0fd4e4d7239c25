"""Several genomes in one store: append (index extended, not retrained) and remove (rows, ids, index).

Every search result is checked against brute-force numpy over the vectors the store holds.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import InputError, StoreError
from genoembed.build import index
from genoembed.remove import remove
from genoembed.search import search
from genoembed.sql import run_sql
from genoembed.manifest import MANIFEST
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec, index_parts, load_index, prepare
from genoembed.verify import verify_store

TILING = TilingSpec(window=300, stride=150, strands="both")
REFINED = "IVF4,PQ4x2,Refine(Flat)"  # 2-bit PQ (156 training tiles) re-ranked with the stored float32 vectors
REFINE_ALL = 64  # shortlist factor: k * 64 candidates is every tile of these stores
EMBEDDER = KmerEmbedder(k=3, canonical=False)  # strand-specific: the stores tile both strands


@pytest.fixture
def fastas(tmp_path):
    lengths = [{"a1": 9_000, "a2": 4_000}, {"b1": 7_000, "b2": 3_000, "b3": 2_000}, {"c1": 5_000}]
    return [write_fasta(tmp_path / f"g{n}.fa", random_genome(length, seed=n + 1)) for n, length in enumerate(lengths)]


def build(fasta, out, append=False, spec=IndexSpec("Flat"), **options):
    return index(fasta, out, embedder=EMBEDDER, tiling=TILING, index_spec=spec, shard_rows=40, append=append,
                 **options)


def stored(store: Store) -> tuple[np.ndarray, np.ndarray]:
    ids, vectors = zip(*store.iter_embeddings())
    return np.concatenate(ids), np.concatenate(vectors)


def assert_index_matches_brute_force(store: Store, k: int = 7):
    """The store's FAISS index returns the exact top-k of the vectors the shards hold, by tile id."""
    ids, vectors = stored(store)
    normalised = prepare(vectors, "ip")
    queries = normalised[np.random.default_rng(0).choice(len(ids), 25, replace=False)]
    # every list of the IVF4 layouts used here, and a refine stage re-ranking every candidate: exact
    scores, found = store.vector_index().search(queries, k, nprobe=4, k_factor=REFINE_ALL)
    expected = np.sort(queries @ normalised.T, axis=1)[:, ::-1][:, :k]
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert np.isin(found, ids).all()
    rows = {tile_id: row for row, tile_id in enumerate(ids)}
    np.testing.assert_allclose(np.einsum("qd,qkd->qk", queries, normalised[[[rows[i] for i in q] for q in found]]),
                               scores, rtol=1e-5, atol=1e-6)


def ivf_centroids(index) -> np.ndarray:
    import faiss

    quantizer = faiss.downcast_index(faiss.extract_index_ivf(index).quantizer)
    return quantizer.reconstruct_n(0, quantizer.ntotal)


@pytest.mark.parametrize("factory", ["IVF4,Flat", REFINED])
def test_append_continues_ids_and_extends_the_index_without_retraining(tmp_path, fastas, factory):
    out = tmp_path / "s"
    first = build(fastas[0], out, spec=IndexSpec(factory))
    centroids = ivf_centroids(load_index(out / first.manifest["index"]["path"]))
    before = first.num_tiles
    store = build(fastas[1], out, append=True, spec=IndexSpec(factory))
    assert list(store.genomes) == ["g0", "g1"]
    assert store.genomes["g1"]["first_tile_id"] == before
    ids, _ = stored(store)
    np.testing.assert_array_equal(ids, np.arange(store.num_tiles))
    tiles = store.tiles(np.array([0, before]))
    assert tiles["genome"].to_pylist() == ["g0", "g1"]
    assert tiles["chrom"].to_pylist() == ["a1", "b1"]
    parts = [load_index(out / part["path"]) for part in index_parts(store.manifest["index"])]
    # g1's delta part was folded with g0's (about as many tiles: merge_plan), from the same trained index
    assert [part["tile_ids"] for part in index_parts(store.manifest["index"])] == [[0, store.num_tiles]]
    assert sum(part.ntotal for part in parts) == store.num_tiles
    for part in parts:
        np.testing.assert_array_equal(ivf_centroids(part), centroids)  # the same trained quantizer
    assert store.manifest["index"]["tile_ids_below"] == store.id_limit  # covers every tile of both genomes
    assert_index_matches_brute_force(store)  # the appended vectors are found under their tile ids
    assert verify_store(store) == []
    # rerunning the append is a no-op, not a second copy
    again = build(fastas[1], out, append=True, spec=IndexSpec(factory))
    assert again.num_tiles == store.num_tiles


def test_appended_store_equals_the_genomes_indexed_together(tmp_path, fastas):
    appended = build(fastas[0], tmp_path / "a")
    appended = build(fastas[1], tmp_path / "a", append=True)
    together = build(fastas[0], tmp_path / "t", spec=None)
    together = build(fastas[1], tmp_path / "t", append=True)
    for left, right in zip(stored(appended), stored(together)):
        np.testing.assert_array_equal(left, right)
    assert_index_matches_brute_force(appended)


def test_adding_a_genome_needs_append_and_a_matching_store(tmp_path, fastas):
    out = tmp_path / "s"
    build(fastas[0], out)
    with pytest.raises(StoreError, match=r"holds genome\(s\) g0; pass --append to add 'g1'"):
        build(fastas[1], out)
    with pytest.raises(StoreError, match="different tiling"):
        index(fastas[1], out, embedder=EMBEDDER, tiling=TilingSpec(window=200, stride=200), append=True)
    with pytest.raises(StoreError, match="genome 'g0' in the store came from another FASTA"):
        build(fastas[1], out, append=True, genome_name="g0")
    assert list(Store.open(out).genomes) == ["g0"]
    assert verify_store(Store.open(out)) == []


def test_interrupted_append_resumes(tmp_path, fastas, monkeypatch):
    out = tmp_path / "s"
    build(fastas[0], out)
    reference = build(fastas[1], tmp_path / "ref")
    calls = {"n": 0}
    real_embed = KmerEmbedder.embed

    def failing(self, sequences):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_embed(self, sequences)

    monkeypatch.setattr(KmerEmbedder, "embed", failing)
    with pytest.raises(KeyboardInterrupt):
        index(fastas[1], out, embedder=EMBEDDER, tiling=TILING, shard_rows=40, append=True, batch_rows=50)
    # readers see the complete genome only: the half-written one is hidden, not an error
    partial = Store.open(out)
    assert list(partial.genomes) == ["g0"]
    assert set(run_sql(partial, "SELECT DISTINCT genome FROM tiles")["genome"].to_pylist()) == {"g0"}
    assert search(partial, ["a1:1-300"], k=3)["genome"].to_pylist() == ["g0"] * 3
    with pytest.raises(StoreError, match="genome 'g1' is only partly built"):
        build(fastas[2], out, append=True)
    monkeypatch.setattr(KmerEmbedder, "embed", real_embed)
    store = build(fastas[1], out, append=True)
    tiles = run_sql(store, "SELECT chrom, start, strand FROM tiles WHERE genome = 'g1' ORDER BY tile_id")
    expected = run_sql(reference, "SELECT chrom, start, strand FROM tiles ORDER BY tile_id")
    assert tiles.to_pylist() == expected.to_pylist()
    assert verify_store(store) == []


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW16", REFINED])
def test_removing_contigs_drops_rows_ids_and_index_entries(tmp_path, fastas, factory):
    out = tmp_path / "s"
    build(fastas[0], out, spec=IndexSpec(factory))
    store = build(fastas[1], out, append=True, spec=IndexSpec(factory))
    before_ids, _ = stored(store)
    doomed = run_sql(store, "SELECT tile_id FROM tiles WHERE chrom IN ('b1', 'b3')")["tile_id"].to_numpy()
    summary = remove(store, "g1", ["b1", "b3"])
    assert summary["tiles_removed"] == len(doomed) > 0
    store = Store.open(out)
    ids, _ = stored(store)
    np.testing.assert_array_equal(ids, np.setdiff1d(before_ids, doomed))  # the others keep their ids
    assert set(run_sql(store, "SELECT DISTINCT chrom FROM tiles")["chrom"].to_pylist()) == {"a1", "a2", "b2"}
    assert store.vector_index().ntotal == store.num_tiles
    assert store.genomes["g1"]["removed_contigs"] == ["b1", "b3"]
    assert "b1" not in store.contig_lengths["g1"] and "b2" in store.contig_lengths["g1"]
    with pytest.raises(StoreError, match=f"tile id {doomed[0]} is not in the store"):
        store.tiles(doomed[:1])
    assert verify_store(store) == []
    if factory != "HNSW16":  # HNSW is approximate; its rebuilt index is checked by ntotal above
        assert_index_matches_brute_force(store)
    # ids are never reused: a genome appended afterwards starts past the largest id ever given
    store = build(fastas[2], out, append=True, spec=IndexSpec(factory))
    assert store.genomes["g2"]["first_tile_id"] == before_ids.max() + 1
    assert verify_store(store) == []


def test_removing_a_genome_and_refusals(tmp_path, fastas):
    out = tmp_path / "s"
    build(fastas[0], out)
    store = build(fastas[1], out, append=True)
    with pytest.raises(InputError, match="no genome 'nope' in the store; it holds g0, g1"):
        remove(store, "nope")
    with pytest.raises(InputError, match="genome 'g1' has no contig 'a1'"):
        remove(store, "g1", ["a1"])
    remove(store, "g0")
    store = Store.open(out)
    assert list(store.genomes) == ["g1"]
    assert set(run_sql(store, "SELECT DISTINCT genome FROM tiles")["genome"].to_pylist()) == {"g1"}
    assert_index_matches_brute_force(store)
    with pytest.raises(InputError, match="would remove everything"):
        remove(store, "g1")
    assert verify_store(store) == []


def test_crash_after_the_manifest_switch_leaves_a_store_that_rebuilds(tmp_path, fastas, monkeypatch):
    out = tmp_path / "s"
    build(fastas[0], out)
    store = build(fastas[1], out, append=True)

    def crash(*_args, **_options):
        raise KeyboardInterrupt

    # an index that cannot remove in place is dropped at the switch and rebuilt after it: crash there
    monkeypatch.setattr(sys.modules["genoembed.remove"], "remove_tile_ids", lambda *_args: None)
    monkeypatch.setattr(sys.modules["genoembed.remove"], "build_store_index", crash)
    with pytest.raises(KeyboardInterrupt):
        remove(store, "g1", ["b2"])
    store = Store.open(out)
    assert store.manifest["index"] is None
    assert "b2" not in run_sql(store, "SELECT DISTINCT chrom FROM tiles")["chrom"].to_pylist()
    assert sorted(p.name for p in (out / "shards").glob("*.parquet")) == sorted(p.name for p in store.shard_paths)
    # the data verifies; the store has no index (searches refuse: issue 25, verify said OK) and index files of the
    # old snapshot are swept (no older reader left) or named as orphans
    missing, *orphans = verify_store(store)
    assert missing.startswith("index: the store has no vector index, so searches refuse")
    assert all(problem.startswith("index/") and problem.endswith(".faiss: not the manifest's index "
                                                                "(orphan); delete it") for problem in orphans)
    store = build(fastas[1], out, append=True)  # the same command again rebuilds the index
    assert_index_matches_brute_force(store)
    assert verify_store(store) == []


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", REFINED])
def test_an_index_in_parts_follows_appends_and_removals(tmp_path, fastas, factory):
    """A base built in parts of at most part_rows vectors (a store bigger than RAM), then an appended genome's
    delta part and a removal: every part is opened memory-mapped and the parts answer as one exact index."""
    out = tmp_path / "s"
    spec = IndexSpec(factory, part_rows=40)
    store = build(fastas[0], out, spec=spec)
    assert len(index_parts(store.manifest["index"])) == -(-store.num_tiles // 40) > 1  # one per 40-row shard
    store = build(fastas[1], out, append=True, spec=spec)
    store = build(fastas[2], out, append=True, spec=spec)
    parts = index_parts(store.manifest["index"])
    assert all(part["ntotal"] <= 40 for part in parts)  # deltas are folded only within part_rows
    assert [part["tile_ids"][1] for part in parts[:-1]] == [part["tile_ids"][0] for part in parts[1:]]
    assert_index_matches_brute_force(store)
    remove(store, "g0", ["a2"])
    store = Store.open(out)
    assert store.vector_index().ntotal == store.num_tiles
    assert_index_matches_brute_force(store)
    assert verify_store(store) == []


def test_region_queries_find_their_genome(tmp_path, fastas):
    out = tmp_path / "s"
    build(fastas[0], out)
    store = build(fastas[1], out, append=True)
    hits = search(store, ["b2:1-300"], k=3)
    assert hits["genome"][0].as_py() == "g1" and hits["chrom"][0].as_py() == "b2"
    clash = write_fasta(tmp_path / "g9.fa", random_genome({"b2": 3_000}, seed=9))
    store = build(clash, out, append=True)
    with pytest.raises(InputError, match="contig .b2. is in genomes g1, g9; name one with --query-genome, or write the contig g1#0#b2"):
        search(store, ["b2:1-300"], k=3)


def test_format_1_store_is_read(tmp_path, fastas):
    out = tmp_path / "s"
    store = build(fastas[0], out)
    manifest = json.loads((out / MANIFEST).read_text())
    entry = manifest.pop("genomes")["g0"]
    for key in ("first_tile_id", "status"):
        entry.pop(key)
    manifest["provenance"]["genome"] = entry
    for shard in manifest["shards"]:
        shard.pop("genome")
    for key in ("next_tile_id", "next_shard"):
        manifest.pop(key)
    manifest["index"].pop("tile_ids_below")
    manifest["format_version"] = 1
    (out / MANIFEST).write_text(json.dumps(manifest))
    old = Store.open(out)
    assert list(old.genomes) == ["g0"] and old.id_limit == store.num_tiles
    assert old.manifest["index"]["tile_ids_below"] == store.num_tiles
    assert verify_store(old) == []
    assert search(old, ["a1:1-300"], k=2)["chrom"][0].as_py() == "a1"


def test_cli_indexes_several_genomes_and_removes_one(tmp_path, fastas):
    runner = CliRunner()
    out = tmp_path / "s"
    base = ["index", "--model", "kmer:3", "--window", "300", "--stride", "300", "--out", str(out), "--quiet"]
    result = runner.invoke(app, base + ["--fasta", str(fastas[0]), "--fasta", str(fastas[1])])
    assert result.exit_code == 0, result.output
    store = Store.open(out)
    assert list(store.genomes) == ["g0", "g1"]
    assert store.manifest["index"]["tile_ids_below"] == store.id_limit == store.num_tiles
    result = runner.invoke(app, base + ["--fasta", str(fastas[2])])
    assert result.exit_code == 2 and "pass --append to add 'g2'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert runner.invoke(app, base + ["--fasta", str(fastas[2]), "--append"]).exit_code == 0
    info = runner.invoke(app, ["info", str(out)])
    assert [line.split()[1] for line in info.output.splitlines() if line.startswith("genome ")] == ["g0", "g1", "g2"]
    result = runner.invoke(app, ["remove", str(out), "--genome", "g1", "--contig", "b2"])
    assert result.exit_code == 0, result.output
    removed = pq.read_table([p for p in Store.open(out).shard_paths][0]).num_rows  # shards still readable
    assert removed > 0
    assert "removed" in result.output and "contigs b2 of g1" in result.output
    result = runner.invoke(app, ["remove", str(out), "--genome", "g7"])
    assert result.exit_code == 2 and "no genome 'g7'" in result.output
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0
    hits = runner.invoke(app, ["search", str(out), "--region", "c1:1-300", "-k", "2", "--format", "json"])
    assert hits.exit_code == 0, hits.output


def test_remove_drops_saved_searches_with_hits_on_the_removed_genome(tmp_path, fastas):
    out = tmp_path / "s"
    build(fastas[0], out)
    store = build(fastas[1], out, append=True)
    search(store, ["a1:1-300"], k=2, genome="g0", save_as="only_g0")
    search(store, ["b2:1-300"], k=2, genome="g1", save_as="on_g1")
    summary = remove(store, "g1")
    assert summary["searches_dropped"] == ["on_g1"]
    store = Store.open(out)
    assert sorted(store.searches()) == ["only_g0"]
    assert run_sql(store, "SELECT count(*) AS n FROM hits_only_g0").to_pylist() == [{"n": 2}]
    with pytest.raises(InputError, match="hits_on_g1"):
        run_sql(store, "SELECT * FROM hits_on_g1")
    assert verify_store(store) == []
