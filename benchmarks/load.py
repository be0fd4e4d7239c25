"""Load test: many threads searching one store at once; QPS, p50/p99 latency, RSS drift.

Builds a store of N synthetic unit vectors (seeded; tiles on a synthetic
genome so every row is a real tile record), an index from the factory string,
then runs T threads, each issuing single-vector searches through the public
`genoembed.search` path (FAISS search + tile lookup in Parquet + hits table)
for a bounded number of queries. Correctness first: for a sample of queries
the Flat result equals brute-force numpy top-k. Prints one JSON line.

    python benchmarks/load.py --size small      # 10^5 vectors
    python benchmarks/load.py --size medium     # 10^6 vectors (the issue's target)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.version import VERSION as __version__
from genoembed.indexing import build_store_index
from genoembed.search import Query, search
from genoembed.store import Store
from genoembed.store_writer import StoreWriter
from genoembed.vector_index import IndexSpec

SIZES = {"small": 100_000, "medium": 1_000_000, "large": 3_000_000}


class FixedVectors:
    """Embedder stand-in: queries are given as vectors encoded in the query name."""

    def __init__(self, vectors: np.ndarray):
        self.vectors = vectors
        self.dim = vectors.shape[1]
        self.fingerprint = "synthetic"

    def embed(self, sequences):
        return self.vectors[[int(s) for s in sequences]]

    def describe(self):
        return {"kind": "synthetic", "dim": self.dim, "fingerprint": self.fingerprint}


def build_store(root: Path, rows: int, dim: int, seed: int) -> tuple[Store, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((rows, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    provenance = {"genoembed_version": __version__, "embedder": {"kind": "synthetic", "dim": dim},
                  "tiling": {"window": 1000, "stride": 1000, "strands": "+"}, "embedding_dtype": "float32"}
    genome = {"name": "synthetic", "path": "", "sha256": "", "contig_lengths": {"chr1": rows * 1000}}
    writer = StoreWriter(root, provenance, dim, genome, shard_rows=131072)
    for first in range(0, rows, 65536):
        ids = np.arange(first, min(rows, first + 65536))
        tiles = pa.RecordBatch.from_pydict({
            "tile_id": ids, "genome": ["synthetic"] * len(ids), "chrom": ["chr1"] * len(ids),
            "start": ids * 1000, "end": ids * 1000 + 1000, "strand": ["+"] * len(ids),
            "gc": np.full(len(ids), 0.5, np.float32), "n_fraction": np.zeros(len(ids), np.float32),
            "soft_masked_fraction": np.zeros(len(ids), np.float32)}, schema=schema.TILES)
        writer.write(tiles, vectors[ids])
    writer.close()
    return Store.open(root), vectors


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--factory", default="HNSW32")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--queries-per-thread", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--nprobe", type=int, default=32, help="IVF lists visited per query")
    parser.add_argument("--ef-search", type=int, default=128, help="HNSW search breadth")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="genoembed-load-"))
    try:
        started = time.perf_counter()
        store, vectors = build_store(workdir / "store", SIZES[args.size], args.dim, seed=0)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        build_store_index(store, IndexSpec(factory=args.factory))
        index_seconds = time.perf_counter() - started
        rng = np.random.default_rng(1)
        query_vectors = vectors[rng.choice(len(vectors), 1000, replace=False)] + \
            rng.normal(0, 0.05, (1000, args.dim)).astype(np.float32)
        embedder = FixedVectors(query_vectors)

        # correctness before timing: exact top-k agreement (recall@k for ANN factories)
        sample = list(range(50))
        hits = search(store, [Query(str(i), str(i)) for i in sample], k=args.k, embedder=embedder, save_as=None,
                      nprobe=args.nprobe, ef_search=args.ef_search)
        found = np.array(hits.column("tile_id").to_pylist()).reshape(len(sample), args.k)
        normalised = query_vectors[sample] / np.linalg.norm(query_vectors[sample], axis=1, keepdims=True)
        exact = np.argsort(-(normalised @ vectors.T), axis=1)[:, :args.k]
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(found, exact)]))
        if args.factory == "Flat":
            assert recall > 0.999, recall

        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        rss_samples = []

        def worker(seed: int) -> None:
            local = np.random.default_rng(seed)
            for _ in range(args.queries_per_thread):
                index = int(local.integers(len(query_vectors)))
                began = time.perf_counter()
                try:
                    search(store, [Query(str(index), str(index))], k=args.k, embedder=embedder, save_as=None,
                      nprobe=args.nprobe, ef_search=args.ef_search)
                except Exception as error:  # counted and reported; the benchmark must show zero
                    with lock:
                        errors.append(repr(error))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - began)

        rss_before = rss_mb()
        threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(args.threads)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            rss_samples.append(rss_mb())
            time.sleep(0.2)
        wall = time.perf_counter() - started
        latency_ms = np.array(latencies) * 1000
        print(json.dumps({
            "benchmark": "load", "size": args.size, "vectors": len(vectors), "dim": args.dim,
            "factory": args.factory, "nprobe": args.nprobe, "ef_search": args.ef_search, "threads": args.threads, "queries": len(latencies), "errors": len(errors),
            "recall_at_k_vs_exact": round(recall, 4), "qps": round(len(latencies) / wall, 1),
            "p50_ms": round(float(np.percentile(latency_ms, 50)), 2),
            "p99_ms": round(float(np.percentile(latency_ms, 99)), 2),
            "store_build_s": round(build_seconds, 1), "index_build_s": round(index_seconds, 1),
            "rss_before_mb": round(rss_before, 1), "rss_max_during_mb": round(max(rss_samples, default=0), 1),
            "rss_after_mb": round(rss_mb(), 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
        assert not errors, errors[:3]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
