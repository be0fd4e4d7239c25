"""ANN at scale (issue 20): does an approximate index keep its recall at 10^5-10^7 real tiles?

Data: every shared genome (E. coli 536, K-12 MG1655 and DH1, five H. pylori; ~21 Mbp) embedded with
the shipped default model, 1 kb tiles on the + strand at a stride that sets the size (small 200 bp
~10^5 tiles, medium 20 bp ~10^6, large 4 bp ~5x10^6 and xlarge 2 bp ~10^7, both as float16).
Queries: 1000 held-out 1 kb windows at random odd (off-grid) offsets with 5 % substitutions, embedded
with the same model; the truth
is their exact top-10 over the stored vectors (streamed brute force). Each index is built through
``genoembed.indexing`` so the build-time tuning (recall_target 0.95) runs; the tuned setting is then
checked on the held-out queries. One JSON line per configuration; correctness is asserted (every ANN
result id is a stored tile; an IVF-Flat index searched wide enough returns the brute-force top-10).

    python benchmarks/ann_scale.py build --size small|medium|large [--work /tmp/ann-scale]
    python benchmarks/ann_scale.py queries --size ...
    python benchmarks/ann_scale.py bench --size ... --factory 'IVF1264,Flat' [--part-rows N]
    python benchmarks/ann_scale.py bench --size ... --factory 'IVF1342,PQ32np,Refine(SQfp16)'   # PQ re-ranked

A refine stage's shortlist factor (k_factor) is tuned with nprobe at build time; the benchmark sweeps nprobe at
the tuned k_factor, then k_factor at the tuned nprobe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
GENOMES = [SHARED / "ecoli_536" / "NC_008253.fna.gz", SHARED / "ecoli_k12" / "MG1655-K12.fasta.gz",
           SHARED / "ecoli_k12" / "DH1.fasta.gz"] + \
    sorted(p for p in (SHARED / "h_pylori").glob("*.fasta.gz") if "_contigs" not in p.name)
STRIDES = {"small": 200, "medium": 20, "large": 4, "xlarge": 2}
DTYPES = {"small": "float32", "medium": "float32", "large": "float16", "xlarge": "float16"}
QUERIES, K, SUBSTITUTIONS = 1000, 10, 0.05


def emit(**record) -> None:
    record.setdefault("machine", f"{platform.machine()} {os.cpu_count()} cpu (shared)")
    print(json.dumps(record), flush=True)


def rss_gib() -> float:
    """Current resident set size (GiB), read from /proc: what an index costs in RAM once loaded."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def build_store(size: str, root: Path) -> None:
    """Embed every genome into one store, one genome at a time (append), no index: indexes come later."""
    from genoembed.build import index
    from genoembed.embedders import get_embedder
    from genoembed.tiles import TilingSpec

    embedder, tiling = get_embedder("default"), TilingSpec(window=1000, stride=STRIDES[size], strands="+")
    started, tiles = time.perf_counter(), 0
    for number, fasta in enumerate(GENOMES):
        begun = time.perf_counter()
        store = index(fasta, root, embedder=embedder, tiling=tiling, index_spec=None, append=number > 0,
                      embedding_dtype=DTYPES[size])
        added = store.num_tiles - tiles
        tiles = store.num_tiles
        emit(bench="embed", size=size, genome=fasta.name, tiles=added, seconds=round(time.perf_counter() - begun, 1),
             tiles_per_s=round(added / (time.perf_counter() - begun), 1))
    seconds = time.perf_counter() - started
    disk = sum(p.stat().st_size for p in (root / "shards").glob("*.parquet"))
    emit(bench="embed-total", size=size, stride=STRIDES[size], dtype=DTYPES[size], tiles=tiles,
         seconds=round(seconds, 1), tiles_per_s=round(tiles / seconds, 1), shards_gib=round(disk / 2 ** 30, 3),
         shard_bytes_per_tile=round(disk / tiles, 1))


def held_out_queries(count: int = QUERIES, seed: int = 7) -> list[str]:
    """1 kb windows at odd offsets (never on an even-stride tile grid), genome weighted by length, each with
    5 % substitutions: what a user's query looks like, unlike a stored vector (its own nearest neighbour)."""
    from genoembed.genome import open_genome
    from genoembed.synthetic import mutate

    contigs = [(genome, name, length) for genome in map(open_genome, GENOMES)
               for name, length in genome.contigs.items() if length > 2000]
    lengths = np.array([length for *_, length in contigs], dtype=float)
    rng = np.random.default_rng(seed)
    windows = []
    for number, pick in enumerate(rng.choice(len(contigs), size=count, p=lengths / lengths.sum())):
        genome, name, length = contigs[pick]
        start = 2 * int(rng.integers(0, (length - 1001) // 2)) + 1
        windows.append(mutate(genome.fetch(name, start, start + 1000), SUBSTITUTIONS, seed=seed * 100_000 + number))
    return windows


def make_queries(root: Path) -> None:
    """Embed the held-out queries and their exact top-10 over the stored vectors (streamed brute force)."""
    from genoembed.embedders import get_embedder
    from genoembed.store import Store
    from genoembed.recall import exact_neighbours

    store = Store.open(root)
    started = time.perf_counter()
    queries = get_embedder("default").embed(held_out_queries())
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    exact = exact_neighbours(store.iter_embeddings(), queries, K, "ip")
    exact_s = time.perf_counter() - started
    assert exact.shape == (QUERIES, K) and (exact >= 0).all() and (exact < store.id_limit).all()
    np.savez(root.parent / f"{root.name}-queries.npz", queries=queries, exact=exact)
    emit(bench="queries", size=root.name, tiles=store.num_tiles, queries=QUERIES, embed_s=round(embed_s, 2),
         exact_scan_s=round(exact_s, 1), exact_qps=round(QUERIES / exact_s, 1))


def timed_tuning(timings: dict):
    """Wrap ``indexing.tune_store_index`` to time it and keep what it returned (build time excludes it)."""
    import sys

    indexing = sys.modules["genoembed.indexing"]
    original = indexing.tune_store_index

    def wrapper(*arguments, **options):
        started = time.perf_counter()
        tuned = original(*arguments, **options)
        timings["tune_s"] = time.perf_counter() - started
        return tuned

    indexing.tune_store_index = wrapper


def build_and_tune(root: Path, factory: str, train_size: int, part_rows: int) -> dict:
    """Build the store's index through genoembed.indexing (tuning included); what it recorded and took."""
    from genoembed import indexing
    from genoembed.store import Store
    from genoembed.vector_index import IndexSpec

    store = Store.open(root)
    spec = IndexSpec(factory=factory, train_size=min(train_size, store.num_tiles), recall_target=0.95,
                     part_rows=part_rows or None)
    timings: dict = {}
    timed_tuning(timings)
    started = time.perf_counter()
    entry = indexing.build_store_index(store, spec)
    total = time.perf_counter() - started
    return {"build_s": round(total - timings.get("tune_s", 0.0), 1), "tune_s": round(timings.get("tune_s", 0.0), 1),
            "tuned": entry.get("search", {}), "parts": len(entry["parts"]), "train_size": spec.train_size,
            "peak_rss_build_gib": round(peak_rss_gib(), 2)}


def knob_values(index) -> tuple[str, list[int]]:
    """The search knob of ``index`` and the settings swept on the held-out queries."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", [1 << i for i in range(31) if (1 << i) < ivf.nlist] + [int(ivf.nlist)]
    return "ef_search", [16 << i for i in range(7)]


def plateaued(recalls: list[float]) -> bool:
    """Widening the search stopped paying (recall >= 0.999, or < 0.002 gained): the rest of a PQ sweep
    costs minutes at 10^6-10^7 tiles and only repeats the quantisation ceiling."""
    return bool(recalls) and (recalls[-1] >= 0.999 or (len(recalls) > 1 and recalls[-1] - recalls[-2] < 0.002))


def overlap_recall(found: np.ndarray, exact: np.ndarray, tolerance: int) -> float:
    """Share of the exact top-10 tiles that have a returned tile within ``tolerance`` tile ids (ids run along
    each contig, so at stride s that is tolerance*s bp, half a window: the two tiles overlap by >= 50 %).
    At a 4 bp stride the exact top-10 are ~10 near-identical neighbours of one locus; this says whether
    the search found the locus even where quantisation shuffled which of them rank first."""
    near = [(np.abs(row[:, None] - truth[None, :]).min(0) <= tolerance).mean() for row, truth in zip(found, exact)]
    return round(float(np.mean(near)), 4)


def search_report(root: Path) -> dict:
    """Load the store's index fresh (RSS before/after), then recall, QPS and latency on the held-out queries."""
    from genoembed.store import Store
    from genoembed.recall import K_FACTORS, recall_at
    from genoembed.vector_index import refine_stage

    data = np.load(root.parent / f"{root.name}-queries.npz")
    queries, exact = data["queries"], data["exact"]
    store = Store.open(root)
    before = rss_gib()
    index = store.vector_index()  # every part, memory-mapped
    loaded = rss_gib() - before
    probe = index.parts[0]
    knob, values = knob_values(probe)
    tuned = {name: value for name, value in index.defaults.items()}
    curve = {}
    for value in values:
        _, found = index.search(queries, K, **{knob: value})
        assert ((found >= 0) & (found < store.id_limit)).all(), "an ANN result is not a stored tile id"
        curve[value] = round(recall_at(found, exact, K), 4)
        if plateaued(list(curve.values())) and value >= tuned.get(knob, 0):
            break
    setting = tuned.get(knob) or min((v for v in curve if curve[v] >= 0.95), default=max(curve))
    if setting not in curve:
        _, found = index.search(queries, K, **{knob: setting})
        curve[setting] = round(recall_at(found, exact, K), 4)
    k_factor_curve = {}
    if refine_stage(probe) is not None:  # the shortlist factor at the tuned setting (tuned k_factor included)
        for k_factor in sorted(K_FACTORS):
            _, found = index.search(queries, K, **{knob: setting}, k_factor=k_factor)
            k_factor_curve[k_factor] = round(recall_at(found, exact, K), 4)
    search = lambda batch: index.search(batch, K, **{knob: setting})
    search(queries[:10])
    started = time.perf_counter()
    _, found = search(queries)
    qps = QUERIES / (time.perf_counter() - started)
    latencies = []
    for row in range(200):
        started = time.perf_counter()
        search(queries[row:row + 1])
        latencies.append(time.perf_counter() - started)
    tolerance = 500 // STRIDES[root.name]
    _, fewest = index.search(queries, K, **{knob: values[0]}, k_factor=1)  # FAISS's defaults
    return {"knob": knob, "setting": setting, "recall_held_out": round(recall_at(found, exact, K), 4),
            "overlap_recall": overlap_recall(found, exact, tolerance),
            "overlap_recall_faiss_default": overlap_recall(fewest, exact, tolerance),
            "recall_faiss_default": round(recall_at(fewest, exact, K), 4), "held_out_curve": curve,
            "k_factor": tuned.get("k_factor"), "k_factor_curve": k_factor_curve, "qps_batched": round(qps, 1),
            "latency_p50_ms": round(1e3 * float(np.median(latencies)), 2), "index_ram_gib": round(loaded, 3)}


def index_disk_bytes(root: Path) -> int:
    from genoembed.store import Store
    from genoembed.vector_index import index_parts

    return sum((root / part["path"]).stat().st_size for part in index_parts(Store.open(root).manifest["index"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["build", "queries", "bench", "search"])
    parser.add_argument("--factory", default="Flat")
    parser.add_argument("--train-size", type=int, default=100_000)
    parser.add_argument("--part-rows", type=int, default=0, help="vectors per index part (0: one index file)")
    parser.add_argument("--size", choices=sorted(STRIDES), required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/ann-scale"))
    arguments = parser.parse_args()
    root = arguments.work / arguments.size
    if arguments.stage == "build":
        build_store(arguments.size, root)
    elif arguments.stage == "queries":
        make_queries(root)
    elif arguments.stage == "search":  # a fresh process, so RSS counts only the loaded index
        print(json.dumps(search_report(root)))
    else:
        import subprocess
        import sys

        built = build_and_tune(root, arguments.factory, arguments.train_size, arguments.part_rows)
        searched = subprocess.run([sys.executable, __file__, "search", "--size", arguments.size, "--work",
                                   str(arguments.work)],
                                  check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        from genoembed.store import Store

        tiles = Store.open(root).num_tiles
        disk = index_disk_bytes(root)
        report = json.loads(searched)
        if arguments.factory.endswith(",Flat"):  # no quantisation: wide enough, it must be the exact search
            assert max(report["held_out_curve"].values()) >= 0.99, report["held_out_curve"]
        emit(bench="ann", size=arguments.size, tiles=tiles, factory=arguments.factory, part_rows=arguments.part_rows,
             **built, **report, index_disk_mib=round(disk / 2 ** 20, 1), disk_bytes_per_tile=round(disk / tiles, 1),
             ram_bytes_per_tile=round(report["index_ram_gib"] * 2 ** 30 / tiles, 1))


if __name__ == "__main__":
    main()
