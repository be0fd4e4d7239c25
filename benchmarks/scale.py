"""Scale-out benchmark: embedding throughput vs workers (local vs ray engine), one index vs the same index
in parts (recall@10, QPS), and filtered search inside FAISS (selector vs exact search of the subset).

Sizes: small = chloroplast (154 kbp, both strands, 616 tiles) for throughput, two H. pylori
genomes for the index part; medium = E. coli 536 (4.9 Mbp) / all five H. pylori (8 Mbp).
Correctness is checked (ray rows == local rows; parts answer as one index; filtered recall against exact
search of the subset). One JSON line per config.

    python benchmarks/scale.py --size small [--part embed|index|filter|all]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("GENOEMBED_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
CHLOROPLAST = Path(__file__).resolve().parents[1] / "genoembed" / "data" / "demo" / "NC_000932.fa"


def emit(**record):
    record.setdefault("machine", f"{platform.machine()} {os.cpu_count()} cpu")
    print(json.dumps(record), flush=True)


def tiny_esm(directory: Path, hidden: int, layers: int) -> Path:
    """Random-init EsmForMaskedLM with genoembed's 6-mer vocabulary (a stand-in with a real forward cost)."""
    import torch
    from transformers import EsmConfig, EsmForMaskedLM

    from genoembed.embedders.tokenize import kmer_vocab, write_kmer_tokenizer

    write_kmer_tokenizer(directory, k=6)
    config = EsmConfig(vocab_size=len(kmer_vocab(6)), pad_token_id=1, mask_token_id=2, max_position_embeddings=200,
                       position_embedding_type="absolute", token_dropout=False, hidden_size=hidden,
                       num_hidden_layers=layers, num_attention_heads=4, intermediate_size=4 * hidden)
    config.architectures = ["EsmForMaskedLM"]
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(str(directory))
    return directory


def store_rows(store):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables(pq.read_table(path) for path in store.shard_paths)


# --------------------------------------------------------------------------- embedding throughput


def bench_embed(size: str, work: Path, repeats: int) -> None:
    import ray
    import torch

    from genoembed.embedders.hf import TransformersEmbedder
    from genoembed.build import index
    from genoembed.tiles import TilingSpec

    fasta = CHLOROPLAST if size == "small" else SHARED / "ecoli_536" / "NC_008253.fna.gz"
    tiling = TilingSpec(strands="both") if size == "small" else TilingSpec(stride=1000)
    model = tiny_esm(work / "model", hidden=128, layers=4)
    embedder = TransformersEmbedder(model, batch_size=32, device="cpu", reverse_complement=False, frames=1)
    bases = lambda store: store.num_tiles * tiling.window  # noqa: E731

    def local(threads: int, out: Path):
        torch.set_num_threads(threads)
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        store = index(fasta, out, embedder=embedder, tiling=tiling, index_spec=None, batch_rows=128)
        return store, time.perf_counter() - start

    reference, _ = local(2, work / "ref")  # warm-up and reference rows
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for engine, workers in (("local", 1), ("local", 2), ("ray", 1), ("ray", 2), ("ray-ordered", 2)):
            times = []
            for repeat in range(repeats):
                out = work / f"{engine}{workers}-{repeat}"
                if engine == "local":
                    store, seconds = local(workers, out)
                else:
                    start = time.perf_counter()
                    store = index(fasta, out, embedder=embedder, tiling=tiling, batch_rows=64, index_spec=None,
                                  engine="ray", engine_options={"num_workers": workers,
                                                                "preserve_order": engine == "ray-ordered"})
                    seconds = time.perf_counter() - start
                got, want = store_rows(store), store_rows(reference)
                error = float(np.abs(got["embedding"].combine_chunks().flatten().to_numpy()
                                     - want["embedding"].combine_chunks().flatten().to_numpy()).max())
                if got.drop_columns(["embedding"]) != want.drop_columns(["embedding"]) or error > 1e-5:
                    raise SystemExit(f"{engine} x{workers}: rows differ from the local engine (max err {error})")
                times.append(seconds)
                shutil.rmtree(out)
            best = min(times)
            emit(bench="embed", size=size, engine=engine, workers=workers, tiles=reference.num_tiles,
                 seconds=[round(t, 2) for t in times], kbp_per_s=round(bases(reference) / best / 1e3, 1),
                 tiles_per_s=round(reference.num_tiles / best, 1), max_abs_err_vs_local=error,
                 model="EsmForMaskedLM 4x128 random, 1 kb tiles (168 tokens)")
    finally:
        ray.shutdown()
    torch.set_num_threads(2)


# --------------------------------------------------------------------------- index and filter


def genome_store(size: str, work: Path):
    """H. pylori genomes (one per genome name) in one store, 5-mer spectra, 1 kb tiles every 500 bp."""
    from genoembed.embedders.kmer import KmerEmbedder
    from genoembed.genome import open_genome
    from genoembed.build import index
    from genoembed.store import Store
    from genoembed.tiles import TilingSpec

    names = ["ELS37", "G27", "Gambia94_24", "Puno120", "SJM180"][: 2 if size == "small" else 5]
    embedder, tiling = KmerEmbedder(k=5), TilingSpec(window=1000, stride=500)
    genomes = []
    for name in names:
        path = work / f"{name}.fa"
        path.write_bytes(gzip.decompress((SHARED / "h_pylori" / f"{name}.fasta.gz").read_bytes()))
        genomes.append(open_genome(path))
    for genome in genomes:  # one store, the genomes appended one after another
        index(genome, work / "hp", embedder=embedder, tiling=tiling, index_spec=None, shard_rows=1024, append=True)
    store = Store.open(work / "hp")
    contigs = open_genome_contigs(work)
    queries = embedder.embed(contigs)
    return store, queries


def open_genome_contigs(work: Path, count: int = 300) -> list[str]:
    """1 kb windows of SJM180's draft contigs (real reads-like queries)."""
    from genoembed.genome import open_genome

    path = work / "contigs.fa"
    path.write_bytes(gzip.decompress((SHARED / "h_pylori" / "SJM180_contigs.fasta.gz").read_bytes()))
    genome = open_genome(path)
    rng = np.random.default_rng(0)
    long_enough = [name for name, length in genome.contigs.items() if length >= 1000]
    picks = []
    for _ in range(count):
        name = long_enough[rng.integers(len(long_enough))]
        start = int(rng.integers(0, genome.contigs[name] - 1000 + 1))
        picks.append(genome.fetch(name, start, start + 1000).upper())
    return picks


def timed_search(search, repeats: int):
    search()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = search()
        best = min(best, time.perf_counter() - start)
    return result, best


def recall(ids, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, truth)]))


def bench_index(size: str, work: Path, repeats: int) -> None:
    """One index against the same index in parts (``IndexSpec.part_rows``: what a store bigger than RAM uses,
    each part memory-mapped) for Flat and IVF; parts cloned from one trained index answer as one index."""
    from genoembed.indexing import build_store_index
    from genoembed.vector_index import IndexSpec, build_index, prepare

    store, queries = genome_store(size, work)
    x = prepare(queries, "ip")
    exact = build_index(store, IndexSpec("Flat"))
    (_, truth), exact_s = timed_search(lambda: exact.search(x, 10), repeats)
    emit(bench="index", size=size, layout="single Flat (exact)", tiles=store.num_tiles, dim=store.dim,
         recall_at_10=1.0, qps=round(len(x) / exact_s))
    lists = 64 if size == "small" else 128
    part_rows = -(-store.num_tiles // 4)
    for factory in ("Flat", f"IVF{lists},Flat", f"IVF{lists},SQ8"):
        found = {}
        for parts in (None, part_rows):
            start = time.perf_counter()
            build_store_index(store, IndexSpec(factory, train_size=20_000, part_rows=parts))
            build_s = time.perf_counter() - start
            index = store.refresh().vector_index()
            for nprobe in (4, 16) if factory != "Flat" else (None,):
                (_, ids), seconds = timed_search(lambda: index.search(x, 10, nprobe=nprobe), repeats)
                found[parts, nprobe] = ids
                emit(bench="index", size=size, layout=f"{factory} in {len(index.parts)} part(s)", nprobe=nprobe,
                     recall_at_10=round(recall(ids, truth), 4), qps=round(len(x) / seconds), build_s=round(build_s, 2),
                     same_ids_as_one_part=bool(np.mean([set(a) == set(b) for a, b in
                                                        zip(ids, found[None, nprobe])]) == 1))
    bench_filter(store, x, repeats, size)


def bench_filter(store, x, repeats: int, size: str) -> None:
    """Filtered search inside FAISS (the store's last index: IVF-SQ8 in parts) against exact search of the subset."""
    from genoembed.subsets import filtered_search, resolve, subset_vectors, tile_filter
    from genoembed.recall import exact_search
    from genoembed.subset_search import TileSubset

    rng = np.random.default_rng(0)
    mask = np.zeros(store.id_limit, dtype=bool)
    mask[rng.choice(store.num_tiles, store.num_tiles // 100, replace=False)] = True
    subsets = {genome: resolve(store, tile_filter(genome)) for genome in store.genomes}
    subsets["random 1% of tiles"] = TileSubset(int(mask.sum()), mask=mask)
    for name, subset in subsets.items():
        _, truth = exact_search(subset_vectors(store, subset), x, 10, store.metric)
        for exact_below in (0, None):
            stats = {}
            options = {} if exact_below is None else {"exact_below": exact_below}
            (_, ids), seconds = timed_search(lambda: filtered_search(store, x, 10, subset, stats=stats, **options),
                                             repeats)
            emit(bench="filter", size=size, subset=name, subset_fraction=round(subset.size / store.num_tiles, 3),
                 method=stats["method"], qps=round(len(x) / seconds), recall_at_10=round(recall(ids, truth), 4),
                 all_k_found=bool((ids >= 0).all()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["small", "medium"], default="small")
    parser.add_argument("--part", choices=["embed", "index", "all"], default="all")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="genoembed-scale-"))
    os.environ.setdefault("GENOEMBED_CACHE", str(work / "cache"))
    try:
        if args.part in ("index", "all"):
            bench_index(args.size, work, args.repeats)
        if args.part in ("embed", "all"):
            bench_embed(args.size, work, args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
