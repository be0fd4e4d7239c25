"""One BED score (issue 24 review): `search --format bed` and `track` hits (BED6/BED9) score hits with
:func:`genoembed.hit_formats.bed_score`, so an l2 store's nearest hit scores highest in both, as an ip store's
does, and a missing score is 0. The oracle is the BED rule applied here to the raw scores `search -f tsv` prints."""

from __future__ import annotations

import csv
import io
import math

import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.hit_formats import bed_score
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

from conftest import CHLOROPLAST_FASTA

runner = CliRunner()
REGION = "NC_000932.1:90001-91000"
SEARCH = ["-r", REGION, "-k", "5", "--tiles"]


def invoke(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def l2_store(tmp_path_factory):
    return index(CHLOROPLAST_FASTA, tmp_path_factory.mktemp("l2") / "store", embedder=KmerEmbedder(k=4),
                 tiling=TilingSpec(strands="+"), index_spec=IndexSpec("Flat", metric="l2"), shard_rows=128)


def expected(score: float, metric: str) -> int:
    """BED's 0-1000: a cosine clipped to [0, 1] (ip), or 1 / (1 + squared distance) (l2), times 1000."""
    return round(1000 * (min(max(score, 0.0), 1.0) if metric == "ip" else 1.0 / (1.0 + score)))


def bed_rows(text: str) -> dict[tuple, int]:
    rows = [line.split("\t") for line in text.splitlines() if line and not line.startswith(("#", "track"))]
    return {(row[0], int(row[1]), int(row[2])): int(row[4]) for row in rows}


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_search_bed_and_track_bed_score_hits_alike_under_both_metrics(chloroplast_store, l2_store, metric,
                                                                       tmp_path):
    store = chloroplast_store if metric == "ip" else l2_store
    assert store.metric == metric
    raw = list(csv.DictReader(io.StringIO(invoke("search", store.root, *SEARCH, "-f", "tsv", "--no-annotate",
                                                 "--no-save", "--evalue", "1e9")), delimiter="\t"))
    oracle = {(row["chrom"], int(row["start"]), int(row["end"])): expected(float(row["score"]), metric) for row in raw}
    best = (raw[0]["chrom"], int(raw[0]["start"]), int(raw[0]["end"]))
    assert len(oracle) == 5 and oracle[best] == max(oracle.values()) > min(oracle.values())
    searched = bed_rows(invoke("search", store.root, *SEARCH, "-f", "bed", "--no-annotate", "--no-save",
                               "--evalue", "1e9"))
    for suffix in ("bed", "bed9"):
        invoke("track", store.root, *SEARCH, "-o", tmp_path / f"hits.{suffix}")
        assert bed_rows((tmp_path / f"hits.{suffix}").read_text()) == searched == oracle, suffix


def test_a_missing_score_is_zero_under_both_metrics():
    for higher_is_better in (True, False):
        assert bed_score(None, higher_is_better) == bed_score(math.nan, higher_is_better) == 0
    assert bed_score(0.0, higher_is_better=False) == 1000 and bed_score(-0.5) == 0 and bed_score(1.5) == 1000
