"""`verify`: check a store against its manifest and report every problem at once."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.store import PROVENANCE_KEY, Store, file_sha256
from genoembed.vectors import load_index


def verify_store(store: Store) -> list[str]:
    """Every inconsistency between files and manifest: checksums, rows, ids, provenance, index."""
    problems = []
    next_id = 0
    for shard in store.manifest["shards"]:
        path = store.root / shard["path"]
        where = shard["path"]
        if not path.is_file():
            problems.append(f"{where}: missing")
            next_id += shard["rows"]
            continue
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{where}: sha256 differs from the manifest (file changed or corrupt)")
        try:
            table = pq.read_table(path, columns=["tile_id"])
            metadata = pq.read_schema(path).metadata or {}
            shard_schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as error:
            problems.append(f"{where}: unreadable Parquet ({str(error).splitlines()[0]})")
            next_id += shard["rows"]
            continue
        if table.num_rows != shard["rows"]:
            problems.append(f"{where}: {table.num_rows} rows, manifest says {shard['rows']}")
        ids = table.column("tile_id").to_pylist()
        if ids != list(range(next_id, next_id + len(ids))):
            problems.append(f"{where}: tile ids are not the contiguous run starting at {next_id}")
        next_id += shard["rows"]
        provenance = json.loads(metadata.get(PROVENANCE_KEY, b"{}"))
        if provenance != store.provenance:
            problems.append(f"{where}: provenance differs from the manifest (mixed models or settings)")
        expected = schema.embeddings_schema(store.dim, store.provenance.get("embedding_dtype", "float32"))
        if not shard_schema.remove_metadata().equals(expected):
            problems.append(f"{where}: column schema differs from the store's (dim {store.dim})")
    index_entry = store.manifest.get("index")
    if index_entry:
        path = store.root / index_entry["path"]
        if not path.is_file():
            problems.append(f"{index_entry['path']}: missing")
        elif file_sha256(path) != index_entry["sha256"]:
            problems.append(f"{index_entry['path']}: sha256 differs from the manifest")
        else:
            index = load_index(path)
            if index.d != store.dim:
                problems.append(f"{index_entry['path']}: index dim {index.d} != embedding dim {store.dim}")
            if index.ntotal != store.num_tiles:
                problems.append(f"{index_entry['path']}: index holds {index.ntotal} vectors, store {store.num_tiles}")
    for section in ("annotations", "searches"):
        for name, entry in store.manifest.get(section, {}).items():
            path = store.root / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing ({section} {name!r})")
            elif "sha256" in entry and file_sha256(path) != entry["sha256"]:
                problems.append(f"{entry['path']}: sha256 differs from the manifest")
    return problems
