"""Peak memory of one `genoembed search --bed` against the number of query regions (issue 16).

Queries stream through the CLI in chunks (``QUERY_BATCH``), so peak memory should stay flat while the
region count grows 10x. Each size runs `genoembed search STORE --bed N.bed -k 10 --tiles --format tsv
--output ... --no-save` in a fresh process on E. coli 536 (shared data) embedded with the shipped
default model, and reports wall time and peak RSS (``ru_maxrss`` of the child); the output must hold
exactly N x 10 hit rows.

Sizes: small = 10^4 regions, medium = 10^5, large = 10^6. Prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from genoembed.build import index
from genoembed.embedders import get_embedder
from genoembed.genome import open_genome
from genoembed.tiles import TilingSpec

ROOT = Path(__file__).resolve().parents[1]
GENOME = ROOT.parent / "shared" / "data" / "ecoli_536" / "NC_008253.fna.gz"
SIZES = {"small": 10_000, "medium": 100_000, "large": 1_000_000}
K = 10


def write_regions(path: Path, genome, count: int, seed: int = 0) -> None:
    """``count`` random 1 kb regions (seeded) as BED, written line by line."""
    rng = np.random.default_rng(seed)
    chrom, length = next(iter(genome.contigs.items()))
    starts = rng.integers(0, length - 1000, size=count)
    with open(path, "w") as handle:
        for number, start in enumerate(starts):
            handle.write(f"{chrom}\t{start}\t{start + 1000}\tr{number}\n")


def run(size: str, workdir: Path, python: str) -> dict:
    store = workdir / "ecoli-default"
    if not (store / "manifest.json").exists():
        index(GENOME, store, embedder=get_embedder("default"), tiling=TilingSpec(window=1000, stride=500, strands="+"))
    regions, output = workdir / f"{size}.bed", workdir / f"{size}.tsv"
    write_regions(regions, open_genome(GENOME), SIZES[size])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([python, "-m", "genoembed", "search", str(store), "--bed", str(regions), "-k", str(K), "--tiles",
                    "--format", "tsv", "--output", str(output), "--no-save"], check=True)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    with open(output) as handle:
        rows = sum(1 for _ in handle) - 1
    assert rows == SIZES[size] * K, (rows, SIZES[size] * K)  # every region answered, none dropped
    output.unlink()
    return {"benchmark": "query_memory", "size": size, "regions": SIZES[size], "k": K, "seconds": round(seconds, 2),
            "queries_per_s": round(SIZES[size] / seconds, 1),
            "peak_rss_mib": round(peak / 1024, 1), "peak_is_this_run": peak > before,
            "machine": platform.machine(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small", "medium"], choices=list(SIZES))
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs genoembed")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the store here between runs")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="genoembed-qmem-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:  # smallest first: ru_maxrss of children only grows, so each peak is its own
        print(json.dumps(run(size, workdir, args.python)), flush=True)


if __name__ == "__main__":
    main()
