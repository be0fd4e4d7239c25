"""genoembed's joins (:mod:`genoembed.joins` over the numpy :class:`~genoembed.feature_index.FeatureIndex`, the
engine of the SQL views too) vs bedtools intersect / closest on seeded synthetic intervals, like for like.

Hits: N intervals of 1 kb (both strands); features: 5*10^4 intervals of 0.3-3 kb
(stranded), over 4 contigs of 25 Mb. Both tools write the same 13 columns (hit,
feature, overlap bp or distance) to a TSV file on disk, and only that is timed
(genoembed: index the features, join, write with pyarrow's CSV writer). bedtools
runs on one thread; genoembed's join is numpy on one thread (pyarrow's writer may
use a second). The files of the last timed runs are then compared row for row
(when bedtools is installed); without bedtools only the overlap count is checked,
by an exact numpy counting oracle. Prints one JSON line per size.

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
import pyarrow.csv as csv

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from genoembed.feature_index import FeatureIndex  # noqa: E402
from genoembed.joins import nearest, overlap  # noqa: E402

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
    return pa.table({"genome": np.full(n, "g"), "chrom": names[chrom[order]], "start": start[order],
                     "end": (start + length)[order],
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


#: BED6 columns of an interval table (every interval has one genome here: joins key on (genome, chrom)).
BED6 = 'chrom, start, "end", name, score, strand'
#: The columns both tools write, in bedtools' order: the hit (-a), the feature (-b), then the measure.
COLUMNS = ["chrom", "start", "end", "name", "score", "strand", "feature_chrom", "feature_start", "feature_end",
           "feature_name", "feature_score", "feature_strand"]


def same_rows(con: duckdb.DuckDBPyConnection, size: str, join: str, bedtools_out: Path, duckdb_out: Path) -> int:
    """The rows of both output files (all 13 columns, as text); exit unless they are equal as multisets
    (EXCEPT ALL both ways, in DuckDB). Returns the row count."""
    def read(path: Path) -> str:
        return f"SELECT * FROM read_csv('{path}', delim='\t', header=false, all_varchar=true)"

    theirs, ours = read(bedtools_out), read(duckdb_out)
    rows, = con.execute(f"SELECT count(*) FROM ({ours})").fetchone()
    differ, = con.execute(f"SELECT (SELECT count(*) FROM ({theirs} EXCEPT ALL {ours})) + "
                          f"(SELECT count(*) FROM ({ours} EXCEPT ALL {theirs}))").fetchone()
    if differ:
        raise SystemExit(f"{size}: {differ} {join} rows differ between bedtools and genoembed")
    return rows


def timed(function, repeats: int) -> float:
    """Best wall time of ``repeats`` runs after one warm-up."""
    function()
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - began)
    return best


def run(size: str, repeats: int, workdir: Path) -> dict:
    """Both tools write the same rows to a TSV file on disk, timed the same way (the write included, nothing
    after it)."""
    rng = np.random.default_rng(20240601)
    hits = intervals(rng, SIZES[size], 1000, 1000)
    features = intervals(rng, FEATURES, 300, 3000)
    con = duckdb.connect()
    joins = {"overlap": (overlap, "overlap_bp"), "nearest": (nearest, "distance")}

    def ours(join: str, out: Path):
        function, measure = joins[join]
        options = csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
        return lambda: csv.write_csv(function(hits, features).select([*COLUMNS, measure]), out, options)

    record = {"benchmark": "joins", "size": size, "hits": hits.num_rows, "features": features.num_rows,
              "bin_size": FeatureIndex.from_table(features).bin_size, "output": "TSV file on disk, both tools",
              "engine": "genoembed.joins (numpy FeatureIndex)"}
    for join in joins:
        record[f"genoembed_{join}_s"] = round(timed(ours(join, workdir / f"genoembed_{join}.tsv"), repeats), 3)
    if shutil.which("bedtools"):
        a, b = workdir / f"{size}_hits.bed", workdir / "features.bed"
        for table, path in ((hits, a), (features, b)):
            con.register("to_write", table)
            con.execute(f"COPY (SELECT {BED6} FROM to_write) TO '{path}' (FORMAT csv, DELIMITER '\t', HEADER false)")

        def tool(out: Path, *args: str):
            def call():
                with open(out, "w") as sink:
                    subprocess.run(["bedtools", *args], stdout=sink, check=True)
            return call

        commands = {"overlap": ("intersect", "-a", str(a), "-b", str(b), "-wo", "-sorted"),
                    "nearest": ("closest", "-a", str(a), "-b", str(b), "-D", "b", "-t", "all")}
        for join, command in commands.items():
            out = workdir / f"bedtools_{join}.tsv"
            seconds = timed(tool(out, *command), repeats)
            record[f"bedtools_{command[0]}_1t_s"] = round(seconds, 3)
            record[f"{join}_rows"] = same_rows(con, size, join, out, workdir / f"genoembed_{join}.tsv")
            record[f"{join}_ratio"] = round(seconds / record[f"genoembed_{join}_s"], 2)
        record.update(bedtools=subprocess.run(["bedtools", "--version"], capture_output=True,
                                              text=True).stdout.split()[-1],
                      checked_against="bedtools (all 13 columns of every row)")
    else:
        overlap_rows, = con.execute(f"SELECT count(*) FROM read_csv('{workdir / 'genoembed_overlap.tsv'}', "
                                    "delim='\t', header=false)").fetchone()
        expected = counting_oracle(hits, features)
        if expected != overlap_rows:
            raise SystemExit(f"{size}: overlap rows {overlap_rows} but the counting oracle says {expected}")
        record.update(overlap_rows=overlap_rows, checked_against="counting oracle (overlap only)")
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
