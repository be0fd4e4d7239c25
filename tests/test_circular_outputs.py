"""Hits through a circular contig's origin in formats that know no circles (BED, PAF, BLAST tabular, browser
tracks): two records, one each side of the origin, each on its contig, together exactly the hit, checked
against pure-Python base sets, the genome's own bases and bedtools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.build import index
from genoembed.cli import app
from genoembed.genome import open_genome
from genoembed.seqio import reverse_complement
from genoembed.tiles import TilingSpec

from conftest import PLASMID_FASTA

runner = CliRunner()
PLASMID = "gi|45478711|ref|NC_005816.1|"
LENGTH = 9609
ACROSS = f"{PLASMID}:9301-700"  # 1,009 bp through the origin


@pytest.fixture(scope="module")
def circular(tmp_path_factory):
    root = tmp_path_factory.mktemp("circular_outputs")
    store = index(PLASMID_FASTA, root / "store", tiling=TilingSpec(window=1000, stride=500), circular=[PLASMID])
    sizes = root / "sizes.txt"
    sizes.write_text(f"{PLASMID}\t{LENGTH}\n")
    return store, sizes


def searched(store, fmt: str, *options: str) -> str:
    result = runner.invoke(app, ["search", str(store.root), "--region", ACROSS, "-k", "3", "--tiles", "--no-save",
                                 "-f", fmt, *options])
    assert result.exit_code == 0, result.output
    return result.stdout


def bases(start: int, end: int) -> set[int]:
    return {position % LENGTH for position in range(start, end)}


def test_bed_splits_hits_at_the_origin_and_bedtools_takes_them(circular):
    store, sizes = circular
    hits = [json.loads(line) for line in searched(store, "jsonl").splitlines()]
    assert any(hit["end"] > LENGTH for hit in hits)  # the query's own tiles run through the origin
    records = [line.split("\t") for line in searched(store, "bed").splitlines()]
    for hit in hits:
        mine = [(int(r[1]), int(r[2])) for r in records if r[3] == f"{hit['query']}#{hit['rank']}"]
        assert all(0 <= start < end <= LENGTH for start, end in mine)
        assert len(mine) == (2 if hit["end"] > LENGTH else 1)
        assert sorted(p for start, end in mine for p in range(start, end)) == sorted(bases(hit["start"], hit["end"]))
        assert {(r[0], r[4], r[5]) for r in records if r[3] == f"{hit['query']}#{hit['rank']}"} == \
            {(PLASMID, str(int(round(1000 * max(0.0, min(1.0, hit["score"]))))), hit["strand"])}
    if shutil.which("bedtools") is None:
        pytest.skip("bedtools is not installed")
    wrapped = next(hit for hit in hits if hit["end"] > LENGTH)
    one = "".join("\t".join(r) + "\n" for r in records if r[3] == f"{wrapped['query']}#{wrapped['rank']}")
    ordered = subprocess.run(["bedtools", "sort", "-i", "stdin"], input=one, capture_output=True, text=True,
                             check=True).stdout
    done = subprocess.run(["bedtools", "complement", "-i", "stdin", "-g", str(sizes)], input=ordered,
                          capture_output=True, text=True, check=True)
    assert "exceeds" not in done.stderr, done.stderr  # bedtools warns of records past the contig's end
    rest = [tuple(map(int, line.split("\t")[1:3])) for line in done.stdout.splitlines()]
    assert set().union(*(range(start, end) for start, end in rest)) == set(range(LENGTH)) - bases(
        wrapped["start"], wrapped["end"])


def test_track_bed9_splits_at_the_origin(circular, tmp_path):
    store, _ = circular
    out = tmp_path / "hits.bed"
    result = runner.invoke(app, ["track", str(store.root), "-r", ACROSS, "-k", "3", "-o", str(out), "-f", "bed9"])
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert all(0 <= int(r[1]) < int(r[2]) <= LENGTH and (r[6], r[7]) == (r[1], r[2]) for r in rows)
    assert any(int(r[1]) == 0 for r in rows) and any(int(r[2]) == LENGTH for r in rows)


def _check_columns(cigar: str, query: str, target: str) -> tuple[int, int, int]:
    """Walk a CIGAR over the bases it aligns; = must be equal bases, X unequal. (matches, mismatches, columns)."""
    q = t = matches = mismatches = columns = 0
    for count, op in re.findall(r"(\d+)([=XID])", cigar):
        count = int(count)
        for _ in range(count):
            if op in "=X":
                assert (query[q] == target[t]) == (op == "="), (cigar, q, t)
                matches, mismatches = matches + (op == "="), mismatches + (op == "X")
            q, t = q + (op != "D"), t + (op != "I")
        columns += count
    assert (q, t) == (len(query), len(target))
    return matches, mismatches, columns


def test_paf_cuts_alignments_at_the_origin_into_two_true_records(circular):
    pytest.importorskip("parasail", reason="the align extra is not installed")
    store, _ = circular
    genome = open_genome(PLASMID_FASTA)
    hits = [json.loads(line) for line in searched(store, "jsonl", "--align").splitlines()]
    query = genome.fetch(PLASMID, 9300, LENGTH).upper() + genome.fetch(PLASMID, 0, 700).upper()
    lines = [line.split("\t") for line in searched(store, "paf").splitlines()]
    aligned = [hit for hit in hits if hit["alignment_score"] is not None]
    assert any(hit["target_end"] > LENGTH for hit in aligned)
    at = 0
    for hit in aligned:
        count = 2 if hit["target_end"] > LENGTH else 1
        records, at = lines[at:at + count], at + count
        target_bases, query_bases = [], []
        for record in records:
            qstart, qend, strand, tlen, tstart, tend = (int(record[2]), int(record[3]), record[4], int(record[6]),
                                                        int(record[7]), int(record[8]))
            assert (record[5], tlen, strand) == (PLASMID, LENGTH, hit["strand"]) and 0 <= tstart < tend <= tlen
            piece = query[qstart:qend] if strand == "+" else reverse_complement(query[qstart:qend])
            cigar = record[13].removeprefix("cg:Z:")
            matches, _, columns = _check_columns(cigar, piece, genome.fetch(PLASMID, tstart, tend).upper())
            assert (int(record[9]), int(record[10])) == (matches, columns)
            target_bases += range(tstart, tend)
            query_bases += range(qstart, qend)
        assert sorted(target_bases) == sorted(bases(hit["target_start"], hit["target_end"]))
        assert sorted(query_bases) == list(range(hit["query_aligned_start"], hit["query_aligned_end"]))
        assert sum(int(r[9]) for r in records) == hit["matches"]
    assert at == len(lines)


def test_blast6_rows_lie_on_the_contig_with_their_own_scores(circular):
    pytest.importorskip("parasail", reason="the align extra is not installed")
    import math

    from genoembed.evidence import LAMBDA, bit_score  # BLAST's +1/-2, gaps 2/2 values (lambda 1.33, K 0.62)

    store, _ = circular
    aligned = [hit for hit in map(json.loads, searched(store, "jsonl", "--align").splitlines())
               if hit["alignment_score"] is not None]
    rows = [line.split("\t") for line in searched(store, "blast6").splitlines()]
    paf = [line.split("\t") for line in searched(store, "paf").splitlines()]
    assert len(rows) == len(paf) > len(aligned)
    for row, record in zip(rows, paf):  # the same records as PAF's (checked base by base above)
        sstart, send = int(row[8]), int(row[9])
        assert 1 <= min(sstart, send) and max(sstart, send) <= LENGTH and (sstart > send) == (record[4] == "-")
        assert (min(sstart, send) - 1, max(sstart, send)) == (int(record[7]), int(record[8]))
        assert (int(row[6]) - 1, int(row[7])) == (int(record[2]), int(record[3]))
        assert float(row[11]) == pytest.approx(bit_score(int(record[12].removeprefix("AS:i:"))), abs=0.05)
        assert float(row[2]) == pytest.approx(100 * int(record[9]) / int(record[10]), abs=1e-3)
        # a piece's E-value: the whole's formula (same query, same database) for the piece's own score
        expected = 0.62 * len(range(9300, LENGTH + 700)) * LENGTH * math.exp(-LAMBDA * int(record[12][5:]))
        assert float(row[10]) == pytest.approx(expected, rel=0.01) or (expected < 1e-180 and row[10] == "0.0")


def test_cut_alignment_against_a_column_walk():
    """Random alignments cut every 7 target bases: the two pieces are the columns on each side."""
    pytest.importorskip("parasail", reason="the align extra is not installed")
    from genoembed.evidence import align, cut_alignment, operations_score

    rng = np.random.default_rng(5)
    for trial in range(40):
        target = "".join(rng.choice(list("ACGT"), 300))
        query = list(target[50:250])
        for position in rng.choice(len(query), 12, replace=False):  # substitutions, then indels
            query[position] = "ACGT"[("ACGT".index(query[position]) + 1) % 4]
        query = "".join(query[:60]) + "".join(query[64:140]) + "GATTACA" + "".join(query[140:])
        if trial % 2:
            query = reverse_complement(query)
        whole = align(query, target)

        operations = [(int(n), op) for n, op in re.findall(r"(\d+)([=XID])", whole.cigar)]
        assert operations_score(operations) == whole.alignment_score
        for at in range(whole.target_start + 1, whole.target_end, 7):
            first, second = cut_alignment(whole, at)
            assert (first.target_start, first.target_end, second.target_start, second.target_end) == \
                (whole.target_start, at, at, whole.target_end)
            spans = sorted([(first.query_aligned_start, first.query_aligned_end),
                            (second.query_aligned_start, second.query_aligned_end)])
            assert spans[0][0] == whole.query_aligned_start and spans[0][1] == spans[1][0] and \
                spans[1][1] == whole.query_aligned_end
            for piece in (first, second):
                read = query[piece.query_aligned_start:piece.query_aligned_end]
                read = read if whole.strand == "+" else reverse_complement(read)
                matches, mismatches, columns = _check_columns(piece.cigar, read,
                                                              target[piece.target_start:piece.target_end])
                assert (piece.matches, piece.mismatches, piece.aligned_length) == (matches, mismatches, columns)
            assert first.matches + second.matches == whole.matches
            assert first.aligned_length + second.aligned_length == whole.aligned_length
