"""The on-disk store: Parquet shards of tiles + embeddings, a JSON manifest, provenance.

Layout of a store directory::

    manifest.json          shards, row counts, sha256s, provenance, index, annotations
    shards/part-00000.parquet ...
    index/vectors.faiss    FAISS index (ids = tile_id)
    annotations/NAME.parquet
    searches/NAME.parquet  saved search hits (``last`` = most recent)

Every file is written under a temporary name and renamed into place, and the
manifest is replaced atomically after each shard, so readers (and a resumed
run) only ever see complete shards. One writer at a time holds ``.lock``.

A store holds one or more genomes embedded with one model and one tiling
(``provenance``); ``genomes`` records each genome's FASTA checksum, contigs and
first tile id. Appending a genome continues the ids; removing one leaves a gap
(ids are never reused), so ``tile_id`` is unique and increasing, not dense.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import __version__, schema
from genoembed.errors import InputError, StoreError

FORMAT_VERSION = 2
MANIFEST = "manifest.json"
PROVENANCE_KEY = b"genoembed.provenance"
# Provenance keys that must agree for two runs to write into one store.
IDENTITY_KEYS = ("embedder", "tiling", "embedding_dtype")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new file, never a partial one."""
    partial = path.with_name(f".{path.name}.partial.{os.getpid()}")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


def file_sha256(path: Path) -> str:
    from genoembed.genome import file_checksum

    return file_checksum(path)


def _read_manifest(root: Path) -> dict:
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise StoreError(f"{root}: not a genoembed store (no {MANIFEST}); build one with `genoembed index`")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as error:
        raise StoreError(f"{manifest_path}: corrupt manifest ({error}); rebuild the store") from None
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise StoreError(f"{manifest_path}: store format {version!r} is newer than this genoembed "
                         f"(reads format {FORMAT_VERSION}); upgrade genoembed")
    return _upgrade_single_genome(manifest) if version == 1 else manifest


def _upgrade_single_genome(manifest: dict) -> dict:
    """Format 1 stores held one genome, recorded in the provenance; give them a ``genomes`` section."""
    genome = manifest["provenance"].pop("genome")
    rows = sum(shard["rows"] for shard in manifest["shards"])
    manifest["genomes"] = {genome["name"]: {**genome, "first_tile_id": 0, "status": manifest.get("status")}}
    for shard in manifest["shards"]:
        shard["genome"] = genome["name"]
    manifest.update(format_version=FORMAT_VERSION, next_tile_id=rows, next_shard=len(manifest["shards"]))
    if manifest.get("index"):
        manifest["index"]["genomes"] = [genome["name"]]
    return manifest


def genome_entry(genome) -> dict:
    """What a store records of a genome: name, FASTA path and sha256, contig lengths."""
    return {**genome.describe(), "contig_lengths": dict(genome.contigs)}


def shard_provenance(provenance: dict, genome: dict) -> dict:
    """Provenance written into a shard's Parquet metadata: the store's, plus the shard's genome."""
    return {**provenance, "genome": {key: value for key, value in genome.items() if key != "contig_lengths"}}


def _write_manifest(root: Path, manifest: dict) -> None:
    manifest["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    atomic_write_bytes(root / MANIFEST, json.dumps(manifest, indent=2).encode())


def provenance_mismatch(stored: dict, requested: dict) -> list[str]:
    """Names of identity keys whose values differ (model, tiling, genome, dtype)."""
    return [key for key in IDENTITY_KEYS if stored.get(key) != requested.get(key)]


@contextlib.contextmanager
def write_lock(root: Path):
    """Exclusive writer lock (re-entrant in one process); a lock left by a dead process is taken over."""
    root.mkdir(parents=True, exist_ok=True)
    lock = root / ".lock"
    if lock.exists() and lock.read_text().strip() == str(os.getpid()):
        yield
        return
    for _attempt in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            holder = lock.read_text().strip() or "0"
            if holder.isdigit() and _pid_alive(int(holder)):
                raise StoreError(f"{root}: store is being written by process {holder}; "
                                 "wait for it to finish (two writers on one store are refused)") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        for leftover in (self.root / "shards").glob(".*.partial.*"):
            leftover.unlink()
        if (self.root / MANIFEST).exists() and not self.overwrite:
            self._manifest = _read_manifest(self.root)
            self._join_existing()
        else:
            self._start_new()
        name = self.genome["name"]
        self.first_id = self._manifest["genomes"][name]["first_tile_id"]
        self.rows_done = sum(shard["rows"] for shard in self._manifest["shards"] if shard["genome"] == name)

    def _start_new(self) -> None:
        for stale in (self.root / "shards").glob("part-*.parquet"):
            stale.unlink()
        self._manifest = {"format_version": FORMAT_VERSION, "genoembed_version": __version__,
                          "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                          "status": "building", "provenance": self.provenance, "dim": self.dim,
                          "genomes": {self.genome["name"]: {**self.genome, "first_tile_id": 0, "status": "building"}},
                          "shards": [], "next_tile_id": 0, "next_shard": 0,
                          "index": None, "annotations": {}, "searches": {}}
        if (self.root / "index").exists():
            shutil.rmtree(self.root / "index")
        _write_manifest(self.root, self._manifest)

    def _join_existing(self) -> None:
        """Resume this genome, or (with ``append``) add it after the genomes already stored."""
        differing = provenance_mismatch(self._manifest["provenance"], self.provenance)
        if differing:
            raise StoreError(f"{self.root}: existing store was built with a different "
                             f"{', '.join(differing)}; use --overwrite or another output directory")
        genomes, name = self._manifest["genomes"], self.genome["name"]
        stored = genomes.get(name)
        if stored is not None:
            if stored["sha256"] != self.genome["sha256"]:
                raise StoreError(f"{self.root}: genome {name!r} in the store came from another FASTA (sha256 "
                                 f"differs); `genoembed remove --genome {name}` it first, pick another "
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
        _write_manifest(self.root, self._manifest)

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
        _write_manifest(self.root, self._manifest)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        shard, rest = table.slice(0, rows), table.slice(rows)
        path = write_shard(self.root, self._manifest, shard, self.row_group_rows)
        ids = shard.column("tile_id")
        self._manifest["shards"].append({
            "path": path, "rows": shard.num_rows, "sha256": file_sha256(self.root / path),
            "genome": self.genome["name"], "first_tile_id": ids[0].as_py(), "last_tile_id": ids[-1].as_py()})
        self._manifest["next_tile_id"] = max(self._manifest["next_tile_id"], ids[-1].as_py() + 1)
        _write_manifest(self.root, self._manifest)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows


def write_shard(root: Path, manifest: dict, table: pa.Table, row_group_rows: int = 8192) -> str:
    """Write ``table`` as the next numbered shard (temp name, fsync, rename); returns its store path.

    Numbers are never reused, so a rewritten shard never replaces a file a reader may hold.
    """
    number = manifest["next_shard"]
    manifest["next_shard"] = number + 1
    final = root / "shards" / f"part-{number:05d}.parquet"
    partial = final.with_name(f".{final.name}.partial.{os.getpid()}")
    pq.write_table(table, partial, compression="zstd", row_group_size=row_group_rows)
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, final)
    return f"shards/{final.name}"


class Store:
    """A built store, opened for reading. Python twin of the CLI's search / sql / info."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True) -> "Store":
        root = Path(path)
        manifest = _read_manifest(root)
        if require_complete and manifest.get("status") != "complete":
            raise StoreError(f"{root}: store build is incomplete (status {manifest.get('status')!r}); "
                             "rerun `genoembed index` with the same options to resume it")
        missing = [s["path"] for s in manifest["shards"] if not (root / s["path"]).is_file()]
        if missing:
            raise StoreError(f"{root}: {len(missing)} shard(s) listed in the manifest are missing "
                             f"(e.g. {missing[0]}); rebuild with `genoembed index --overwrite`")
        return cls(root, manifest)

    # --- facts -------------------------------------------------------------
    @property
    def provenance(self) -> dict:
        return self.manifest["provenance"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def num_tiles(self) -> int:
        return sum(shard["rows"] for shard in self.manifest["shards"])

    @property
    def id_limit(self) -> int:
        """One past the largest tile id ever assigned (ids of removed tiles are not reused)."""
        return int(self.manifest["next_tile_id"])

    @property
    def genomes(self) -> dict[str, dict]:
        """Genome name -> FASTA path, sha256, contig lengths, first tile id, in the order added."""
        return self.manifest["genomes"]

    @property
    def contig_lengths(self) -> dict[str, int]:
        """Contig lengths of every genome in the store (for checking annotation contigs)."""
        return {chrom: length for entry in self.genomes.values() for chrom, length in entry["contig_lengths"].items()}

    @property
    def shard_paths(self) -> list[Path]:
        return [self.root / shard["path"] for shard in self.manifest["shards"]]

    @property
    def metric(self) -> str:
        index = self.manifest.get("index") or {}
        return index.get("metric", "ip")

    def info(self) -> dict:
        """Manifest summary with sizes on disk, for `genoembed info`."""
        size = sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
        return {"path": str(self.root), "status": self.manifest.get("status"), "tiles": self.num_tiles,
                "dim": self.dim, "shards": len(self.manifest["shards"]), "bytes_on_disk": size,
                "index": self.manifest.get("index"), "annotations": self.manifest.get("annotations", {}),
                "searches": sorted(self.manifest.get("searches", {})), "provenance": self.provenance,
                "genomes": self.genomes}

    # --- reading -------------------------------------------------------------
    def iter_batches(self, columns: list[str] | None = None, batch_rows: int = 8192,
                     paths: list[Path] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream shard rows in tile_id order, ``batch_rows`` at a time (all shards, or ``paths``)."""
        for path in self.shard_paths if paths is None else paths:
            try:
                yield from pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=columns)
            except (OSError, pa.ArrowInvalid) as error:
                raise StoreError(f"{path}: unreadable shard ({error}); run `genoembed verify` "
                                 "and rebuild the store") from None

    def iter_embeddings(self, batch_rows: int = 65536,
                        paths: list[Path] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(tile_ids, float32 matrix) blocks, streamed (all shards, or ``paths``)."""
        for batch in self.iter_batches(["tile_id", schema.EMBEDDING], batch_rows, paths):
            vectors = batch.column(1).flatten().to_numpy(zero_copy_only=False)
            yield (batch.column(0).to_numpy(),
                   np.asarray(vectors, dtype=np.float32).reshape(batch.num_rows, self.dim))

    def sample_embeddings(self, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(tile_ids, vectors) of a seeded sample of ``size`` rows (all rows when fewer), streamed."""
        total = self.num_tiles
        wanted = np.arange(total) if total <= size else \
            np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
        ids, blocks, row = [], [], 0
        for block_ids, vectors in self.iter_embeddings():
            local = wanted[(wanted >= row) & (wanted < row + len(block_ids))] - row
            ids.append(block_ids[local])
            blocks.append(vectors[local])
            row += len(block_ids)
        if not blocks:
            return np.empty(0, dtype=np.int64), np.empty((0, self.dim), dtype=np.float32)
        return np.concatenate(ids), np.concatenate(blocks)

    def tiles(self, tile_ids: np.ndarray) -> pa.Table:
        """Tile rows (no embedding) for ``tile_ids``, in the order given.

        Reads only the row groups that can hold the ids (shards record their id
        range, row groups their tile_id min/max), so a lookup costs a few row
        groups, not a scan of the store.
        """
        tile_ids = np.asarray(tile_ids, dtype=np.int64)
        if not len(tile_ids):
            return schema.TILES.empty_table()
        lasts = np.array([shard["last_tile_id"] for shard in self.manifest["shards"]], dtype=np.int64)
        owner = np.searchsorted(lasts, tile_ids, side="left")
        pieces, positions, taken = [], np.empty(len(tile_ids), dtype=np.int64), 0
        for shard_number in np.unique(owner):
            wanted = np.flatnonzero(owner == shard_number)
            table = self._read_ids(shard_number, tile_ids[wanted]) if shard_number < len(lasts) else \
                schema.TILES.empty_table()
            stored = table.column("tile_id").to_numpy()
            local = np.searchsorted(stored, tile_ids[wanted])
            found = local < len(stored)
            found[found] = stored[local[found]] == tile_ids[wanted][found]
            if not found.all():
                raise StoreError(f"{self.root}: tile id {tile_ids[wanted][~found][0]} is not in the store "
                                 "(removed, or from another store); run `genoembed verify` if it should be")
            positions[wanted] = taken + local
            taken += table.num_rows
            pieces.append(table)
        return pa.concat_tables(pieces).take(pa.array(positions)).cast(schema.TILES)

    def _read_ids(self, shard_number: int, ids: np.ndarray) -> pa.Table:
        """The row groups of one shard whose tile_id range can contain ``ids`` (sorted by tile_id)."""
        parquet = pq.ParquetFile(self.shard_paths[shard_number])
        column = parquet.schema_arrow.get_field_index("tile_id")
        groups = []
        for group in range(parquet.num_row_groups):
            stats = parquet.metadata.row_group(group).column(column).statistics
            if stats is None or not stats.has_min_max or \
                    ((ids >= stats.min) & (ids <= stats.max)).any():
                groups.append(group)
        return parquet.read_row_groups(groups, columns=schema.TILE_COLUMNS)

    def embedder(self, trust_remote_code: bool = False):
        """The exact embedder the store was built with (same model files, pooling, settings).

        Custom model code is never run on reopening unless the caller says so again.
        """
        from genoembed.embedders import load_embedder
        from genoembed.errors import ModelError

        spec = dict(self.provenance["embedder"])
        if trust_remote_code:
            spec["trust_remote_code"] = True
        embedder = load_embedder(spec)
        expected = self.provenance["embedder"].get("fingerprint")
        if expected and embedder.fingerprint != expected:
            raise ModelError(f"{self.root}: the model at {self.provenance['embedder'].get('model_path')} "
                             f"changed since the store was built (fingerprint {embedder.fingerprint} != {expected}); "
                             "restore the original model or rebuild the store")
        return embedder

    def genome(self, name: str | None = None):
        """A genome of the store (the only one when ``name`` is None), checked against its recorded checksum."""
        from genoembed.genome import open_genome

        if name is None:
            if len(self.genomes) != 1:
                raise InputError(f"{self.root}: store holds {len(self.genomes)} genomes "
                                 f"({', '.join(self.genomes)}); name one (e.g. --query-genome)")
            name = next(iter(self.genomes))
        if name not in self.genomes:
            raise InputError(f"{self.root}: no genome {name!r} in the store; it holds {', '.join(self.genomes)}")
        recorded = self.genomes[name]
        genome = open_genome(recorded["path"], name=recorded["name"])
        if genome.checksum != recorded["sha256"]:
            raise StoreError(f"{recorded['path']}: FASTA changed since the store was built "
                             "(checksum differs); restore it or rebuild the store")
        return genome

    def genome_of_contig(self, chrom: str) -> str:
        """The name of the one genome holding contig ``chrom``."""
        holders = [name for name, entry in self.genomes.items() if chrom in entry["contig_lengths"]]
        if len(holders) == 1:
            return holders[0]
        if not holders:
            known = ", ".join(list(self.contig_lengths)[:5])
            raise InputError(f"{self.root}: no contig {chrom!r} in the store's genomes (known: {known}, ...)")
        raise InputError(f"{self.root}: contig {chrom!r} is in genomes {', '.join(holders)}; "
                         "name one with --query-genome")

    # --- derived artefacts ------------------------------------------------------
    def record(self, section: str, name: str, entry: dict | None) -> None:
        """Add/replace (or remove when entry is None) a named artefact in the manifest."""
        with write_lock(self.root):
            manifest = _read_manifest(self.root)
            if section == "index":
                manifest["index"] = entry
            elif entry is None:
                manifest.setdefault(section, {}).pop(name, None)
            else:
                manifest.setdefault(section, {})[name] = entry
            _write_manifest(self.root, manifest)
            self.manifest = manifest

    def search(self, queries, k: int = 10, **options):
        """Nearest tiles for queries: :class:`~genoembed.search.Query` objects or region strings
        (``chrom:start-end[:strand]``, 1-based); see :func:`genoembed.search.search`."""
        from genoembed.search import search

        return search(self, queries, k=k, **options)

    def sql(self, query: str, parameters=None) -> pa.Table:
        """Run a read-only SQL query over tiles/embeddings/annotations/hits views."""
        from genoembed.sql import run_sql

        return run_sql(self, query, parameters)

    def add_annotations(self, path, name: str | None = None, **options) -> dict:
        from genoembed.annotate import add_annotations

        return add_annotations(self, path, name=name, **options)
