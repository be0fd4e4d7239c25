"""Figures (genoembed/plot.py, cli/plot.py): non-empty PNGs with the expected axes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import CHLOROPLAST_GENBANK
from genoembed.errors import InputError

pytest.importorskip("matplotlib")

ROWS = [
    {"method": m, "kind": kind, "index": index, "nprobe": nprobe, "ef_search": ef, "substitution_rate": s,
     "indel_rate": 0.0, "identity_bin": "all", "recall_at_1": r, "recall_at_10": min(1.0, r + 0.1),
     "ann_recall_at_10": ann, "qps": qps}
    for m, kind, index, nprobe, ef, s, r, ann, qps in [
        ("kmer:4", "embedding", "Flat", None, None, 0.0, 1.0, 1.0, 1500.0),
        ("kmer:4", "embedding", "Flat", None, None, 0.1, 0.8, 1.0, 1500.0),
        ("kmer:4", "embedding", "Flat", None, None, 0.2, 0.4, 1.0, 1500.0),
        ("kmer:4", "embedding", "HNSW32", None, 16, 0.0, 0.99, 0.95, 6000.0),
        ("kmer:4", "embedding", "HNSW32", None, 64, 0.0, 1.0, 0.99, 3000.0),
        ("kmer:4", "embedding", "IVF64,Flat", 4, None, 0.0, 0.95, 0.7, 9000.0),
        ("minimap2 -x asm20", "aligner", None, None, None, 0.0, 1.0, None, 1000.0),
        ("minimap2 -x asm20", "aligner", None, None, None, 0.2, 1.0, None, 1000.0),
    ]]


def _labels(fig):
    (ax, *_rest) = fig.axes
    return ax.get_xlabel(), ax.get_ylabel()


def test_pca_matches_numpy_projection():
    from genoembed.plot import pca

    rng = np.random.default_rng(0)
    data = rng.normal(size=(50, 5)) * np.array([5, 2, 1, 0.1, 0.1])
    points, explained = pca(data)
    assert points.shape == (50, 2) and explained[0] > explained[1] > 0
    covariance = np.cov(data.T)
    top = np.linalg.eigh(covariance)[1][:, -1]
    assert abs(np.corrcoef(points[:, 0], (data - data.mean(0)) @ top)[0, 1]) == pytest.approx(1.0)


def test_plot_embeddings_by_gc(chloroplast_store, tmp_path):
    from genoembed.plot import plot_embeddings

    out = tmp_path / "gc.png"
    fig = plot_embeddings(chloroplast_store, out, color_by="gc", max_points=300)
    assert out.stat().st_size > 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    xlabel, ylabel = _labels(fig)
    assert xlabel.startswith("PC1 (") and ylabel.startswith("PC2 (")
    assert fig.axes[1].get_ylabel() == "GC fraction"  # the colour bar


def test_plot_embeddings_by_type_and_genome(chloroplast_store, tmp_path):
    from genoembed.plot import plot_embeddings

    with pytest.raises(InputError, match="no annotations to colour by type"):
        plot_embeddings(chloroplast_store, tmp_path / "none.png", color_by="type")
    fig = plot_embeddings(chloroplast_store, tmp_path / "genome.png", color_by="genome", max_points=200)
    assert fig.axes[0].get_legend().get_title().get_text() == "genome"
    with pytest.raises(InputError, match="color_by='size'"):
        plot_embeddings(chloroplast_store, tmp_path / "x.png", color_by="size")


def test_plot_embeddings_by_annotation_type(tmp_path):
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.build import index
    from genoembed.plot import plot_embeddings
    from conftest import CHLOROPLAST_FASTA

    store = index(CHLOROPLAST_FASTA, tmp_path / "store", embedder=KmerEmbedder(k=3),
                  annotations=[CHLOROPLAST_GENBANK])
    out = tmp_path / "type.png"
    fig = plot_embeddings(store, out, color_by="type")
    legend = [text.get_text().split(" (")[0] for text in fig.axes[0].get_legend().get_texts()]
    assert "CDS" in legend and "intergenic" in legend
    assert out.stat().st_size > 0


def test_plot_recall_vs_mutation(tmp_path):
    from genoembed.plot import plot_recall_vs_mutation

    out = tmp_path / "mutation.png"
    fig = plot_recall_vs_mutation(ROWS, out, k=1)
    assert out.stat().st_size > 0
    assert _labels(fig) == ("injected substitution rate (%)", "recall@1")
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"kmer:4", "minimap2 -x asm20"}
    assert list(lines["kmer:4"].get_xdata()) == [0.0, 10.0, 20.0]
    with pytest.raises(InputError, match="no rows with recall_at_7"):
        plot_recall_vs_mutation(ROWS, out, k=7)


def test_plot_recall_vs_qps(tmp_path):
    from genoembed.plot import plot_recall_vs_qps

    out = tmp_path / "qps.png"
    fig = plot_recall_vs_qps(ROWS, out)
    assert out.stat().st_size > 0
    assert _labels(fig) == ("queries per second (log scale)", "ANN recall@10")
    assert {line.get_label() for line in fig.axes[0].get_lines()} == \
        {"kmer:4 Flat", "kmer:4 HNSW32", "kmer:4 IVF64,Flat"}
    with pytest.raises(InputError, match="no result rows"):
        plot_recall_vs_qps([], out)


def _plot_app():
    import typer

    from genoembed.cli.plot import plot

    app = typer.Typer()
    app.command("plot")(plot)
    app.command("noop")(lambda: None)
    return app


def test_plot_cli(chloroplast_store, tmp_path):
    from typer.testing import CliRunner

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    runner = CliRunner()
    for args, out in ((["mutation", str(rows)], "m.png"), (["qps", str(rows)], "q.png"),
                      (["embeddings", str(chloroplast_store.root), "--max-points", "100"], "e.png")):
        result = runner.invoke(_plot_app(), ["plot", *args, "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
        assert (tmp_path / out).stat().st_size > 0
    result = runner.invoke(_plot_app(), ["plot", "mutation", str(chloroplast_store.root), "--out",
                                         str(tmp_path / "x.png")])
    assert result.exit_code == 2 and "plots a results file" in result.output
