"""Long queries cost one batch of tiles, not their length: a whole-contig region is answered tile by tile,
read from the genome one tile at a time; the library refuses to embed one longer than the limit."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from genoembed.cli import app
from genoembed.errors import InputError
from genoembed.genome import Genome
from genoembed.search import Query, query_pieces, search
from genoembed.tiles import tile_starts

runner = CliRunner()
CHROM = "NC_000932.1"
LENGTH = 154_478
LIMIT = 20_000


@pytest.fixture
def small_limit(monkeypatch):
    monkeypatch.setattr(sys.modules["genoembed.regions"], "MAX_QUERY_BASES", LIMIT)


def test_library_refuses_a_query_longer_than_the_limit(chloroplast_store, small_limit):
    with pytest.raises(InputError, match=f"is {LENGTH:,} bp, longer than the {LIMIT:,} bp .* tile by tile"):
        search(chloroplast_store, [CHROM], k=1)
    sequence = chloroplast_store.genome().fetch(CHROM, 0, LIMIT + 1)
    with pytest.raises(InputError, match="longer than"):
        search(chloroplast_store, [Query("long", sequence)], k=1)


def test_whole_contig_region_is_answered_tile_by_tile_in_bounded_batches(chloroplast_store, small_limit,
                                                                          monkeypatch, tmp_path):
    fetched, batches = [], []
    fetch, search_module = Genome.fetch, sys.modules["genoembed.search"]
    original_search = search_module.search

    def recording_fetch(self, chrom, start, end, strand="+"):
        fetched.append(end - start)
        return fetch(self, chrom, start, end, strand)

    def recording_search(store, queries, **options):
        batches.append(len(queries))
        return original_search(store, queries, **options)

    monkeypatch.setattr(Genome, "fetch", recording_fetch)
    monkeypatch.setattr(search_module, "search", recording_search)
    monkeypatch.setattr(sys.modules["genoembed.mapping"], "search", recording_search)  # the CLI's way in
    monkeypatch.setattr(sys.modules["genoembed.cli.search"], "QUERY_BATCH", 16)
    output = tmp_path / "hits.tsv"
    result = runner.invoke(app, ["search", str(chloroplast_store.root), "--region", CHROM, "-k", "2", "--tiles",
                                 "--no-annotate", "-f", "tsv", "-o", str(output), "--no-save"])
    assert result.exit_code == 0, result.output
    pieces = tile_starts(LENGTH, 1000, 500)
    assert sum(batches) == len(pieces) and max(batches) == 16  # streamed 16 tiles at a time
    assert max(fetched) <= 1000  # the contig is never read whole: one tile per query (and per hit)
    lines = output.read_text().splitlines()
    header, rows = lines[0].split("\t"), [dict(zip(lines[0].split("\t"), line.split("\t"))) for line in lines[1:]]
    assert len(rows) == 2 * len(pieces)
    assert {row["query"] for row in rows} == {f"{CHROM}:{start + 1}-{start + 1000}" for start in pieces}
    # each tile's hits are the hits of that tile searched as its own region (the oracle)
    monkeypatch.setattr(search_module, "search", original_search)
    for start in pieces[[0, 100, -1]]:
        region = f"{CHROM}:{start + 1}-{start + 1000}"
        expected = original_search(chloroplast_store, [region], k=2)
        got = [row for row in rows if row["query"] == region]
        assert [int(row["tile_id"]) for row in got] == expected["tile_id"].to_pylist()
        assert {(row["query_start"], row["query_end"]) for row in got} == {(str(start), str(start + 1000))}
    assert "query" in header


def test_pieces_of_a_reverse_strand_query_keep_genomic_coordinates(chloroplast_store, small_limit):
    genome = chloroplast_store.genome()
    start, end = 10_000, 10_000 + LIMIT + 1_234
    query = Query("q", genome.fetch(CHROM, start, end, "-").upper(), CHROM, start, end, "-")
    pieces = list(query_pieces(query, 1000, 500))
    assert len(pieces) == len(tile_starts(end - start, 1000, 500))
    for piece in pieces[:3] + pieces[-3:]:
        assert piece.sequence == genome.fetch(CHROM, piece.start, piece.end, "-").upper()
    assert pieces[0].end == end and pieces[-1].start == start
    short = Query("short", "ACGT" * 100)
    assert list(query_pieces(short, 1000, 500)) == [short]
    assert np.all([len(piece.sequence) == 1000 for piece in pieces])
