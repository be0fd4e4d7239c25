"""Stores carry their own sequence: a copy of the store answers with its FASTA gone; verify checks the copy."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.errors import StoreError
from genoembed.remove import remove
from genoembed.search import Query, search
from genoembed.store import Store
from genoembed.synthetic import random_genome, write_fasta
from genoembed.tiles import TilingSpec
from genoembed.verify import verify_store
from genoembed.writers import retired_files

from conftest import CHLOROPLAST_FASTA

runner = CliRunner()
CHROM = "NC_000932.1"
REGION = f"{CHROM}:20001-21000"


@pytest.fixture(scope="module")
def travelled(tmp_path_factory):
    """The chloroplast indexed from a FASTA copy, the store copied elsewhere, the FASTA and first store deleted."""
    root = tmp_path_factory.mktemp("travel")
    fasta = root / "chloroplast.fa"
    shutil.copyfile(CHLOROPLAST_FASTA, fasta)
    built = index(fasta, root / "built", embedder=KmerEmbedder(k=4), tiling=TilingSpec(window=1000, stride=500))
    reference = search(built, [REGION], k=5, exclude_self=True)
    shutil.copytree(root / "built", root / "elsewhere" / "store")
    shutil.rmtree(root / "built")
    fasta.unlink()
    return Store.open(root / "elsewhere" / "store"), reference


def test_copied_store_answers_regions_and_sequences_without_its_fasta(travelled):
    store, reference = travelled
    hits = search(store, [REGION], k=5, exclude_self=True)
    assert hits.drop(["strand"]).equals(reference.drop(["strand"]))
    assert hits["strand"].to_pylist() == reference["strand"].to_pylist()  # read from the in-store sequence
    sequence = store.genome().fetch(CHROM, 20000, 21000)
    assert sequence == CHLOROPLAST_FASTA.read_text().split("\n", 1)[1].replace("\n", "")[20000:21000]
    by_sequence = search(store, [Query("seq", sequence)], k=1)
    assert by_sequence["start"].to_pylist() == [20000]
    assert verify_store(store) == []


def test_copied_store_aligns_and_explains_from_the_cli(travelled, tmp_path):
    pytest.importorskip("parasail", reason="the align extra is not installed")
    store, _ = travelled
    result = runner.invoke(app, ["search", str(store.root), "--region", REGION, "-k", "2", "--align",
                                 "--format", "jsonl", "--no-save"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.splitlines()[0])["identity"] == 1.0
    result = runner.invoke(app, ["explain", str(store.root), "-r", REGION, "--hit", "2", "-o", str(tmp_path / "why"),
                                 "-f", "tsv", "--no-plot"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "why.query.bedgraph").read_text().splitlines()[1].startswith(f"{CHROM}\t20000")


def test_copied_store_serves(travelled):
    pytest.importorskip("fastapi", reason="the serve extra is not installed")
    from fastapi.testclient import TestClient

    from genoembed.serve import ServedStore, create_app

    store, reference = travelled
    with TestClient(create_app({"s": ServedStore("s", store.root)})) as client:
        answer = client.post("/search", json={"regions": [REGION], "k": 5, "exclude_self": True})
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    assert {row["start"] for row in rows} <= set(reference["start"].to_pylist()) and rows[0]["start"] == \
        reference["start"][0].as_py()


def test_verify_checks_the_sequence_and_embeds_it_into_old_stores(tmp_path):
    fasta = write_fasta(tmp_path / "g.fa", random_genome({"a": 4000, "b": 3000}, seed=3))
    store = index(fasta, tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(window=1000, stride=500))
    copy = store.genomes["g"]["sequence"]
    # damage: another FASTA text inside the copy (BGZF still valid), then restore
    saved = (store.root / copy["path"]).read_bytes()
    from Bio import bgzf

    with bgzf.BgzfWriter(str(store.root / copy["path"]), "wb") as sink:
        sink.write(gzip.decompress(saved).replace(b"A", b"C", 1))
    assert any("sha256 differs" in problem for problem in verify_store(store))
    (store.root / copy["path"]).write_bytes(saved)
    assert verify_store(store) == []
    # a store built before stores carried sequences: no copy in the manifest or on disk
    manifest = json.loads((store.root / "manifest.json").read_text())
    del manifest["genomes"]["g"]["sequence"]
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(store.root / "sequences")
    moved = tmp_path / "g.moved.fa"
    fasta.rename(moved)
    with pytest.raises(StoreError, match="verify .*--embed-sequences"):
        search(Store.open(store.root), ["a:1-1000"], k=1)
    result = runner.invoke(app, ["verify", str(store.root)])
    assert result.exit_code == 0 and "--embed-sequences" in result.output
    result = runner.invoke(app, ["verify", str(store.root), "--embed-sequences"])
    assert result.exit_code == 2 and "not found" in result.output  # the FASTA must be where it was recorded
    moved.rename(fasta)
    result = runner.invoke(app, ["verify", str(store.root), "--embed-sequences"])
    assert result.exit_code == 0, result.output
    assert "copied the sequence of genome 'g'" in result.output
    fasta.unlink()
    assert search(Store.open(store.root), ["a:1-1000"], k=1)["start"].to_pylist() == [0]


def test_remove_takes_the_genome_sequence_with_it(tmp_path):
    genomes = [write_fasta(tmp_path / f"{name}.fa", random_genome({f"{name}1": 3000}, seed=seed))
               for name, seed in (("x", 1), ("y", 2))]
    store = index(genomes[0], tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(window=1000, stride=500))
    store = index(genomes[1], tmp_path / "s", embedder=KmerEmbedder(k=4), tiling=TilingSpec(window=1000, stride=500),
                  append=True)
    assert len(list((store.root / "sequences").iterdir())) == 6
    remove(store, "x")
    left = sorted(path.name for path in (store.root / "sequences").iterdir())
    assert len([name for name in left if name.startswith("y.")]) == 3
    # x's files are gone, or left for the sweep while an older snapshot's reader may still hold them
    assert {f"sequences/{name}" for name in left if not name.startswith("y.")} <= retired_files(store.root)
    assert not any(entry.get("sequence", {}).get("path", "").startswith("sequences/x.")
                   for entry in Store.open(store.root).manifest["genomes"].values())
    assert verify_store(Store.open(store.root)) == []


def test_a_copy_whose_sequence_looks_newer_than_its_index_opens_quietly(travelled):
    import os
    import time
    import warnings

    store, _ = travelled
    copy = store.root / store.genomes[next(iter(store.genomes))]["sequence"]["path"]
    later = time.time() + 100
    os.utime(copy, (later, later))  # a copy tool may write the FASTA after its .fai / .gzi
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Store.open(store.root).genome().fetch(CHROM, 0, 10) == store.genome().fetch(CHROM, 0, 10)


@pytest.mark.parametrize("compression", [None, "gzip"])
def test_store_copy_reads_right_across_every_bgzf_block_boundary(tmp_path, compression):
    """Reads starting at, just before and just after each block boundary of the store's copy equal the
    FASTA's (pyfaidx cannot seek exactly 65,536 bytes into a block: the copy keeps blocks below that)."""
    from genoembed.genome import BGZF_BLOCK, open_genome

    records = random_genome({"a": 300_000, "b": 70_000}, seed=9)
    fasta = write_fasta(tmp_path / "g.fa", records, compression=compression)
    store = index(fasta, tmp_path / "s", embedder=KmerEmbedder(k=3), tiling=TilingSpec(window=5000, stride=5000))
    copy = store.genome()
    assert copy.path.parent.name == "sequences"
    offset = len(">a\n")  # FASTA text offset of base 0 of 'a'; 60 bases and a newline per line
    for boundary in range(BGZF_BLOCK, 300_000 * 61 // 60, BGZF_BLOCK):
        base = (boundary - offset) * 60 // 61
        for start in range(max(0, base - 62), min(base + 62, 300_000 - 100)):
            assert copy.fetch("a", start, start + 100) == records["a"][start:start + 100]
    assert copy.fetch("b", 69_000, 70_000) == records["b"][69_000:]
    assert open_genome(fasta).fetch("a", 0, 10) == copy.fetch("a", 0, 10)
