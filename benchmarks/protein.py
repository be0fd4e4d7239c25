"""Protein homologs across phyla from DNA alone (issue 17): every baseline against protein-level truth.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protein.py --size small    # ~1 min: H. pylori -> E. coli, 100 genes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protein.py --size medium   # ~5 min: both directions, 300 genes
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/protein.py --size large    # + MG1655 <-> G27, 1000 genes

Truth (``genoembed.eval.protein``): pyrodigal genes on both genomes, each sampled query gene's
protein aligned to every target protein with pyopal Smith-Waterman (BLOSUM62, 11/1); the best hit
with E <= 1e-5 and query coverage >= 0.5 is the homolog. The query is the gene's central 999 bp
(333 codons, coding strand); the target genome is tiled 1 kb / stride 500 on one strand; a hit is
correct when the tile overlaps the homolog gene. Methods: ``--methods`` (default: random, k-mer
4/5/6, aa:2 six rows per tile, aa:2 summed, aa:2 ORFs only, and the shipped default model), all
centred on the reference mean and L2-normalised (random excepted), exact inner-product search.

Before measuring, the script checks that the multi-row search returns the brute-force best-pair
ranking and that a gene's own window finds its own tiles (self-truth). It then times the
embedding of 1000 target tiles per method (one warm-up, median of 3) and prints one JSON line per
row; ``--summary`` writes the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from genoembed.eval.protein import (DEFAULT_METHODS, best_tiles, centred_unit, evaluate_task, method_for,
                                    protein_summary, protein_task)

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
E536 = DATA / "ecoli_536" / "NC_008253.fna.gz"
MG1655 = DATA / "ecoli_k12" / "MG1655-K12.fasta.gz"
SJM180 = DATA / "h_pylori" / "SJM180.fasta.gz"
G27 = DATA / "h_pylori" / "G27.fasta.gz"
SIZES = {
    "small": dict(queries=100, pairs=[(SJM180, E536)], methods=("random", "kmer:4", "aa:2:frames", "aa:2", "aa:2:orf")),
    "medium": dict(queries=300, pairs=[(SJM180, E536), (E536, SJM180)], methods=(*DEFAULT_METHODS, "default")),
    "large": dict(queries=1000, pairs=[(SJM180, E536), (E536, SJM180), (G27, MG1655), (MG1655, G27)],
                  methods=(*DEFAULT_METHODS, "default")),
}


def check_best_pair_search() -> None:
    """The multi-row search must rank tiles exactly as brute force over every (query row, tile row) pair."""
    rng = np.random.default_rng(0)
    reference = centred_unit(rng.standard_normal((200, 6, 16)), None).reshape(200, 6, 16)
    queries = centred_unit(rng.standard_normal((20, 6, 16)), None).reshape(20, 6, 16)
    brute = np.argsort(-np.einsum("qad,tbd->qtab", queries, reference).max(axis=(2, 3)), axis=1, kind="stable")
    if not np.array_equal(best_tiles(reference, queries, 10), brute[:, :10]):
        raise SystemExit("check failed: best_tiles differs from the brute-force best-pair ranking")


def check_self_truth() -> None:
    """Every gene of a genome must find itself (identity 100) and its own tiles under aa:2 six rows."""
    task = protein_task(SJM180, SJM180, n_queries=30, seed=7)
    if task.identities.min() < 99.9:
        raise SystemExit("check failed: a gene's best protein hit in its own genome is not itself")
    rows = evaluate_task(task, [method_for("aa:2:frames")], ks=(10,))
    if rows[0]["recall_at_10"] < 0.95:
        raise SystemExit(f"check failed: self-retrieval R@10 {rows[0]['recall_at_10']:.3f} < 0.95")


def embed_cost(method, tiles: list[str], repeats: int = 3) -> float:
    """Seconds to embed 1000 tiles (one warm-up, median of ``repeats``)."""
    method.vectors(tiles[:10])
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        method.vectors(tiles)
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000 / len(tiles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--methods", help="comma-separated methods (default: the size's list)")
    parser.add_argument("--summary", type=Path, help="write the Markdown table here")
    args = parser.parse_args()
    size = SIZES[args.size]
    methods = [method_for(name) for name in (args.methods.split(",") if args.methods else size["methods"])]
    check_best_pair_search()
    check_self_truth()
    rows = []
    for query, target in size["pairs"]:
        task = protein_task(query, target, n_queries=size["queries"], seed=0, say=lambda m: print(f"# {m}"))
        for row in evaluate_task(task, methods, ks=(1, 10), say=lambda m: print(f"# {m}")):
            rows.append(row)
            print(json.dumps(row))
    tiles = task.tile_sequences[:1000]
    costs = {method.name: embed_cost(method, tiles) for method in methods}
    print(json.dumps({"cost_seconds_per_1000_tiles": costs, "machine": platform.processor() or platform.machine(),
                      "size": args.size}))
    if args.summary:
        cost_lines = "\n".join(f"| {name} | {seconds:.3g} |" for name, seconds in costs.items())
        args.summary.write_text(protein_summary(rows) + "\n| method | seconds per 1000 tiles of 1 kb |\n|---|---|\n"
                                + cost_lines + "\n")


if __name__ == "__main__":
    main()
