"""Queries far from the window size: long contigs mapped by chaining tile hits, short reads placed by minimizers.

Truth that no embedding produced: NUCmer's placement of real MG1655 draft contigs (tests/data/mg1655_head.coords.gz)
and, where installed, minimap2's placement of the same contigs and of reads cut from the reference.
"""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.chain import BLOCKS, chain_blocks
from genoembed.cli import app
from genoembed.eval.truth import read_coords
from genoembed.seqio import read_fasta, reverse_complement

from conftest import DATA

REFERENCE = DATA / "mg1655_60k.fa.gz"  # the first 60 kb of E. coli K-12 MG1655
CONTIGS = DATA / "mg1655_contigs_head.fa.gz"  # draft contigs seq33, seq81, seq67, seq90 placed there by NUCmer
runner = CliRunner()


@pytest.fixture(scope="module")
def mg1655_store(tmp_path_factory):
    from genoembed.build import index
    from genoembed.tiles import TilingSpec

    return index(REFERENCE, tmp_path_factory.mktemp("stores") / "mg1655", tiling=TilingSpec(window=1000, stride=500))


def _tsv(result) -> list[dict]:
    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout), delimiter="\t"))


def _overlap(a: tuple[int, int], b: tuple[int, int]) -> int:
    return max(0, min(a[1], b[1]) - max(a[0], b[0]))


def test_long_contigs_map_where_nucmer_places_them(mg1655_store):
    truth = {row["query_chrom"]: row for row in read_coords(DATA / "mg1655_head.coords.gz").to_pylist()}
    lengths = {name: len(sequence) for name, sequence in read_fasta(CONTIGS)}
    rows = _tsv(runner.invoke(app, ["search", str(mg1655_store.root), "--fasta", str(CONTIGS), "-k", "1",
                                    "-f", "tsv", "--no-annotate"]))
    top = {row["query"]: row for row in rows}
    for name in ("seq33", "seq81", "seq67"):  # longer than the 1 kb window: mapped as blocks
        block, placed = top[name], truth[name]
        assert block["strand"] == placed["strand"], name
        span = (int(block["start"]), int(block["end"]))
        assert _overlap(span, (placed["ref_start"], placed["ref_end"])) >= 0.9 * (placed["ref_end"] - placed["ref_start"])
        assert span[1] - span[0] <= placed["ref_end"] - placed["ref_start"] + 1000  # within a tile of each end
        assert int(block["query_length"]) == lengths[name]
        on_query = (int(block["query_block_start"]), int(block["query_block_end"]))
        aligned = placed["query_end"] - placed["query_start"]  # seq33 lies here with 15 of its 42 kb
        assert _overlap(on_query, (placed["query_start"], placed["query_end"])) >= 0.9 * aligned
        assert abs(float(block["query_coverage"]) * lengths[name] - aligned) <= 1000
        assert float(block["mean_score"]) <= float(block["score"])
    assert top["seq90"]["query_block_start"] == ""  # 718 bp: one vector, nearest tiles, as before
    assert top["seq90"]["strand"] == truth["seq90"]["strand"]


@pytest.mark.skipif(shutil.which("minimap2") is None, reason="minimap2 (the outside oracle) is not installed")
def test_long_contig_paf_reads_like_minimap2(mg1655_store, tmp_path):
    result = runner.invoke(app, ["search", str(mg1655_store.root), "--fasta", str(CONTIGS), "-k", "1", "-f", "paf"])
    assert result.exit_code == 0, result.output
    ours = {line.split("\t")[0]: line.split("\t") for line in result.stdout.splitlines()}
    theirs = {}
    for line in subprocess.run(["minimap2", "-x", "asm5", str(REFERENCE), str(CONTIGS)], capture_output=True,
                               text=True, check=True).stdout.splitlines():
        fields = line.split("\t")
        if "tp:A:P" in line:
            theirs.setdefault(fields[0], fields)
    for name in ("seq33", "seq81", "seq67"):
        mine, minimap = ours[name], theirs[name]
        assert len(mine) >= 12 and mine[1] == minimap[1] and mine[4] == minimap[4] and mine[5] == minimap[5]
        assert mine[6] == minimap[6]  # target length
        # --format paf aligns blocks (parasail): base-exact ends like minimap2 -c; a block too long to align
        # (seq33: 42 kb against 15 kb plus flanks) keeps its tile-grid ends, as minimap2 without -c
        aligned = any(field.startswith("cg:Z:") for field in mine)
        slack = 20 if aligned else 500
        assert abs(int(mine[7]) - int(minimap[7])) <= slack and abs(int(mine[8]) - int(minimap[8])) <= slack
        assert aligned == (name != "seq33") and (aligned or "tp:A:P" in mine)


def _reads(length: int, count: int, seed: int) -> tuple[str, list[tuple[int, str]]]:
    (_, reference), = read_fasta(REFERENCE)
    rng = np.random.default_rng(seed)
    lines, truth = [], []
    for number in range(count):
        start = int(rng.integers(0, len(reference) - length))
        read = reference[start:start + length]
        strand = "-" if number % 2 else "+"
        lines.append(f">read{number}\n{reverse_complement(read) if strand == '-' else read}\n")
        truth.append((start, strand))
    return "".join(lines), truth


def test_short_reads_are_placed_by_minimizers(mg1655_store, tmp_path):
    text, truth = _reads(150, 40, seed=3)
    reads = tmp_path / "reads.fa"
    reads.write_text(text)
    rows = _tsv(runner.invoke(app, ["search", str(mg1655_store.root), "--fasta", str(reads), "-k", "1", "-f", "tsv",
                                    "--no-annotate"]))
    top = {row["query"]: row for row in rows}
    placed = sum(abs(int(top[f"read{n}"]["start"]) - start) <= 5 and top[f"read{n}"]["strand"] == strand
                 for n, (start, strand) in enumerate(truth) if f"read{n}" in top)
    assert placed >= 38  # a read lying in a repeat may be placed on its other copy
    if shutil.which("minimap2"):
        agree = 0
        for line in subprocess.run(["minimap2", "-x", "sr", str(REFERENCE), str(reads)], capture_output=True,
                                   text=True, check=True).stdout.splitlines():
            fields = line.split("\t")
            if "tp:A:P" in line and fields[0] in top:
                agree += _overlap((int(fields[7]), int(fields[8])), (int(top[fields[0]]["start"]),
                                                                     int(top[fields[0]]["end"]))) > 75 \
                    and fields[4] == top[fields[0]]["strand"]
        assert agree >= 38


def test_no_map_keeps_embedding_whole_queries(mg1655_store):
    rows = _tsv(runner.invoke(app, ["search", str(mg1655_store.root), "--fasta", str(CONTIGS), "-k", "1", "-f", "tsv",
                                    "--no-annotate", "--no-map"]))
    assert "query_block_start" not in rows[0] and len(rows) == 4


def _anchors(rows: list[tuple]) -> dict[str, np.ndarray]:
    names = ("query_start", "query_end", "start", "end", "strand", "score")
    columns = {name: np.array([row[i] for row in rows]) for i, name in enumerate(names)}
    columns.update(genome=np.array(["g"] * len(rows), dtype=object), chrom=np.array(["c"] * len(rows), dtype=object),
                   tile_id=np.arange(len(rows)), query=np.zeros(len(rows), dtype=np.int64))
    return columns


def test_chaining_keeps_collinear_anchors_and_drops_the_rest():
    # + strand: query tiles every 500 bp matching target tiles 10 kb further on, one with a 300 bp insertion after
    # the second anchor, plus an out-of-order anchor (a repeat copy) and a lone anchor on the - strand
    plus = [(0, 1000, 10000, 11000, "+", 0.9), (500, 1500, 10500, 11500, "+", 0.95),
            (1000, 2000, 10700, 11700, "+", 0.8), (1500, 2500, 11200, 12200, "+", 0.9),
            (2000, 3000, 2000, 3000, "+", 0.99)]
    # - strand: query moves forward while the target moves backward
    minus = [(0, 1000, 51000, 52000, "-", 0.7), (500, 1500, 50500, 51500, "-", 0.7), (1000, 2000, 50000, 51000, "-", 0.7)]
    blocks = chain_blocks(_anchors(plus + minus), max_drift=1000, max_gap=10000, bandwidth=50, window=1000)
    best = blocks[0]
    assert (best["strand"], best["start"], best["end"], best["tiles"]) == ("+", 10000, 12200, 4)
    assert (best["query_block_start"], best["query_block_end"], best["covered"]) == (0, 2500, 2500)
    assert best["mean_score"] == pytest.approx(np.mean([0.9, 0.95, 0.8, 0.9]))
    minus_block = next(block for block in blocks if block["strand"] == "-")
    assert (minus_block["start"], minus_block["end"], minus_block["tiles"]) == (50000, 52000, 3)
    lone = [block for block in blocks if block["tiles"] == 1]
    assert [(block["start"], block["strand"]) for block in lone] == [(2000, "+")]
    assert best["mapq"] > 0 and all(block["mapq"] == 0 for block in blocks[1:])
    assert set(BLOCKS.names) >= set(best) - {"covered"}
