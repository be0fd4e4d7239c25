"""`genoembed index -a FILE` checks the file's contigs against the genomes before embedding anything: a GenBank
whose record names need an alias fails in seconds, in one line, with the fix, and leaves nothing behind."""

from __future__ import annotations

from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.synthetic import random_genome, write_fasta

from conftest import PLASMID_FASTA, PLASMID_GENBANK

runner = CliRunner()
OPTIONS = ["--model", "kmer:3", "--window", "1000", "--stride", "500"]


def invoke(*args):
    return runner.invoke(app, [str(arg) for arg in args])


def embedding_calls(monkeypatch) -> list[int]:
    """Tiles handed to the embedder, counted (the k-mer embedder's embed, wrapped)."""
    from genoembed.embedders.kmer import KmerEmbedder

    calls, embed = [], KmerEmbedder.embed
    monkeypatch.setattr(KmerEmbedder, "embed", lambda self, sequences: calls.append(len(sequences)) or
                        embed(self, sequences))
    return calls


def test_annotation_needing_an_alias_fails_before_embedding(tmp_path, monkeypatch):
    calls = embedding_calls(monkeypatch)
    out = tmp_path / "store"
    result = invoke("index", "--fasta", PLASMID_FASTA, "-o", out, *OPTIONS, "-a", PLASMID_GENBANK)
    assert result.exit_code == 2
    message = result.output.strip()
    assert "\n" not in message and message.startswith("genoembed: error: annotations ")
    assert f"{PLASMID_GENBANK}: 1 contig not in the genome (40 features; e.g. 'NC_005816.1')" in message
    assert "pass --alias NC_005816.1=gi|45478711|ref|NC_005816.1| or --auto-alias" in message
    assert calls == [] and not out.exists()  # nothing embedded, nothing left behind
    fixed = invoke("index", "--fasta", PLASMID_FASTA, "-o", out, *OPTIONS, "-a", PLASMID_GENBANK,
                   "--alias", "NC_005816.1=gi|45478711|ref|NC_005816.1|")
    assert fixed.exit_code == 0, fixed.output
    assert sum(calls) > 0


def test_append_checks_annotations_against_the_store_and_the_new_genome(tmp_path, monkeypatch):
    first = write_fasta(tmp_path / "A.fa", random_genome({"chr1": 3000, "pA": 1200}, seed=1))
    second = write_fasta(tmp_path / "B.fa", random_genome({"chr1": 2500, "pB": 1500}, seed=2))
    out = tmp_path / "store"
    assert invoke("index", "--fasta", first, "-o", out, *OPTIONS).exit_code == 0
    manifest = (out / "manifest.json").read_bytes()
    calls = embedding_calls(monkeypatch)
    shared = tmp_path / "shared.bed"
    shared.write_text("chr1\t10\t200\tgene1\n")  # chr1 is in both genomes: whose?
    result = invoke("index", "--fasta", second, "-o", out, *OPTIONS, "--append", "-a", shared)
    assert result.exit_code == 2 and "\n" not in result.output.strip()
    assert f"{shared}: its contigs are in 2 genomes of the store (A, B)" in result.output
    too_long = tmp_path / "long.bed"
    too_long.write_text("pB\t10\t1600\tgene2\n")  # past B's 1,500 bp plasmid, which is linear
    result = invoke("index", "--fasta", second, "-o", out, *OPTIONS, "--append", "-a", too_long)
    assert result.exit_code == 2 and "'pB' has a feature ending at 1,600 but is 1,500 bp" in result.output
    assert calls == [] and (out / "manifest.json").read_bytes() == manifest  # the store as it was
