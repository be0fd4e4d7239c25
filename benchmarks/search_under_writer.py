"""Search latency and QPS while a writer appends and removes genomes, against the same without a writer (issue 16).

A reader process opens the store (the Python API) and answers one-region queries back to back for
``--seconds``; first alone, then while a writer process appends a genome and removes it again in a
loop. Every search must answer k hits from a committed snapshot (none may fail); the run reports p50 /
p99 latency, QPS and how many snapshots the reader moved through. Ratios come from one run.

Sizes: small = the chloroplast + the Yersinia plasmid as the appended genome; medium = E. coli 536
with an H. pylori genome appended (shared data). Prints one JSON line per size and mode.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SIZES = {"small": (ROOT / "genoembed" / "data" / "demo" / "NC_000932.fa", SHARED / "yersinia_plasmid" / "NC_005816.fna"),
         "medium": (SHARED / "ecoli_536" / "NC_008253.fna.gz", SHARED / "h_pylori" / "SJM180.fasta.gz")}
K = 10


def reader(root: str, seconds: float, started, results) -> None:
    """Searches until time is up; reports latencies, failures and the snapshots seen."""
    from genoembed.search import Query, search
    from genoembed.store import Store

    store = Store.open(root)
    genome = store.genome(next(iter(store.genomes)))
    chrom, length = next(iter(genome.contigs.items()))
    rng = np.random.default_rng(0)
    latencies, failures, snapshots = [], [], set()
    search(store, [Query("warm", genome.fetch(chrom, 0, 1000))], k=K)
    started.set()
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = int(rng.integers(0, length - 1000))
        began = time.perf_counter()
        try:
            hits = search(store, [Query("q", genome.fetch(chrom, start, start + 1000))], k=K)
            assert hits.num_rows == K
        except Exception as error:  # the benchmark's claim is that this never happens
            failures.append(f"{type(error).__name__}: {error}")
        latencies.append(time.perf_counter() - began)
        if store.moved_on():  # take each new committed snapshot, as a long-lived server would
            snapshots.add(store.manifest.get("updated"))
    results.put({"latencies": latencies, "failures": failures, "snapshots": len(snapshots)})


def writer(root: str, fasta: str, stop) -> None:
    """Appends ``fasta`` as a genome and removes it again until told to stop; counts the commits."""
    from genoembed.build import index
    from genoembed.remove import remove
    from genoembed.store import Store
    from genoembed.tiles import TilingSpec

    store = Store.open(root)
    embedder, tiling = store.embedder(), TilingSpec(**store.provenance["tiling"])
    rounds = 0
    while not stop.is_set():
        index(fasta, root, embedder=embedder, tiling=tiling, append=True, genome_name="appended")
        remove(Store.open(root), "appended")
        rounds += 1
    print(json.dumps({"writer_rounds": rounds}), flush=True)


def measure(root: Path, appended: Path | None, seconds: float) -> dict:
    context = multiprocessing.get_context("spawn")
    started, stop, results = context.Event(), context.Event(), context.Queue()
    read = context.Process(target=reader, args=(str(root), seconds, started, results))
    read.start()
    started.wait(120)
    write = None
    if appended is not None:
        write = context.Process(target=writer, args=(str(root), str(appended), stop))
        write.start()
    outcome = results.get(timeout=seconds + 600)
    read.join()
    if write is not None:
        stop.set()
        write.join(600)
    latencies = np.array(outcome["latencies"])
    assert not outcome["failures"], outcome["failures"][:3]
    return {"searches": len(latencies), "qps": round(len(latencies) / latencies.sum(), 1),
            "p50_ms": round(float(np.median(latencies)) * 1e3, 2),
            "p99_ms": round(float(np.quantile(latencies, 0.99)) * 1e3, 2),
            "failures": len(outcome["failures"]), "snapshots_seen": outcome["snapshots"]}


def run(size: str, workdir: Path, seconds: float) -> list[dict]:
    from genoembed.build import index
    from genoembed.embedders import get_embedder
    from genoembed.tiles import TilingSpec

    base, appended = SIZES[size]
    root = workdir / f"{size}-store"
    if not (root / "manifest.json").exists():
        index(base, root, embedder=get_embedder("default"), tiling=TilingSpec(window=1000, stride=500, strands="+"))
    rows = []
    for mode, extra in (("alone", None), ("with_writer", appended)):
        rows.append({"benchmark": "search_under_writer", "size": size, "mode": mode, **measure(root, extra, seconds),
                     "machine": platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")})
    rows[1]["qps_ratio_vs_alone"] = round(rows[1]["qps"] / rows[0]["qps"], 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=list(SIZES))
    parser.add_argument("--seconds", type=float, default=20.0, help="reader time per mode")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genoembed-rw-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for row in run(size, workdir, args.seconds):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
