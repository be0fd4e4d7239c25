"""Building the store's FAISS index: one index over every shard, or a sharded layout, kept in step with the shards.

:func:`update_store_index` is what a build calls last: it adds genomes appended
since the index was built (no retraining: the trained quantizer is kept), or
rebuilds when there is none, its spec changed, or the file does not match the
manifest. Sharded layouts (one index per group of Parquet shards, all cloned
from one trained template, under ``index/shards/`` with ``layout.json``) serve
stores bigger than one machine's RAM; searching them one after another with a
running top-k merge returns what one big index would, and for IVF layouts they
can be merged into one index with on-disk inverted lists
(``faiss.contrib.ondisk.merge_ondisk``). Scale is composed from plain FAISS
pieces, not a second implementation.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Callable

import numpy as np

from genoembed.errors import GenoembedError, InputError
from genoembed.files import atomic_write_bytes
from genoembed.manifest import file_sha256
from genoembed.store import Store
from genoembed.writers import write_lock
from genoembed.synthetic import mutate
from genoembed.vector_index import (INDEX_FILE, SHARDED_INDEX_DIR, SHARDED_LAYOUT, IndexSpec, Metric, ShardedIndex,
                                    add_store_vectors, build_index, exact_neighbours, import_faiss, load_index,
                                    refine_stage, save_index, train_index, tune_search, with_tile_ids)

SHARD_DIR, LAYOUT = SHARDED_INDEX_DIR, SHARDED_LAYOUT
log = logging.getLogger(__name__)


def build_store_index(store: Store, spec: IndexSpec, progress: Callable[[int], None] | None = None) -> dict:
    """(Re)build the store's FAISS index from all its shards and record it in the manifest."""
    with write_lock(store.root):
        built = build_index(store, spec, progress=progress)
        return save_store_index(store, spec, built)


def index_file_matches(store: Store, entry: dict | None) -> bool:
    """True when the manifest records an index and the file on disk is that index (sha256)."""
    path = store.root / INDEX_FILE
    return bool(entry) and path.is_file() and file_sha256(path) == entry["sha256"]


def update_store_index(store: Store, spec: IndexSpec) -> dict:
    """Bring the index up to date: add genomes appended since it was built (no retraining), or
    rebuild when there is none, its spec differs, or its file does not match the manifest."""
    with write_lock(store.root):
        current = store.manifest.get("index") or {}
        if current.get("spec") != spec.describe() or not index_file_matches(store, current):
            return build_store_index(store, spec)
        missing = [name for name in store.genomes if name not in current.get("genomes", ())]
        if not missing:
            return current
        index = load_index(store.root / INDEX_FILE)
        add_store_vectors(index, store, spec.metric,
                          paths=[store.root / s["path"] for s in store.manifest["shards"] if s["genome"] in missing])
        entry = save_store_index(store, spec, index)
        refresh_sharded(store)
        return entry


def save_store_index(store: Store, spec: IndexSpec, index) -> dict:
    """Write the index, tune its search settings to ``spec.recall_target`` and record both in the manifest."""
    path = store.root / INDEX_FILE
    save_index(index, path)
    entry = {"path": INDEX_FILE, "spec": spec.describe(), "metric": spec.metric.value, "ntotal": int(index.ntotal),
             "dim": int(index.d), "sha256": file_sha256(path), "genomes": list(store.genomes)}
    tuned = tune_store_index(store, spec, index)
    if tuned:
        entry["search"] = tuned
    store.record("index", "index", entry)
    return entry


# Tuning queries differ from the stored tiles as a related strain's sequence would: 5 % substitutions.
TUNING_SUBSTITUTIONS = 0.05


def tune_store_index(store: Store, spec: IndexSpec, index, queries: int = 1000, k: int = 10,
                     search=None) -> dict:
    """Pick nprobe / efSearch (and k_factor for a refine stage) so recall@10 against exact search reaches
    ``spec.recall_target`` on query-like windows (:func:`tuning_queries`); warn when the factory cannot (the
    settings then are the cheapest near the best it reached). The result records which queries it was tuned
    on (``"queries": "held_out"`` or ``"stored"``). ``search`` answers for a sharded layout (``index`` is then
    one of its parts; see :func:`genoembed.vector_index.tune_search`)."""
    if store.num_tiles <= k:
        return {}
    sample, kind = tuning_queries(store, min(queries, store.num_tiles), spec.seed + 1)
    exact = exact_neighbours(store.iter_embeddings(), sample, k, spec.metric)
    tuned = tune_search(index, spec.metric, sample, exact, spec.recall_target, k, search=search)
    if tuned and tuned[f"recall_at_{k}"] < spec.recall_target:
        log.warning("%s: index %r reaches recall@%d %.3f at most (tuned to %s, the cheapest near it), "
                    "below the target %.2f; %s", store.root, spec.factory, k, tuned[f"recall_at_{k}"],
                    {name: value for name, value in tuned.items() if name in ("nprobe", "ef_search", "k_factor")},
                    spec.recall_target, plateau_advice(spec.factory, index))
    return {**tuned, "queries": kind} if tuned else tuned


def plateau_advice(factory: str, index) -> str:
    """What to change when ``factory`` cannot reach the recall target: compressed codes (PQ, SQ) that cannot
    order near-identical tiles need a refine stage re-ranking their shortlist with finer vectors."""
    if refine_stage(index) is not None:
        return "use a finer refine stage (Refine(Flat)), more lists/links, or a Flat index"
    if re.search(r"PQ\d|SQ\d", factory):
        return f"re-rank its shortlist with finer vectors, e.g. --factory {shlex.quote(factory + ',Refine(SQfp16)')}"
    return "use more lists/links or a Flat index"


def tuning_queries(store: Store, count: int, seed: int) -> tuple[np.ndarray, str]:
    """(vectors, kind) to tune on: ``count`` windows of the store's tile length at random offsets of its own
    genomes, with :data:`TUNING_SUBSTITUTIONS`, embedded by its own model (kind ``"held_out"``).

    Stored vectors overestimate recall: each is its own nearest neighbour and lies on the grid the index was
    built from (benchmarks/RESULTS.md, issue 20: nprobe tuned to 0.95 on stored vectors gave 0.90 on such
    windows). When the genomes or the model cannot be opened, falls back to stored vectors (kind ``"stored"``).
    """
    try:
        windows = mutated_windows(store, count, seed)
        return store.embedder().embed(windows), "held_out"
    except (GenoembedError, OSError) as error:
        log.warning("%s: tuning on stored vectors, which overestimates recall (%s)", store.root, error)
        return store.sample_embeddings(count, seed)[1], "stored"


def mutated_windows(store: Store, count: int, seed: int) -> list[str]:
    """``count`` tile-length windows, contig picked by length, at uniform offsets, with substitutions."""
    window = int(store.provenance["tiling"]["window"])
    genomes = [store.genome(name) for name in store.genomes]
    contigs = [(genome, name, length) for genome in genomes for name, length in genome.contigs.items() if length > window]
    if not contigs:
        raise InputError(f"no contig is longer than the tile length {window}")
    lengths = np.array([length for *_, length in contigs], dtype=float)
    rng = np.random.default_rng(seed)
    windows = []
    for pick in rng.choice(len(contigs), size=count, p=lengths / lengths.sum()):
        genome, name, length = contigs[pick]
        start = int(rng.integers(0, length - window + 1))
        windows.append(mutate(genome.fetch(name, start, start + window), TUNING_SUBSTITUTIONS,
                              seed=int(rng.integers(2 ** 31))))
    return windows


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
        layout = _add_parts(store, layout, template, store.shard_paths)
        return _tune_sharded(store, spec, layout)


def _tune_sharded(store: Store, spec: IndexSpec, layout: dict) -> dict:
    """Tune the layout's search settings as a single index's are (searching every part, memory-mapped, one
    at a time) and record them in ``layout.json``, where :class:`ShardedIndex` reads its defaults. Appends
    keep them: the quantizer, and so the settings' meaning, stays the template's."""
    root = store.root / SHARD_DIR
    if not layout["shards"]:
        return layout
    sharded = ShardedIndex.from_layout(root / LAYOUT, keep_loaded=False, mmap=True)
    part = import_faiss().read_index(str(root / layout["shards"][0]["path"]))
    tuned = tune_store_index(store, spec, part, search=sharded.search)
    if tuned:
        layout["search"] = tuned
        atomic_write_bytes(root / LAYOUT, json.dumps(layout, indent=2).encode())
    return layout


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
        template = import_faiss().read_index(str(root / "trained.faiss"))
        return _add_parts(store, layout, template, [p for p in store.shard_paths if p.name not in covered])


def _add_parts(store: Store, layout: dict, template, paths: list[Path]) -> dict:
    """Index ``paths`` in groups of ``shards_per_index`` as new parts of ``layout``; write the layout."""
    faiss, root, per_index = import_faiss(), store.root / SHARD_DIR, layout["shards_per_index"]
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


def merge_ondisk(store: Store) -> Path:
    """Merge the IVF shard indexes into one index whose inverted lists live in ``index/merged.ivfdata``."""
    faiss = import_faiss()
    from faiss.contrib.ondisk import merge_ondisk as faiss_merge_ondisk

    root = store.root / SHARD_DIR
    layout = json.loads((root / LAYOUT).read_text())
    if not re.search(r"IVF\d+", layout["spec"]["factory"]):
        raise InputError(f"merge_ondisk needs an IVF layout, the shards are {layout['spec']['factory']!r}")
    index = faiss.read_index(str(root / "trained.faiss"))
    if refine_stage(index) is not None:  # its vectors live outside the inverted lists, which hold part-local ids
        raise InputError(f"merge_ondisk merges inverted lists only; {layout['spec']['factory']!r} has a refine "
                         "stage: search the sharded layout (ShardedIndex) instead")
    ivfdata = store.root / "index" / "merged.ivfdata"
    faiss_merge_ondisk(index, [str(root / entry["path"]) for entry in layout["shards"]], str(ivfdata))
    target = store.root / "index" / "merged.faiss"
    save_index(index, target)
    return target


