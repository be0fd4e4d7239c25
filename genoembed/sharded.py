"""Sharded FAISS indexes for stores bigger than one machine's RAM, and filtered search.

One quantizer (+PQ) is trained on a sample of the store (``IndexSpec``'s
factory string is still the one knob); every group of ``shards_per_index``
Parquet shards gets its own index cloned from that trained template, written
atomically under ``index/shards/`` with a small ``layout.json``. Because all
shard indexes share one trained quantizer, searching them one after another
with a running top-k merge (faiss's ``ResultHeap``) returns what one big index
would, and for IVF layouts they can be merged into one index with on-disk
inverted lists (``faiss.contrib.ondisk.merge_ondisk``). Scale is composed
from plain FAISS pieces, not a second implementation.

Filtered search (genome / contig) over-fetches ``k * factor`` neighbours,
keeps those in the subset and grows the factor until ``k`` are found or the
index is exhausted, so a filter never silently returns fewer than ``k``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from genoembed.errors import InputError, StoreError
from genoembed.store import Store, atomic_write_bytes, file_sha256, write_lock
from genoembed.vector_index import (IndexSpec, Metric, _faiss, add_store_vectors, prepare, save_index,
                               set_search_params, train_index, with_tile_ids)

SHARD_DIR = "index/shards"
LAYOUT = "layout.json"


def build_sharded(store: Store, spec: IndexSpec, shards_per_index: int = 1, template=None) -> dict:
    """Build one index per ``shards_per_index`` Parquet shards from one trained template; returns the layout."""
    if shards_per_index < 1:
        raise InputError(f"shards_per_index={shards_per_index}: must be >= 1")
    template = template if template is not None else train_index(store, spec)
    with write_lock(store.root):
        (store.root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        save_index(template, store.root / SHARD_DIR / "trained.faiss")
        layout = {"spec": spec.describe(), "metric": spec.metric.value, "dim": store.dim,
                  "shards_per_index": shards_per_index, "shards": []}
        return _add_parts(store, layout, template, store.shard_paths)


def refresh_sharded(store: Store) -> dict | None:
    """Bring a sharded index (if the store has one) in line with its Parquet shards after an append
    or a removal: parts over unchanged shards are kept, the rest rebuilt from the trained template."""
    root = store.root / SHARD_DIR
    if not (root / LAYOUT).is_file():
        return None
    layout = json.loads((root / LAYOUT).read_text())
    current = {path.name for path in store.shard_paths}
    layout["shards"] = [entry for entry in layout["shards"] if set(entry["parquet"]) <= current]
    covered = {name for entry in layout["shards"] for name in entry["parquet"]}
    with write_lock(store.root):
        template = _faiss().read_index(str(root / "trained.faiss"))
        return _add_parts(store, layout, template, [p for p in store.shard_paths if p.name not in covered])


def _add_parts(store: Store, layout: dict, template, paths: list[Path]) -> dict:
    """Index ``paths`` in groups of ``shards_per_index`` as new parts of ``layout``; write the layout."""
    faiss, root, per_index = _faiss(), store.root / SHARD_DIR, layout["shards_per_index"]
    metric = Metric(layout["metric"])
    number = 1 + max((int(re.search(r"(\d+)", entry["path"]).group(1)) for entry in layout["shards"]), default=-1)
    for first in range(0, len(paths), per_index):
        index = with_tile_ids(faiss.clone_index(template))
        add_store_vectors(index, store, metric, paths=paths[first:first + per_index])
        target = root / f"part-{number:05d}.faiss"
        save_index(index, target)
        layout["shards"].append({"path": target.name, "ntotal": int(index.ntotal), "sha256": file_sha256(target),
                                 "parquet": [p.name for p in paths[first:first + per_index]]})
        number += 1
    layout["ntotal"] = sum(entry["ntotal"] for entry in layout["shards"])
    atomic_write_bytes(root / LAYOUT, json.dumps(layout, indent=2).encode())
    for stale in root.glob("part-*.faiss"):
        if stale.name not in {entry["path"] for entry in layout["shards"]}:
            stale.unlink()
    return layout


class ShardedIndex:
    """Searches shard indexes in turn and merges their top-k; ``mmap`` keeps RAM to one shard's lists."""

    def __init__(self, paths: list[Path], metric: Metric | str, dim: int, keep_loaded: bool = True,
                 mmap: bool = False):
        self.paths, self.metric, self.d = list(paths), Metric(metric), dim
        self.keep_loaded, self.mmap = keep_loaded, mmap
        self._loaded: dict[Path, object] = {}
        self.nprobe: int | None = None
        self.ntotal = sum(self._index(path).ntotal for path in self.paths) if keep_loaded else None

    @classmethod
    def open(cls, store: Store, **options) -> "ShardedIndex":
        root = store.root / SHARD_DIR
        if not (root / LAYOUT).is_file():
            raise StoreError(f"{store.root}: no sharded index; build one with genoembed.sharded.build_sharded")
        layout = json.loads((root / LAYOUT).read_text())
        return cls([root / entry["path"] for entry in layout["shards"]], layout["metric"], layout["dim"], **options)

    def _index(self, path: Path):
        faiss = _faiss()
        if path in self._loaded:
            return self._loaded[path]
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP if self.mmap else 0)
        if self.keep_loaded:
            self._loaded[path] = index
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the best ``k`` over every shard; queries must already be ``prepare``-d."""
        faiss = _faiss()
        heap = faiss.ResultHeap(len(queries), k, keep_max=self.metric is Metric.ip)
        for path in self.paths:
            index = self._index(path)
            set_search_params(index, nprobe=self.nprobe)
            scores, ids = index.search(queries, k)
            heap.add_result(scores, ids)
        heap.finalize()
        return heap.D, heap.I


def merge_ondisk(store: Store) -> Path:
    """Merge the IVF shard indexes into one index whose inverted lists live in ``index/merged.ivfdata``."""
    faiss = _faiss()
    from faiss.contrib.ondisk import merge_ondisk as faiss_merge_ondisk

    root = store.root / SHARD_DIR
    layout = json.loads((root / LAYOUT).read_text())
    if not re.search(r"IVF\d+", layout["spec"]["factory"]):
        raise InputError(f"merge_ondisk needs an IVF layout, the shards are {layout['spec']['factory']!r}")
    index = faiss.read_index(str(root / "trained.faiss"))
    ivfdata = store.root / "index" / "merged.ivfdata"
    faiss_merge_ondisk(index, [str(root / entry["path"]) for entry in layout["shards"]], str(ivfdata))
    target = store.root / "index" / "merged.faiss"
    save_index(index, target)
    return target


# --------------------------------------------------------------------------- filtering


def subset_mask(store: Store, genome: str | None = None, chrom: str | None = None) -> np.ndarray:
    """Boolean array over tile ids: True where the tile is in ``genome`` / ``chrom``."""
    import duckdb

    clauses, parameters = [], {"paths": [str(p) for p in store.shard_paths]}
    for name, value in (("genome", genome), ("chrom", chrom)):
        if value is not None:
            clauses.append(f"{name} = ${name}")
            parameters[name] = value
    mask = np.zeros(store.id_limit, dtype=bool)
    if not clauses:
        mask[:] = True
        return mask
    ids = duckdb.connect().sql(f"SELECT tile_id FROM read_parquet($paths) WHERE {' AND '.join(clauses)}",
                               params=parameters).fetchnumpy()["tile_id"]
    if not len(ids):
        raise InputError(f"{store.root}: no tiles match genome={genome!r} chrom={chrom!r}; "
                         "check the names with `genoembed sql \"SELECT DISTINCT genome, chrom FROM tiles\"`")
    mask[ids] = True
    return mask


def filtered_search(store: Store, vectors: np.ndarray, k: int, genome: str | None = None,
                    chrom: str | None = None, index=None, nprobe: int | None = None, factor: int = 4,
                    mask: np.ndarray | None = None, stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) restricted to ``genome`` / ``chrom`` by over-fetching.

    Fetches ``k * factor`` neighbours from ``index`` (the store's index by
    default; any object with ``search(x, k)``, e.g. :class:`ShardedIndex`),
    keeps the tiles in the subset and multiplies ``factor`` by 4 for the
    queries still short of ``k`` until they have ``k`` or the whole index was
    fetched. ids are -1 only where the subset holds fewer than ``k`` tiles
    reachable in the index. ``mask`` (from :func:`subset_mask`) skips the
    lookup when searching one subset repeatedly; ``stats`` receives the rounds
    and the largest fetch.
    """
    if k < 1:
        raise InputError(f"k={k}: ask for at least one neighbour")
    if index is None:
        from genoembed.search import _loaded_index

        index = _loaded_index(store)
    mask = subset_mask(store, genome, chrom) if mask is None else mask
    queries = prepare(vectors, store.metric if not isinstance(index, ShardedIndex) else index.metric)
    if queries.shape[1] != index.d:
        raise InputError(f"query vectors have dim {queries.shape[1]} but the index has dim {index.d}")
    if isinstance(index, ShardedIndex):
        index.nprobe = nprobe
    elif nprobe is not None:
        set_search_params(index, nprobe=nprobe)
    ntotal = int(index.ntotal) if index.ntotal is not None else len(mask)
    out_scores = np.full((len(queries), k), np.nan, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    pending = np.arange(len(queries))
    fetch, rounds = min(k * max(factor, 1), ntotal), 0
    while len(pending):
        rounds += 1
        scores, ids = index.search(queries[pending], fetch)
        keep = (ids >= 0) & mask[np.maximum(ids, 0)]
        short = []
        for row, query in enumerate(pending):
            chosen = np.flatnonzero(keep[row])[:k]
            out_ids[query, :len(chosen)] = ids[row, chosen]
            out_scores[query, :len(chosen)] = scores[row, chosen]
            exhausted = fetch >= ntotal or (ids[row] < 0).any()
            if len(chosen) < k and not exhausted:
                short.append(query)
        pending = np.asarray(short, dtype=np.int64)
        if len(pending):
            fetch = min(fetch * 4, ntotal)
    if stats is not None:
        stats.update(rounds=rounds, max_fetch=fetch)
    return out_scores, out_ids
