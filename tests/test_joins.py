"""Binned DuckDB overlap / nearest joins against a brute-force oracle, and against bedtools when installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoembed.annotations import read_annotations
from genoembed.errors import InputError
from genoembed.joins import STRAND_MODES, nearest, nearest_sql, overlap, overlap_sql

CHLOROPLAST_GB = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.gb"
HAS_BEDTOOLS = shutil.which("bedtools") is not None


# ------------------------------------------------------------------ oracle

def strands_match(a: dict, b: dict, mode: str) -> bool:
    if mode == "ignore":
        return True
    if "." in (a["strand"], b["strand"]):
        return False
    return (a["strand"] == b["strand"]) == (mode == "same")


def overlaps(a: dict, b: dict) -> bool:
    return a["chrom"] == b["chrom"] and a["start"] < b["end"] and b["start"] < a["end"]


def signed_distance(a: dict, b: dict) -> int:
    """bedtools closest -D b: gap + 1, negative when a is upstream of b on b's strand ('.' as '+')."""
    if overlaps(a, b):
        return 0
    if b["start"] >= a["end"]:  # b right of a: a upstream of a '+' feature
        gap = b["start"] - a["end"]
        return gap + 1 if b["strand"] == "-" else -(gap + 1)
    gap = a["start"] - b["end"]
    return -(gap + 1) if b["strand"] == "-" else gap + 1


def overlap_oracle(left: list[dict], right: list[dict], mode: str) -> list[tuple]:
    return sorted((a["id"], b["id"], min(a["end"], b["end"]) - max(a["start"], b["start"]))
                  for a in left for b in right if overlaps(a, b) and strands_match(a, b, mode))


def nearest_oracle(left: list[dict], right: list[dict], mode: str) -> list[tuple]:
    result = []
    for a in left:
        candidates = [(signed_distance(a, b), b["id"]) for b in right
                      if b["chrom"] == a["chrom"] and strands_match(a, b, mode)]
        if not candidates:
            result.append((a["id"], None, None))
            continue
        best = min(abs(d) for d, _ in candidates)
        result += [(a["id"], b, d) for d, b in candidates if abs(d) == best]
    return sorted(result, key=_order)


def _order(row: tuple) -> tuple:
    return tuple((value is None, value if value is not None else 0) for value in row)


def connect(left: list[dict], right: list[dict]) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.register("a", pa.Table.from_pylist(left, schema=INTERVALS))
    con.register("b", pa.Table.from_pylist(right, schema=INTERVALS))
    return con


INTERVALS = pa.schema([("chrom", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("strand", pa.string()),
                       ("id", pa.int64())])


def got_overlap(con, **options) -> list[tuple]:
    return sorted((r["id"], r["feature_id"], r["overlap_bp"]) for r in overlap(con, "a", "b", **options).to_pylist())


def got_nearest(con, **options) -> list[tuple]:
    return sorted(((r["id"], r["feature_id"], r["distance"]) for r in nearest(con, "a", "b", **options).to_pylist()),
                  key=_order)


def iv(i, chrom, start, end, strand="+"):
    return {"chrom": chrom, "start": start, "end": end, "strand": strand, "id": i}


# ------------------------------------------------------------------ hand cases

EDGE_LEFT = [iv(0, "c", 0, 10), iv(1, "c", 10, 20), iv(2, "c", 5, 5), iv(3, "c", 0, 0), iv(4, "c", 30, 40, "-"),
             iv(5, "d", 0, 5), iv(6, "c", 55, 56, "."), iv(7, "e", 1, 2)]
EDGE_RIGHT = [iv(10, "c", 10, 20), iv(11, "c", 10, 20, "-"), iv(12, "c", 0, 100_000, "-"), iv(13, "c", 5, 5),
              iv(14, "c", 45, 50, "."), iv(15, "d", 20, 30, "-"), iv(16, "c", 60, 70), iv(17, "d", 20, 30)]


@pytest.mark.parametrize("mode", STRAND_MODES)
@pytest.mark.parametrize("bin_size", [None, 1, 3, 10])
def test_edge_cases_overlap(mode, bin_size):
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    assert got_overlap(con, strand=mode, bin_size=bin_size) == overlap_oracle(EDGE_LEFT, EDGE_RIGHT, mode)


@pytest.mark.parametrize("mode", STRAND_MODES)
def test_edge_cases_nearest(mode):
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    assert got_nearest(con, strand=mode, bin_size=3) == nearest_oracle(EDGE_LEFT, EDGE_RIGHT, mode)


def test_documented_conventions():
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    pairs = {(a, b): bp for a, b, bp in got_overlap(con)}
    assert (0, 10) not in pairs  # [0,10) and [10,20) touch, no overlap
    assert pairs[(1, 10)] == pairs[(1, 11)] == 10  # identical intervals
    assert pairs[(2, 12)] == 0 and (2, 13) not in pairs  # zero-length: inside a feature, never another point
    assert (3, 12) not in pairs  # [0,0) is not strictly inside [0,100000)
    near = {}
    for a, b, d in got_nearest(con, strand="same"):
        near.setdefault(a, []).append((b, d))
    assert near[1] == [(10, 0)]  # identical '+' interval overlaps
    assert near[5] == [(17, -16)]  # 15 bp gap, [0,5) upstream of '+' [20,30)
    assert near[6] == [(None, None)]  # '.' matches nothing in stranded modes
    assert near[7] == [(None, None)]  # no features on the contig


def test_book_ended_sign_follows_feature_strand():
    left = [iv(0, "c", 0, 10)]
    right = [iv(1, "c", 10, 20, "+"), iv(2, "c", 10, 20, "-"), iv(3, "c", 0, 0, ".")]
    got = got_nearest(connect(left, right))
    assert got == [(0, 1, -1), (0, 2, 1), (0, 3, 1)]


def test_output_columns_and_view_use():
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    table = overlap(con, "a", "b")
    # a relation without ``parts`` gets a null one: every feature is then one part
    assert table.column_names == ["chrom", "start", "end", "strand", "id", "feature_chrom", "feature_start",
                                  "feature_end", "feature_strand", "feature_id", "feature_parts", "overlap_bp"]
    assert table["feature_parts"].null_count == table.num_rows
    assert nearest(con, "a", "b", prefix="b_").column_names[-8:] == [
        "id", "b_chrom", "b_start", "b_end", "b_strand", "b_id", "b_parts", "distance"]
    con.execute(f"CREATE VIEW pairs AS {overlap_sql('a', 'b')}")
    con.execute(f"CREATE VIEW near AS {nearest_sql('a', 'b')}")
    nested = f"WITH o AS ({overlap_sql('a', 'b')}), n AS ({nearest_sql('a', 'b')}) " \
             "SELECT (SELECT count(*) FROM o), (SELECT count(*) FROM n)"
    assert con.sql(nested).fetchall() == con.sql("SELECT (SELECT count(*) FROM pairs), (SELECT count(*) FROM near)"
                                                 ).fetchall()


def test_empty_inputs():
    con = connect([], EDGE_RIGHT)
    assert overlap(con, "a", "b").num_rows == 0 and nearest(con, "a", "b").num_rows == 0
    con = connect(EDGE_LEFT, [])
    assert overlap(con, "a", "b").num_rows == 0
    assert got_nearest(con) == [(i["id"], None, None) for i in EDGE_LEFT]


def test_bad_options():
    with pytest.raises(InputError, match="strand mode 'both' is not one of ignore, same, opposite"):
        overlap_sql("a", "b", strand="both")
    with pytest.raises(ValueError, match="plain identifier"):
        overlap_sql("a; DROP TABLE b", "b")
    with pytest.raises(ValueError, match="bin_size"):
        nearest_sql("a", "b", bin_size=0)


# ------------------------------------------------------------------ real features vs tiles

def chloroplast_case():
    features = read_annotations(CHLOROPLAST_GB)
    length = 154_478
    tiles = [iv(i, "NC_000932.1", start, min(start + 1000, length), strand)
             for i, (start, strand) in enumerate((s, st_) for s in range(0, length, 500) for st_ in "+-")]
    right = [{"chrom": r["chrom"], "start": r["start"], "end": r["end"], "strand": r["strand"], "id": n}
             for n, r in enumerate(features.select(["chrom", "start", "end", "strand"]).to_pylist())]
    return tiles, right, features


@pytest.mark.parametrize("mode", STRAND_MODES)
def test_chloroplast_tiles_match_oracle(mode):
    tiles, right, _ = chloroplast_case()
    con = connect(tiles, right)
    assert got_overlap(con, strand=mode) == overlap_oracle(tiles, right, mode)
    assert got_nearest(con, strand=mode) == nearest_oracle(tiles, right, mode)


def test_annotation_table_columns_carried():
    tiles, _, features = chloroplast_case()
    con = duckdb.connect()
    con.register("tiles", pa.Table.from_pylist(tiles[:40], schema=INTERVALS))
    con.register("annotations", features)
    table = overlap(con, "tiles", "annotations")
    assert {"feature_name", "feature_type", "feature_attributes", "overlap_bp"} <= set(table.column_names)
    assert table.num_rows and nearest(con, "tiles", "annotations").num_rows >= 40


# ------------------------------------------------------------------ random

interval = st.builds(
    lambda chrom, start, length, strand: (chrom, start, start + length, strand),
    st.sampled_from(["c1", "c2"]), st.integers(0, 300),
    st.one_of(st.integers(0, 30), st.integers(0, 400), st.just(0)), st.sampled_from("+-."))


def numbered(items):
    return [iv(i, *item) for i, item in enumerate(items)]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.lists(interval, max_size=25), right=st.lists(interval, max_size=25),
       bin_size=st.sampled_from([None, 1, 7, 64]), mode=st.sampled_from(STRAND_MODES))
def test_random_intervals_match_oracle(left, right, bin_size, mode):
    left, right = numbered(left), numbered(right)
    con = connect(left, right)
    assert got_overlap(con, strand=mode, bin_size=bin_size) == overlap_oracle(left, right, mode)
    assert got_nearest(con, strand=mode, bin_size=bin_size) == nearest_oracle(left, right, mode)


# ------------------------------------------------------------------ bedtools

def write_bed(path: Path, items: list[dict]) -> Path:
    lines = sorted((i["chrom"], i["start"], i["end"], i["id"], i["strand"]) for i in items)
    path.write_text("".join(f"{c}\t{s}\t{e}\t{n}\t0\t{strand}\n" for c, s, e, n, strand in lines))
    return path


def bedtools(*args: str) -> list[list[str]]:
    out = subprocess.run(["bedtools", *args], check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines()]


MODE_FLAGS = {"ignore": [], "same": ["-s"], "opposite": ["-S"]}


@pytest.mark.skipif(not HAS_BEDTOOLS, reason="bedtools not installed")
@pytest.mark.parametrize("mode", STRAND_MODES)
def test_bedtools_agrees(tmp_path, mode):
    # bedtools differs by design on zero-length records and on -D b for '.' features (it measures them like
    # '-'), so this comparison uses positive-length intervals and stranded features.
    tiles, right, _ = chloroplast_case()
    right = [r for r in right if r["strand"] != "." and r["end"] > r["start"]]
    a, b = write_bed(tmp_path / "a.bed", tiles), write_bed(tmp_path / "b.bed", right)
    con = connect(tiles, right)
    pairs = sorted((int(f[3]), int(f[9]), int(f[12]))
                   for f in bedtools("intersect", "-a", str(a), "-b", str(b), "-wo", *MODE_FLAGS[mode]))
    assert got_overlap(con, strand=mode) == pairs
    closest = sorted(((int(f[3]), None if f[9] == "." else int(f[9]), None if f[9] == "." else int(f[12]))
                      for f in bedtools("closest", "-a", str(a), "-b", str(b), "-D", "b", "-t", "all",
                                        *MODE_FLAGS[mode])), key=_order)
    assert got_nearest(con, strand=mode) == closest
