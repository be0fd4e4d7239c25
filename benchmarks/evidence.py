"""Cost of hit evidence (strand from k-mers, parasail alignment, locus merging) per 1000 queries vs
plain search, and how often the top-ranked hit is not the best-aligned one.

Stores: 4-mer vectors (canonical), 1 kb tiles every 500 bp on the forward strand, Flat index, built
once per size in a temporary directory. Queries: seeded 1 kb windows of the genome, half of them
reverse-complemented, with 5 % substitutions, so every query has a known true locus and strand.
Per size the same queries are searched three ways (k=10): plain (``add_evidence`` stubbed out to
show the vector search alone), default (strand from k-mer counts) and ``align=True``; then loci are
merged. Correctness is asserted, not assumed: every query's best-aligned hit lies on its true locus
and strand with identity >= 0.9, aligned and k-mer strands agree there, and loci never overlap.
Prints one JSON line per size.

    PYTHONPATH=. .venv/bin/python benchmarks/evidence.py small medium large
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import genoembed.search  # noqa: E402,F401  (the module object: the package root re-exports the function)
from genoembed.build import index  # noqa: E402
from genoembed.embedders.kmer import KmerEmbedder  # noqa: E402
from genoembed.evidence import align, merge_loci  # noqa: E402
from genoembed.search import Query, search  # noqa: E402
from genoembed.tiles import TilingSpec  # noqa: E402

search_module = sys.modules["genoembed.search"]
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SIZES = {  # genome, queries
    "small": (ROOT / "genoembed" / "data" / "demo" / "NC_000932.fa", 100),
    "medium": (SHARED / "ecoli_536" / "NC_008253.fna.gz", 200),
    "large": (SHARED / "ecoli_536" / "NC_008253.fna.gz", 1000),
}
K = 10


def queries(genome, n: int, seed: int = 0) -> tuple[list[Query], list[tuple[str, int, int, str]]]:
    """n mutated 1 kb windows, each with its true (chrom, start, end, strand)."""
    rng = np.random.default_rng(seed)
    contigs = [c for c, length in genome.contigs.items() if length > 2000]
    made, truth = [], []
    for number in range(n):
        chrom = contigs[int(rng.integers(len(contigs)))]
        start = int(rng.integers(0, genome.contigs[chrom] - 1000))
        strand = "+-"[number % 2]
        bases = np.array(list(genome.fetch(chrom, start, start + 1000, strand).upper()))
        where = rng.random(len(bases)) < 0.05
        bases[where] = rng.choice(list("ACGT"), int(where.sum()))
        made.append(Query(f"q{number}", "".join(bases)))
        truth.append((chrom, start, start + 1000, strand))
    return made, truth


def timed(function, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        began = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - began)
    return best, result


def check(aligned, loci, made, truth, genome) -> dict:
    """Assert correctness; return the rank/identity disagreement counts.

    The best-aligned hit must align as well as the query does to its true locus (a repeat copy, e.g.
    the chloroplast's inverted repeat, may tie), and where it is the true locus, on the true strand."""
    by_query: dict[str, list[dict]] = {}
    for hit in aligned.to_pylist():
        by_query.setdefault(hit["query"], []).append(hit)
    disagree = 0
    for number, (chrom, start, end, strand) in enumerate(truth):
        hits = by_query[f"q{number}"]
        best = max(hits, key=lambda hit: hit["alignment_score"] or 0)
        true = align(made[number].sequence, genome.fetch(chrom, max(0, start - 50), end + 50), max(0, start - 50))
        assert best["alignment_score"] >= true.alignment_score and best["identity"] >= 0.9, (number, best)
        if best["chrom"] == chrom and best["target_start"] < end and start < best["target_end"]:
            assert best["strand"] == strand, (number, best)
        top = min(hits, key=lambda hit: hit["rank"])
        disagree += (top["alignment_score"] or 0) < best["alignment_score"]
    for query_loci in _grouped(loci.to_pylist()):
        spans = sorted((l["chrom"], l["strand"], l["start"], l["end"]) for l in query_loci)
        assert all(a[:2] != b[:2] or a[3] < b[2] for a, b in zip(spans, spans[1:])), "overlapping loci"
    return {"top_hit_not_best_aligned": disagree, "queries": len(truth)}


def _grouped(rows: list[dict]) -> list[list[dict]]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["query"], []).append(row)
    return list(groups.values())


def run(size: str, workdir: Path) -> dict:
    fasta, n = SIZES[size]
    store = index(fasta, workdir / size, embedder=KmerEmbedder(k=4), tiling=TilingSpec(strands="+"),
                  shard_rows=65536)
    made, truth = queries(store.genome(), n)
    real_evidence = search_module.add_evidence
    search_module.add_evidence = lambda store, queries, hits, align=False: hits  # vector search alone
    try:
        plain_s, _ = timed(lambda: search(store, made, k=K))
    finally:
        search_module.add_evidence = real_evidence
    strand_s, stranded = timed(lambda: search(store, made, k=K))
    aligned_s, aligned = timed(lambda: search(store, made, k=K, align=True))
    loci_s, loci = timed(lambda: merge_loci(aligned))
    counts = check(aligned, loci, made, truth, store.genome())
    rows = aligned.to_pylist()
    shared = [0 if hit["identity"] is None else min(hit["end"], hit["target_end"]) - max(hit["start"], hit["target_start"])
              for hit in rows]  # bases of the tile inside the alignment
    pairs = list(zip(stranded["strand"].to_pylist(), [hit["strand"] for hit in rows], shared))
    kmer_vs_aligned = np.mean([a == b for a, b, _ in pairs])
    on_homologs = np.mean([a == b for a, b, bases in pairs if bases >= 250])
    per_1000 = 1000 / n
    return {"benchmark": "evidence", "size": size, "genome": fasta.name, "tiles": store.num_tiles, "k": K, **counts,
            "plain_s_per_1000": round(plain_s * per_1000, 3),
            "strand_s_per_1000": round(strand_s * per_1000, 3),
            "align_s_per_1000": round(aligned_s * per_1000, 3),
            "loci_s_per_1000": round(loci_s * per_1000, 4),
            "align_over_plain": round(aligned_s / plain_s, 1), "strand_over_plain": round(strand_s / plain_s, 2),
            "loci_per_query": round(loci.num_rows / n, 2),
            "kmer_strand_agrees_with_alignment": round(float(kmer_vs_aligned), 4),
            "kmer_strand_agrees_where_tile_shares_250bp_aligned": round(float(on_homologs), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", default=["small"], choices=sorted(SIZES))
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="genoembed-evidence-") as directory:
        for size in arguments.sizes:
            print(json.dumps(run(size, Path(directory))), flush=True)


if __name__ == "__main__":
    main()
