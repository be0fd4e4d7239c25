"""Building the store's FAISS index, kept in step with the shards: parts, deltas per append, tuning, compaction.

The index is a list of FAISS files (*parts*, listed in the manifest's ``index`` entry), all cloned from one
trained index (``trained`` in the entry) and searched together with a running top-k merge
(:class:`genoembed.vector_index.FaissIndex`):

* a build writes the base: one part, or parts of at most ``IndexSpec.part_rows`` vectors each (a store bigger
  than RAM; parts are opened memory-mapped, so a search reads only the pages it touches);
* :func:`update_store_index` (the last step of an append) adds the new genomes as a new *delta* part built
  from their shards alone: nothing already indexed is read, rewritten or hashed. Deltas are folded together
  like a binary counter (:func:`merge_plan`), so a store appended to n times holds O(log n) parts and the
  vectors re-added by folding cost O(log n) per vector over the store's life;
* search settings are re-tuned only when the store holds :data:`RETUNE_GROWTH` more tiles than when they were
  last tuned (or on :func:`compact`); exact (Flat) indexes are never tuned;
* :func:`compact` folds every part back into one index, retrained and re-tuned: what a clean build makes.

Every file is written under a name no committed manifest has listed (``next_part`` counts them), then the
manifest is committed, then files no longer listed are deleted: a reader of any snapshot sees only complete
parts of that snapshot (one that opened a manifest whose files were since deleted gets a StoreError, and
search retries on the newest snapshot).
"""

from __future__ import annotations

import logging
import re
import shlex
from pathlib import Path
from typing import Callable

import numpy as np

from genoembed.errors import GenoembedError, InputError
from genoembed.manifest import file_sha256
from genoembed.store import Store
from genoembed.writers import write_lock
from genoembed.synthetic import mutate
from genoembed.recall import exact_neighbours, tune_search
from genoembed.vector_index import (INDEX_FILE, FaissIndex, IndexSpec, Metric, import_faiss, index_parts,
                                    load_index, prepare, refine_stage, save_index, search_knob, train_index,
                                    with_tile_ids)

log = logging.getLogger(__name__)
# Search settings are re-tuned on an append once the store holds this much more than when they were tuned
# (here 50 %): tuning runs an exact search over the whole store, so re-tuning at every append made n appends
# cost O(n^2); at a fixed growth factor the tuning work over the store's life is O(final size).
RETUNE_GROWTH = 0.5
# Two newest parts are folded into one when the older holds at most this many times the newer's vectors.
MERGE_RATIO = 2


def build_store_index(store: Store, spec: IndexSpec, progress: Callable[[int], None] | None = None,
                      first_part: int | None = None) -> dict:
    """(Re)build the store's FAISS index from all its shards (trained anew, tuned) and record it in the manifest.
    Its files are numbered from the current index's next part (when the manifest lists none: ``first_part``, else
    past every index file on disk, which an overwritten store's readers may still hold)."""
    with write_lock(store.root):
        store.refresh()
        template = train_index(store, spec)
        current = store.manifest.get("index") or {}
        first = current.get("next_part", first_part if first_part is not None else _first_unused_part(store.root))
        entry = {"spec": spec.describe(), "metric": spec.metric.value, "dim": store.dim, "parts": [],
                 "next_part": first, "part_rows": spec.part_rows}
        for low, high in _groups(store.shards, spec.part_rows, store.id_limit):
            entry["parts"].append(_write_part(store, entry, template, low, high, spec.metric, progress))
        _save_template(store, entry, template)
        entry = _summarised(entry, index_watermark(store.manifest))
        tuned = tune_store_index(store, spec, _open(store, entry))
        if tuned:
            entry.update(search=tuned, tuned_tiles=store.num_tiles)
        _commit(store, entry)
        return entry


def update_store_index(store: Store, spec: IndexSpec) -> dict:
    """Bring the index up to date: add genomes appended since it was built as a new part (no retraining, no
    rewrite of what is indexed), or rebuild when there is none, its spec differs, or a part is not the file the
    manifest records."""
    with write_lock(store.root):
        store.refresh()
        current = store.manifest.get("index") or {}
        if current.get("spec") != spec.describe() or not index_matches(store, current):
            return build_store_index(store, spec)
        new = unindexed_shards(store, current)
        if not new:
            return current
        entry = {**current, "parts": list(index_parts(current))}
        template = _template(store, entry)
        for low, high in _groups(new, spec.part_rows, store.id_limit):
            entry["parts"].append(_write_part(store, entry, template, low, high, spec.metric))
        for first, last in merge_plan(entry["parts"], spec.part_rows):
            low, high = entry["parts"][first]["tile_ids"][0], entry["parts"][last - 1]["tile_ids"][1]
            entry["parts"][first:last] = [_write_part(store, entry, template, low, high, spec.metric)]
        entry = _summarised(entry, index_watermark(store.manifest))
        if needs_tuning(entry, store.num_tiles):
            tuned = tune_store_index(store, spec, _open(store, entry))
            entry.update(search=tuned, tuned_tiles=store.num_tiles)
        _commit(store, entry)
        return entry


def with_part(store: Store, entry: dict, ids: np.ndarray, vectors: np.ndarray) -> dict:
    """Index ``entry`` with one more part holding ``vectors`` under tile ``ids`` (past every part's ids): tiles a
    store gains inside a genome it holds (a contig made circular gets its tiles round the origin), indexed without
    reading or rewriting what is. The part is written under a name no manifest lists; the caller commits the
    entry together with the shards holding those tiles."""
    entry = {**entry, "parts": list(index_parts(entry))}
    index = with_tile_ids(import_faiss().clone_index(_template(store, entry)))
    index.add_with_ids(prepare(vectors, entry["metric"]), np.asarray(ids, dtype=np.int64))
    path = _part_path(entry["next_part"])
    entry["next_part"] += 1
    save_index(index, store.root / path)
    entry["parts"].append({"path": path, "ntotal": int(index.ntotal), "bytes": (store.root / path).stat().st_size,
                           "sha256": file_sha256(store.root / path), "tile_ids": [int(min(ids)), int(max(ids)) + 1]})
    return _summarised(entry, max(entry.get("tile_ids_below", 0), int(max(ids)) + 1))


def index_watermark(manifest: dict) -> int:
    """The tile id below which an index built from ``manifest`` holds every complete genome's tiles: where the
    genome being written starts (appends wait for it, so it is the last), else the next id to assign. An index
    records this bound rather than its genomes' names, so an append's manifest write does not grow with them."""
    building = [entry["first_tile_id"] for entry in manifest["genomes"].values() if entry.get("status") != "complete"]
    return min(building, default=int(manifest["next_tile_id"]))


def unindexed_shards(store: Store, entry: dict) -> list[dict]:
    """Shards of complete genomes the index ``entry`` does not hold: those past the ids it covers."""
    below = entry.get("tile_ids_below", 0)
    return [shard for shard in store.shards if shard["first_tile_id"] >= below]


def compact(store: Store, retune_only: bool = False) -> dict:
    """Fold every part of the store's index into one, retrained on the whole store and re-tuned (what a clean
    build makes); ``retune_only`` re-tunes the search settings of the index as it is."""
    current = store.manifest.get("index")
    if not current:
        raise InputError(f"{store.root}: the store has no vector index; rerun `genoembed index` to build it")
    spec = IndexSpec(**current["spec"], recall_target=_target(current), part_rows=current.get("part_rows"))
    if not retune_only:
        return build_store_index(store, spec)
    with write_lock(store.root):
        store.refresh()
        entry = dict(store.manifest["index"])
        tuned = tune_store_index(store, spec, _open(store, entry))
        entry.update(search=tuned, tuned_tiles=store.num_tiles)
        _commit(store, entry)
        return entry


def stored_spec(root: Path) -> IndexSpec | None:
    """The IndexSpec of the index a store at ``root`` has (factory, metric, recall target, part size), or None: what
    an append without index options keeps, instead of rebuilding the store's index as the default Flat."""
    from genoembed.manifest import MANIFEST, read_manifest

    if not (root / MANIFEST).is_file():
        return None
    entry = read_manifest(root).get("index")
    if not entry:
        return None
    return IndexSpec(**entry["spec"], recall_target=_target(entry), part_rows=entry.get("part_rows"))


def needs_tuning(entry: dict, tiles: int) -> bool:
    """True when the index's search settings were tuned (an approximate index) on a store that has since grown
    by more than :data:`RETUNE_GROWTH`."""
    return bool(entry.get("search")) and tiles > (1 + RETUNE_GROWTH) * entry.get("tuned_tiles", 0)


def merge_plan(parts: list[dict], part_rows: int | None) -> list[tuple[int, int]]:
    """Which newest parts to fold into one after a delta was added, as ``[first, last)`` slices: the two newest
    while the older holds at most :data:`MERGE_RATIO` times the newer's vectors, repeated on the result (a binary
    counter: parts grow geometrically, so n appends leave O(log n) parts and each vector is re-added O(log n)
    times), as one fold of every part that cascade reaches, within ``part_rows``. The base is folded too once
    the deltas have grown as large as it."""
    sizes = [part["ntotal"] for part in parts]
    first = len(sizes) - 1
    while first >= 1 and sizes[first - 1] <= MERGE_RATIO * sum(sizes[first:]) and \
            (part_rows is None or sum(sizes[first - 1:]) <= part_rows):
        first -= 1
    return [(first, len(sizes))] if first < len(sizes) - 1 else []


def index_matches(store: Store, entry: dict | None) -> bool:
    """True when the manifest records an index and every part on disk is the file it records (by size, which a
    write under a temporary name and rename never leaves half-changed; by sha256 for entries without sizes:
    hashing a whole index on every append made appends cost the store's size)."""
    if not entry:
        return False
    for part in index_parts(entry):
        path = store.root / part["path"]
        if not path.is_file():
            return False
        if path.stat().st_size != part["bytes"] if "bytes" in part else file_sha256(path) != part["sha256"]:
            return False
    return True


def _target(entry: dict) -> float:
    """The recall target the index was tuned to (recorded with the tuning), else the default."""
    return float((entry.get("search") or {}).get("target") or IndexSpec().recall_target)


def _part_path(number: int, kind: str = "vectors") -> str:
    """The file of part ``number``: the first part of a store is ``index/vectors.faiss`` (what stores built before
    parts hold), later ones are numbered, never reused."""
    return INDEX_FILE if number == 0 and kind == "vectors" else f"index/{kind}-{number:05d}.faiss"


def _first_unused_part(root: Path) -> int:
    """One past the highest part number of any index file on disk (``index/vectors.faiss`` is part 0)."""
    numbers = [int(match.group(1) or 0) for path in (root / "index").glob("*.faiss")
               if (match := re.fullmatch(r"vectors|\w+-(\d+)", path.stem))]
    return max(numbers, default=-1) + 1


def _groups(shards: list[dict], part_rows: int | None, id_limit: int) -> list[tuple[int, int]]:
    """Tile-id ranges ``[low, high)`` of whole ``shards``, in id order, holding at most ``part_rows`` tiles each (a
    shard bigger than that is a part of its own; one range when ``part_rows`` is None); the last reaches
    ``id_limit``."""
    groups, size = [], 0
    for shard in sorted(shards, key=lambda shard: shard["first_tile_id"]):
        if not groups or part_rows is not None and size + shard["rows"] > part_rows:
            groups.append([shard["first_tile_id"], shard["first_tile_id"]])
            size = 0
        groups[-1][1] = shard["last_tile_id"] + 1
        size += shard["rows"]
    if groups:
        groups[-1][1] = id_limit
    return [tuple(group) for group in groups] or [(0, id_limit)]


def _write_part(store: Store, entry: dict, template, low: int, high: int, metric: Metric | str,
                progress: Callable[[int], None] | None = None) -> dict:
    """A new part holding the vectors of tile ids ``[low, high)``, under the next unused name; its manifest entry.
    Parts cover consecutive id ranges (a delta: the ids an append gave), so folding parts is re-indexing their
    ranges' shards."""
    index = with_tile_ids(import_faiss().clone_index(template))
    paths = [store.root / shard["path"] for shard in store.shards
             if shard["first_tile_id"] < high and shard["last_tile_id"] >= low]
    for ids, vectors in store.iter_embeddings(paths=paths):
        inside = (ids >= low) & (ids < high)
        index.add_with_ids(prepare(vectors[inside], metric), ids[inside])
        if progress:
            progress(int(inside.sum()))
    path = _part_path(entry["next_part"])
    entry["next_part"] += 1
    save_index(index, store.root / path)
    return {"path": path, "ntotal": int(index.ntotal), "bytes": (store.root / path).stat().st_size,
            "sha256": file_sha256(store.root / path), "tile_ids": [int(low), int(high)]}


def _template(store: Store, entry: dict):
    """The trained, empty index every part is cloned from; an index built before parts recorded none, so it
    is made once from the first part (read, emptied, saved) and recorded."""
    trained = entry.get("trained")
    if trained and (store.root / trained["path"]).is_file():
        return load_index(store.root / trained["path"])
    faiss = import_faiss()
    first = load_index(store.root / index_parts(entry)[0]["path"])
    inner = faiss.downcast_index(first.index) if isinstance(first, (faiss.IndexIDMap, faiss.IndexIDMap2)) else first
    template = faiss.clone_index(inner)
    template.reset()
    entry.setdefault("next_part", 1)
    _save_template(store, entry, template)
    return template


def _save_template(store: Store, entry: dict, template) -> None:
    path = _part_path(entry["next_part"], "trained")
    entry["next_part"] += 1
    save_index(template, store.root / path)
    entry["trained"] = {"path": path, "sha256": file_sha256(store.root / path)}


def _summarised(entry: dict, tile_ids_below: int) -> dict:
    """``entry`` with the totals readers and older tools use (``path``/``sha256`` of the first part, ``ntotal``)
    and the tile ids it covers (:func:`index_watermark`)."""
    parts = entry["parts"]
    return {**entry, "path": parts[0]["path"], "sha256": parts[0]["sha256"],
            "ntotal": sum(part["ntotal"] for part in parts), "tile_ids_below": tile_ids_below}


def _open(store: Store, entry: dict) -> FaissIndex:
    return FaissIndex.load([store.root / part["path"] for part in entry["parts"]], entry["metric"])


def _commit(store: Store, entry: dict) -> None:
    """Record ``entry`` in the manifest; index files it no longer lists (folded parts, a replaced base) are retired:
    deleted once no reader of an older snapshot is left (:meth:`genoembed.store.Store.transaction`)."""
    store.record("index", "index", entry)


# Tuning queries differ from the stored tiles as a related strain's sequence would: 5 % substitutions.
TUNING_SUBSTITUTIONS = 0.05


def tune_store_index(store: Store, spec: IndexSpec, index, queries: int = 1000, k: int = 10) -> dict:
    """Pick nprobe / efSearch (and k_factor for a refine stage) so recall@10 against exact search reaches
    ``spec.recall_target`` on query-like windows (:func:`tuning_queries`); warn when the factory cannot (the
    settings then are the cheapest near the best it reached). The result records which queries it was tuned
    on (``"queries": "held_out"`` or ``"stored"``). ``index`` is a FAISS index or a :class:`FaissIndex` of
    several parts (searched together; the knob and the bytes read are taken from its first part).
    Exact indexes have nothing to tune: ``{}`` without embedding a query or scanning the store."""
    part = index.parts[0] if isinstance(index, FaissIndex) else index
    if store.num_tiles <= k or (search_knob(part)[0] is None and refine_stage(part) is None):
        return {}
    sample, kind = tuning_queries(store, min(queries, store.num_tiles), spec.seed + 1)
    exact = exact_neighbours(store.iter_embeddings(), sample, k, spec.metric)
    search = index.search if isinstance(index, FaissIndex) else None
    tuned = tune_search(part, spec.metric, sample, exact, spec.recall_target, k, search=search)
    if tuned and tuned[f"recall_at_{k}"] < spec.recall_target:
        log.warning("%s: index %r reaches recall@%d %.3f at most (tuned to %s, the cheapest near it), "
                    "below the target %.2f; %s", store.root, spec.factory, k, tuned[f"recall_at_{k}"],
                    {name: value for name, value in tuned.items() if name in ("nprobe", "ef_search", "k_factor")},
                    spec.recall_target, plateau_advice(spec.factory, part))
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
