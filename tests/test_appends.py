"""Appends cost the new genome, not the store: rows read and files written counted, not timed (issue 24)."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.indexing import RETUNE_GROWTH, build_store_index, merge_plan
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec, index_files, index_parts, prepare
from genoembed.writers import retired_files
from genoembed.verify import verify_store

TILING = TilingSpec(window=200, stride=100)
EMBEDDER = KmerEmbedder(k=3)
IVF = IndexSpec("IVF8,Flat", train_size=4000)


def fasta(tmp_path, name, length, seed):
    return write_fasta(tmp_path / f"{name}.fa", random_genome({f"{name}_1": length}, seed=seed))


def build(path, out, spec, append=True):
    return index(path, out, embedder=EMBEDDER, tiling=TILING, index_spec=spec, shard_rows=200, append=append)


class Counted:
    """Rows of vectors read from shards and exact searches run, while an append runs."""

    def __init__(self, monkeypatch):
        self.rows, self.exact = 0, 0
        original = Store.iter_embeddings

        def iter_embeddings(store, *args, **kwargs):
            for ids, vectors in original(store, *args, **kwargs):
                self.rows += len(ids)
                yield ids, vectors

        def exact(*args, **kwargs):
            self.exact += 1
            raise AssertionError("no exact pass over the store on this append")

        monkeypatch.setattr(Store, "iter_embeddings", iter_embeddings)
        monkeypatch.setattr(sys.modules["genoembed.indexing"], "exact_neighbours", exact)


def index_file_stats(root):
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_size)
            for path in (root / "index").glob("*.faiss")}


@pytest.mark.parametrize("spec", [IndexSpec("Flat"), IVF], ids=["Flat", "IVF"])
def test_append_reads_and_writes_only_the_new_genome(tmp_path, monkeypatch, spec):
    """The same 2 kbp genome appended to a store of 40 kbp and to one of 160 kbp: both appends read exactly its
    vectors, write one new part of the same size, leave every indexed file as it was, run no exact pass."""
    new = fasta(tmp_path, "new", 2_000, seed=99)
    work = {}
    for size, lengths in (("small", [40_000]), ("big", [40_000, 40_000, 40_000, 40_000])):
        out = tmp_path / size
        for number, length in enumerate(lengths):
            build(fasta(tmp_path, f"{size}{number}", length, seed=number), out, None, append=number > 0)
        store = Store.open(out)
        build_store_index(store, spec)
        before = index_file_stats(out)
        with monkeypatch.context() as patched:
            counted = Counted(patched)
            store = build(new, out, spec)
        after = index_file_stats(out)
        written = {name: stat for name, stat in after.items() if before.get(name) != stat}
        assert all(after[name] == stat for name, stat in before.items())  # untouched, not rewritten
        assert len(written) == 1 and counted.exact == 0
        work[size] = (counted.rows, [stat[2] for stat in written.values()], store.num_tiles)
        assert store.vector_index().ntotal == store.num_tiles and verify_store(store) == []
    assert work["small"][0] == work["big"][0] == 19  # the new genome's tiles, read once
    assert work["small"][1] == work["big"][1]  # one part of the same bytes, whatever the store's size
    assert work["big"][2] > 3 * work["small"][2]


def test_flat_appends_never_tune(tmp_path, monkeypatch):
    out = tmp_path / "s"
    build(fasta(tmp_path, "a", 10_000, seed=1), out, IndexSpec("Flat"), append=False)
    monkeypatch.setattr(sys.modules["genoembed.indexing"], "tuning_queries", lambda *_: pytest.fail("tuned Flat"))
    store = build(fasta(tmp_path, "b", 30_000, seed=2), out, IndexSpec("Flat"))
    assert "search" not in store.manifest["index"] and store.vector_index().ntotal == store.num_tiles


def test_ivf_is_retuned_only_after_the_stated_growth(tmp_path):
    out = tmp_path / "s"
    store = build(fasta(tmp_path, "a", 60_000, seed=1), out, IVF, append=False)
    tuned = store.manifest["index"]["tuned_tiles"]
    assert tuned == store.num_tiles and store.manifest["index"]["search"]["nprobe"] >= 1
    store = build(fasta(tmp_path, "b", 20_000, seed=2), out, IVF)  # +33 %: settings kept
    assert store.manifest["index"]["tuned_tiles"] == tuned
    store = build(fasta(tmp_path, "c", 20_000, seed=3), out, IVF)  # +67 % since the tuning: re-tuned
    assert store.num_tiles > (1 + RETUNE_GROWTH) * tuned
    assert store.manifest["index"]["tuned_tiles"] == store.num_tiles


@pytest.mark.parametrize("spec", [IndexSpec("Flat"), IVF], ids=["Flat", "IVF"])
def test_compact_equals_a_clean_build(tmp_path, spec):
    """Genomes appended one by one (parts), then `genoembed compact`: one part whose answers equal a clean
    build over the same shards (Flat: the appended parts answer the same already)."""
    genomes = [fasta(tmp_path, f"g{n}", length, seed=n) for n, length in enumerate([40_000, 4_000, 3_000, 1_500])]
    appended, clean = tmp_path / "appended", tmp_path / "clean"
    for number, path in enumerate(genomes):
        build(path, appended, spec, append=number > 0)
        build(path, clean, None, append=number > 0)
    store = Store.open(appended)
    assert len(index_parts(store.manifest["index"])) > 1
    clean_store = Store.open(clean)
    build_store_index(clean_store, spec)
    queries = prepare(np.concatenate([v for _, v in clean_store.iter_embeddings()])[::7], "ip")
    want = clean_store.refresh().vector_index().search(queries, 10)
    if spec.factory == "Flat":
        np.testing.assert_array_equal(store.vector_index().search(queries, 10)[1], want[1])
    result = CliRunner().invoke(app, ["compact", str(appended), "--format", "json"])
    assert result.exit_code == 0, result.output
    store.refresh()
    assert len(index_parts(store.manifest["index"])) == 1
    assert store.manifest["index"].get("search") == clean_store.manifest["index"].get("search")
    got = store.vector_index().search(queries, 10)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_allclose(got[0], want[0], atol=1e-6)
    # the folded parts are retired, not deleted under readers of older snapshots; the next writer with no such
    # reader left deletes them
    on_disk = {f"index/{path.name}" for path in (appended / "index").glob("*.faiss")}
    assert on_disk - index_files(store.manifest["index"]) <= retired_files(appended) and verify_store(store) == []
    result = CliRunner().invoke(app, ["compact", str(appended), "--retune-only"])
    assert result.exit_code == 0 and "1 part(s)" in result.output
    store = Store.open(appended)
    assert {f"index/{path.name}" for path in (appended / "index").glob("*.faiss")} == \
        index_files(store.manifest["index"])  # no older reader left: swept
    result = CliRunner().invoke(app, ["compact", str(appended), "--retune-only"])
    assert result.exit_code == 0 and "1 part(s)" in result.output


def test_a_reader_keeps_its_snapshot_while_an_append_folds_parts(tmp_path):
    out = tmp_path / "s"
    build(fasta(tmp_path, "a", 10_000, seed=1), out, IndexSpec("Flat"), append=False)
    reader = Store.open(out)
    queries = prepare(np.concatenate([v for _, v in reader.iter_embeddings()])[:5], "ip")
    before = reader.vector_index().search(queries, 5)
    store = build(fasta(tmp_path, "b", 10_000, seed=2), out, IndexSpec("Flat"))  # folds a's part away
    assert not (out / reader.manifest["index"]["path"]).exists() or \
        reader.manifest["index"]["path"] != store.manifest["index"]["path"]
    np.testing.assert_array_equal(reader.vector_index().search(queries, 5)[1], before[1])
    assert reader.refresh().vector_index().ntotal == store.num_tiles


def test_parts_stay_logarithmic_and_folding_work_amortised():
    """merge_plan over 1,000 appends of one genome each onto a base of 10: few parts, and each vector is re-added
    O(log n) times over the store's life (a binary counter), so appends stay flat on average."""
    parts, re_added, most = [{"ntotal": 10}], 0, 0
    for _ in range(1000):
        parts.append({"ntotal": 1})
        for first, last in merge_plan(parts, None):
            size = sum(part["ntotal"] for part in parts[first:last])
            re_added += size
            parts[first:last] = [{"ntotal": size}]
        most = max(most, len(parts))
    total = sum(part["ntotal"] for part in parts)
    assert total == 1010 and most <= 2 * math.log2(total)
    assert re_added <= total * math.log2(total)
    assert merge_plan([{"ntotal": 30}, {"ntotal": 20}], part_rows=40) == []


def test_cli_append_without_index_options_keeps_the_stores_index(tmp_path):
    """`genoembed index --append` with no --factory adds a part to the store's IVF index (it used to rebuild the
    whole index as the default Flat)."""
    out = tmp_path / "s"
    runner = CliRunner()
    first = runner.invoke(app, ["index", "--fasta", str(fasta(tmp_path, "a", 60_000, seed=1)), "-o", str(out),
                                "--model", "kmer:3", "--window", "200", "--stride", "100", "--factory", "IVF8,Flat",
                                "-q"])
    assert first.exit_code == 0, first.output
    before = index_file_stats(out)
    again = runner.invoke(app, ["index", "--fasta", str(fasta(tmp_path, "b", 3_000, seed=2)), "-o", str(out),
                                "--model", "kmer:3", "--window", "200", "--stride", "100", "--append", "-q"])
    assert again.exit_code == 0, again.output
    store = Store.open(out)
    assert store.manifest["index"]["spec"]["factory"] == "IVF8,Flat" and len(index_parts(store.manifest["index"])) == 2
    assert all(index_file_stats(out)[name] == stat for name, stat in before.items())
