"""Build-time tuning at human scale without the store (issue 24): does ``recall.tune_search`` reach recall@10 0.95
for ``benchmarks/human_scale.py``'s IVF-PQ + float16 refine index, on windows it was not tuned on?

The same synthetic genome as ``human_scale.py`` (``small`` 31 Mbp / 61,796 tiles, ``medium`` 309 Mbp / 618,290),
tiled 1 kb every 500 bp and embedded by the default model (numpy token table, in process), the index of
``human_scale.FACTORIES`` built with FAISS as a store build builds it (100,000 training vectors), then two sets of
1,000 held-out query windows with 5 % substitutions (what ``indexing.tuning_queries`` makes): one to tune on with
the store's own tuning code, one to check the tuned setting on, both against exact top-10. Asserts the checked
recall reaches the target; prints one JSON line per size, plus one per (nprobe, k_factor) looked at.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/human_tuning.py small medium    # medium: ~10 CPU-min
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from human_scale import FACTORIES, contig_lengths, genome_text  # noqa: E402

from genoembed import recall  # noqa: E402
from genoembed.embedders.table import TokenTableEmbedder  # noqa: E402
from genoembed.resources import default_model_dir  # noqa: E402
from genoembed.synthetic import mutate  # noqa: E402
from genoembed.vector_index import import_faiss, prepare, search_index, with_tile_ids  # noqa: E402

WINDOW, STRIDE, K, TARGET = 1000, 500, 10, 0.95


def contigs(size: str) -> dict[str, str]:
    text = b"".join(genome_text(contig_lengths(size), 24)).decode()
    return {name: body.replace("\n", "") for name, _, body in
            (record.partition("\n") for record in text.split(">")[1:])}


def tile_vectors(embedder, genome: dict[str, str]) -> np.ndarray:
    vectors = []
    for sequence in genome.values():
        starts = range(0, max(len(sequence) - WINDOW, 0) + 1, STRIDE)
        for first in range(0, len(starts), 8192):
            vectors.append(embedder.embed([sequence[s:s + WINDOW] for s in starts[first:first + 8192]]))
    return prepare(np.concatenate(vectors), "ip")


def query_windows(embedder, genome: dict[str, str], count: int, rng) -> np.ndarray:
    names, lengths = list(genome), np.array([len(sequence) for sequence in genome.values()], dtype=float)
    windows = []
    for pick in rng.choice(len(names), count, p=lengths / lengths.sum()):
        sequence = genome[names[pick]]
        start = int(rng.integers(0, len(sequence) - WINDOW + 1))
        windows.append(mutate(sequence[start:start + WINDOW], 0.05, seed=int(rng.integers(2 ** 31))))
    return prepare(embedder.embed(windows), "ip")


def run(size: str) -> dict:
    faiss = import_faiss()
    began = time.perf_counter()
    embedder = TokenTableEmbedder(default_model_dir())
    genome = contigs(size)
    vectors = tile_vectors(embedder, genome)
    rng = np.random.default_rng(7)
    tune_queries, check_queries = (query_windows(embedder, genome, 1000, rng) for _ in range(2))
    embed_s = time.perf_counter() - began
    index = faiss.index_factory(vectors.shape[1], FACTORIES[size], faiss.METRIC_INNER_PRODUCT)
    index.train(vectors[np.random.default_rng(0).choice(len(vectors), min(100_000, len(vectors)), replace=False)])
    index = with_tile_ids(index)
    index.add_with_ids(vectors, np.arange(len(vectors)))
    build_s = time.perf_counter() - began - embed_s
    everything = [(np.arange(len(vectors)), vectors)]
    tune_exact, check_exact = (recall.exact_neighbours(everything, queries, K, "ip")
                               for queries in (tune_queries, check_queries))
    nlist = faiss.extract_index_ivf(index).nlist
    for nprobe, k_factor in [(nlist, 64)]:  # the best the shortlists of k * 64 (the widest before) could do
        found = search_index(index, check_queries, K, "ip", nprobe=nprobe, k_factor=k_factor)[1]
        print(json.dumps({"size": size, "nprobe": nprobe, "k_factor": k_factor,
                          "recall_at_10": round(recall.recall_at(found, check_exact, K), 4),
                          "bytes_per_query": int(recall.bytes_read(index, K, "nprobe", nprobe, k_factor))}), flush=True)
    started = time.perf_counter()
    tuned = recall.tune_search(index, "ip", tune_queries, tune_exact, TARGET, K)
    settings = {name: tuned[name] for name in ("nprobe", "k_factor")}
    checked = recall.recall_at(search_index(index, check_queries, K, "ip", **settings)[1], check_exact, K)
    record = {"bench": "human_tuning", "size": size, "tiles": len(vectors), "factory": FACTORIES[size],
              "k_factors": list(recall.K_FACTORS), **tuned, "recall_at_10_checked": round(checked, 4),
              "bytes_per_query": int(recall.bytes_read(index, K, "nprobe", settings["nprobe"], settings["k_factor"])),
              "embed_s": round(embed_s), "build_s": round(build_s), "tune_s": round(time.perf_counter() - started)}
    print(json.dumps(record), flush=True)
    if checked < TARGET:
        raise SystemExit(f"{size}: tuned to {settings}, recall@10 {checked:.3f} on held-out windows < {TARGET}")
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="+", choices=["small", "medium"])
    for size in parser.parse_args().sizes:
        run(size)


if __name__ == "__main__":
    main()
