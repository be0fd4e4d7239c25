"""`index`: FASTA -> tiles -> embeddings -> Parquet shards -> FAISS index -> annotations.

Tiling runs in a producer thread and Parquet writing in a writer thread, each
behind a bounded queue, so the embedder (the expensive step) never waits on
I/O and memory stays bounded by the queue depth, not the genome size.
A build interrupted at any point resumes from the last complete shard, and a
genome appended to a store is added to its FAISS index without a rebuild.
"""

from __future__ import annotations

import functools
import logging
import queue
import shutil
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pyarrow as pa

from genoembed import __version__, schema
from genoembed.embedders import Embedder
from genoembed.errors import InputError
from genoembed.genome import Genome, open_genome
from genoembed.store import Store, StoreWriter, file_sha256, genome_entry, write_lock
from genoembed.tiles import TilingSpec, count_tiles, plan_tiles
from genoembed.vector_index import INDEX_FILE, IndexSpec, add_store_vectors, build_index, load_index, save_index

log = logging.getLogger(__name__)
_DONE = object()


def default_embedder(**options) -> Embedder:
    """The shipped pretrained model (``options`` as TransformersEmbedder's); the k-mer embedder,
    announced, when the model is not installed."""
    from genoembed.resources import default_model_dir

    model_dir = default_model_dir()
    if model_dir is not None:
        from genoembed.embedders.hf import TransformersEmbedder

        return TransformersEmbedder(model_path=str(model_dir), **options)
    from genoembed.embedders.kmer import KmerEmbedder

    log.warning("the default genoembed model is not installed with this package: "
                "falling back to the 4-mer spectrum embedder")
    return KmerEmbedder(k=4)


def _threaded(items: Iterable, depth: int) -> Iterator:
    """Iterate ``items`` in a background thread, ``depth`` items ahead."""
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []

    def produce():
        try:
            for item in items:
                buffer.put(item)
        except BaseException as error:  # re-raised in the consumer
            failure.append(error)
        finally:
            buffer.put(_DONE)

    thread = threading.Thread(target=produce, daemon=True, name="genoembed-tiler")
    thread.start()
    while (item := buffer.get()) is not _DONE:
        yield item
    thread.join()
    if failure:
        raise failure[0]


class _BackgroundWriter:
    """Runs StoreWriter.write in a thread behind a bounded queue; errors surface on close."""

    def __init__(self, writer: StoreWriter, depth: int = 2):
        self._writer = writer
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._failure: list[BaseException] = []
        self._thread = threading.Thread(target=self._run, daemon=True, name="genoembed-writer")
        self._thread.start()

    def _run(self):
        while (item := self._queue.get()) is not _DONE:
            if not self._failure:
                try:
                    self._writer.write(*item)
                except BaseException as error:
                    self._failure.append(error)

    def write(self, tiles: pa.RecordBatch, embeddings) -> None:
        if self._failure:
            raise self._failure[0]
        self._queue.put((tiles, embeddings))

    def close(self, complete: bool = True) -> None:
        """Write everything queued; ``complete`` also flushes the last partial shard and seals the store.

        After a failure elsewhere, ``complete=False`` keeps the full shards already embedded
        so that a rerun resumes after them.
        """
        self._queue.put(_DONE)
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        if complete:
            self._writer.close()


def _skip_done(batches: Iterable[pa.RecordBatch], next_id: int) -> Iterator[pa.RecordBatch]:
    """The planned tiles from id ``next_id`` on (those before it are stored already)."""
    for batch in batches:
        last = batch.column(0)[-1].as_py()
        if last < next_id:
            continue
        first = batch.column(0)[0].as_py()
        yield batch.slice(max(0, next_id - first))


def index(
    fasta: str | Path | Genome,
    out: str | Path,
    embedder: Embedder | None = None,
    tiling: TilingSpec = TilingSpec(),
    index_spec: IndexSpec | None = IndexSpec(),
    annotations: Iterable[str | Path] = (),
    aliases: dict[str, str] | None = None,
    auto_alias: bool = False,
    genome_name: str | None = None,
    embed_rows: int = 1024,
    shard_rows: int = 65536,
    embedding_dtype: str = "float32",
    overwrite: bool = False,
    append: bool = False,
    progress: Callable[[int, int], None] | None = None,
    engine: str = "local",
    engine_options: dict | None = None,
) -> Store:
    """Build (or resume) a store at ``out``; returns it opened.

    ``fasta`` is a path or an already opened :class:`~genoembed.genome.Genome` (not re-read).
    ``append`` adds the genome to an existing store built with the same model and tiling;
    its tile ids follow the store's, and its vectors are added to the existing index.

    ``progress(done, total)`` is called after every embedded batch. ``engine="ray"``
    embeds on Ray actors (``engine_options``: address, num_workers, gpus_per_worker, ...;
    see :func:`genoembed.distributed.embed_with_ray`) into the same store, row for row.
    """
    embed = _engine(engine, engine_options or {})
    out = Path(out)
    genome = fasta if isinstance(fasta, Genome) else open_genome(fasta, name=genome_name)
    embedder = embedder or default_embedder()
    provenance = {"genoembed_version": __version__, "embedder": embedder.describe(),
                  "tiling": tiling.describe(), "embedding_dtype": embedding_dtype}
    total = count_tiles(genome, tiling)
    created = not out.exists()
    try:
        embed(out, provenance=provenance, embedder=embedder, genome=genome, tiling=tiling, embed_rows=embed_rows,
              shard_rows=shard_rows, overwrite=overwrite, append=append, total=total, progress=progress)
    except BaseException:
        if created and not any((out / "shards").glob("part-*.parquet")):
            shutil.rmtree(out, ignore_errors=True)  # failed before any shard: leave nothing behind
        raise
    store = Store.open(out)
    if index_spec is not None:
        update_store_index(store, index_spec)
    for path in annotations:
        store.add_annotations(path, aliases=aliases, auto_alias=auto_alias)
    return store


def _engine(name: str, options: dict) -> Callable:
    if name == "local":
        if options:
            raise InputError(f"engine options {sorted(options)} need --engine ray")
        return _embed_into_store
    if name == "ray":
        from genoembed.distributed import _ray, embed_with_ray

        _ray()  # fail before any work when the extra is missing
        return functools.partial(embed_with_ray, **options)
    raise InputError(f"engine={name!r}: use 'local' or 'ray'")


def _embed_into_store(out: Path, *, provenance: dict, embedder: Embedder, genome, tiling: TilingSpec,
                      embed_rows: int, shard_rows: int, overwrite: bool, append: bool, total: int, progress) -> None:
    """Embed the genome's tiles not yet stored (all of them for a new one) under the writer lock."""
    with write_lock(out):
        writer = StoreWriter(out, provenance, embedder.dim, genome_entry(genome), shard_rows=shard_rows,
                             overwrite=overwrite, append=append)
        if not writer.complete:
            if writer.rows_done:
                log.warning("%s: resuming an interrupted build after %d stored tiles of %s",
                            out, writer.rows_done, genome.name)
            background = _BackgroundWriter(writer)
            done = writer.rows_done
            batches = _skip_done(plan_tiles(genome, tiling, batch_rows=embed_rows, first_tile_id=writer.first_id),
                                 writer.next_id)
            try:
                for batch in _threaded(batches, depth=2):
                    sequences = batch.column(schema.SEQUENCE).to_pylist()
                    background.write(batch, embedder.embed(sequences))
                    done += batch.num_rows
                    if progress:
                        progress(done, total)
            except BaseException:
                background.close(complete=False)
                raise
            background.close()


def build_store_index(store: Store, spec: IndexSpec, progress: Callable[[int], None] | None = None) -> dict:
    """(Re)build the store's FAISS index from all its shards and record it in the manifest."""
    with write_lock(store.root):
        built = build_index(store, spec, progress=progress)
        return _save_store_index(store, spec, built)


def index_file_matches(store: Store, entry: dict | None) -> bool:
    """True when the manifest records an index and the file on disk is that index (sha256)."""
    path = store.root / INDEX_FILE
    return bool(entry) and path.is_file() and file_sha256(path) == entry["sha256"]


def update_store_index(store: Store, spec: IndexSpec) -> dict:
    """Bring the index up to date: add genomes appended since it was built (no retraining), or
    rebuild when there is none, its spec differs, or its file does not match the manifest."""
    from genoembed.sharded import refresh_sharded

    with write_lock(store.root):
        current = store.manifest.get("index") or {}
        if current.get("spec") != spec.describe() or not index_file_matches(store, current):
            return build_store_index(store, spec)
        missing = [name for name in store.genomes if name not in current.get("genomes", ())]
        if not missing:
            return current
        index = load_index(store.root / INDEX_FILE)
        add_store_vectors(index, store, spec.metric,
                          paths=[store.root / s["path"] for s in store.manifest["shards"] if s["genome"] in missing])
        entry = _save_store_index(store, spec, index)
        refresh_sharded(store)
        return entry


def _save_store_index(store: Store, spec: IndexSpec, index) -> dict:
    path = store.root / INDEX_FILE
    save_index(index, path)
    entry = {"path": INDEX_FILE, "spec": spec.describe(), "metric": spec.metric.value, "ntotal": int(index.ntotal),
             "dim": int(index.d), "sha256": file_sha256(path), "genomes": list(store.genomes)}
    store.record("index", "index", entry)
    return entry
