"""Marking contigs of an indexed genome circular: the topology recorded, the tiles made what `--circular` makes.

A plasmid indexed as linear has no tile through its origin, and its last tile ends at the contig's end (the
linear grid's closing tile). :func:`circularise` turns it into what ``genoembed index --circular`` would have
built: the contig's circular plan (:func:`genoembed.tiles.plan_tiles` on the genome with the contig circular)
is compared with the stored tiles by (chrom, start, end, strand); tiles in both keep their rows and vectors,
tiles only in the plan (those round the origin) are embedded with the store's own model and written as one new
shard (new ids, as an append gives), and stored tiles not in the plan (the closing tile, off the circular grid)
are removed as `genoembed remove` removes tiles. The index gains one part for the new tiles and drops the
removed ids in place (an index that cannot remove, HNSW or a refine stage, is rebuilt after the switch). One
manifest write switches shards, index and the genome's ``circular`` list together; old shards are retired like
`remove`'s. Saved searches with hits on the contig are dropped (their tiles changed).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.errors import InputError, StoreError
from genoembed.indexing import build_store_index, index_matches, with_part
from genoembed.manifest import file_sha256
from genoembed.remove import drop_stale_searches, removed_in_place, rewritten_shard
from genoembed.store import PROVENANCE_KEY, Store
from genoembed.store_writer import embeddings_to_arrow, shard_provenance, write_shard
from genoembed.tiles import TilingSpec, plan_tiles
from genoembed.vector_index import IndexSpec, index_parts, load_index
from genoembed.writers import write_lock

log = logging.getLogger(__name__)
PLAN_ROWS = 1024  # tiles planned (and embedded) at a time


def circularise(store: Store, contigs: Sequence[str], genome: str | None = None,
                trust_remote_code: bool = False) -> dict:
    """Mark ``contigs`` of ``genome`` (default: the one genome holding them all) circular and give them the
    tiles an index with ``--circular`` makes; returns what changed (contigs already circular are left as
    they are)."""
    if not contigs:
        raise InputError(f"{store.root}: name a contig to mark circular (--circular NAME)")
    with write_lock(store.root):  # held from the first read to the index rebuilt after the commit
        store.refresh()
        if store.manifest.get("status") != "complete":
            raise StoreError(f"{store.root}: store build is incomplete; finish it with `genoembed index` first")
        genome = _holder(store, contigs, genome)
        new = sorted(set(contigs) - set(store.manifest["genomes"][genome].get("circular", ())))
        if not new:
            return {"genome": genome, "contigs": [], "tiles_added": 0, "tiles_removed": 0}
        spec = TilingSpec(**store.provenance["tiling"])
        if spec.units == "genes":
            raise InputError(f"{store.root}: its units are genes, which are not tiled round an origin; record "
                             "topology in a store of --units tiles")
        tiled = tuple(chrom for chrom in new if spec.contigs is None or chrom in spec.contigs)
        # the transaction commits, moves this store to the commit, and retires what the new manifest no longer
        # lists (the rewritten shards): readers of older snapshots keep them until they are done
        with store.transaction() as manifest:
            entry = manifest["genomes"][genome] = dict(manifest["genomes"][genome])  # a sealed entry is read-only
            entry["circular"] = sorted(set(entry.get("circular", ())) | set(new))
            stored = _stored_tiles(store, genome, tiled)
            planned = _planned(store, genome, new, dataclasses.replace(spec, contigs=tiled)) if tiled else \
                schema.TILES_WITH_SEQUENCE.empty_table()
            keys = list(zip(*(planned.column(name).to_pylist() for name in ("chrom", "start", "end", "strand"))))
            kept_ids = {stored[key] for key in keys if key in stored}
            stale = np.array(sorted(set(stored.values()) - kept_ids), dtype=np.int64)
            fresh = planned.filter(pa.array([key not in stored for key in keys], pa.bool_()))
            added = _embedded(store, fresh, manifest, trust_remote_code) if fresh.num_rows else None
            _without(store, manifest, genome, stale)
            if added is not None:
                path = write_shard(store.root, manifest, added)
                ids = added["tile_id"]
                manifest["shards"].append({"path": path, "rows": added.num_rows,
                                           "sha256": file_sha256(store.root / path), "genome": genome,
                                           "first_tile_id": ids[0].as_py(), "last_tile_id": ids[-1].as_py()})
                manifest["next_tile_id"] = ids[-1].as_py() + 1
            index_entry = manifest.get("index")
            rebuild = _update_index(store, manifest, stale, added)
        if rebuild:
            spec = IndexSpec(**index_entry["spec"], part_rows=index_entry.get("part_rows"))
            log.warning("%s: the %s index cannot remove vectors in place; rebuilding it", store.root, spec.factory)
            build_store_index(store, spec, first_part=index_entry.get("next_part", 1))
        dropped = drop_stale_searches(store, genome, new)
    return {"genome": genome, "contigs": new, "tiles_added": added.num_rows if added is not None else 0,
            "tiles_removed": int(len(stale)), "searches_dropped": dropped}


def _holder(store: Store, contigs: Sequence[str], genome: str | None) -> str:
    """The genome whose contigs these are: ``genome`` (checked), or the one genome holding them all."""
    if genome is not None:
        if genome not in store.genomes:
            raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(store.genomes)}")
        unknown = [chrom for chrom in contigs if chrom not in store.genomes[genome]["contig_lengths"]]
        if unknown:
            known = ", ".join(list(store.genomes[genome]["contig_lengths"])[:5])
            raise InputError(f"{store.root}: --circular {unknown[0]!r}: genome {genome!r} has no such contig "
                             f"(known: {known})")
        return genome
    holders = [name for name, entry in store.genomes.items() if set(contigs) <= entry["contig_lengths"].keys()]
    if len(holders) == 1:
        return holders[0]
    if holders:
        raise InputError(f"{store.root}: --circular {contigs[0]!r}: {len(holders)} genomes have that contig "
                         f"({', '.join(holders)}); contig names repeat across genomes: name one with --genome")
    raise InputError(f"{store.root}: --circular {contigs[0]!r}: no genome of the store holds "
                     f"{'that contig' if len(contigs) == 1 else 'all of them'} (genomes: {', '.join(store.genomes)})")


def _stored_tiles(store: Store, genome: str, contigs: tuple[str, ...]) -> dict[tuple, int]:
    """(chrom, start, end, strand) -> tile id of the genome's stored tiles on ``contigs``."""
    paths = [str(store.root / shard["path"]) for shard in store.shards if shard["genome"] == genome]
    if not contigs or not paths:
        return {}
    table = pq.read_table(paths, columns=["tile_id", "chrom", "start", "end", "strand"],
                          filters=[("chrom", "in", list(contigs))])
    columns = [table.column(name).to_pylist() for name in ("chrom", "start", "end", "strand")]
    return dict(zip(zip(*columns), table.column("tile_id").to_pylist()))


def _planned(store: Store, genome: str, circular: list[str], spec: TilingSpec) -> pa.Table:
    """The tiles (with sequence) ``spec`` plans on ``genome`` once ``circular`` contigs are circular."""
    opened = store.genome(genome).with_circular(circular)
    batches = list(plan_tiles(opened, spec, batch_rows=PLAN_ROWS))
    return pa.Table.from_batches(batches, schema=schema.TILES_WITH_SEQUENCE)


def _embedded(store: Store, tiles: pa.Table, manifest: dict, trust_remote_code: bool) -> pa.Table:
    """``tiles`` embedded with the store's model, as a shard's rows: ids from the store's next, the store's
    provenance (with the genome's entry as it will be committed) in the Parquet metadata."""
    embedder = store.embedder(trust_remote_code=trust_remote_code)
    genome = manifest["genomes"][tiles["genome"][0].as_py()]
    dtype = store.provenance.get("embedding_dtype", "float32")
    shard_schema = schema.embeddings_schema(store.dim, dtype).with_metadata(
        {PROVENANCE_KEY: json.dumps(shard_provenance(store.provenance, genome)).encode()})
    first = int(manifest["next_tile_id"])
    tiles = tiles.set_column(0, "tile_id", pa.array(np.arange(first, first + tiles.num_rows), pa.int64()))
    pieces = []
    for batch in tiles.to_batches(max_chunksize=PLAN_ROWS):
        vectors = embedder.embed(batch.column(schema.SEQUENCE).to_pylist())
        columns = [batch.column(name) for name in schema.TILE_COLUMNS]
        pieces.append(pa.RecordBatch.from_arrays([*columns, embeddings_to_arrow(vectors, dtype)], schema=shard_schema))
    return pa.Table.from_batches(pieces, schema=shard_schema)


def _without(store: Store, manifest: dict, genome: str, stale: np.ndarray) -> None:
    """Take the ``stale`` tile ids out of the genome's shards (rewritten under new numbers, in place in the list;
    the commit retires the old files)."""
    import pyarrow.compute as pc  # imported when used: genoembed imports this module at start-up

    if not len(stale):
        return
    kept = []
    for shard in manifest["shards"]:
        if shard["genome"] != genome or not ((stale >= shard["first_tile_id"]) & (stale <= shard["last_tile_id"])).any():
            kept.append(shard)
            continue
        table = pq.read_table(store.root / shard["path"])
        gone = pc.is_in(table["tile_id"], value_set=pa.array(stale, pa.int64()))
        rest = table.filter(pc.invert(gone))
        if rest.num_rows:
            kept.append(rewritten_shard(store, manifest, shard, rest))
    manifest["shards"] = kept


def _update_index(store: Store, manifest: dict, stale: np.ndarray, added: pa.Table | None) -> bool:
    """Drop ``stale`` ids from the index parts in place and add a part for ``added``; True when the index cannot
    remove in place and must be rebuilt once the manifest is committed (it is recorded as none until then)."""
    entry = manifest.get("index")
    if not entry:
        return False
    if not index_matches(store, entry):
        manifest["index"] = None
        return True
    if len(stale):
        parts = [load_index(store.root / part["path"]) for part in index_parts(entry)]
        if not removed_in_place(store, manifest, parts, stale):
            manifest["index"] = None
            return True
    if added is not None:
        vectors = np.asarray(added[schema.EMBEDDING].combine_chunks().flatten().to_numpy(zero_copy_only=False),
                             dtype=np.float32).reshape(added.num_rows, store.dim)
        manifest["index"] = with_part(store, manifest["index"], added["tile_id"].to_numpy(), vectors)
    return False
