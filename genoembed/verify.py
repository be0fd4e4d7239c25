"""`verify`: check a store against its manifest and report every problem at once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.errors import command
from genoembed.indexing import unindexed_shards
from genoembed.manifest import SEALED, file_sha256, sealed_files, sequence_files
from genoembed.store import PROVENANCE_KEY, Store
from genoembed.writers import retired_files
from genoembed.vector_index import index_files, index_parts, load_index


def verify_store(store: Store) -> list[str]:
    """Every inconsistency between files and manifest: checksums, rows, ids, provenance, index."""
    problems = []
    previous_id = -1
    for shard in store.manifest["shards"]:
        path = store.root / shard["path"]
        where = shard["path"]
        if not path.is_file():
            problems.append(f"{where}: missing")
            continue
        if file_sha256(path) != shard["sha256"]:
            problems.append(f"{where}: sha256 differs from the manifest (file changed or corrupt)")
        try:
            ids = pq.read_table(path, columns=["tile_id"]).column("tile_id").to_numpy()
            shard_schema = pq.read_schema(path)
        except (OSError, pa.ArrowInvalid) as error:
            problems.append(f"{where}: unreadable Parquet ({str(error).splitlines()[0]})")
            continue
        if len(ids) != shard["rows"]:
            problems.append(f"{where}: {len(ids)} rows, manifest says {shard['rows']}")
        if len(ids) and (ids[0] <= previous_id or (np.diff(ids) <= 0).any()):
            problems.append(f"{where}: tile ids are not unique and increasing (after id {previous_id})")
        if len(ids) and (ids[0] != shard["first_tile_id"] or ids[-1] != shard["last_tile_id"]):
            problems.append(f"{where}: tile ids {ids[0]}..{ids[-1]}, manifest says "
                            f"{shard['first_tile_id']}..{shard['last_tile_id']}")
        previous_id = max(previous_id, int(ids[-1])) if len(ids) else previous_id
        problems += _provenance_problems(store, shard, shard_schema)
    if previous_id >= store.id_limit:
        problems.append(f"manifest: next_tile_id {store.id_limit} is not past the largest tile id {previous_id}")
    index_entry = store.manifest.get("index")
    if index_entry:
        held = 0
        for part in index_parts(index_entry):
            path = store.root / part["path"]
            if not path.is_file():
                problems.append(f"{part['path']}: missing")
            elif file_sha256(path) != part["sha256"]:
                problems.append(f"{part['path']}: sha256 differs from the manifest")
            else:
                index = load_index(path)
                held += index.ntotal
                if index.d != store.dim:
                    problems.append(f"{part['path']}: index dim {index.d} != embedding dim {store.dim}")
        if held and held != store.num_tiles:
            problems.append(f"{index_entry['path']}: index holds {held} vectors, store {store.num_tiles}")
        unindexed = sorted({shard["genome"] for shard in unindexed_shards(store, index_entry)})
        if unindexed:
            problems.append(f"{index_entry['path']}: index does not cover genome(s) {', '.join(unindexed)}; rerun "
                            "`genoembed index` to update it")
    elif store.num_tiles:
        problems.append("index: the store has no vector index, so searches refuse (a build failed while writing "
                        "it, e.g. a full disk); rerun `genoembed index` with the store's recipe or options")
    problems += folder_problems(store)
    damaged: dict[str, str] = {}
    searches = store.searches(damaged)
    problems += [f"saved search {name!r}: {why}" for name, why in sorted(damaged.items())]
    for entry in searches.values():
        path = store.root / entry["path"]
        if path.is_file() and path.resolve().is_relative_to(store.root.resolve()):
            problems += _hits_problems(path, entry)
    for section, entries in (("annotations", store.manifest.get("annotations", {})), ("searches", searches)):
        for name, entry in entries.items():
            path = store.root / entry["path"]
            if not path.is_file():
                problems.append(f"{entry['path']}: missing ({section} {name!r})")
            elif not path.resolve().is_relative_to(store.root.resolve()):
                problems.append(f"{entry['path']}: resolves outside the store ({section} {name!r})")
            elif "sha256" in entry and file_sha256(path) != entry["sha256"]:  # searches of 0.1 stores have none
                problems.append(f"{entry['path']}: sha256 differs from the manifest")
    problems += sequence_problems(store)
    problems += sealed_problems(store)
    problems += unfinished_work(store)
    if not problems:
        problems += what_commands_meet(store)
    return problems


def folder_problems(store: Store) -> list[str]:
    """The store's folders must be its own: a ``shards/`` symlinked elsewhere is refused by sql and search."""
    root = store.root.resolve()
    return [f"{folder}/: resolves to {(store.root / folder).resolve()}, outside the store; put the files back "
            "inside it" for folder in ("shards", "annotations", "index", "searches")
            if (store.root / folder).exists() and not (store.root / folder).resolve().is_relative_to(root)]


def _hits_problems(path: Path, entry: dict) -> list[str]:
    """A saved search must hold hits (its sidecar can match garbage: a sha256 says only the file is unchanged)."""
    where = f"searches/{path.name}"
    try:
        found = pq.read_schema(path)
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException) as error:
        return [f"{where}: unreadable Parquet ({str(error).splitlines()[0]}); delete it and its sidecar"]
    missing = [name for name in schema.HITS.names if found.get_field_index(name) < 0]
    problems = [f"{where}: not a saved search (no column {', '.join(missing[:3])}); delete it and its sidecar"] \
        if missing else []
    if isinstance(entry.get("rows"), int) and entry["rows"] != rows:
        problems.append(f"{where}: {rows} rows, its sidecar says {entry['rows']}")
    return problems


def what_commands_meet(store: Store) -> list[str]:
    """Open what search and sql open (the vector index, the SQL views): anything they refuse is a problem."""
    from genoembed.errors import GenoembedError
    from genoembed.sql import connect

    problems = []
    for what, action in (("vector index", store.vector_index), ("sql", lambda: connect(store).close())):
        try:
            action()
        except GenoembedError as error:
            problems.append(f"{what}: {error}")
        except Exception as error:  # noqa: BLE001 - a library's own error on a damaged file is the finding
            problems.append(f"{what}: cannot be opened ({type(error).__name__}: {str(error).splitlines()[0]})")
    return problems


def sequence_problems(store: Store) -> list[str]:
    """The store's copies of its genomes' sequences against the manifest: the file's sha256, and the sha256 of
    the FASTA text inside it (the one the genome was tiled from)."""
    import gzip
    import hashlib

    problems = []
    for name, entry in store.manifest["genomes"].items():
        copy = entry.get("sequence")
        if not copy:
            continue
        path = store.root / copy["path"]
        missing = [p for p in (path, path.with_name(path.name + ".fai"), path.with_name(path.name + ".gzi"))
                   if not p.is_file()]
        if missing:
            problems.append(f"{missing[0].relative_to(store.root).as_posix()}: missing (sequence of genome {name!r})")
            continue
        if file_sha256(path) != copy["sha256"]:
            problems.append(f"{copy['path']}: sha256 differs from the manifest (sequence of genome {name!r})")
            continue
        digest = hashlib.sha256()
        with gzip.open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != copy.get("content_sha256"):
            problems.append(f"{copy['path']}: its FASTA text differs from the one genome {name!r} was built from")
    return problems


def sealed_problems(store: Store) -> list[str]:
    """The manifest's sealed files (complete genomes' entries) against the sha256 ``manifest.json`` records:
    the store was opened from this process's parsed copy of each, so the files are hashed again here."""
    problems = []
    for descriptor in store.manifest.get("sealed") or ():
        path = store.root / descriptor["path"]
        if not path.is_file():
            problems.append(f"{descriptor['path']}: missing (sealed genomes of the manifest)")
        elif file_sha256(path) != descriptor["sha256"]:
            problems.append(f"{descriptor['path']}: sha256 differs from the manifest (sealed genomes)")
    return problems


def genomes_without_sequence(store: Store) -> list[str]:
    """Genomes whose sequence the store does not carry (stores built before it did): they need their FASTA."""
    return [name for name, entry in store.genomes.items() if not entry.get("sequence")]


def embed_sequences(store: Store) -> list[str]:
    """Copy the sequence of every genome that lacks one into the store, from its recorded FASTA (checked
    against its sha256), so the store answers without it; returns the genomes copied."""
    from genoembed.store_writer import write_store_sequence

    missing = genomes_without_sequence(store)
    if not missing:
        return []
    copies = {name: store.recorded_fasta(name) for name in missing}  # every FASTA found and checked before writing
    with store.transaction() as manifest:
        for name, genome in copies.items():
            copy = write_store_sequence(store.root, genome)
            manifest["genomes"][name] = {**manifest["genomes"][name], "sequence": copy}  # sealed ones are read-only
    return missing


def unfinished_work(store: Store) -> list[str]:
    """Genomes still being written, files no manifest lists (a killed writer's leftovers), a writer's lock."""
    problems = [f"genome {name!r}: build unfinished (status {entry.get('status')!r}); rerun the `genoembed index` "
                f"that was building it (--fasta {entry.get('path')}, same options) to finish it ({command('remove')} "
                "refuses a half-built store)" for name, entry in store.manifest["genomes"].items()
                if entry.get("status") != "complete"]
    listed = {shard["path"] for shard in store.manifest["shards"]}
    listed |= {entry["path"] for entry in (store.manifest.get("annotations") or {}).values()}
    index_entry = store.manifest.get("index")
    listed |= index_files(index_entry)
    listed |= sequence_files(store.manifest) | sealed_files(store.manifest)
    listed |= retired_files(store.root)  # left by a writer for deletion once older readers are done
    for folder in ("shards", "annotations", "index", "searches", "sequences", SEALED):
        for path in sorted((store.root / folder).glob("*")) if (store.root / folder).is_dir() else ():
            relative = path.relative_to(store.root).as_posix()
            if ".partial." in path.name:
                problems.append(f"{relative}: partial file left by an interrupted write; delete it")
            elif folder in ("shards", "annotations") and path.suffix == ".parquet" and relative not in listed:
                problems.append(f"{relative}: not in the manifest (orphan of an interrupted write); delete it")
            elif folder in ("sequences", SEALED) and relative not in listed:
                problems.append(f"{relative}: not in the manifest (orphan of an interrupted write); delete it")
            elif folder == "index" and path.suffix == ".faiss" and relative not in listed:
                problems.append(f"{relative}: not the manifest's index (orphan); delete it")
    if (store.root / ".plan").exists():
        problems.append(".plan: tile plan of an interrupted Ray build; rerun its `genoembed index` or delete it")
    return problems


def _provenance_problems(store: Store, shard: dict, shard_schema: pa.Schema) -> list[str]:
    """A shard must carry the store's model/tiling provenance and the FASTA checksum of its genome."""
    where, problems = shard["path"], []
    provenance = json.loads((shard_schema.metadata or {}).get(PROVENANCE_KEY, b"{}"))
    genome = provenance.pop("genome", {})
    if provenance != store.provenance:
        problems.append(f"{where}: provenance differs from the manifest (mixed models or settings)")
    recorded = store.manifest["genomes"].get(shard.get("genome"))
    if recorded is None:
        problems.append(f"{where}: genome {shard.get('genome')!r} is not in the manifest's genomes")
    elif genome.get("sha256") != recorded["sha256"]:
        problems.append(f"{where}: written from another FASTA than genome {recorded['name']!r} (sha256 differs)")
    expected = schema.embeddings_schema(store.dim, store.provenance.get("embedding_dtype", "float32"))
    if not shard_schema.remove_metadata().equals(expected):
        problems.append(f"{where}: column schema differs from the store's (dim {store.dim})")
    return problems
