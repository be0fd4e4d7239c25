"""Issue 27: the dilated homolog encoder (numpy == torch, strand-invariant, batch-independent) and the
translated re-rank with protein evidence (known answers from planted, recoded genes; tblastx as oracle)."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict

import numpy as np
import pytest

from conftest import CHLOROPLAST_GENBANK as CHLOROPLAST
from conftest import DATA as DATA_DIR
from genoembed.embedders import get_embedder, load_embedder
from genoembed.embedders.translated import translate
from genoembed.seqio import reverse_complement


def _dilated_model(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.numpy import save_file

    from genoembed.train.homolog import HomologTrainConfig, build_model, export_tensors

    torch.manual_seed(0)
    config = HomologTrainConfig(embedding_dim=8, channels=12, width=5, dilations=(2, 3), heads=2, dim=16)
    model = build_model(config).eval()
    with torch.no_grad():  # a trained network's attention is far from uniform: make it so here too
        model.attention.weight.mul_(20)
    save_file(export_tensors(model), str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"name": "tiny", "architecture": "dilated test",
                                                      "dilations": list(config.dilations)}))
    return model


def test_numpy_dilated_embedder_equals_the_torch_network(tmp_path):
    from genoembed.train.homolog import embed_torch

    model = _dilated_model(tmp_path)
    rng = np.random.default_rng(5)
    sequences = ["".join(rng.choice(list("ACGT"), n)) for n in (999, 1000, 40, 7)] + ["ACGTNNNNACGTTGCA" * 20]
    embedder = get_embedder(f"protein:{tmp_path}")
    assert type(embedder).__name__ == "DilatedProteinEmbedder" and embedder.dim == 16
    expected = embed_torch(model, sequences)
    np.testing.assert_allclose(embedder.embed(sequences), expected, atol=1e-5)
    # a vector does not depend on its batch (padding is masked after every layer)
    np.testing.assert_allclose(np.concatenate([embedder.embed([s], batch=1) for s in sequences]), expected, atol=1e-5)
    assert load_embedder(embedder.describe()).fingerprint == embedder.fingerprint


def test_dilated_embedder_is_strand_invariant(tmp_path):
    _dilated_model(tmp_path)
    sequence = "".join(np.random.default_rng(6).choice(list("ACGT"), 700))
    vectors = get_embedder(f"protein:{tmp_path}").embed([sequence, reverse_complement(sequence)])
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)


def test_publish_refuses_weights_whose_numpy_vectors_differ(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from genoembed.errors import InputError
    from genoembed.train import homolog

    config = homolog.HomologTrainConfig(embedding_dim=8, channels=12, dilations=(2,), dim=16)
    model = homolog.build_model(config)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": model.state_dict(), "step": 3, "best": 0.5, "history": [], "config": asdict(config)},
               run / "best.pt")
    published = homolog.publish(homolog.HomologTrainConfig(), run, tmp_path / "ok", say=lambda m: None)
    assert json.loads((published / "training.json").read_text())["numpy_torch_max_difference"] < 1e-4
    original = homolog.export_tensors

    def broken(model):  # weights the numpy embedder reads differently from the torch network
        tensors = original(model)
        return {**tensors, "conv_bias": tensors["conv_bias"] + 1}

    monkeypatch.setattr(homolog, "export_tensors", broken)
    with pytest.raises(InputError, match="differ.*not publishing"):
        homolog.publish(homolog.HomologTrainConfig(), run, tmp_path / "bad", say=lambda m: None)
    assert not (tmp_path / "bad" / "model.safetensors").exists()


def test_back_translation_keeps_the_protein():
    from genoembed.train.homolog import back_translate
    from genoembed.train.protein import codon_usage

    protein = "MKVLAAGIWYRSTPHQNDECF"
    dna = back_translate(protein, codon_usage(["GCTGCAGGG"]), np.random.default_rng(0))
    assert translate(dna) == protein + "*"


# ---------------------------------------------------------------- translated re-rank, protein evidence

def _planted(rng, identity=0.6):
    """A chloroplast gene window, its recoded homolog planted on the reverse strand of random DNA."""
    from genoembed.eval.protein import call_genes, read_records
    from genoembed.train.protein import codon_usage, recode, substitution_table

    genes = [g for g in call_genes(read_records(CHLOROPLAST)) if len(g.dna) >= 900]
    query = genes[3].dna[:900]
    homolog = recode(query, identity, codon_usage([g.dna for g in genes]), substitution_table(), rng)
    left, right = ("".join(rng.choice(list("ACGT"), n)) for n in (1000, 700))
    return query, homolog, left + reverse_complement(homolog) + right, len(left)


def test_translated_alignment_finds_a_planted_homolog_on_the_reverse_strand():
    pytest.importorskip("parasail")
    pytest.importorskip("pyrodigal")
    from genoembed.protein_evidence import TranslatedAligner, alignment_row

    rng = np.random.default_rng(3)
    query, homolog, target, offset = _planted(rng)
    alignment = TranslatedAligner(query).align(target, 5_000)
    assert alignment.query_frame == 0 and alignment.target_frame >= 3  # coding frame vs reverse strand
    # the aligned target span lies inside the planted gene (forward coordinates) and covers most of it
    assert 5_000 + offset <= alignment.target_start < alignment.target_end <= 5_000 + offset + len(homolog)
    assert alignment.target_end - alignment.target_start > 0.8 * len(homolog)
    truth = np.mean([a == b for a, b in zip(translate(query), translate(homolog))])
    assert abs(alignment.identity - truth) < 0.08
    row = alignment_row(alignment, len(query), contig_length=20_000, database_residues=40_000)
    assert row["protein_query_frame"] == 1 and row["protein_target_frame"] < 0
    assert row["protein_bit_score"] > 100 and row["protein_evalue"] < 1e-20


def test_translated_alignment_agrees_with_tblastx(tmp_path):
    pytest.importorskip("parasail")
    pytest.importorskip("pyrodigal")
    if shutil.which("tblastx") is None:
        pytest.skip("tblastx (ncbi-blast+) not installed")
    from genoembed.protein_evidence import TranslatedAligner

    rng = np.random.default_rng(4)
    query, _, target, _ = _planted(rng, identity=0.5)
    (tmp_path / "q.fa").write_text(f">q\n{query}\n")
    (tmp_path / "t.fa").write_text(f">t\n{target}\n")
    out = subprocess.run(["tblastx", "-query", str(tmp_path / "q.fa"), "-subject", str(tmp_path / "t.fa"),
                          "-outfmt", "6 sstart send sframe qframe", "-max_hsps", "1", "-seg", "no"],
                         capture_output=True, text=True, check=True).stdout.split()
    sstart, send, sframe, qframe = map(int, out[:4])
    alignment = TranslatedAligner(query).align(target)
    low, high = min(sstart, send) - 1, max(sstart, send)
    # tblastx aligns without gaps: its HSP lies within the gapped alignment's span, same frames
    assert alignment.target_start <= low + 30 and high - 30 <= alignment.target_end
    assert (qframe, sframe < 0) == (1, alignment.target_frame >= 3)


def test_rerank_orders_by_bit_score_and_keeps_embedding_rank():
    from genoembed.protein_evidence import rank_by_bits

    rows = [{"query": "q", "rank": r, "protein_bit_score": b} for r, b in ((1, 50.0), (2, None), (3, 80.0))]
    base = {"query_chrom": None, "query_start": None, "query_end": None, "query_strand": None, "tile_id": 0,
            "genome": "g", "chrom": "c", "start": 0, "end": 1, "strand": "+", "score": 1.0, "query_length": 9}
    table = rank_by_bits([dict(base, **row) for row in rows], k=2)
    assert table.column("embedding_rank").to_pylist() == [3, 1] and table.column("rank").to_pylist() == [1, 2]


def test_search_cli_protein_rerank_reports_protein_evidence(tmp_path):
    pytest.importorskip("parasail")
    pytest.importorskip("pyrodigal")
    from typer.testing import CliRunner

    from conftest import CHLOROPLAST_FASTA
    from genoembed.cli import app
    from genoembed.eval.protein import call_genes, read_records
    from genoembed.train.protein import codon_usage, recode, substitution_table

    runner = CliRunner()
    store = tmp_path / "chloroplast"
    result = runner.invoke(app, ["index", "--fasta", str(CHLOROPLAST_FASTA), "--output", str(store), "--model",
                                 "protein", "--window", "1000", "--stride", "500", "-q"])
    assert result.exit_code == 0, result.output
    genes = [g for g in call_genes(read_records(CHLOROPLAST)) if len(g.dna) >= 1500 and g.strand == "-"]
    gene = genes[0]
    query = recode(gene.dna[300:1200], 0.6, codon_usage([g.dna for g in genes]), substitution_table(),
                   np.random.default_rng(9))
    result = runner.invoke(app, ["search", str(store), "--sequence", query, "-k", "3", "--protein-rerank", "50",
                                 "--tiles", "--no-save", "-f", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    best = hits[0]
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert best["protein_bit_score"] >= max(h["protein_bit_score"] or 0 for h in hits)
    # the protein alignment lies on the gene the query was recoded from, on its strand, with its identity
    assert gene.start <= best["protein_target_start"] < best["protein_target_end"] <= gene.end
    assert best["protein_target_frame"] < 0 and best["strand"] == "-" and best["protein_query_frame"] == 1
    assert 0.5 < best["protein_identity"] < 0.75 and best["protein_evalue"] < 1e-30
    refused = runner.invoke(app, ["search", str(store), "--sequence", query, "--protein-rerank", "5", "-f", "blast6"])
    assert refused.exit_code != 0 and "--protein-rerank reports protein ones" in refused.output


# ---------------------------------------------------------------- genes as units

def test_index_gene_units_stores_one_row_per_called_gene_and_finds_a_gene_by_its_region(tmp_path):
    pytest.importorskip("pyrodigal")
    import pyarrow.compute as pc
    from typer.testing import CliRunner

    from conftest import CHLOROPLAST_FASTA
    from genoembed.cli import app
    from genoembed.genes import call_genes
    from genoembed.seqio import read_fasta
    from genoembed.store import Store

    runner = CliRunner()
    store_path = tmp_path / "genes"
    result = runner.invoke(app, ["index", "--fasta", str(CHLOROPLAST_FASTA), "--output", str(store_path),
                                 "--model", "protein", "--units", "genes", "-q"])
    assert result.exit_code == 0, result.output
    store = Store.open(store_path)
    genes = call_genes([(name, sequence.upper()) for name, sequence in read_fasta(CHLOROPLAST_FASTA)])
    tiles = store.tiles(np.arange(store.num_tiles))
    assert store.num_tiles == len(genes)
    assert list(zip(tiles["start"].to_pylist(), tiles["end"].to_pylist(), tiles["strand"].to_pylist())) == \
        [(g.start, g.end, g.strand) for g in genes]
    assert store.provenance["tiling"]["units"] == "genes"
    gene = max(genes, key=lambda g: len(g.dna))
    region = f"{gene.contig}:{gene.start + 1}-{gene.end}:{gene.strand}"
    result = runner.invoke(app, ["search", str(store_path), "--region", region, "-k", "2", "--tiles", "--no-save",
                                 "-f", "jsonl", "-q"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines()]
    # the gene itself, and its copy in the other inverted repeat (ycf2), tie for the top: both are whole genes
    assert (gene.start, gene.end, gene.strand) in [(h["start"], h["end"], h["strand"]) for h in hits]
    assert all(h["score"] > 0.999 for h in hits)
    assert pc.max(tiles["end"]).as_py() <= next(iter(store.contig_lengths.values()))[gene.contig]


def test_tile_stores_describe_their_tiling_as_before():
    from genoembed.errors import InputError
    from genoembed.tiles import TilingSpec

    assert "units" not in TilingSpec().describe()  # existing stores keep matching on --append
    assert TilingSpec(units="genes").describe()["units"] == "genes"
    with pytest.raises(InputError, match="units='exons' must be one of 'tiles', 'genes'"):
        TilingSpec(units="exons")


def test_the_training_runs_checkpoint_resumes_and_publishes_through_this_config():
    """tests/data/homolog_checkpoint.json: the config and tensor shapes of the live issue-27 run's checkpoint.
    A resumed run rebuilds its model from ``HomologTrainConfig``'s defaults (the command line sets only
    max_minutes) and ``publish`` sets the saved names on a config: both must give that model, and the defaults
    must be every saved setting (the validation genomes' paths depend on the checkout)."""
    pytest.importorskip("torch")
    from genoembed.train.homolog import HomologTrainConfig, build_model

    recorded = json.loads((DATA_DIR / "homolog_checkpoint.json").read_text())
    saved = recorded["config"]
    resumed = HomologTrainConfig(max_minutes=saved["max_minutes"])
    defaults = json.loads(json.dumps(asdict(resumed)))  # tuples as the checkpoint's lists
    assert defaults.pop("history") == [] and defaults.keys() == saved.keys()
    assert {**defaults, "validation": None} == {**saved, "validation": None}
    published = HomologTrainConfig()
    for key, value in saved.items():  # as publish() does
        setattr(published, key, tuple(value) if key == "dilations" else value)
    for config in (resumed, published):
        shapes = {name: list(tensor.shape) for name, tensor in build_model(config).state_dict().items()}
        assert shapes == recorded["shapes"]
