"""End-to-end benchmark: index -> search -> annotation join, on real genomes.

Sizes: small = Arabidopsis chloroplast (154 kbp, shipped), medium = E. coli 536
(4.9 Mbp), large = five H. pylori genomes in one FASTA (8 Mbp). Each run
checks correctness first (every sampled tile's top hit is itself; the
annotation join agrees with a brute-force Python join), then prints one JSON
line: tiles/s, index build s, queries/s, join s, peak RSS.

    python benchmarks/end_to_end.py --size small --model default
    python benchmarks/end_to_end.py --size medium --model kmer:5
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from genoembed.annotate import add_annotations, annotate_hits
from genoembed.genome import open_genome
from genoembed.build import index
from genoembed.embedders import get_embedder
from genoembed.resources import resolve
from genoembed.search import Query, search
from genoembed.sql import run_sql
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def genome_for(size: str, workdir: Path) -> tuple[Path, Path | None]:
    if size == "small":
        return resolve("genoembed:data/demo/NC_000932.fa"), resolve("genoembed:data/demo/NC_000932.gb")
    if size == "medium":
        return SHARED / "ecoli_536" / "NC_008253.fna.gz", None
    combined = workdir / "h_pylori_x5.fa"
    with open(combined, "wb") as sink:
        for path in sorted((SHARED / "h_pylori").glob("*.fasta.gz")):
            if "contigs" not in path.name:
                sink.write(gzip.decompress(path.read_bytes()))
    return combined, None


def brute_force_overlaps(hits: list[dict], features: list[dict]) -> int:
    return sum(1 for h in hits for f in features
               if h["chrom"] == f["chrom"] and h["start"] < f["end"] and f["start"] < h["end"])


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(size: str, model: str, factory: str, queries: int, stride: int, workdir: Path) -> dict:
    fasta, annotations = genome_for(size, workdir)
    embedder = get_embedder(model)
    tiling = TilingSpec(window=1000, stride=stride, strands="both")
    started = time.perf_counter()
    store = index(fasta, workdir / "store", embedder=embedder, tiling=tiling, index_spec=None)
    embed_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from genoembed.indexing import build_store_index

    build_store_index(store, IndexSpec(factory=factory))
    index_seconds = time.perf_counter() - started
    if annotations is not None:
        add_annotations(store, annotations)

    genome = open_genome(fasta)
    rng = np.random.default_rng(0)
    sampled = store.tiles(np.sort(rng.choice(store.num_tiles, size=min(queries, store.num_tiles), replace=False)))
    batch = [Query(f"t{t['tile_id']}", genome.fetch(t["chrom"], t["start"], t["end"], t["strand"]).upper(),
                   t["chrom"], t["start"], t["end"], t["strand"]) for t in sampled.to_pylist()]
    vectors_started = time.perf_counter()
    hits = search(store, batch, k=10)
    search_seconds = time.perf_counter() - vectors_started
    top = [h for h in hits.to_pylist() if h["rank"] == 1]
    by_name = {q.name: q for q in batch}
    found_self = np.mean([(h["start"], h["end"]) == (by_name[h["query"]].start, by_name[h["query"]].end)
                          for h in top])
    if factory == "Flat":
        assert found_self > 0.99, f"exact search must return the query tile itself (got {found_self:.3f})"

    join_seconds = None
    if annotations is not None:
        started = time.perf_counter()
        annotated = annotate_hits(store, hits)
        join_seconds = time.perf_counter() - started
        features = run_sql(store, "SELECT chrom, start, \"end\" FROM annotations").to_pylist()
        pairs = run_sql(store, "SELECT count(*) AS n FROM hit_features").to_pylist()[0]["n"]
        assert pairs == brute_force_overlaps(hits.to_pylist(), features), "join disagrees with brute force"
        assert annotated.num_rows == hits.num_rows
    return {
        "benchmark": "end_to_end", "size": size, "model": store.provenance["embedder"]["model_id"],
        "factory": factory, "genome_bp": sum(genome.contigs.values()), "tiles": store.num_tiles,
        "dim": store.dim, "embed_s": round(embed_seconds, 2), "tiles_per_s": round(store.num_tiles / embed_seconds, 1),
        "kbp_per_s": round(store.num_tiles * 1000 / embed_seconds / 1e3, 1), "index_build_s": round(index_seconds, 3),
        "queries": len(batch), "queries_per_s": round(len(batch) / search_seconds, 1),
        "self_hit_rate": round(float(found_self), 4), "join_s": None if join_seconds is None else round(join_seconds, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1), "machine": f"{platform.machine()} {platform.node()}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["small", "medium", "large"], default="small")
    parser.add_argument("--model", default="default", help="default, kmer[:K] or a model directory")
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--stride", type=int, default=500)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="genoembed-bench-"))
    try:
        print(json.dumps(run(args.size, args.model, args.factory, args.queries, args.stride, workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
