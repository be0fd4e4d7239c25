"""Overlap / nearest joins (:mod:`genoembed.joins`, over the one engine :mod:`genoembed.feature_index`) against a
brute-force oracle, and against bedtools when installed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from genoembed import schema
from genoembed.features import read_annotations
from genoembed.errors import InputError
from genoembed.feature_index import STRAND_MODES
from genoembed.joins import nearest, overlap
from genoembed.topology import circular_gap

CHLOROPLAST_GB = Path(__file__).parent.parent / "genoembed" / "data" / "demo" / "NC_000932.gb"
OLD_STORE_ANNOTATIONS = Path(__file__).parent / "data" / "store_v2" / "annotations" / "NC_005816.parquet"
HAS_BEDTOOLS = shutil.which("bedtools") is not None


# ------------------------------------------------------------------ oracle

def strands_match(a: dict, b: dict, mode: str) -> bool:
    if mode == "ignore":
        return True
    if "." in (a["strand"], b["strand"]):
        return False
    return (a["strand"] == b["strand"]) == (mode == "same")


def same_contig(a: dict, b: dict) -> bool:
    """(genome, chrom) is the key: contig names repeat across genomes."""
    return (a["genome"], a["chrom"]) == (b["genome"], b["chrom"])


def overlaps(a: dict, b: dict) -> bool:
    return same_contig(a, b) and a["start"] < b["end"] and b["start"] < a["end"]


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
                      if same_contig(a, b) and strands_match(a, b, mode)]
        if not candidates:
            result.append((a["id"], None, None))
            continue
        best = min(abs(d) for d, _ in candidates)
        result += [(a["id"], b, d) for d, b in candidates if abs(d) == best]
    return sorted(result, key=_order)


def _order(row: tuple) -> tuple:
    return tuple((value is None, value if value is not None else 0) for value in row)


def connect(left: list[dict], right: list[dict]) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pylist(left, schema=INTERVALS), pa.Table.from_pylist(right, schema=INTERVALS)


INTERVALS = pa.schema([("genome", pa.string()), ("chrom", pa.string()), ("start", pa.int64()), ("end", pa.int64()), ("strand", pa.string()),
                       ("id", pa.int64())])


def got_overlap(con, **options) -> list[tuple]:
    return sorted((r["id"], r["feature_id"], r["overlap_bp"]) for r in overlap(*con, **options).to_pylist())


def got_nearest(con, **options) -> list[tuple]:
    return sorted(((r["id"], r["feature_id"], r["distance"]) for r in nearest(*con, **options).to_pylist()),
                  key=_order)


def iv(i, chrom, start, end, strand="+", genome="g"):
    return {"genome": genome, "chrom": chrom, "start": start, "end": end, "strand": strand, "id": i}


def keyed(features: pa.Table, genome: str = "g") -> pa.Table:
    """Features read from a file as a store keeps them: led by the genome they were added to."""
    return features.add_column(0, schema.ANNOTATIONS.field("genome"), pa.array([genome] * features.num_rows))


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


def test_output_columns():
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    table = overlap(*con)
    # a table without ``parts``: every feature is one part
    assert table.column_names == ["genome", "chrom", "start", "end", "strand", "id", "feature_genome", "feature_chrom",
                                  "feature_start", "feature_end", "feature_strand", "feature_id", "overlap_bp"]
    assert table.schema.field("overlap_bp").type == pa.int64()
    assert nearest(*con, prefix="b_").column_names[-8:] == [
        "id", "b_genome", "b_chrom", "b_start", "b_end", "b_strand", "b_id", "distance"]


def test_empty_inputs():
    con = connect([], EDGE_RIGHT)
    assert overlap(*con).num_rows == 0 and nearest(*con).num_rows == 0
    con = connect(EDGE_LEFT, [])
    assert overlap(*con).num_rows == 0
    assert got_nearest(con) == [(i["id"], None, None) for i in EDGE_LEFT]


def test_bad_options():
    con = connect(EDGE_LEFT, EDGE_RIGHT)
    with pytest.raises(InputError, match="strand mode 'both' is not one of ignore, same, opposite"):
        overlap(*con, strand="both")
    with pytest.raises(ValueError, match="bin_size"):
        nearest(*con, bin_size=0)


# ------------------------------------------------------------------ real features vs tiles

def chloroplast_case():
    features = keyed(read_annotations(CHLOROPLAST_GB))
    length = 154_478
    tiles = [iv(i, "NC_000932.1", start, min(start + 1000, length), strand)
             for i, (start, strand) in enumerate((s, st_) for s in range(0, length, 500) for st_ in "+-")]
    right = [{**r, "id": n} for n, r in enumerate(features.select(["genome", "chrom", "start", "end", "strand"])
                                                  .to_pylist())]
    return tiles, right, features


@pytest.mark.parametrize("mode", STRAND_MODES)
def test_chloroplast_tiles_match_oracle(mode):
    tiles, right, _ = chloroplast_case()
    con = connect(tiles, right)
    assert got_overlap(con, strand=mode) == overlap_oracle(tiles, right, mode)
    assert got_nearest(con, strand=mode) == nearest_oracle(tiles, right, mode)


def test_annotation_table_columns_carried():
    tiles, _, features = chloroplast_case()
    tiles = pa.Table.from_pylist(tiles[:40], schema=INTERVALS)
    table = overlap(tiles, features)
    assert {"feature_name", "feature_type", "feature_attributes", "overlap_bp"} <= set(table.column_names)
    assert table.num_rows and nearest(tiles, features).num_rows >= 40


# ------------------------------------------------------------------ random

# two genomes sharing contig names, as assemblies do: rows meet only on the same (genome, chrom)
interval = st.builds(
    lambda chrom, start, length, strand, genome: (chrom, start, start + length, strand, genome),
    st.sampled_from(["c1", "c2"]), st.integers(0, 300),
    st.one_of(st.integers(0, 30), st.integers(0, 400), st.just(0)), st.sampled_from("+-."),
    st.sampled_from(["g1", "g2"]))


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


# ------------------------------------------------------------------ multi-part features (issue 15)

FEATURES = pa.schema([*INTERVALS, pa.field("parts", pa.list_(schema.PART))])


def parts_of(feature: dict) -> list[dict]:
    """A feature's parts, numbered from 1; a feature without ``parts`` is its span."""
    listed = feature.get("parts") or [{"start": feature["start"], "end": feature["end"],
                                       "strand": feature["strand"]}]
    return [{**part, "genome": feature["genome"], "chrom": feature["chrom"], "number": n}
            for n, part in enumerate(listed, 1)]


def overlap_parts_oracle(left: list[dict], right: list[dict], mode: str) -> list[tuple]:
    """(left id, feature id, bp summed over the feature's overlapping parts), once per pair that overlaps."""
    result = []
    for a in left:
        for b in right:
            hit = [min(a["end"], p["end"]) - max(a["start"], p["start"]) for p in parts_of(b)
                   if overlaps(a, p) and strands_match(a, p, mode)]
            if hit:
                result.append((a["id"], b["id"], sum(hit)))
    return sorted(result)


def nearest_parts_oracle(left: list[dict], right: list[dict], mode: str) -> list[tuple]:
    """Per left row, the features whose nearest part is nearest (-t all), measured on the lowest such part."""
    result = []
    for a in left:
        best_of = {}
        for b in right:
            measured = [(abs(signed_distance(a, p)), p["number"], signed_distance(a, p)) for p in parts_of(b)
                        if same_contig(a, p) and strands_match(a, p, mode)]
            if measured:
                best_of[b["id"]] = min(measured)
        if not best_of:
            result.append((a["id"], None, None))
            continue
        best = min(value[0] for value in best_of.values())
        result += [(a["id"], b, value[2]) for b, value in best_of.items() if value[0] == best]
    return sorted(result, key=_order)


def connect_parts(left: list[dict], right: list[dict]) -> tuple[pa.Table, pa.Table]:
    return pa.Table.from_pylist(left, schema=INTERVALS), pa.Table.from_pylist(right, schema=FEATURES)


def part(start, end, strand="+"):
    return {"start": start, "end": end, "strand": strand}


def test_parts_hand_cases():
    # feature 10: parts [0,10) and [50,60) on '+'; feature 11: trans-spliced, [20,25) '-' and [70,80) '+'
    right = [{**iv(10, "c", 0, 60), "parts": [part(0, 10), part(50, 60)]},
             {**iv(11, "c", 20, 80, "."), "parts": [part(20, 25, "-"), part(70, 80)]}]
    left = [iv(0, "c", 30, 40), iv(1, "c", 5, 55), iv(2, "c", 60, 62), iv(3, "c", 62, 68, "-"), iv(4, "c", 30, 45)]
    con = connect_parts(left, right)
    pairs = got_overlap(con)
    assert (0, 10, 0) not in [(a, b, 0) for a, b, _ in pairs] and not [p for p in pairs if p[0] == 0]  # in the gap
    assert [p for p in pairs if p[0] == 1] == [(1, 10, 10), (1, 11, 5)]  # two parts of 10: listed once, 5+5 bp
    near = {a: (b, d) for a, b, d in got_nearest(con)}
    assert near[2] == (10, 1) and near[3] == (11, -3)  # '+' part [70,80) 3 bp downstream: left is upstream
    assert got_nearest(con, strand="same") == nearest_parts_oracle(left, right, "same")
    # row 4 [30,45): part [20,25) is 6 away, part [50,60) 6 away: feature 10 measured once; 11 ties too
    assert [row for row in got_nearest(con) if row[0] == 4] == [(4, 10, -6), (4, 11, -6)]


multi_part = st.builds(
    lambda genome, chrom, spans, strand, mixed: (genome, chrom, spans, strand, mixed),
    st.sampled_from(["g1", "g2"]), st.sampled_from(["c1", "c2"]), st.lists(st.tuples(st.integers(0, 300), st.integers(0, 60)), min_size=1,
                                            max_size=4),
    st.sampled_from("+-."), st.booleans())


def numbered_features(items) -> list[dict]:
    features = []
    for i, (genome, chrom, spans, strand, mixed) in enumerate(items):
        parts = [part(s, s + n, "+-"[k % 2] if mixed else strand) for k, (s, n) in enumerate(spans)]
        start, end = min(p["start"] for p in parts), max(p["end"] for p in parts)
        features.append({**iv(i, chrom, start, end, "." if mixed else strand, genome),
                         "parts": parts if len(parts) > 1 else None})
    return features


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.lists(interval, max_size=20), right=st.lists(multi_part, max_size=12),
       bin_size=st.sampled_from([None, 1, 7, 64]), mode=st.sampled_from(STRAND_MODES))
def test_random_multi_part_features_match_oracle(left, right, bin_size, mode):
    left, right = numbered(left), numbered_features(right)
    con = connect_parts(left, right)
    assert got_overlap(con, strand=mode, bin_size=bin_size) == overlap_parts_oracle(left, right, mode)
    assert got_nearest(con, strand=mode, bin_size=bin_size) == nearest_parts_oracle(left, right, mode)


def chloroplast_parts_case():
    """Tiles as in chloroplast_case, and the real GenBank features with their parts."""
    tiles, _, features = chloroplast_case()
    right = [{**row, "id": n} for n, row in enumerate(features.select(["genome", "chrom", "start", "end", "strand",
                                                                       "parts"]).to_pylist())]
    return tiles, right, features


@pytest.mark.parametrize("mode", STRAND_MODES)
def test_chloroplast_parts_match_oracle(mode):
    tiles, right, _ = chloroplast_parts_case()
    con = connect_parts(tiles, right)
    assert got_overlap(con, strand=mode) == overlap_parts_oracle(tiles, right, mode)
    assert got_nearest(con, strand=mode) == nearest_parts_oracle(tiles, right, mode)


def test_rps12_joins_as_its_parts():
    """Issue 15: the trans-spliced rps12 (69,610-140,650 as a span) overlapped 408 unrelated tiles."""
    tiles, _, features = chloroplast_parts_case()
    pairs = overlap(pa.Table.from_pylist(tiles, schema=INTERVALS), features).to_pylist()
    counted = {}
    for row in pairs:
        if row["feature_name"] == "rps12" and row["feature_type"] == "gene":
            counted[row["id"]] = counted.get(row["id"], 0) + 1
    rps12 = list(counted.items())
    expected = {t["id"] for t in tiles for f in features.to_pylist() if f["name"] == "rps12" and f["type"] == "gene"
                for p in parts_of(f) if overlaps(t, p)}
    assert {i for i, _ in rps12} == expected
    assert all(n <= 2 for _, n in rps12)  # once per gene row (there are two rps12 genes), never once per part
    middle = [t["id"] for t in tiles if t["start"] == 100_000]  # between the parts 97,998-98,793 and 139,855-...
    assert middle and not expected & set(middle)
    # the spans would have listed every tile from 69,610 to 140,650 (both strands, 500 bp steps)
    assert len(expected) < 30 < len({t["id"] for t in tiles if t["start"] < 140_650 and t["end"] > 69_610})


def write_bed12(path: Path, features: list[dict]) -> Path:
    """BED12 with one block per part (blocks sorted, as BED12 requires); strand '.' where parts differ."""
    lines = []
    for f in sorted(features, key=lambda f: (f["chrom"], f["start"])):
        blocks = sorted((p["start"], p["end"]) for p in parts_of(f))
        lines.append("\t".join(map(str, [f["chrom"], f["start"], f["end"], f["id"], 0, f["strand"], f["start"],
                                         f["end"], 0, len(blocks), ",".join(str(e - s) for s, e in blocks),
                                         ",".join(str(s - f["start"]) for s, _ in blocks)])))
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.skipif(not HAS_BEDTOOLS, reason="bedtools not installed")
def test_bedtools_split_agrees_on_parts(tmp_path):
    # bedtools intersect -split matches BED12 blocks; it cannot express a strand per block, so strand is ignored;
    # its -wo reports one line per (tile, feature) with the bp summed over blocks. Zero-length features are left
    # out (bedtools widens them). Parts of one chloroplast feature never overlap each other.
    tiles, right, _ = chloroplast_parts_case()
    right = [r for r in right if r["end"] > r["start"]]
    a, b = write_bed(tmp_path / "a.bed", tiles), write_bed12(tmp_path / "b.bed", right)
    expected = sorted((int(f[3]), int(f[9]), int(f[18]))
                      for f in bedtools("intersect", "-a", str(a), "-b", str(b), "-wo", "-split"))
    assert got_overlap(connect_parts(tiles, right)) == expected
    assert any(r["parts"] and len({p["strand"] for p in r["parts"]}) == 2 for r in right)  # rps12 is in there


def test_gff3_and_gtf_multi_row_features_join_as_parts(tmp_path):
    gff3 = tmp_path / "s.gff3"
    gff3.write_text("##gff-version 3\n" + "".join(
        f"c\tx\t{kind}\t{start}\t{end}\t.\t+\t.\t{attributes}\n" for kind, start, end, attributes in [
            ("gene", 1, 1000, "ID=g1"), ("mRNA", 1, 1000, "ID=m1;Parent=g1"), ("exon", 1, 200, "Parent=m1"),
            ("exon", 901, 1000, "Parent=m1"), ("CDS", 101, 200, "ID=cds1;Parent=m1"),
            ("CDS", 901, 950, "ID=cds1;Parent=m1")]))
    gtf = tmp_path / "s.gtf"
    gtf.write_text("".join(
        f'c\tx\t{kind}\t{start}\t{end}\t.\t-\t.\tgene_id "g2"; transcript_id "t2";\n'
        for kind, start, end in [("transcript", 2001, 3000), ("exon", 2001, 2100), ("exon", 2901, 3000),
                                 ("CDS", 2051, 2100), ("CDS", 2901, 2950)]))
    features = keyed(pa.concat_tables([read_annotations(gff3), read_annotations(gtf)]))
    hits = pa.Table.from_pylist([iv(0, "c", 400, 600), iv(1, "c", 150, 950), iv(2, "c", 2500, 2600, "-"),
                                 iv(3, "c", 2000, 3000, "-")], schema=INTERVALS)
    got = sorted((r["id"], r["feature_type"], r["overlap_bp"]) for r in overlap(hits, features).to_pylist())
    assert got == [(0, "gene", 200),  # an intron: the gene span only
                   (1, "CDS", 50 + 50), (1, "exon", 50), (1, "exon", 50), (1, "gene", 800), (1, "mRNA", 50 + 50),
                   (3, "CDS", 50 + 50), (3, "exon", 100), (3, "exon", 100), (3, "transcript", 200)]
    near = sorted((r["id"], r["feature_type"], r["distance"]) for r in nearest(hits, features).to_pylist()
                  if r["id"] == 2)
    # [2500,2600) is 300 bp left of the second parts (2900-) and 400 bp right of the first ones (-2100): measured
    # on the second part, left of a '-' part is downstream, so +301; the exon at 2000-2100 is not nearest
    assert near == [(2, "CDS", 301), (2, "exon", 301), (2, "transcript", 301)]


def test_old_annotation_files_without_parts_still_join(tmp_path):
    """An annotation file written before ``parts`` existed, alone or read with a new one via union_by_name."""
    import pyarrow.parquet as pq

    old = pq.read_table(OLD_STORE_ANNOTATIONS)
    assert "parts" not in old.column_names and old.num_rows
    new_path = tmp_path / "new.parquet"
    pq.write_table(read_annotations(CHLOROPLAST_GB), new_path)
    length = max(old["end"].to_pylist())
    contig = old["chrom"][0].as_py()  # the store aliased it to the FASTA header, gi|45478711|ref|NC_005816.1|
    tiles = [iv(i, contig, s, min(s + 1000, length)) for i, s in enumerate(range(0, length, 700))]
    tiles += [iv(1000 + i, "NC_000932.1", s, s + 1000) for i, s in enumerate(range(60_000, 150_000, 700))]
    for files in ([OLD_STORE_ANNOTATIONS], [OLD_STORE_ANNOTATIONS, new_path]):
        con = duckdb.connect()
        listed = ", ".join(f"'{f}'" for f in files)
        con.execute(f"CREATE VIEW annotations AS SELECT *, 'g' AS genome, row_number() OVER () AS id "
                    f"FROM read_parquet([{listed}], union_by_name=true)")
        annotations = con.sql("SELECT * EXCLUDE (attributes) FROM annotations").to_arrow_table()
        right = [{**r, "parts": r.get("parts")} for r in annotations.to_pylist()]
        intervals = pa.Table.from_pylist(tiles, schema=INTERVALS)
        got = sorted((r["id"], r["feature_id"], r["overlap_bp"]) for r in overlap(intervals, annotations).to_pylist())
        assert got == overlap_parts_oracle(tiles, right, "ignore") and got
        near = sorted(((r["id"], r["feature_id"], r["distance"]) for r in nearest(intervals, annotations).to_pylist()),
                      key=_order)
        assert near == nearest_parts_oracle(tiles, right, "ignore")


# ------------------------------------------------------------------ the in-memory index behind search's columns

def index_matches_oracle(left: list[dict], right: list[dict], mode: str, bin_size: int | None) -> None:
    """FeatureIndex: overlapping labels = the oracle's overlapping features; the nearest it names is one of the
    oracle's tied nearest, at the oracle's distance (the first listed of them)."""
    from genoembed.feature_index import FeatureIndex

    features = pa.Table.from_pylist([{**f, "name": str(f["id"]), "type": "t", "parts": f.get("parts")} for f in right],
                                    schema=pa.schema([*FEATURES, ("name", pa.string()), ("type", pa.string())]))
    got = FeatureIndex.from_table(features, bin_size).overlapping_and_nearest(
        pa.Table.from_pylist(left, schema=INTERVALS), strand=mode).to_pylist()
    overlapping, nearest = {}, {}
    for a, b, _ in overlap_parts_oracle(left, right, mode):
        overlapping.setdefault(a, set()).add(str(b))
    for a, b, d in nearest_parts_oracle(left, right, mode):
        nearest.setdefault(a, []).append((None if b is None else str(b), d))
    for row, answer in zip(left, got):
        assert set((answer["overlapping"] or "").split(", ")) - {""} == overlapping.get(row["id"], set())
        tied = nearest[row["id"]]
        assert (answer["nearest"], answer["nearest_distance"]) in tied
        assert answer["nearest"] is None or int(answer["nearest"]) == min(int(b) for b, _ in tied)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.lists(interval, max_size=20), right=st.lists(multi_part, max_size=12),
       bin_size=st.sampled_from([None, 1, 7, 64]), mode=st.sampled_from(STRAND_MODES))
def test_feature_index_matches_oracle(left, right, bin_size, mode):
    index_matches_oracle(numbered(left), numbered_features(right), mode, bin_size)


@pytest.mark.parametrize("mode", STRAND_MODES)
def test_feature_index_on_chloroplast_and_edges(mode):
    tiles, right, _ = chloroplast_parts_case()
    index_matches_oracle(tiles, right, mode, None)
    index_matches_oracle(EDGE_LEFT, [{**f, "parts": None} for f in EDGE_RIGHT], mode, 3)
    test_parts = [{**iv(10, "c", 0, 60), "parts": [part(0, 10), part(50, 60)]},
                  {**iv(11, "c", 20, 80, "."), "parts": [part(20, 25, "-"), part(70, 80)]}]
    index_matches_oracle([iv(0, "c", 30, 40), iv(1, "c", 5, 55), iv(4, "c", 30, 45)], test_parts, mode, None)


# ------------------------------------------------------------------ two genomes sharing contig names, circles

@pytest.mark.skipif(not HAS_BEDTOOLS, reason="bedtools not installed")
@pytest.mark.parametrize("mode", STRAND_MODES)
def test_bedtools_agrees_with_two_genomes_sharing_contig_names(tmp_path, mode):
    # bedtools keys on the name alone, so its files name each contig "genome|chrom"; ours keep the two columns
    rng = np.random.default_rng(24)

    def drawn(count, low, high, first_id):
        rows = []
        for i in range(count):
            start = int(rng.integers(0, 20_000))
            rows.append(iv(first_id + i, ["chr1", "contig_1"][i % 2], start, start + int(rng.integers(low, high)),
                           "+-"[int(rng.integers(2))], ["A", "B"][int(rng.integers(2))]))
        return rows

    hits, features = drawn(400, 200, 1200, 0), drawn(150, 50, 900, 10_000)
    named = [[{**row, "chrom": f"{row['genome']}|{row['chrom']}"} for row in rows] for rows in (hits, features)]
    a, b = write_bed(tmp_path / "a.bed", named[0]), write_bed(tmp_path / "b.bed", named[1])
    con = connect(hits, features)
    pairs = sorted((int(f[3]), int(f[9]), int(f[12]))
                   for f in bedtools("intersect", "-a", str(a), "-b", str(b), "-wo", *MODE_FLAGS[mode]))
    assert got_overlap(con, strand=mode) == pairs and pairs
    closest = sorted(((int(f[3]), None if f[9] == "." else int(f[9]), None if f[9] == "." else int(f[12]))
                      for f in bedtools("closest", "-a", str(a), "-b", str(b), "-D", "b", "-t", "all",
                                        *MODE_FLAGS[mode])), key=_order)
    assert got_nearest(con, strand=mode) == closest
    # the case a join on the name alone gets wrong: a hit whose own genome has no feature where the other has one
    assert any(h["genome"] != f["genome"] and h["chrom"] == f["chrom"] and overlaps({**h, "genome": f["genome"]}, f)
               for h in hits for f in features)


def circle_bases(start: int, end: int, length: int) -> set[int]:
    return {position % length for position in range(start, end)}


circle_interval = st.builds(lambda start, length, strand: (start, start + length, strand),
                            st.integers(0, 99), st.integers(0, 100), st.sampled_from("+-"))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.lists(circle_interval, max_size=12), right=st.lists(circle_interval, min_size=1, max_size=8),
       bin_size=st.sampled_from([None, 1, 7, 64]), mode=st.sampled_from(STRAND_MODES))
def test_circular_contig_joins_match_a_base_set_oracle(left, right, bin_size, mode):
    """On a circle of 100 bp (intervals in the origin convention: end up to start + 100), overlap bp is the number
    of bases shared round the circle and the nearest features are nearest either way round; a linear contig of the
    same name in another genome goes on as a line."""
    length = 100
    hits = [iv(i, "p", s, e, strand, "circle") for i, (s, e, strand) in enumerate(left)]
    hits += [iv(100 + i, "p", s, min(e, length), strand, "line") for i, (s, e, strand) in enumerate(left)]
    features = [iv(i, "p", s, e, strand, "circle") for i, (s, e, strand) in enumerate(right)]
    features += [iv(100 + i, "p", s, min(e, length), strand, "line") for i, (s, e, strand) in enumerate(right)]
    circles = {("circle", "p"): length}
    con = connect(hits, features)
    overlap_pairs, nearest_pairs = [], []
    for a in hits:
        distances = {}
        for b in features:
            if a["genome"] != b["genome"] or not strands_match(a, b, mode):
                continue
            if a["genome"] == "line":
                if overlaps(a, b):
                    overlap_pairs.append((a["id"], b["id"], min(a["end"], b["end"]) - max(a["start"], b["start"])))
                distances[b["id"]] = abs(signed_distance(a, b))
                continue
            shared = circle_bases(a["start"], a["end"], length) & circle_bases(b["start"], b["end"], length)
            # a zero-length interval [p,p) meets one holding p strictly inside (either way round), as on a line
            point = any(x["start"] == x["end"] and y["start"] != y["end"] and
                        any(y["start"] < x["start"] + turn < y["end"] for turn in (-length, 0, length))
                        for x, y in ((a, b), (b, a)))
            if shared or point:
                overlap_pairs.append((a["id"], b["id"], len(shared)))
            distances[b["id"]] = 0 if shared or point else int(circular_gap(a["start"], a["end"], b["start"], b["end"],
                                                                              length)) + 1
        best = min(distances.values(), default=None)
        nearest_pairs += [(a["id"], b, best) for b, d in distances.items() if d == best] or [(a["id"], None, None)]
    assert got_overlap(con, strand=mode, bin_size=bin_size, circles=circles) == sorted(overlap_pairs)
    got = [(a, b, None if d is None else abs(d)) for a, b, d in
           got_nearest(con, strand=mode, bin_size=bin_size, circles=circles)]
    assert got == sorted(nearest_pairs, key=_order)
