"""genoembed explain: exact per-base cosine contributions for token-sum models, occlusion for transformers."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import CHLOROPLAST_FASTA
from genoembed.cli import app
from genoembed.errors import MissingExtraError
from genoembed.explain import (explain, explain_pair, exact_contributions, plot_explanation, resolve_hit,
                               top_regions)
from genoembed.search import Query, query_source

CHROM = "NC_000932.1"
runner = CliRunner()


def cosine(embedder, a: str, b: str) -> float:
    vectors = embedder.embed([a, b]).astype(np.float64)
    return float(vectors[0] @ vectors[1] / np.linalg.norm(vectors[0]) / np.linalg.norm(vectors[1]))


@pytest.fixture(scope="module")
def default_store(tmp_path_factory):
    """The chloroplast embedded with the shipped default model (numpy token-table embedder)."""
    from genoembed.build import index
    from genoembed.embedders import get_embedder
    from genoembed.tiles import TilingSpec

    embedder = get_embedder("default")
    if not hasattr(embedder, "token_weights"):
        pytest.skip("the default model is not installed as a token-table model")
    return index(CHLOROPLAST_FASTA, tmp_path_factory.mktemp("stores") / "default", embedder=embedder,
                 tiling=TilingSpec(window=1000, stride=1000, strands="+"))


@pytest.mark.parametrize("store_name", ["chloroplast_store", "default_store"])
def test_exact_contributions_sum_to_the_cosine(store_name, request):
    store = request.getfixturevalue(store_name)
    embedder = store.embedder()
    result = explain(store, f"{CHROM}:20001-21000", hit=3)
    expected = cosine(embedder, result.query.sequence, result.hit.sequence)
    assert result.method == "exact"
    assert result.query_contributions.shape == (1000,) and result.hit_contributions.shape == (1000,)
    assert result.query_contributions.sum() == pytest.approx(expected, abs=1e-5)
    assert result.hit_contributions.sum() == pytest.approx(expected, abs=1e-5)
    # sequences with Ns, odd lengths and unrelated content too
    genome = query_source(store)
    odd = genome.fetch(CHROM, 5000, 5777).upper()
    odd = odd[:100] + "NNNNN" + odd[105:400] + "N" + odd[401:]
    other = genome.fetch(CHROM, 90_000, 91_003, "-").upper()
    direction = embedder.embed([other])[0]
    assert exact_contributions(embedder, odd, direction).sum() == pytest.approx(cosine(embedder, odd, other),
                                                                                 abs=1e-5)


def test_hit_by_rank_is_the_search_hit_and_by_region(chloroplast_store):
    query = query_source(chloroplast_store)
    from genoembed.search import region_queries, search

    from genoembed.evidence import merge_loci

    first = region_queries(query, [f"{CHROM}:30001-31000"])[0]
    # rank as `genoembed search` shows it: loci, the query's own region left out (--exclude-self)
    loci = merge_loci(search(chloroplast_store, [first], k=20, exclude_self=True)).to_pylist()
    for rank in (1, 2):
        hit = resolve_hit(chloroplast_store, first, rank)
        best = chloroplast_store.tiles([loci[rank - 1]["tile_id"]]).to_pylist()[0]
        assert (hit.chrom, hit.start, hit.end, hit.strand) == (best["chrom"], best["start"], best["end"],
                                                               loci[rank - 1]["strand"])
        assert not (hit.start < first.end and first.start < hit.end)  # never the query against itself
    assert resolve_hit(chloroplast_store, first, f"{CHROM}:1-500").sequence == query.fetch(CHROM, 0, 500).upper()


def test_top_regions_are_the_largest_non_overlapping_windows():
    values = np.zeros(300)
    values[200:210] = 1.0
    values[20:30] = 0.5
    regions = top_regions(values, Query("q", "A" * 300, CHROM, 1000, 1300, "+"), n=2, width=10)
    assert regions == [(f"{CHROM}:1201-1210", 10.0), (f"{CHROM}:1021-1030", 5.0)]
    minus = top_regions(values, Query("q", "A" * 300, CHROM, 1000, 1300, "-"), n=1, width=10)
    assert minus[0][0] == f"{CHROM}:1091-1100"


def test_cli_writes_bedgraph_bigwig_and_png(chloroplast_store, tmp_path):
    prefix = tmp_path / "why"
    result = runner.invoke(app, ["explain", str(chloroplast_store.root), "-r", f"{CHROM}:20001-21000:-",
                                 "--hit", "2", "-o", str(prefix), "-f", "tsv"])
    assert result.exit_code == 0, result.output
    lines = (tmp_path / "why.query.bedgraph").read_text().splitlines()[1:]
    total = sum(float(v) * (int(e) - int(s)) for _, s, e, v in (line.split("\t") for line in lines))
    row = result.output.splitlines()[1].split("\t")
    assert total == pytest.approx(float(row[2]), abs=1e-3)
    assert lines[0].split("\t")[:2] == [CHROM, "20000"] and lines[-1].split("\t")[2] == "21000"
    assert (tmp_path / "why.png").read_bytes()[:4] == b"\x89PNG"
    if pytest.importorskip("pyBigWig"):
        import pyBigWig

        with pyBigWig.open(str(tmp_path / "why.hit.bw")) as track:
            assert track.header()["nBasesCovered"] == 1000


def test_missing_matplotlib_is_a_one_line_message(chloroplast_store, monkeypatch, tmp_path):
    result = explain(chloroplast_store, f"{CHROM}:20001-21000", hit=1)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'genoembed\[plot\]'"):
        plot_explanation(result, tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_sequence_and_region_are_exclusive(chloroplast_store):
    result = runner.invoke(app, ["explain", str(chloroplast_store.root), "-r", f"{CHROM}:1-1000", "-s", "ACGT"])
    assert result.exit_code == 2 and "exactly one of --region or --sequence" in result.output


def test_occlusion_finds_a_planted_shared_motif(tmp_path, torch_one_thread):
    """A tiny random 1-layer rotary 6-mer transformer: masking the shared motif costs the most cosine."""
    pytest.importorskip("transformers")
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    from genoembed.embedders.hf import TransformersEmbedder
    from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

    write_kmer_tokenizer(tmp_path, k=6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, max_position_embeddings=64,
                       position_embedding_type="rotary", token_dropout=False, hidden_size=256,
                       num_hidden_layers=1, num_attention_heads=4, intermediate_size=256)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(str(tmp_path))
    embedder = TransformersEmbedder(tmp_path, reverse_complement=False, frames=1)
    rng = np.random.default_rng(0)
    letters = np.array(list("ACGT"))
    random_dna = lambda n: "".join(letters[rng.integers(0, 4, n)])  # noqa: E731
    for _ in range(3):
        motif = random_dna(36)  # starts on a 6-mer boundary in both sequences
        query, hit = random_dna(90) + motif + random_dna(54), random_dna(42) + motif + random_dna(102)
        result = explain_pair(embedder, Query("q", query), Query("h", hit), width=12)
        assert result.method == "occlusion"
        best_query = int(np.argmax(np.convolve(result.query_contributions, np.ones(36), "valid")))
        best_hit = int(np.argmax(np.convolve(result.hit_contributions, np.ones(36), "valid")))
        assert abs(best_query - 90) <= 18 and abs(best_hit - 42) <= 18
