"""The engine boundary: an engine turns planned tile batches into vectors; everything around it is written once.

:func:`embed_genome` holds the writer lock, opens the
:class:`~genoembed.store_writer.StoreWriter` (which resumes an interrupted
build), plans the tiles not yet stored, hands them to an engine, writes what
comes back in a background thread, and seals the genome. An engine only has to
answer ``vectors(batches, embedder, first_id, scratch)`` with ``(tiles,
vectors)`` pairs in tile-id order: :class:`LocalEngine` embeds on this machine
with tiling one thread ahead; :class:`genoembed.ray_engine.RayEngine` on Ray
actors. So shards, manifest and provenance are the same whichever engine ran,
and a build interrupted on one resumes on the other.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.embedders import Embedder
from genoembed.errors import InputError
from genoembed.writers import write_lock
from genoembed.store_writer import StoreWriter, genome_entry
from genoembed.tiles import TilingSpec, plan_tiles

log = logging.getLogger(__name__)
_DONE = object()


class Engine(Protocol):
    stats: dict

    def vectors(self, batches: Iterable[pa.RecordBatch], embedder: Embedder, first_id: int,
                scratch: Path) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """(tiles, vectors) for every planned batch, in tile-id order from ``first_id``."""
        ...


def threaded(items: Iterable, depth: int) -> Iterator:
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


class LocalEngine:
    """This machine: the embedder runs in the calling thread while tiling runs two batches ahead."""

    def __init__(self):
        self.stats: dict = {}

    def vectors(self, batches: Iterable[pa.RecordBatch], embedder: Embedder, first_id: int,
                scratch: Path) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        rows = 0
        for batch in threaded(batches, depth=2):
            yield batch, embedder.embed(batch.column(schema.SEQUENCE).to_pylist())
            rows += batch.num_rows
        self.stats = {"rows": rows}


def make_engine(name: str, options: dict | None = None) -> Engine:
    """``local`` or ``ray`` (options: address, num_workers, gpus_per_worker, ...; see RayEngine)."""
    options = options or {}
    if name == "local":
        if options:
            raise InputError(f"engine options {sorted(options)} need --engine ray")
        return LocalEngine()
    if name == "ray":
        from genoembed.ray_engine import RayEngine

        return RayEngine(**options)
    raise InputError(f"engine={name!r}: use 'local' or 'ray'")


class BackgroundWriter:
    """Runs StoreWriter.write in a thread behind a bounded queue; errors surface on the next write or close."""

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
        """Write everything queued; ``complete`` also flushes the last partial shard and seals the genome.

        After a failure elsewhere, ``complete=False`` keeps the full shards already embedded
        so that a rerun resumes after them.
        """
        self._queue.put(_DONE)
        self._thread.join()
        if self._failure:
            raise self._failure[0]
        if complete:
            self._writer.close()


def skip_done(batches: Iterable[pa.RecordBatch], next_id: int) -> Iterator[pa.RecordBatch]:
    """The planned tiles from id ``next_id`` on (those before it are stored already)."""
    for batch in batches:
        last = batch.column(0)[-1].as_py()
        if last < next_id:
            continue
        first = batch.column(0)[0].as_py()
        yield batch.slice(max(0, next_id - first))


def embed_genome(out: Path, *, provenance: dict, embedder: Embedder, genome, tiling: TilingSpec, batch_rows: int,
                 shard_rows: int, overwrite: bool, append: bool, engine: Engine,
                 progress: Callable[[int, int], None] | None = None, total: int = 0, genes=None) -> dict:
    """Embed the genome's tiles not yet stored (all of them for a new one) under the writer lock.

    ``genes``: the annotated genes of ``units = "cds"`` (:func:`genoembed.cds.annotated_genes`).
    Returns the engine's run statistics (rows embedded; the Ray engine adds duplicates dropped and
    the largest reorder backlog).
    """
    with write_lock(out):
        writer = StoreWriter(out, provenance, embedder.dim, genome_entry(genome), shard_rows=shard_rows,
                             overwrite=overwrite, append=append)
        if writer.complete:
            return {"rows": 0}
        writer.carry_sequence(genome)
        if writer.rows_done:
            log.warning("%s: resuming an interrupted build after %d stored tiles of %s",
                        out, writer.rows_done, genome.name)
        batches = skip_done(plan_tiles(genome, tiling, batch_rows=batch_rows, first_tile_id=writer.first_id,
                                       genes=genes), writer.next_id)
        background = BackgroundWriter(writer)
        done = writer.rows_done
        try:
            for tiles, vectors in engine.vectors(batches, embedder, writer.next_id, out / ".plan"):
                background.write(tiles, vectors)
                done += tiles.num_rows
                if progress:
                    progress(done, total)
        except BaseException:
            background.close(complete=False)
            raise
        background.close()
    return engine.stats
