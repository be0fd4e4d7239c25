"""The torch-free token-table embedder against TransformersEmbedder and the 4-mer floor, same run.

Tiles: 1 kb windows of the Arabidopsis chloroplast shipped with genoembed (154 kbp), at evenly spaced
offsets (overlapping when more tiles are asked for than the genome holds side by side), so the sizes are
real sequence: small 2,000, medium 20,000, large 100,000 tiles.

Paths, timed over the same tiles and interleaved repeat by repeat so machine load hits them alike:

- ``table``: ``TokenTableEmbedder`` of the shipped default model (frames 6, both strands);
- ``hf``: ``TransformersEmbedder`` of the same directory with the same settings (its own fast path for
  zero-layer models: torch ``embedding_bag`` over a precomputed table);
- ``kmer4``: ``KmerEmbedder(k=4)`` (vectorised numpy 4-mer counts, canonical): the floor a table
  look-up should not fall far below.

Correctness first: on a sample of tiles the table's vectors must equal the hf path's to 1e-5 (absolute),
and the fingerprints must be equal, or the run stops. Then one JSON line per size: tiles/s of each path
(best of ``--repeats``, embedding 1,024 tiles per call as ``genoembed index`` does) and the ratios. A last line measures the cold start the issue is about: a fresh
process importing the embedder, loading the model and embedding one tile, for each of table and hf.

    python benchmarks/embed_table.py --size small --size medium
    python benchmarks/embed_table.py --size small --with-n
    OPENBLAS_NUM_THREADS=1 python benchmarks/embed_table.py --size small --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from genoembed.embedders.hf import TransformersEmbedder
from genoembed.embedders.kmer import KmerEmbedder
from genoembed.embedders.table import TokenTableEmbedder
from genoembed.genome import open_genome
from genoembed.resources import default_model_dir, resolve

SIZES = {"small": 2_000, "medium": 20_000, "large": 100_000}
TILE_BP = 1000
BATCH = 1024  # tiles per embed() call: genoembed.build.index's batch_rows
SAMPLE = 300
ATOL = 1e-5
SETTINGS = dict(frames=6, reverse_complement=True, pooling="mean", layer=-1)
COLD = {
    "table": "from genoembed.embedders.table import TokenTableEmbedder as E",
    "hf": "from genoembed.embedders.hf import TransformersEmbedder as E",
}


def demo_tiles(n: int, with_n: bool = False) -> list[str]:
    """``n`` 1 kb tiles of the chloroplast at evenly spaced offsets; ``with_n``: one base of each, at a
    seeded position, replaced by N (the path for tiles touching assembly gaps)."""
    genome = open_genome(resolve("genoembed:data/demo/NC_000932.fa"))
    ((chrom, length),) = genome.contigs.items()
    sequence = genome.fetch(chrom, 0, length)
    starts = np.linspace(0, length - TILE_BP, n).astype(np.int64)
    tiles = [sequence[s : s + TILE_BP] for s in starts.tolist()]
    if not with_n:
        return tiles
    where = np.random.default_rng(1).integers(0, TILE_BP, size=n).tolist()
    return [tile[:i] + "N" + tile[i + 1 :] for tile, i in zip(tiles, where)]


def check_equal(table: TokenTableEmbedder, hf: TransformersEmbedder, tiles: list[str]) -> float:
    """Largest absolute difference on a seeded sample; stops the run above ATOL or on another fingerprint."""
    if table.fingerprint != hf.fingerprint or table.describe() != hf.describe():
        sys.exit(f"describe() differs: {table.describe()} vs {hf.describe()}")
    rng = np.random.default_rng(0)
    sample = [tiles[i] for i in rng.choice(len(tiles), size=min(SAMPLE, len(tiles)), replace=False)]
    difference = float(np.abs(table.embed(sample) - hf.embed(sample)).max())
    if not difference <= ATOL:
        sys.exit(f"table vectors differ from the hf path by {difference:.2e} > {ATOL}")
    return difference


def tiles_per_second(embedders: dict, tiles: list[str], repeats: int) -> dict[str, float]:
    """Best tiles/s of each embedder over ``repeats`` interleaved runs, in calls of BATCH tiles."""
    best = dict.fromkeys(embedders, 0.0)
    for _ in range(repeats):
        for name, embedder in embedders.items():
            started = time.perf_counter()
            for first in range(0, len(tiles), BATCH):
                embedder.embed(tiles[first : first + BATCH])
            best[name] = max(best[name], len(tiles) / (time.perf_counter() - started))
    return best


def cold_start_seconds(kind: str, model_dir: Path) -> float:
    """Wall time of a fresh process that imports the embedder, loads the model and embeds one tile."""
    code = f"{COLD[kind]}\nE({str(model_dir)!r}, frames=6, reverse_complement=True).embed(['ACGT' * 250])\n"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=os.environ.copy())
    return time.perf_counter() - started


def run(size: str, embedders: dict, repeats: int, with_n: bool) -> dict:
    tiles = demo_tiles(SIZES[size], with_n)
    difference = check_equal(embedders["table"], embedders["hf"], tiles)
    speed = tiles_per_second(embedders, tiles, repeats)
    return {
        "size": size, "tiles": len(tiles), "tile_bp": TILE_BP, "one_n_per_tile": with_n, "tiles_per_call": BATCH,
        "repeats": repeats,
        "max_abs_diff_vs_hf": difference, "sample": min(SAMPLE, len(tiles)),
        **{f"{name}_tiles_per_s": round(value) for name, value in speed.items()},
        "table_vs_hf": round(speed["table"] / speed["hf"], 2),
        "table_vs_kmer4": round(speed["table"] / speed["kmer4"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", action="append", choices=list(SIZES), help="repeatable; default small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--with-n", action="store_true", help="one N in every tile")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the hf path (default torch's); set OPENBLAS_NUM_THREADS for numpy's")
    args = parser.parse_args()
    model_dir = default_model_dir()
    embedders = {
        "table": TokenTableEmbedder(model_dir, **SETTINGS),
        "hf": TransformersEmbedder(model_dir, threads=args.threads, **SETTINGS),
        "kmer4": KmerEmbedder(k=4),
    }
    import torch

    machine = {"cpus": os.cpu_count(), "hf_torch_threads": args.threads or torch.get_num_threads(),
               "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
               "python": platform.python_version(), "numpy": np.__version__}
    for size in args.size or ["small"]:
        result = run(size, embedders, args.repeats, args.with_n)
        load = round(os.getloadavg()[0], 2)  # other work on the machine during the run
        print(json.dumps({**result, "load_average_1min_after": load, "machine": machine}), flush=True)
    cold = {kind: round(min(cold_start_seconds(kind, model_dir) for _ in range(args.repeats)), 2) for kind in COLD}
    print(json.dumps({"cold_start_s": cold, "what": "fresh process: import, load the default model, embed 1 tile"}))


if __name__ == "__main__":
    main()
