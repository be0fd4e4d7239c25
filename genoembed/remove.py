"""`remove`: take a genome, or some of its contigs, out of a store (rows, tile ids, index entries).

Shards holding removed rows are rewritten under new shard numbers and the
removed ids are dropped from the index in place; one atomic manifest write then
switches to the new shards and the new index together (readers, who take no
lock, never see a snapshot without an index); only after that are the old
files deleted, and only once no reader that opened an older snapshot is left
(a reader still holding one keeps them until a later writer's sweep:
:mod:`genoembed.leases`). Index types that cannot remove in place (such as HNSW) are
switched to "no index" and rebuilt after the switch. A crash at any point
therefore leaves a consistent store (before the switch: the old one plus
orphan files that `genoembed verify` names), at worst without an index, which
the next `genoembed index` (or this command again) rebuilds. Removed tile ids
are never reused. The genome's annotation sets go with it (with ``contigs``: their rows on
those contigs), switched in the same manifest write.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed.errors import InputError, StoreError
from genoembed.files import atomic_write_bytes, version_name
from genoembed.indexing import build_store_index, index_matches
from genoembed.manifest import file_sha256, sequence_files
from genoembed.schema import ANNOTATIONS
from genoembed.store import Store
from genoembed.writers import write_lock
from genoembed.store_writer import write_shard
from genoembed.vector_index import IndexSpec, index_parts, load_index, remove_tile_ids, save_index

log = logging.getLogger(__name__)


def remove(store: Store, genome: str, contigs: Sequence[str] = ()) -> dict:
    """Remove ``genome`` (or only its ``contigs``) from ``store``; returns what was removed."""
    import pyarrow.compute as pc  # imported when used: genoembed imports this module at start-up

    with write_lock(store.root):  # held from the first read to the index rebuilt after the commit
        # the transaction commits, moves this store to the commit, and retires the files the new manifest no
        # longer lists (old shards, rewritten annotation sets, the sequence copy): readers of older snapshots
        # keep them until they are done
        with store.transaction() as manifest:
            entry = _check_request(store, manifest, genome, contigs)
            parts = [load_index(store.root / part["path"]) for part in index_parts(manifest.get("index"))] \
                if index_matches(store, manifest.get("index")) else None
            kept, removed_ids, replaced = [], [], []
            for shard in manifest["shards"]:
                if shard["genome"] != genome:
                    kept.append(shard)
                    continue
                table = pq.read_table(store.root / shard["path"])
                gone = pc.is_in(table["chrom"], value_set=pa.array(list(contigs))) if contigs else \
                    pa.array(np.ones(table.num_rows, dtype=bool))
                if not pc.any(gone).as_py():
                    kept.append(shard)
                    continue
                removed_ids.append(table.filter(gone)["tile_id"].to_numpy())
                replaced.append(store.root / shard["path"])
                rest = table.filter(pc.invert(gone))
                if rest.num_rows:
                    kept.append(rewritten_shard(store, manifest, shard, rest))
            manifest["shards"] = kept
            replaced += _remove_annotations(store, manifest, genome, contigs)
            if contigs:
                # a sealed genome's entry is read-only: edit a copy
                entry = manifest["genomes"][genome] = dict(entry)
                entry["contig_lengths"] = {c: n for c, n in entry["contig_lengths"].items() if c not in contigs}
                entry["removed_contigs"] = entry.get("removed_contigs", []) + list(contigs)
                entry["circular"] = [chrom for chrom in entry.get("circular", []) if chrom not in contigs]
            else:
                # the genome's own sequence goes with it (deleted once no reader of an older snapshot needs it)
                replaced += [store.root / path for path in sorted(sequence_files(manifest, genome))]
                del manifest["genomes"][genome]
            ids = np.concatenate(removed_ids) if removed_ids else np.empty(0, dtype=np.int64)
            # Readers take no lock and may open the store between any two steps: commit the new shards together
            # with an index that matches them, so no committed snapshot lacks an index. The index file is replaced
            # first; a reader of the old snapshot that loads it just misses the removed tiles.
            index_entry = manifest.get("index")
            in_place = bool(index_entry) and parts is not None and removed_in_place(store, manifest, parts, ids)
            if not in_place:
                manifest["index"] = None  # rebuilt below, once the manifest lists the shards it is built from
        if index_entry and not in_place:
            spec = IndexSpec(**index_entry["spec"], part_rows=index_entry.get("part_rows"))
            log.warning("%s: the %s index cannot remove vectors in place; rebuilding it", store.root, spec.factory)
            build_store_index(store, spec, first_part=index_entry.get("next_part", 1))
        dropped = drop_stale_searches(store, genome, contigs)
    return {"genome": genome, "contigs": list(contigs), "tiles_removed": int(len(ids)),
            "shards_rewritten": len(replaced), "tiles_left": store.num_tiles, "searches_dropped": dropped}


def removed_in_place(store: Store, manifest: dict, parts: list, ids: np.ndarray) -> bool:
    """Drop ``ids`` from every index part in place (same file names) and record the parts in ``manifest``;
    False when a part's type cannot remove (HNSW, a refine stage): the index is then rebuilt."""
    removed = []
    for index in parts:
        count = remove_tile_ids(index, ids)
        if count is None:
            return False
        removed.append(count)
    if sum(removed) != len(ids):
        raise StoreError(f"{store.root}: the index held {sum(removed)} of the {len(ids)} tile ids to remove; "
                         "rebuild it with `genoembed compact`")
    entry = manifest["index"]
    listed = []
    for part, index, count in zip(index_parts(entry), parts, removed):
        if count:
            save_index(index, store.root / part["path"])
            part = {**part, "ntotal": int(index.ntotal), "bytes": (store.root / part["path"]).stat().st_size,
                    "sha256": file_sha256(store.root / part["path"])}
        listed.append(part)
    manifest["index"] = {**entry, "parts": listed, "path": listed[0]["path"], "sha256": listed[0]["sha256"],
                         "ntotal": sum(part["ntotal"] for part in listed)}
    return True


def drop_stale_searches(store: Store, genome: str, contigs: Sequence[str] = ()) -> list[str]:
    """Delete saved searches with hits on what was removed: their tile ids no longer exist, so their
    rows (and the SQL views over them) would describe tiles the store does not hold."""
    import pyarrow.compute as pc

    dropped = []
    for name, entry in store.searches().items():
        hits = pq.read_table(store.root / entry["path"], columns=["genome", "chrom"])
        stale = pc.equal(hits["genome"], genome)
        if contigs:
            stale = pc.and_(stale, pc.is_in(hits["chrom"], value_set=pa.array(list(contigs))))
        if pc.any(stale).as_py():
            (store.root / "searches" / f"{name}.json").unlink(missing_ok=True)
            if name in (store.manifest.get("searches") or {}):  # saved by genoembed 0.1, listed in the manifest
                store.record("searches", name, None)
            # its file goes with the next sweep, once no reader may hold it
            dropped.append(name)
    if dropped:
        log.warning("%s: dropped saved searches with hits on the removed tiles: %s", store.root, ", ".join(dropped))
    return dropped


def _check_request(store: Store, manifest: dict, genome: str, contigs: Sequence[str]) -> dict:
    """The genome's manifest entry, once the request is known to make sense."""
    if manifest.get("status") != "complete":
        raise StoreError(f"{store.root}: store build is incomplete; finish it with `genoembed index` before removing")
    entry = manifest["genomes"].get(genome)
    if entry is None:
        raise InputError(f"{store.root}: no genome {genome!r} in the store; it holds {', '.join(manifest['genomes'])}")
    unknown = [chrom for chrom in contigs if chrom not in entry["contig_lengths"]]
    if unknown:
        raise InputError(f"{store.root}: genome {genome!r} has no contig {unknown[0]!r} "
                         f"(known: {', '.join(list(entry['contig_lengths'])[:5])})")
    if len(manifest["genomes"]) == 1 and (not contigs or set(contigs) >= set(entry["contig_lengths"])):
        raise InputError(f"{store.root}: that would remove everything the store holds; delete the directory instead")
    return entry


def _remove_annotations(store: Store, manifest: dict, genome: str, contigs: Sequence[str]) -> list[Path]:
    """Drop ``genome``'s annotation sets (or their rows on ``contigs``) from ``manifest``; the files to delete
    once it is committed. A rewritten set gets a new file (named by its checksum), so readers of the old
    snapshot keep reading the old one."""
    import pyarrow.compute as pc

    from genoembed.sql import annotation_owners

    replaced = []
    sets = manifest.get("annotations") or {}
    for name, entry in list(sets.items()):
        if entry.get("genome") not in (genome, None):
            continue
        path = store.root / entry["path"]
        if entry.get("genome") == genome and not contigs:
            del sets[name]
            replaced.append(path)
            continue
        table = pq.read_table(path)
        if entry.get("genome_in_file") is False:  # a format-2 file: its rows' genomes come from their contigs
            owners = annotation_owners(store, entry)
            # rows on a contig name several genomes share stay without one (null), as the SQL view shows them
            table = table.add_column(0, ANNOTATIONS.field("genome").with_nullable(True),
                                     pa.array([owners.get(chrom) for chrom in table["chrom"].to_pylist()], pa.string()))
        gone = pc.fill_null(pc.equal(table["genome"], genome), False)
        if contigs:
            gone = pc.and_(gone, pc.is_in(table["chrom"], value_set=pa.array(list(contigs), pa.string())))
        if not pc.any(gone).as_py():
            continue
        rest = table.filter(pc.invert(gone))
        replaced.append(path)
        if not rest.num_rows:
            del sets[name]
            continue
        sink = pa.BufferOutputStream()
        pq.write_table(rest, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        relative = f"annotations/{version_name(name)}"
        atomic_write_bytes(store.root / relative, data)
        genomes = pc.unique(rest["genome"]).to_pylist()
        sets[name] = {**{key: value for key, value in entry.items() if key not in ("genome_in_file", "genome_candidates")},
                      "path": relative, "rows": rest.num_rows, "sha256": file_sha256(store.root / relative),
                      "genome": genomes[0] if len(genomes) == 1 else None}
    return replaced


def rewritten_shard(store: Store, manifest: dict, shard: dict, rest: pa.Table) -> dict:
    """``rest`` written as a new shard; its manifest entry."""
    path = write_shard(store.root, manifest, rest)
    ids = rest["tile_id"]
    return {**shard, "path": path, "rows": rest.num_rows, "sha256": file_sha256(store.root / path),
            "first_tile_id": ids[0].as_py(), "last_tile_id": ids[-1].as_py()}
