"""Writing a store: one genome's tiles and embeddings into fixed-size Parquet shards, resumably.

Every shard is written under a temporary name and renamed into place, and the
manifest is committed atomically after each shard, so readers (and a resumed
run) only ever see complete shards. The caller holds the writer lock
(:func:`genoembed.store.write_lock`); :mod:`genoembed.engine` does, around this.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.version import VERSION as __version__
from genoembed.errors import GenoembedError, StoreError, command
from genoembed.files import atomic_file
from genoembed.leases import fs_now_ns
from genoembed.manifest import FORMAT_VERSION, MANIFEST, file_sha256, read_manifest, write_manifest
from genoembed.store import IDENTITY_KEYS, PROVENANCE_KEY
from genoembed.writers import committed_files, sweep_retired


def genome_entry(genome) -> dict:
    """What a store records of a genome: name, FASTA path and sha256, contig lengths, circular contigs."""
    return {**genome.describe(), "contig_lengths": dict(genome.contigs), "circular": sorted(genome.circular)}


SEQUENCES = "sequences"


def write_store_sequence(root: Path, genome) -> dict:
    """Copy ``genome``'s sequence into the store (``sequences/NAME.SHA.fa.gz``, BGZF with .fai and .gzi), so
    a copied store answers without the FASTA; returns the manifest's ``sequence`` entry for the genome."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", genome.name)
    path = f"{SEQUENCES}/{safe}.{genome.checksum[:12]}.fa.gz"
    (root / SEQUENCES).mkdir(parents=True, exist_ok=True)
    return {"path": path, **genome.write_bgzf(root / path)}


def shard_provenance(provenance: dict, genome: dict) -> dict:
    """Provenance written into a shard's Parquet metadata: the store's, plus the shard's genome."""
    return {**provenance, "genome": {key: value for key, value in genome.items() if key != "contig_lengths"}}


def provenance_mismatch(stored: dict, requested: dict) -> list[str]:
    """Names of identity keys whose values differ (model, tiling, genome, dtype)."""
    return [key for key in IDENTITY_KEYS if stored.get(key) != requested.get(key)]


def embedder_difference(stored: dict, requested: dict) -> str:
    """`` (dtype: 'bfloat16' stored, 'float32' now)``: the embedder record's fields that differ, or ''.
    A record without ``dtype`` is of float32 vectors (a GPU build records bfloat16)."""
    fields = [key for key in sorted(set(stored) | set(requested)) if stored.get(key) != requested.get(key)]
    if not fields:
        return ""
    default = {"dtype": "float32"}
    return " (" + "; ".join(f"{key}: {stored.get(key, default.get(key))!r} stored, "
                            f"{requested.get(key, default.get(key))!r} now" for key in fields) + ")"


def embeddings_to_arrow(embeddings: np.ndarray, dtype: str) -> pa.FixedSizeListArray:
    values = np.ascontiguousarray(embeddings, dtype=np.float16 if dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), embeddings.shape[1])


@dataclass
class StoreWriter:
    """Appends one genome's (tiles, embeddings) into fixed-size shards, resuming an interrupted build.

    ``next_id`` is the first tile id (in plan order) not yet stored for this
    genome; the caller must skip the tiles before it and feed the rest in order.
    A store that already holds other genomes takes this one only with ``append``.
    """

    root: Path
    provenance: dict
    dim: int
    genome: dict
    shard_rows: int = 65536
    row_group_rows: int = 8192
    overwrite: bool = False
    append: bool = False
    first_id: int = field(init=False, default=0)
    rows_done: int = field(init=False, default=0)
    _pending: list = field(init=False, default_factory=list)
    _pending_rows: int = field(init=False, default=0)
    _manifest: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        dtype = self.provenance.get("embedding_dtype", "float32")
        self._schema = schema.embeddings_schema(self.dim, dtype).with_metadata(
            {PROVENANCE_KEY: json.dumps(shard_provenance(self.provenance, self.genome)).encode()})
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        if (self.root / MANIFEST).exists() and not self.overwrite:
            self._manifest = read_manifest(self.root)
            self._join_existing()
        else:
            self._start_new()
        name = self.genome["name"]
        self.first_id = self._manifest["genomes"][name]["first_tile_id"]
        self.rows_done = sum(shard["rows"] for shard in self._manifest["shards"] if shard["genome"] == name)

    def _start_new(self) -> None:
        """A new store; with ``overwrite``, in place of the store there. That store's files are retired, not
        deleted: readers of it finish on their snapshot, and a later writer deletes them once none is left.
        New shards are numbered past every shard file on disk, so none is written over a file a reader holds."""
        try:
            replaced = committed_files(read_manifest(self.root)) if (self.root / MANIFEST).exists() else set()
        except GenoembedError:
            replaced = set()  # unreadable, so nobody reads it: its files are swept as files no manifest lists
        self._manifest = {"format_version": FORMAT_VERSION, "genoembed_version": __version__,
                          "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "status": "building", "provenance": self.provenance, "dim": self.dim,
                          "genomes": {self.genome["name"]: {**self.genome, "first_tile_id": 0, "status": "building"}},
                          "shards": [], "next_tile_id": 0, "next_shard": first_unused_shard(self.root),
                          "index": None, "annotations": {}, "searches": {}}
        write_manifest(self.root, self._manifest)
        sweep_retired(self.root, sorted(replaced), fs_now_ns(self.root))

    def _join_existing(self) -> None:
        """Resume this genome, or (with ``append``) add it after the genomes already stored."""
        stored = self._manifest["provenance"]
        differing = provenance_mismatch(stored, self.provenance)
        if differing:
            detail = embedder_difference(stored.get("embedder") or {}, self.provenance.get("embedder") or {})
            raise StoreError(f"{self.root}: existing store was built with a different "
                             f"{', '.join(differing)}{detail}; use --overwrite or another output directory")
        genomes, name = self._manifest["genomes"], self.genome["name"]
        stored = genomes.get(name)
        if stored is not None:
            if stored["sha256"] != self.genome["sha256"]:
                raise StoreError(f"{self.root}: genome {name!r} in the store came from another FASTA (sha256 "
                                 f"differs); {command('remove', self.root, '--genome', name)} it first, pick another "
                                 "--genome-name, or use --overwrite")
            return
        if not self.append:
            raise StoreError(f"{self.root}: store holds genome(s) {', '.join(genomes)}; pass --append to add "
                             f"{name!r} to it, or --overwrite to replace the store")
        unfinished = [other for other, entry in genomes.items() if entry["status"] != "complete"]
        if unfinished:
            raise StoreError(f"{self.root}: genome {unfinished[0]!r} is only partly built; rerun its "
                             "`genoembed index` to finish it before appending another")
        genomes[name] = {**self.genome, "first_tile_id": self._manifest["next_tile_id"], "status": "building"}
        self._manifest["status"] = "building"
        write_manifest(self.root, self._manifest)

    def carry_sequence(self, genome) -> None:
        """Give the genome being written its in-store sequence copy (once; a resumed build keeps it)."""
        entry = self._manifest["genomes"][self.genome["name"]]
        copy = entry.get("sequence")
        if copy and (self.root / copy["path"]).is_file():
            return
        entry["sequence"] = write_store_sequence(self.root, genome)
        write_manifest(self.root, self._manifest)

    @property
    def complete(self) -> bool:
        return self._manifest["genomes"][self.genome["name"]]["status"] == "complete"

    @property
    def next_id(self) -> int:
        return self.first_id + self.rows_done

    def write(self, tiles: pa.RecordBatch, embeddings: np.ndarray) -> None:
        if embeddings.shape != (tiles.num_rows, self.dim):
            raise StoreError(f"embedder returned shape {embeddings.shape}, expected ({tiles.num_rows}, {self.dim})")
        columns = [tiles.column(name) for name in schema.TILE_COLUMNS]
        columns.append(embeddings_to_arrow(embeddings, self.provenance.get("embedding_dtype", "float32")))
        self._pending.append(pa.RecordBatch.from_arrays(columns, schema=self._schema))
        self._pending_rows += tiles.num_rows
        while self._pending_rows >= self.shard_rows:
            self._flush(self.shard_rows)

    def close(self) -> None:
        """Flush the last partial shard and mark the genome (and, when all are, the store) complete."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        genomes = self._manifest["genomes"]
        genomes[self.genome["name"]]["status"] = "complete"
        if all(entry["status"] == "complete" for entry in genomes.values()):
            self._manifest["status"] = "complete"
        write_manifest(self.root, self._manifest)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        shard, rest = table.slice(0, rows), table.slice(rows)
        path = write_shard(self.root, self._manifest, shard, self.row_group_rows)
        ids = shard.column("tile_id")
        self._manifest["shards"].append({
            "path": path, "rows": shard.num_rows, "sha256": file_sha256(self.root / path),
            "genome": self.genome["name"], "first_tile_id": ids[0].as_py(), "last_tile_id": ids[-1].as_py()})
        self._manifest["next_tile_id"] = max(self._manifest["next_tile_id"], ids[-1].as_py() + 1)
        write_manifest(self.root, self._manifest)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows


def first_unused_shard(root: Path) -> int:
    """One past the highest shard number on disk (0 when there is none)."""
    numbers = [int(match.group(1)) for path in (root / "shards").glob("part-*.parquet")
               if (match := re.fullmatch(r"part-(\d+)\.parquet", path.name))]
    return max(numbers, default=-1) + 1


def write_shard(root: Path, manifest: dict, table: pa.Table, row_group_rows: int = 8192) -> str:
    """Write ``table`` as the next numbered shard (temp name, fsync, rename); returns its store path.

    Numbers are never reused, so a rewritten shard never replaces a file a reader may hold.
    """
    number = manifest["next_shard"]
    manifest["next_shard"] = number + 1
    final = root / "shards" / f"part-{number:05d}.parquet"
    with atomic_file(final, "shard") as partial:
        pq.write_table(table, partial, compression="zstd", row_group_size=row_group_rows)
    return f"shards/{final.name}"


