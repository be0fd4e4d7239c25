"""What a repeated SQL query on the hit views costs (issue 24): ``hit_features`` / ``hit_nearest`` of a saved search.

small: the annotated demo store (`indexes/demo.toml`: chloroplast, 258 GenBank features), a saved search of 10
region queries x k=10. medium: a stand-in store (benchmarks/annotation_scale.py) with the GENCODE-like GTF of
~317 k lines (250 k features with their exon / CDS parts) and a saved search of 10,000 seeded 1 kb hits.
Times, p50 over repeats: the query through ``genoembed.sql`` (a connection per call, as the CLI and the server
make) and on one open connection; the first query of a fresh store object (reads and indexes the annotations,
once per snapshot); opening a connection. Correctness: the overlap rows (hit, feature, bp) equal bedtools
``intersect -wo -split`` of the hits with the features as BED12 (one block per part) when bedtools is
installed, else a pure-Python overlap of the demo's parts (small only). One JSON line per size.

    PYTHONPATH=. .venv/bin/python benchmarks/hit_views.py small medium [--work /tmp/hit_views]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
QUERIES = {"hit_features": "SELECT count(*) AS n, sum(overlap_bp) AS bp, count(DISTINCT feature_id) AS f FROM {view}",
           "hit_nearest": "SELECT count(*) AS n, sum(abs(distance)) AS d, count(DISTINCT feature_id) AS f FROM {view}"}


def demo_store(work: Path):
    import genoembed
    from genoembed.search import search

    root = work / "demo"
    if not (root / "manifest.json").is_file():
        recipe = genoembed.load_recipe(Path(__file__).resolve().parent.parent / "indexes" / "demo.toml")
        store = genoembed.build(dataclasses.replace(recipe, output=root))
        search(store, [f"NC_000932.1:{s + 1}-{s + 1000}" for s in range(0, 150_000, 15_000)], k=10, save_as="views")
    return root


def gencode_like_store(work: Path, hits: int = 10_000):
    from annotation_scale import GENES, stand_in_store, write_gtf

    from genoembed import schema
    from genoembed.annotate import add_annotations
    from genoembed.saved_searches import save_hits
    from genoembed.store import Store

    root = work / "gencode_like"
    if (root / "store" / "searches" / "views.json").is_file():
        return root / "store"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    store = Store.open(stand_in_store(root))
    write_gtf(root / "medium.gtf", GENES["medium"])
    add_annotations(store, root / "medium.gtf")
    store = Store.open(store.root)
    rng = np.random.default_rng(5)
    lengths = store.genomes["layout"]["contig_lengths"]
    names = list(lengths)
    weights = np.array(list(lengths.values()), dtype=float)
    chrom = rng.choice(len(names), hits, p=weights / weights.sum())
    start = (rng.random(hits) * (np.array([lengths[names[c]] for c in chrom]) - 1000)).astype(np.int64)
    table = pa.table({"query": [f"q{i // 10}" for i in range(hits)], "query_chrom": pa.nulls(hits, pa.string()),
                      "query_start": pa.nulls(hits, pa.int64()), "query_end": pa.nulls(hits, pa.int64()),
                      "query_strand": pa.nulls(hits, pa.string()), "rank": pa.array(np.arange(hits) % 10 + 1, pa.int32()),
                      "tile_id": np.arange(hits), "genome": ["layout"] * hits, "chrom": [names[c] for c in chrom],
                      "start": start, "end": start + 1000, "strand": rng.choice(["+", "-"], hits),
                      "score": pa.array(np.ones(hits), pa.float32())}, schema=schema.HITS)
    save_hits(store, table, "views", {"queries": hits // 10, "k": 10})
    return store.root


def timings(root: Path, repeats: int) -> dict:
    from genoembed.sql import connect, run_sql
    from genoembed.store import Store

    store = Store.open(root)
    started = time.perf_counter()
    run_sql(store, QUERIES["hit_features"].format(view="hit_features_views"))
    result = {"first_query_s": round(time.perf_counter() - started, 2)}
    for view, query in QUERIES.items():
        query = query.format(view=f"{view}_views")
        through, same = [], []
        con = connect(store)
        for _ in range(repeats):
            began = time.perf_counter()
            rows = run_sql(store, query).to_pylist()[0]
            through.append(time.perf_counter() - began)
            began = time.perf_counter()
            con.sql(query).fetchall()
            same.append(time.perf_counter() - began)
        result[view] = {"rows": {key: int(value or 0) for key, value in rows.items()},
                        "run_sql_p50_ms": round(statistics.median(through) * 1e3, 1),
                        "one_connection_p50_ms": round(statistics.median(same) * 1e3, 1)}
    began = time.perf_counter()
    for _ in range(repeats):
        connect(store)
    result["connect_ms"] = round((time.perf_counter() - began) / repeats * 1e3, 1)
    return result


def check_overlaps(root: Path, work: Path) -> str:
    """The view's (hit, feature start, end, bp) rows, as a multiset, against bedtools intersect -wo -split (features
    as BED12, one block a part), or a pure-Python overlap over the parts without bedtools."""
    from genoembed.sql import run_sql
    from genoembed.store import Store

    store = Store.open(root)
    got = sorted(tuple(r.values()) for r in run_sql(store, "SELECT query || '#' || rank, feature_start, feature_end, "
                                                           "overlap_bp FROM hit_features_views", timeout=None).to_pylist())
    hits = run_sql(store, "SELECT query || '#' || rank AS name, genome, chrom, start, \"end\" FROM hits_views",
                   timeout=None).to_pylist()
    features = run_sql(store, 'SELECT chrom, start, "end", parts FROM annotations', timeout=None).to_pylist()
    circles = {(genome, chrom): entry["contig_lengths"][chrom] for genome, entry in store.genomes.items()
               for chrom in entry.get("circular", ())}
    pieces = []  # a hit through the origin of a circular contig (end past its length) as its two pieces
    for h in hits:
        length = circles.get((h["genome"], h["chrom"]), h["end"])
        pieces += [(h["name"], h["chrom"], h["start"], min(h["end"], length))]
        pieces += [(h["name"], h["chrom"], 0, h["end"] - length)] if h["end"] > length else []
    if shutil.which("bedtools"):
        a, b = work / "hits.bed", work / "features.bed12"
        a.write_text("".join(f"{chrom}\t{start}\t{end}\t{name}\n" for name, chrom, start, end in pieces))
        lines = []
        for number, f in enumerate(features):
            blocks = sorted((p["start"], p["end"]) for p in f["parts"]) if f["parts"] else [(f["start"], f["end"])]
            lines.append("\t".join(map(str, [f["chrom"], f["start"], f["end"], number, 0, "+", f["start"],
                                             f["end"], 0, len(blocks), ",".join(str(e - s) for s, e in blocks),
                                             ",".join(str(s - f["start"]) for s, _ in blocks)])))
        b.write_text("\n".join(lines) + "\n")
        out = subprocess.run(["bedtools", "intersect", "-a", str(a), "-b", str(b), "-wo", "-split"], check=True,
                             capture_output=True, text=True).stdout
        summed = {}
        for f in (line.split("\t") for line in out.splitlines()):
            key = (f[3], int(f[7]), int(f[5]), int(f[6]))
            summed[key] = summed.get(key, 0) + int(f[16])
        expected = sorted((name, start, end, bp) for (name, _, start, end), bp in summed.items())
        oracle = "bedtools intersect -wo -split (hits through the origin as two pieces)"
    else:
        expected = []
        for name, chrom, start, end in {(h["name"], h["chrom"], h["start"], h["end"]) for h in hits}:
            own = [(s_, e_) for n, c, s_, e_ in pieces if n == name]
            for f in features:
                if f["chrom"] != chrom:
                    continue
                bp = [min(e_, p["end"]) - max(s_, p["start"]) for s_, e_ in own for p in (f["parts"] or [f])
                      if s_ < p["end"] and p["start"] < e_]
                expected += [(name, f["start"], f["end"], sum(bp))] if bp else []
        expected.sort()
        oracle = "pure-Python overlap of the parts"
    if got != expected:
        raise SystemExit(f"hit_features differs from {oracle}: {len(got)} rows vs {len(expected)}")
    return f"{oracle}: {len(got)} rows equal"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=["small", "medium"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/genoembed_hit_views"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        root = demo_store(args.work) if size == "small" else gencode_like_store(args.work)
        if size == "medium" and not shutil.which("bedtools"):
            checked = "not checked (no bedtools; the Python oracle is for small)"
        else:
            checked = check_overlaps(root, args.work)
        print(json.dumps({"benchmark": "hit_views", "size": size, **timings(root, args.repeats), "checked": checked,
                          "load_average": round(os.getloadavg()[0], 1),
                          "machine": f"{platform.machine()} {os.cpu_count()} CPUs",
                          "date": dt.date.today().isoformat()}), flush=True)


if __name__ == "__main__":
    main()
