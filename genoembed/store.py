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
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import __version__, schema
from genoembed.errors import StoreError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PROVENANCE_KEY = b"genoembed.provenance"
# Provenance keys that must agree for two runs to be the same store.
IDENTITY_KEYS = ("embedder", "tiling", "genome", "embedding_dtype")


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
    return manifest


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
    """Appends (tiles, embeddings) into fixed-size shards, resuming an interrupted build.

    ``rows_done`` tells the caller how many leading tiles (in plan order) are
    already stored; the caller must skip them and feed the rest in order.
    """

    root: Path
    provenance: dict
    dim: int
    shard_rows: int = 65536
    row_group_rows: int = 8192
    overwrite: bool = False
    rows_done: int = field(init=False, default=0)
    _pending: list = field(init=False, default_factory=list)
    _pending_rows: int = field(init=False, default=0)
    _manifest: dict = field(init=False, default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        dtype = self.provenance.get("embedding_dtype", "float32")
        self._schema = schema.embeddings_schema(self.dim, dtype).with_metadata(
            {PROVENANCE_KEY: json.dumps(self.provenance).encode()})
        (self.root / "shards").mkdir(parents=True, exist_ok=True)
        for leftover in (self.root / "shards").glob(".*.partial.*"):
            leftover.unlink()
        if (self.root / MANIFEST).exists() and not self.overwrite:
            self._manifest = _read_manifest(self.root)
            differing = provenance_mismatch(self._manifest["provenance"], self.provenance)
            if differing:
                raise StoreError(f"{self.root}: existing store was built with a different "
                                 f"{', '.join(differing)}; use --overwrite or another output directory")
            self.rows_done = sum(shard["rows"] for shard in self._manifest["shards"])
        else:
            for stale in (self.root / "shards").glob("part-*.parquet"):
                stale.unlink()
            self._manifest = {"format_version": FORMAT_VERSION, "genoembed_version": __version__,
                              "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "status": "building", "provenance": self.provenance, "dim": self.dim,
                              "shards": [], "index": None, "annotations": {}, "searches": {}}
            for derived in ("index",):
                if (self.root / derived).exists():
                    for stale in (self.root / derived).iterdir():
                        stale.unlink()
            _write_manifest(self.root, self._manifest)

    @property
    def complete(self) -> bool:
        return self._manifest.get("status") == "complete"

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
        """Flush the last partial shard and mark the store complete."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._manifest["status"] = "complete"
        _write_manifest(self.root, self._manifest)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self._schema)
        shard, rest = table.slice(0, rows), table.slice(rows)
        number = len(self._manifest["shards"])
        final = self.root / "shards" / f"part-{number:05d}.parquet"
        partial = final.with_name(f".{final.name}.partial.{os.getpid()}")
        pq.write_table(shard, partial, compression="zstd", row_group_size=self.row_group_rows)
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, final)
        ids = shard.column("tile_id")
        self._manifest["shards"].append({
            "path": f"shards/{final.name}", "rows": shard.num_rows, "sha256": file_sha256(final),
            "first_tile_id": ids[0].as_py(), "last_tile_id": ids[-1].as_py()})
        _write_manifest(self.root, self._manifest)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows


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
                "searches": sorted(self.manifest.get("searches", {})), "provenance": self.provenance}

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

    def tiles(self, tile_ids: np.ndarray) -> pa.Table:
        """Tile rows (no embedding) for ``tile_ids``, in the order given.

        Reads only the row groups holding the ids (ids are dense and shards record their
        first id), so a lookup costs a few row groups, not a scan of the store.
        """
        tile_ids = np.asarray(tile_ids, dtype=np.int64)
        if len(tile_ids) and (tile_ids.min() < 0 or tile_ids.max() >= self.num_tiles):
            raise StoreError(f"{self.root}: tile ids outside 0..{self.num_tiles - 1}; run `genoembed verify`")
        firsts = np.array([shard["first_tile_id"] for shard in self.manifest["shards"]], dtype=np.int64)
        owner = np.searchsorted(firsts, tile_ids, side="right") - 1
        pieces, positions = [], np.empty(len(tile_ids), dtype=np.int64)
        taken = 0
        for shard_number in np.unique(owner):
            wanted = np.flatnonzero(owner == shard_number)
            offsets = tile_ids[wanted] - firsts[shard_number]
            parquet = pq.ParquetFile(self.shard_paths[shard_number])
            group_starts = np.cumsum([0] + [parquet.metadata.row_group(g).num_rows
                                            for g in range(parquet.num_row_groups)])
            groups = np.searchsorted(group_starts, offsets, side="right") - 1
            used = np.unique(groups)
            table = parquet.read_row_groups(used.tolist(), columns=schema.TILE_COLUMNS)
            used_starts = np.cumsum([0] + [group_starts[g + 1] - group_starts[g] for g in used])[:-1]
            local = used_starts[np.searchsorted(used, groups)] + offsets - group_starts[groups]
            positions[wanted] = taken + local
            taken += table.num_rows
            pieces.append(table)
        if not pieces:
            return schema.TILES.empty_table()
        return pa.concat_tables(pieces).take(pa.array(positions)).cast(schema.TILES)

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

    def genome(self):
        """The genome the store was built from, checked against the recorded checksum."""
        from genoembed.genome import open_genome

        recorded = self.provenance["genome"]
        genome = open_genome(recorded["path"], name=recorded["name"])
        if genome.checksum != recorded["sha256"]:
            raise StoreError(f"{recorded['path']}: FASTA changed since the store was built "
                             "(checksum differs); restore it or rebuild the store")
        return genome

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
