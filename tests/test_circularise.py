"""`genoembed annotate STORE --circular CONTIG` after indexing: the store becomes the one `index --circular` builds
(tiles, vectors, topology, search and join results), only the new tiles embedded; per genome where contig names
repeat; one-line refusals."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.search import Query, search
from genoembed.sql import run_sql
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.verify import verify_store

from conftest import PLASMID_FASTA

runner = CliRunner()
PLASMID = "gi|45478711|ref|NC_005816.1|"
LENGTH = 9609
TILING = TilingSpec(window=1000, stride=500)


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The plasmid indexed linear then marked circular, and indexed with --circular from the start."""
    root = tmp_path_factory.mktemp("circularise")
    late = index(PLASMID_FASTA, root / "late", tiling=TILING)
    early = index(PLASMID_FASTA, root / "early", tiling=TILING, circular=[PLASMID])
    search(late, [f"{PLASMID}:101-1100"], k=3, save_as="before")
    gff = root / "origin.gff3"
    gff.write_text("##gff-version 3\n"
                   f"{PLASMID}\ttest\tgene\t9401\t{LENGTH + 300}\t.\t+\t.\tID=ori;Name=ori\n"
                   f"{PLASMID}\ttest\tgene\t3001\t4000\t.\t-\t.\tID=mid;Name=mid\n")
    return root, late, early, gff


def tile_rows(store: Store) -> dict[tuple, tuple]:
    """(genome, chrom, start, end, strand) -> (gc, n_fraction, soft-masked fraction, vector) of every tile."""
    rows = {}
    for ids, vectors in store.iter_embeddings():
        for row, vector in zip(store.tiles(ids).to_pylist(), vectors):
            key = tuple(row[name] for name in ("genome", "chrom", "start", "end", "strand"))
            rows[key] = (row["gc"], row["n_fraction"], row["soft_masked_fraction"], vector)
    return rows


def test_marking_circular_after_indexing_equals_indexing_circular(stores, monkeypatch):
    root, late, early, gff = stores
    calls = []
    embedder = type(late.embedder())
    embed = embedder.embed
    monkeypatch.setattr(embedder, "embed", lambda self, sequences: calls.append(len(sequences)) or embed(self, sequences))
    result = invoke("annotate", late.root, gff, "--circular", PLASMID)
    assert result.exit_code == 0, result.output
    # the linear grid's closing tile (8609-9609) is off the circular grid; 9000-10000 and 9500-10500 are new
    assert f"marked {PLASMID} of genome NC_005816 circular: 2 tiles added round the origin, 1 removed" in result.output
    assert calls == [2]  # only the new tiles were embedded
    assert invoke("annotate", early.root, gff).exit_code == 0
    late, early = Store.open(late.root), Store.open(early.root)
    assert late.genomes["NC_005816"]["circular"] == early.genomes["NC_005816"]["circular"] == [PLASMID]
    mine, theirs = tile_rows(late), tile_rows(early)
    assert mine.keys() == theirs.keys() and late.num_tiles == early.num_tiles == late.vector_index().ntotal
    for key, (gc, n, soft, vector) in mine.items():
        assert (gc, n, soft) == theirs[key][:3]
        np.testing.assert_allclose(vector, theirs[key][3], atol=1e-6)
    assert verify_store(late) == []
    assert "before" not in late.searches()  # its hits were on the contig whose tiles changed
    queries = [f"{PLASMID}:9301-700", f"{PLASMID}:2001-3000", f"{PLASMID}:9001-9609"]
    for store in (late, early):
        search(store, queries, k=5, save_as="probe")

    def answers(store):
        hits = {(r["query"], r["start"], r["end"], round(r["score"], 5)) for r in run_sql(
            store, 'SELECT query, start, "end", score FROM hits_probe').to_pylist()}
        joined = {(r["query"], r["start"], r["end"], r["feature_feature_id"], r["overlap_bp"]) for r in run_sql(
            store, 'SELECT h.query, h.start, h."end", f.feature_feature_id, f.overlap_bp FROM hits_probe h '
                   'JOIN hit_features_probe f USING (query, rank)').to_pylist()}
        return hits, joined

    assert answers(late) == answers(early)
    assert any(end > LENGTH for _, _, end, _ in answers(late)[0])
    assert any(feature == "ori" for *_, feature, _ in answers(late)[1])


def test_already_circular_and_bad_requests(stores, tmp_path):
    root, _, early, _ = stores
    again = invoke("annotate", early.root, "--circular", PLASMID)
    assert again.exit_code == 0 and "already circular, nothing changed" in again.output
    manifest = (early.root / "manifest.json").read_bytes()
    for args, message in (((), "nothing to do: give an annotation FILE, --circular CONTIG, or both"),
                          (("--circular", "nope"), "--circular 'nope': no genome of the store holds that contig"),
                          (("--circular", PLASMID, "--genome", "other"), "no genome 'other' in the store")):
        result = invoke("annotate", early.root, *args)
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
    assert (early.root / "manifest.json").read_bytes() == manifest


@pytest.mark.parametrize("factory", ["Flat", "HNSW8"])
def test_per_genome_where_contig_names_repeat(tmp_path, factory):
    embedder = KmerEmbedder(k=3, canonical=False)
    tiling = TilingSpec(window=400, stride=200)
    a = write_fasta(tmp_path / "A.fa", random_genome({"chr": 5000, "p1": 2100}, seed=21))
    b = write_fasta(tmp_path / "B.fa", random_genome({"chr": 4000, "p1": 2300}, seed=22))
    from genoembed.vector_index import IndexSpec

    out = tmp_path / "pan"
    index(a, out, embedder=embedder, tiling=tiling, index_spec=IndexSpec(factory=factory))
    store = index(b, out, embedder=embedder, tiling=tiling, append=True, index_spec=IndexSpec(factory=factory))
    refused = invoke("annotate", out, "--circular", "p1")
    assert refused.exit_code == 2 and "2 genomes have that contig (A, B)" in refused.output
    assert "name one with --genome" in refused.output and refused.output.count("\n") == 1
    done = invoke("annotate", out, "--circular", "p1", "--genome", "A")
    assert done.exit_code == 0, done.output
    store = Store.open(out)
    assert store.genomes["A"]["circular"] == ["p1"] and store.genomes["B"]["circular"] == []
    assert verify_store(store) == []
    # A's new tiles have ids past B's: --genome must still mean A's tiles only, and find the new ones
    circular = index(a, tmp_path / "alone", embedder=embedder, tiling=tiling, circular=["p1"])
    wrapped = {(r["start"], r["end"]) for r in circular.tiles(np.arange(circular.id_limit)).to_pylist()
               if r["chrom"] == "p1" and r["end"] > 2100}
    held = {(r["genome"], r["chrom"], r["start"], r["end"]) for r in tile_rows_table(store)}
    assert {("A", "p1", *span) for span in wrapped} <= held
    assert not any(g == "B" and c == "p1" and end > 2300 for g, c, _, end in held)
    sequence = Query("across", circular.genome().fetch("p1", 1900, 2300))
    for genome in ("A", "B"):
        hits = search(store, [sequence], k=40, genome=genome).to_pylist()
        assert len(hits) == min(40, sum(1 for g, *_ in held if g == genome)) and {h["genome"] for h in hits} == {genome}
    best = search(store, [sequence], k=1, genome="A").to_pylist()[0]
    assert (best["chrom"], best["end"] > 2100) == ("p1", True)
    shutil.rmtree(tmp_path / "alone")


def tile_rows_table(store: Store) -> list[dict]:
    return store.tiles(np.concatenate([ids for ids, _ in store.iter_embeddings()])).to_pylist()
