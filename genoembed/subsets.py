"""Filtered search: hits only from a subset of the store's tiles, found inside FAISS, never by over-fetching.

A subset is a genome (``--genome``: its tile ids are one contiguous range read from the manifest, or its shards'
id ranges when it gained tiles after other genomes were added, see :mod:`genoembed.circularise`), contigs
(``--chrom``, repeatable) and/or a SQL condition on the ``tiles`` view (``--where "gc > 0.5"``, or a subquery
on ``annotations``), evaluated read-only by :func:`genoembed.sql.run_sql` (its sandbox: one SELECT, the
store's own files, a timeout). Every condition given must hold.

How it is searched (:func:`filtered_search`):

* an exact index (Flat) searches with the subset as a FAISS ID selector: exact over the subset, nothing read;
* an approximate index (IVF, IVF-PQ, HNSW, a refine stage) searches a subset of at most
  :data:`EXACT_SUBSET_TILES` tiles exactly, over that subset's vectors read from its shards (float32, so
  better than the compressed codes too); larger subsets go through the ID selector, widening nprobe /
  efSearch for queries still short of ``k`` (:meth:`genoembed.vector_index.FaissIndex.search`), and any
  query still short after the widest search (an HNSW graph the filter cut apart) is answered exactly.

So a subset holding at least ``k`` tiles always returns ``k`` hits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from genoembed.errors import InputError, command
from genoembed.sql import run_sql
from genoembed.store import Store
from genoembed.recall import exact_search, flat_block
from genoembed.vector_index import TileSubset, refine_stage, search_knob

# At most this many tiles, an approximate index's subset is searched exactly. Reading them costs one Parquet
# shard at most (65,536 rows is a shard's default size: ~64 MiB of float32 at 256-d, tens of ms) and the scan
# 65,536 dot products per query; a selector inside an IVF search of so few tiles instead reads the probed
# lists of the whole store and, for a small subset, must widen nprobe round after round to collect k hits,
# with recall only as good as the compressed codes.
EXACT_SUBSET_TILES = 65_536


@dataclass(frozen=True)
class TileFilter:
    """What a search is restricted to: a genome, contigs (any of them), a SQL condition on ``tiles``."""

    genome: str | None = None
    chroms: tuple[str, ...] = ()
    where: str | None = None

    def __bool__(self) -> bool:
        return self.genome is not None or bool(self.chroms) or bool(self.where)

    def describe(self) -> str:
        said = [f"genome={self.genome!r}"] if self.genome is not None else []
        said += [f"chrom in {list(self.chroms)!r}"] if self.chroms else []
        return ", ".join(said + ([f"where {self.where!r}"] if self.where else []))


def tile_filter(genome: str | None = None, chrom: str | list[str] | tuple[str, ...] | None = None,
                where: str | None = None) -> TileFilter:
    """A :class:`TileFilter` from the verbs' arguments (``chrom``: one contig name or several)."""
    chroms = (chrom,) if isinstance(chrom, str) else tuple(chrom or ())
    return TileFilter(genome, chroms, where.strip() if where and where.strip() else None)


# Subsets resolved per store snapshot (Store.derived), most recent last: a served store answering one filter
# again resolves it once (at 1,000 genomes a --chrom read 500 shards per search, a --where opened DuckDB over
# every shard: 2 s and 8 s). Their vectors are kept too when they hold at most SUBSET_VECTOR_BYTES.
SUBSETS_KEPT = 4
SUBSET_VECTOR_BYTES = 32 * 2 ** 20


def resolve(store: Store, wanted: TileFilter) -> TileSubset:
    """The tile ids ``wanted`` selects in this snapshot (kept for the snapshot's next searches); an InputError
    naming the fix when it selects none."""
    kept = store.derived("tile_subsets", dict)
    if wanted not in kept:
        kept[wanted] = _resolved(store, wanted)
        while len(kept) > SUBSETS_KEPT:
            kept.pop(next(iter(kept)))
    kept[wanted] = kept.pop(wanted)  # most recently used last
    return kept[wanted]


def _resolved(store: Store, wanted: TileFilter) -> TileSubset:
    if wanted.genome is not None and wanted.genome not in store.genomes:
        raise InputError(f"{store.root}: no genome {wanted.genome!r} in the store; it holds "
                         f"{', '.join(list(store.genomes)[:10])}")
    shards = [shard for shard in store.shards if wanted.genome is None or shard["genome"] == wanted.genome]
    if not wanted.chroms and not wanted.where:
        size = sum(shard["rows"] for shard in shards)
        low = min((shard["first_tile_id"] for shard in shards), default=0)
        high = max((shard["last_tile_id"] + 1 for shard in shards), default=0)
        subset = TileSubset(size, low=low, high=high)
        if any(shard["genome"] != wanted.genome and shard["first_tile_id"] < high and shard["last_tile_id"] >= low
               for shard in store.shards):  # tiles it gained later (a contig made circular) lie past other genomes'
            mask = np.zeros(store.id_limit, dtype=bool)
            for shard in shards:
                mask[shard["first_tile_id"]:shard["last_tile_id"] + 1] = True
            subset = TileSubset(size, mask=mask)
    else:
        ids = _selected_ids(store, wanted)
        ids = ids[(ids >= 0) & (ids < store.id_limit)]
        mask = np.zeros(store.id_limit, dtype=bool)
        mask[ids] = True
        subset = TileSubset(int(mask.sum()), mask=mask)
    if not subset.size:
        names = command("sql", store.root, "SELECT genome, chrom, count(*) FROM tiles GROUP BY ALL")
        raise InputError(f"{store.root}: no tiles match {wanted.describe()}; see what the store holds with {names}")
    return subset


def _selected_ids(store: Store, wanted: TileFilter) -> np.ndarray:
    """Tile ids of ``wanted``: contigs read from the shards of the genomes that have them (no SQL connection,
    which opens every shard of the store), a SQL condition through the read-only SQL sandbox."""
    holders = [name for name, entry in store.genomes.items() if wanted.genome in (None, name)
               and (not wanted.chroms or set(wanted.chroms) & set(entry["contig_lengths"]))]
    unknown = [chrom for chrom in wanted.chroms
               if not any(chrom in store.genomes[name]["contig_lengths"] for name in holders)]
    if unknown:
        known = sorted({chrom for name, entry in store.genomes.items() if wanted.genome in (None, name)
                        for chrom in entry["contig_lengths"]})
        raise InputError(f"{store.root}: no contig {unknown[0]!r} in "
                         f"{'genome ' + repr(wanted.genome) if wanted.genome else 'the store'} "
                         f"(known: {', '.join(known[:5])}, ...)")
    if not wanted.where:
        paths = [str(store.root / shard["path"]) for shard in store.shards if shard["genome"] in set(holders)]
        table = pq.read_table(paths, columns=["tile_id"], filters=[("chrom", "in", list(wanted.chroms))]) \
            if paths else None
        return table.column(0).to_numpy() if table is not None else np.empty(0, dtype=np.int64)
    clauses, parameters = [], {}
    if wanted.genome is not None:
        clauses.append("genome = $genome")
        parameters["genome"] = wanted.genome
    if wanted.chroms:
        clauses.append("list_contains($chroms, chrom)")
        parameters["chroms"] = list(wanted.chroms)
    clauses.append(f"({wanted.where})")
    table = run_sql(store, f"SELECT tile_id FROM tiles WHERE {' AND '.join(clauses)}", parameters)
    if table.num_columns != 1 or table.schema.field(0).type.id not in _INTEGER_TYPES:
        raise InputError(f"--where {wanted.where!r}: give a condition on the tiles view (e.g. gc > 0.5)")
    return table.column(0).combine_chunks().to_numpy(zero_copy_only=False).astype(np.int64)


_INTEGER_TYPES = {2, 3, 4, 5, 6, 7, 8, 9}  # Arrow type ids of (u)int8..(u)int64


def approximate(index) -> bool:
    """True when the store index's answers are approximate (an IVF / HNSW search or a refine stage)."""
    part = index.parts[0]
    return search_knob(part)[0] is not None or refine_stage(part) is not None


def filtered_search(store: Store, vectors: np.ndarray, k: int, subset: TileSubset, index=None,
                    settings: dict | None = None, exact_below: int = EXACT_SUBSET_TILES,
                    stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of each query among ``subset``'s tiles (see the module docstring for how).

    ``index`` is the store's own by default (a :class:`~genoembed.vector_index.FaissIndex`); ``settings``
    (nprobe, ef_search, k_factor) override its tuned ones; ``exact_below`` is the subset size up to which an
    approximate index is bypassed. ids of -1 only where the subset holds fewer than ``k`` tiles. ``stats``
    receives ``method`` ("exact" or "selector") and ``exact_rows`` (queries answered exactly)."""
    index = store.vector_index() if index is None else index
    settings = settings or {}
    if approximate(index) and subset.size <= exact_below:
        found = exact_search(subset_vectors(store, subset), vectors, k, store.metric)
        method, exact_rows = "exact", len(vectors)
    else:
        found = index.search(vectors, k, subset=subset, **settings)
        short = (found[1] >= 0).sum(axis=1) < min(k, subset.size)
        method, exact_rows = "selector", int(short.sum())
        if short.any() and approximate(index):
            scores, ids = found
            scores[short], ids[short] = exact_search(subset_vectors(store, subset), vectors[short], k, store.metric)
    if stats is not None:
        stats.update(method=method, exact_rows=exact_rows)
    return found


def subset_vectors(store: Store, subset: TileSubset):
    """(tile_ids, vectors) blocks of the subset's tiles, read only from shards whose id range can hold them;
    kept on ``subset`` (as an exact FAISS index) when they fit :data:`SUBSET_VECTOR_BYTES`."""
    if subset.vectors is not None:
        return [subset.vectors]
    blocks = list(_read_subset_vectors(store, subset))
    if blocks and subset.size * store.dim * 4 <= SUBSET_VECTOR_BYTES:
        subset.vectors = flat_block(np.concatenate([ids for ids, _ in blocks]), np.concatenate([v for _, v in blocks]),
                                    store.metric)
    return blocks


def _read_subset_vectors(store: Store, subset: TileSubset):
    paths = []
    for shard in store.shards:
        first, last = shard["first_tile_id"], shard["last_tile_id"]
        if subset.mask is None and last >= subset.low and first < subset.high or \
                subset.mask is not None and subset.mask[first:last + 1].any():
            paths.append(store.root / shard["path"])
    for ids, vectors in store.iter_embeddings(paths=paths):
        inside = subset.contains(ids)
        yield ids[inside], vectors[inside]
