"""The on-disk store: Parquet shards of tiles + embeddings, a JSON manifest, provenance.

Layout of a store directory::

    manifest.json          shards, row counts, sha256s, provenance, index, annotations
    manifest.d/genomes-N.json  complete genomes and their shards, sealed (immutable; manifest.json names them)
    shards/part-00000.parquet ...
    index/vectors.faiss    FAISS index (ids = tile_id); later parts (appends) index/vectors-NNNNN.faiss
    annotations/NAME.VERSION.parquet  an annotation set, one file per version (stores before: NAME.parquet)
    searches/NAME.VERSION.parquet  a saved search's hits (``last`` = the CLI's most recent), one file per version
    searches/NAME.json     each saved search's sidecar: its version, rows, sha256, when and how it was made
    .lock                  the writer lock (flock); .readers/ readers' leases; .retired.json files awaiting deletion

Every file is written under a temporary name and renamed into place, and the
manifest is replaced atomically after each shard, so readers (and a resumed
run) only ever see complete shards. One writer at a time holds ``.lock``;
readers take no lock: each reads the manifest once and keeps that snapshot,
and a file a writer takes out of the store is deleted only once no reader
that may hold an older snapshot is left (:mod:`genoembed.leases`).
Saved searches live in their own files (not the manifest), so a search never
waits for, or fails because of, a writer.

A store holds one or more genomes embedded with one model and one tiling
(``provenance``); ``genomes`` records each genome's FASTA checksum, contigs and
first tile id. Appending a genome continues the ids; removing one leaves a gap
(ids are never reused), so ``tile_id`` is unique and increasing, not dense.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.errors import InputError, StoreError, command
from genoembed.leases import Lease, fs_now_ns
from genoembed.manifest import read_manifest, stale_sealed, write_manifest
from genoembed.writers import committed_files, folder_names, saved_searches, sweep_retired, write_lock

PROVENANCE_KEY = b"genoembed.provenance"
# Provenance keys that must agree for two runs to write into one store.
IDENTITY_KEYS = ("embedder", "tiling", "embedding_dtype")
# Stores up to this many tiles keep every tile's locus in memory (a few tens of bytes a tile) once a Store
# object serves a second lookup, so repeated searches (the Python API, `genoembed serve`) skip Parquet reads;
# a single lookup of more than LOCI_CACHE_IDS ids builds them at once (one columnar read beats many row groups).
LOCI_CACHE_TILES = 5_000_000
LOCI_CACHE_IDS = 256
# How many snapshots a reader tries when a writer commits and deletes files under it; each retry needs
# a new commit in between (a damaged store is reported at once), so this only bounds a busy writer.
SNAPSHOT_RETRIES = 10


class Store:
    """A built store opened for reading at its last committed manifest (a snapshot).

    Data access only: the verbs (:func:`genoembed.search.search`, :func:`genoembed.sql.run_sql`,
    :func:`genoembed.annotate.add_annotations`, :func:`genoembed.remove.remove`,
    :func:`genoembed.verify.verify_store`) are functions that take a store. A genome still being
    written (an append in progress, or one interrupted) is hidden from readers: they see the
    genomes that are complete, and the vector index built over them.
    """

    def __init__(self, root: Path, manifest: dict, lease: Lease | None = None):
        self.root = root
        self._embedders: dict[bool, object] = {}
        self._lease = lease  # keeps files this snapshot lists from being deleted while the store object lives
        self.manifest = manifest

    @property
    def manifest(self) -> dict:
        return self._manifest

    @manifest.setter
    def manifest(self, manifest: dict) -> None:
        """A new snapshot: what was derived from the old one (vector index, tile loci) is dropped."""
        self._manifest = manifest
        self._vector_index = None
        self._loci: pa.Table | None = None  # every tile's locus, kept once a store object answers repeatedly
        self._tile_lookups = 0
        self._genomes: dict[str, object] = {}  # opened (and checksummed) FASTA files, by genome name
        self._derived: dict = {}  # what verbs compute once per snapshot (see derived)
        self._complete: tuple[dict, list] | None = None  # complete genomes and their shards (a pangenome's 10^3)

    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True) -> "Store":
        root = Path(path)
        lease = Lease(root) if (root / "manifest.json").is_file() else None  # taken before the manifest is read
        for attempt in range(SNAPSHOT_RETRIES):
            manifest = read_manifest(root)
            store = cls(root, manifest, lease)
            if require_complete and not store.genomes:
                raise StoreError(f"{root}: store build is incomplete (no genome finished yet); "
                                 "rerun `genoembed index` with the same options to resume it")
            paths, sealed = _shards_to_check(root, manifest, store.genomes)
            missing = missing_files(root, paths)
            if not missing:
                _SEALED_SHARDS_FOUND.difference_update(stale_sealed(root, manifest, _SEALED_SHARDS_FOUND))
                _SEALED_SHARDS_FOUND.update(sealed)
                return store
            # A writer (`genoembed remove`) may have committed a new manifest and deleted this one's old
            # shards between the two reads: open the newest snapshot instead of calling the store damaged.
            if attempt == SNAPSHOT_RETRIES - 1 or read_manifest(root) == manifest:
                raise StoreError(f"{root}: {len(missing)} shard(s) listed in the manifest are missing "
                                 f"(e.g. {missing[0]}); run {command('verify', root)}, then rebuild with "
                                 "`genoembed index --overwrite`")

    def refresh(self) -> "Store":
        """Move to the newest committed snapshot (after a writer appended or removed); files only older
        snapshots list may then be deleted (the caller is done with the old one)."""
        if self._lease is not None:
            self._lease.renew()
        manifest = read_manifest(self.root)
        if manifest != self._manifest:  # unchanged: keep the loaded index, loci and embedder
            self.manifest = manifest
        return self

    @property
    def protected(self) -> bool:
        """True while this reader's lease keeps every file its snapshot lists, and every saved-search version it
        reads, on disk; False where it could take none (another user's writer may delete them under it)."""
        return self._lease is not None and self._lease.held

    def moved_on(self) -> bool:
        """Refresh; True when a writer committed a new manifest since this snapshot was read (so a failure
        reading it may be the writer's doing, and is worth retrying on the new one)."""
        before = self.manifest
        return self.refresh().manifest != before

    @contextlib.contextmanager
    def transaction(self) -> Iterator[dict]:
        """Lock the store, re-read its manifest, yield it for editing, commit it atomically on success.

        Readers keep their snapshot; the next :meth:`open` (or :meth:`refresh`) sees the commit. This store
        object moves on to the commit, and files the manifest no longer lists (a replaced annotation set, folded
        index parts) are retired: deleted once no reader of an older snapshot is left (:func:`sweep_retired`).
        """
        with write_lock(self.root):
            manifest = read_manifest(self.root)
            before = committed_files(manifest, self.root)
            yield manifest
            write_manifest(self.root, manifest)
            committed = fs_now_ns(self.root)  # the file system's time, as readers' leases are
            self.manifest = manifest
            if self._lease is not None:
                self._lease.renew()  # this object's old snapshot is gone with its derived state
            retired = sorted(before - committed_files(manifest, self.root))
            if retired:  # the folders they left (taking the lock swept the rest)
                folders = tuple({path.split("/")[0] for path in retired})
                sweep_retired(self.root, retired, committed, folders=folders)

    # --- facts -------------------------------------------------------------
    @property
    def provenance(self) -> dict:
        return self.manifest["provenance"]

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    def _complete_part(self) -> tuple[dict, list]:
        """(complete genomes, their shards), worked out once per snapshot: appends ask for them many times."""
        if self._complete is None:
            genomes = {name: entry for name, entry in self.manifest["genomes"].items()
                       if entry.get("status") == "complete"}
            self._complete = genomes, [shard for shard in self.manifest["shards"] if shard["genome"] in genomes]
        return self._complete

    @property
    def genomes(self) -> dict[str, dict]:
        """Complete genomes: name -> FASTA path, sha256, contig lengths, first tile id, in the order added."""
        return dict(self._complete_part()[0])

    @property
    def shards(self) -> list[dict]:
        """Manifest entries of the shards readers see (those of complete genomes)."""
        return list(self._complete_part()[1])

    @property
    def num_tiles(self) -> int:
        return sum(shard["rows"] for shard in self._complete_part()[1])

    @property
    def id_limit(self) -> int:
        """One past the largest tile id ever assigned (ids of removed tiles are not reused)."""
        return int(self.manifest["next_tile_id"])

    @property
    def contig_lengths(self) -> dict[str, dict[str, int]]:
        """genome -> {contig: length} for every complete genome: contig names repeat across genomes (``chr1``,
        ``contig_1``), so a contig is known by (genome, chrom), never by its name alone."""
        return {name: dict(entry["contig_lengths"]) for name, entry in self.genomes.items()}

    @property
    def shard_paths(self) -> list[Path]:
        return [self.root / shard["path"] for shard in self.shards]

    @property
    def metric(self) -> str:
        index = self.manifest.get("index") or {}
        return index.get("metric", "ip")

    def info(self) -> dict:
        """Manifest summary with sizes on disk, for `genoembed info`."""
        size = sum(_size_if_present(path) for path in self.root.rglob("*"))
        building = sorted(set(self.manifest["genomes"]) - set(self.genomes))
        return {"path": str(self.root), "status": "building" if building else "complete", "tiles": self.num_tiles,
                "dim": self.dim, "shards": len(self.shards), "bytes_on_disk": size,
                "index": self.manifest.get("index"), "annotations": self.manifest.get("annotations", {}),
                "searches": sorted(self.searches()), "provenance": self.provenance,
                "genomes": self.genomes, "genomes_being_written": building}

    def searches(self, damaged: dict[str, str] | None = None) -> dict[str, dict]:
        """Saved searches: name -> entry (path, rows, sha256, ...); see :func:`genoembed.writers.saved_searches`
        (a damaged one hides only itself, named in ``damaged``)."""
        return saved_searches(self.root, self.manifest, damaged)

    # --- reading -------------------------------------------------------------
    def iter_batches(self, columns: list[str] | None = None, batch_rows: int = 8192,
                     paths: list[Path] | None = None) -> Iterator[pa.RecordBatch]:
        """Stream shard rows in tile_id order, ``batch_rows`` at a time (all shards, or ``paths``)."""
        for path in self.shard_paths if paths is None else paths:
            parquet = self.open_shard(path)
            try:
                yield from parquet.iter_batches(batch_size=batch_rows, columns=columns)
            except (OSError, pa.ArrowException) as error:
                raise StoreError(f"{path}: unreadable shard ({str(error).splitlines()[0]}); run "
                                 f"{command('verify', self.root)} and rebuild the store") from None

    def open_shard(self, path: Path) -> pq.ParquetFile:
        """A shard opened for reading, its columns checked against the store's: another Parquet file put in a
        shard's place is named here, not met as a traceback deep inside a read."""
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowException) as error:
            raise StoreError(f"{path}: unreadable shard ({str(error).splitlines()[0]}); run "
                             f"{command('verify', self.root)} and rebuild the store") from None
        found = parquet.schema_arrow
        expected = schema.embeddings_schema(self.dim, self.provenance.get("embedding_dtype", "float32"))
        wrong = [field.name for field in expected
                 if found.get_field_index(field.name) < 0 or not found.field(field.name).type.equals(field.type)]
        if wrong:
            raise StoreError(f"{path}: not a shard of this store (columns {', '.join(wrong)} missing or of "
                             f"another type); run {command('verify', self.root)} and rebuild the store")
        return parquet

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
        self._tile_lookups += 1
        many = self._tile_lookups > 1 or len(tile_ids) > LOCI_CACHE_IDS  # one columnar read beats many row groups
        if self._loci is None and many and self.num_tiles <= LOCI_CACHE_TILES:
            self._loci = self._all_loci()
        if self._loci is not None:
            return self._cached_tiles(tile_ids)
        shards = sorted(self.shards, key=lambda shard: shard["last_tile_id"])
        lasts = np.array([shard["last_tile_id"] for shard in shards], dtype=np.int64)
        owner = np.searchsorted(lasts, tile_ids, side="left")
        pieces, positions, taken = [], np.empty(len(tile_ids), dtype=np.int64), 0
        for shard_number in np.unique(owner):
            wanted = np.flatnonzero(owner == shard_number)
            table = self._read_ids(self.root / shards[shard_number]["path"], tile_ids[wanted]) \
                if shard_number < len(lasts) else schema.TILES.empty_table()
            stored = table.column("tile_id").combine_chunks().to_numpy()  # ChunkedArray.to_numpy imports pandas
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

    def _all_loci(self) -> pa.Table:
        """Every visible tile's row (no vectors), sorted by tile id: one columnar read, then lookups are searches."""
        shards = sorted(self.shards, key=lambda shard: shard["first_tile_id"])
        pieces = []
        for shard in shards:
            try:
                pieces.append(self.open_shard(self.root / shard["path"]).read(columns=schema.TILE_COLUMNS))
            except (OSError, pa.ArrowException) as error:
                raise StoreError(f"{self.root / shard['path']}: unreadable shard ({str(error).splitlines()[0]}); "
                                 f"run `genoembed verify {self.root}` and rebuild the store") from None
        table = pa.concat_tables(pieces).cast(schema.TILES) if pieces else schema.TILES.empty_table()
        self._loci_ids = table.column("tile_id").combine_chunks().to_numpy()
        return table

    def _cached_tiles(self, tile_ids: np.ndarray) -> pa.Table:
        rows = np.searchsorted(self._loci_ids, tile_ids)
        found = rows < len(self._loci_ids)
        found[found] = self._loci_ids[rows[found]] == tile_ids[found]
        if not found.all():
            raise StoreError(f"{self.root}: tile id {tile_ids[~found][0]} is not in the store "
                             "(removed, or from another store); run `genoembed verify` if it should be")
        return self._loci.take(pa.array(rows))

    def _read_ids(self, path: Path, ids: np.ndarray) -> pa.Table:
        """The row groups of one shard whose tile_id range can contain ``ids`` (sorted by tile_id)."""
        parquet = self.open_shard(path)
        try:
            column = parquet.schema_arrow.get_field_index("tile_id")
            groups = []
            for group in range(parquet.num_row_groups):
                stats = parquet.metadata.row_group(group).column(column).statistics
                if stats is None or not stats.has_min_max or \
                        ((ids >= stats.min) & (ids <= stats.max)).any():
                    groups.append(group)
            return parquet.read_row_groups(groups, columns=schema.TILE_COLUMNS)
        except (OSError, pa.ArrowException) as error:
            raise StoreError(f"{path}: unreadable shard ({str(error).splitlines()[0]}); run "
                             f"{command('verify', self.root)} and rebuild the store") from None

    def vector_index(self):
        """The store's FAISS index (every part the manifest lists, memory-mapped), opened once per snapshot."""
        if self._vector_index is None:
            from genoembed.vector_index import FaissIndex, index_parts

            entry = self.manifest.get("index")
            if not entry:
                raise StoreError(f"{self.root}: the store has no vector index (a removal or build was interrupted); "
                                 "rerun `genoembed index` with the store's recipe or options to rebuild it")
            self._vector_index = FaissIndex.load([self.root / part["path"] for part in index_parts(entry)],
                                                 entry.get("metric", "ip"), entry.get("search"))
        return self._vector_index

    def embedder(self, trust_remote_code: bool = False):
        """The exact embedder the store was built with (same model files, pooling, settings).

        Custom model code is never run on reopening unless the caller says so again.
        """
        if trust_remote_code in self._embedders:
            return self._embedders[trust_remote_code]
        from genoembed.embedders import load_embedder
        from genoembed.errors import ModelError

        embedder = load_embedder(self.provenance["embedder"], trust_remote_code=trust_remote_code)
        expected = self.provenance["embedder"].get("fingerprint")
        if expected and embedder.fingerprint != expected:
            raise ModelError(f"{self.root}: the model at {self.provenance['embedder'].get('model_path')} "
                             f"changed since the store was built (fingerprint {embedder.fingerprint} != {expected}); "
                             "restore the original model or rebuild the store")
        self._embedders[trust_remote_code] = embedder
        return embedder

    def genome(self, name: str | None = None):
        """A genome of the store (the only one when ``name`` is None), with its circular contigs.

        Read from the store's own copy of the sequence (``sequences/``, written at index time), so a copied
        store needs no FASTA. Stores built before that read the recorded FASTA, checked against its
        checksum; one recorded by a relative path is looked for from the working directory, then beside the store.
        """
        from genoembed.genome import open_bgzf_copy

        if name is None:
            if len(self.genomes) != 1:
                raise InputError(f"{self.root}: store holds {len(self.genomes)} genomes "
                                 f"({', '.join(self.genomes)}); name one (e.g. --query-genome)")
            name = next(iter(self.genomes))
        if name not in self.genomes:
            raise InputError(f"{self.root}: no genome {name!r} in the store; it holds {', '.join(self.genomes)}")
        if name in self._genomes:
            return self._genomes[name]
        recorded = self.genomes[name]
        circular = recorded.get("circular", ())
        if recorded.get("sequence"):
            genome = open_bgzf_copy(self.root / recorded["sequence"]["path"], recorded["name"], recorded["sha256"],
                                    circular)
        else:
            genome = self.recorded_fasta(name).with_circular(circular)
        self._genomes[name] = genome
        return genome

    def recorded_fasta(self, name: str):
        """Genome ``name`` opened from the FASTA it was built from, checked against the recorded checksum."""
        from genoembed.genome import open_genome

        recorded = self.genomes[name]
        path = Path(recorded["path"])
        if not path.is_absolute() and not path.exists() and (self.root.parent / path).exists():
            path = self.root.parent / path
        if not path.exists():
            raise StoreError(f"{recorded['path']}: FASTA of genome {name!r} not found, and this store (built "
                             "before stores carried their sequence) has no copy of it; restore the FASTA there and "
                             f"run {command('verify', self.root, '--embed-sequences')} to copy it into the store")
        genome = open_genome(path, name=recorded["name"])
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
            known = ", ".join(list(dict.fromkeys(c for contigs in self.contig_lengths.values() for c in contigs))[:5])
            raise InputError(f"{self.root}: no contig {chrom!r} in the store's genomes (known: {known}, ...)")
        raise InputError(f"{self.root}: contig {chrom!r} is in genomes {', '.join(holders)}; "
                         f"name one with --query-genome, or write the contig {schema.pansn_name(holders[0], chrom)}")

    def derived(self, key, make):
        """``make()``, computed once per snapshot and kept under ``key`` (e.g. the annotations indexed for
        a search's feature columns), so a served store pays for it once, not on every request."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    # --- derived artefacts ------------------------------------------------------
    def record(self, section: str, name: str, entry: dict | None) -> None:
        """Add/replace (or remove when entry is None) a named artefact in the manifest."""
        with self.transaction() as manifest:
            if section == "index":
                manifest["index"] = entry
            elif entry is None:
                manifest.setdefault(section, {}).pop(name, None)
            else:
                manifest.setdefault(section, {})[name] = entry


# Sealed manifest files (path, sha256) whose shards this process found on disk: a sealed file never changes,
# and its shards leave the store only after a commit that no longer lists it, so they are not looked for again.
_SEALED_SHARDS_FOUND: set[tuple[str, str]] = set()


def _shards_to_check(root: Path, manifest: dict, complete: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """(paths of the shards an open looks for, the sealed files they complete): those of complete genomes, less
    the shards of sealed files found before (sealed files list only complete genomes, first)."""
    shards, paths, sealed, start = manifest["shards"], [], [], 0
    for descriptor in manifest.get("sealed") or ():
        key, end = (str(root / descriptor["path"]), descriptor["sha256"]), start + descriptor["shards"]
        if key not in _SEALED_SHARDS_FOUND:
            paths += [shard["path"] for shard in shards[start:end]]
            sealed.append(key)
        start = end
    return paths + [shard["path"] for shard in shards[start:] if shard["genome"] in complete], sealed


def missing_files(root: Path, paths: list[str]) -> list[str]:
    """The store ``paths`` not in their folder: a ``stat`` each when few, else one listing per folder (a
    pangenome's store lists 10^3-10^4 shards)."""
    if len(paths) <= 64:
        return [path for path in paths if not os.path.isfile(os.path.join(root, path))]
    listings: dict[str, set[str]] = {}
    missing = []
    for path in paths:
        folder, _, name = path.rpartition("/")
        if folder not in listings:
            listings[folder] = set(folder_names(root / folder))
        if name not in listings[folder]:
            missing.append(path)
    return missing


def _size_if_present(path: Path) -> int:
    """A file's size, 0 for folders and for files a writer replaced or removed while the store was walked
    (temporary ``.partial`` files come and go under a running append)."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except FileNotFoundError:
        return 0
