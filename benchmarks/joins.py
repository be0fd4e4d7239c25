"""Binned DuckDB overlap / nearest vs bedtools intersect / closest on seeded synthetic intervals.

Hits: N intervals of 1 kb (both strands); features: 5*10^4 intervals of 0.3-3 kb
(stranded), over 4 contigs of 25 Mb. The rows of the last timed run are
checked against bedtools (when installed): the same (hit, feature, overlap
bp) and (hit, feature, distance) rows, compared in DuckDB after timing;
without bedtools only the overlap count is checked, by an exact numpy
counting oracle. Prints one JSON line per size.

    .venv/bin/python benchmarks/joins.py small medium      # large = 10^7 hits
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from genoembed.joins import bin_size, nearest_sql, overlap_sql  # noqa: E402

SIZES = {"small": 100_000, "medium": 1_000_000, "large": 10_000_000}
FEATURES = 50_000
CONTIGS = 4
CONTIG_LENGTH = 25_000_000


def intervals(rng: np.random.Generator, n: int, low: int, high: int) -> pa.Table:
    """n seeded intervals with lengths in [low, high], sorted like ``sort -k1,1 -k2,2n``."""
    chrom = rng.integers(0, CONTIGS, n)
    length = rng.integers(low, high + 1, n)
    start = rng.integers(0, CONTIG_LENGTH - high, n)
    order = np.lexsort((start, chrom))
    names = np.array([f"chr{c + 1}" for c in range(CONTIGS)])
    return pa.table({"chrom": names[chrom[order]], "start": start[order], "end": (start + length)[order],
                     "name": np.arange(n), "score": np.zeros(n, dtype=np.int64),
                     "strand": np.array(["+", "-"])[rng.integers(0, 2, n)]})


def counting_oracle(hits: pa.Table, features: pa.Table) -> int:
    """Exact overlap pair count: per feature, #hits starting before its end minus #hits ending at/before its start."""
    total = 0
    for chrom in np.unique(features["chrom"].to_numpy(zero_copy_only=False)):
        h = hits.filter(pa.compute.equal(hits["chrom"], chrom))
        f = features.filter(pa.compute.equal(features["chrom"], chrom))
        starts, ends = np.sort(h["start"].to_numpy()), np.sort(h["end"].to_numpy())
        fs, fe = f["start"].to_numpy(), f["end"].to_numpy()
        total += int((np.searchsorted(starts, fe, "left") - np.searchsorted(ends, fs, "right")).sum())
    return total


def same_rows(con: duckdb.DuckDBPyConnection, size: str, join: str, bedtools_out: Path, table: str, measure: str,
              column: int) -> None:
    """Exit unless bedtools' (hit, feature, measure) rows equal DuckDB's, as multisets (EXCEPT ALL both ways)."""
    theirs = (f"SELECT column03 AS hit, column09 AS feature, column{column:02d} AS measure FROM read_csv('{bedtools_out}', "
              "delim='\t', header=false, all_varchar=true)")
    ours = f"SELECT CAST(name AS VARCHAR), CAST(feature_name AS VARCHAR), CAST({measure} AS VARCHAR) FROM {table}"
    differ = con.execute(f"SELECT (SELECT count(*) FROM ({theirs} EXCEPT ALL {ours})) + "
                         f"(SELECT count(*) FROM ({ours} EXCEPT ALL {theirs}))").fetchall()[0][0]
    if differ:
        raise SystemExit(f"{size}: {differ} {join} rows differ from bedtools")


def timed(function, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` runs after one warm-up, and the last result."""
    result = function()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - began)
    return best, result


def run(size: str, repeats: int, workdir: Path) -> dict:
    rng = np.random.default_rng(20240601)
    hits = intervals(rng, SIZES[size], 1000, 1000)
    features = intervals(rng, FEATURES, 300, 3000)
    con = duckdb.connect()
    # one genome: the joins key intervals by (genome, chrom); the BED files bedtools reads have no genome column
    con.register("hits", hits.add_column(0, "genome", pa.array(["g"] * hits.num_rows)))
    con.register("features", features.add_column(0, "genome", pa.array(["g"] * features.num_rows)))

    def duck(sql: str, table: str = "out"):
        return lambda: con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}").execute(
            f"SELECT count(*) FROM {table}").fetchall()[0][0]

    overlap_s, overlap_rows = timed(duck(overlap_sql("hits", "features"), "overlap_out"), repeats)
    nearest_s, nearest_rows = timed(duck(nearest_sql("hits", "features"), "nearest_out"), repeats)
    record = {"benchmark": "joins", "size": size, "hits": hits.num_rows, "features": features.num_rows,
              "bin_size": bin_size(con, "hits", "features"), "overlap_rows": overlap_rows, "nearest_rows": nearest_rows,
              "duckdb_overlap_s": round(overlap_s, 3), "duckdb_nearest_s": round(nearest_s, 3),
              "duckdb_threads": con.execute("SELECT current_setting('threads')").fetchall()[0][0],
              "duckdb": duckdb.__version__}
    if shutil.which("bedtools"):
        a, b = workdir / f"{size}_hits.bed", workdir / "features.bed"
        for table, path in ((hits, a), (features, b)):
            con.register("to_write", table)
            con.execute(f"COPY to_write TO '{path}' (FORMAT csv, DELIMITER '\t', HEADER false)")
        def tool(out: Path, *args: str):
            def call():
                with open(out, "w") as sink:
                    subprocess.run(["bedtools", *args], stdout=sink, check=True)
                with open(out, "rb") as lines:
                    return sum(1 for _ in lines)
            return call

        intersect, closest = workdir / "intersect.txt", workdir / "closest.txt"
        intersect_s, intersect_rows = timed(tool(intersect, "intersect", "-a", str(a), "-b", str(b), "-wo",
                                                 "-sorted"), repeats)
        closest_s, closest_rows = timed(tool(closest, "closest", "-a", str(a), "-b", str(b), "-D", "b", "-t", "all"),
                                        repeats)
        if (intersect_rows, closest_rows) != (overlap_rows, nearest_rows):
            raise SystemExit(f"{size}: rows differ from bedtools: overlap {overlap_rows} vs {intersect_rows}, "
                             f"nearest {nearest_rows} vs {closest_rows}")
        same_rows(con, size, "overlap", intersect, "overlap_out", "overlap_bp", 12)
        same_rows(con, size, "nearest", closest, "nearest_out", "distance", 12)
        record.update(bedtools_intersect_s=round(intersect_s, 3), bedtools_closest_s=round(closest_s, 3),
                      bedtools=subprocess.run(["bedtools", "--version"], capture_output=True,
                                              text=True).stdout.split()[-1],
                      checked_against="bedtools")
    else:
        expected = counting_oracle(hits, features)
        if expected != overlap_rows:
            raise SystemExit(f"{size}: overlap rows {overlap_rows} but the counting oracle says {expected}")
        record["checked_against"] = "counting oracle (overlap only)"
    if size == "small":
        range_join = ('SELECT h.*, f.name AS feature_name FROM hits h JOIN features f ON h.chrom = f.chrom '
                      'AND h.start < f."end" AND f.start < h."end"')
        record["duckdb_range_join_s"], rows = timed(duck(range_join), 1)
        record["duckdb_range_join_s"] = round(record["duckdb_range_join_s"], 3)
        if rows != overlap_rows:
            raise SystemExit(f"range join gave {rows} rows, binned join {overlap_rows}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=list(SIZES))
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        for size in options.sizes:
            record = run(size, options.repeats if size != "large" else 1, Path(workdir))
            record["date"] = dt.date.today().isoformat()
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
