"""`index --engine ray`: the embedding step on Ray actors, behind the same engine boundary as the local engine.

The driver plans tiles (the one place tile ids are assigned, so they are the
same on every engine) and streams them into a temporary tile plan of Parquet
files; Ray Data reads the plan and ``map_batches`` it through an actor pool,
one actor per worker (per GPU), each loading the embedder once from its
``describe()`` spec (never a pickled model; transformers models on the actor's
GPU when it has one, :func:`worker_spec`); the driver receives embedded blocks
and hands them back in tile_id order (a reorder buffer, or Ray Data's
``preserve_order``) to :func:`genoembed.engine.embed_genome`, which writes
them exactly as it writes the local engine's, so a build interrupted on either
engine resumes on either.

Faults: actors run with ``max_restarts`` / ``max_task_retries``, so a worker
killed mid-batch is restarted and its batch re-run; the reorder buffer writes
each tile id exactly once and the run fails loudly (nothing sealed) if any is
missing. Ray is an optional extra, imported inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.embedders import Embedder, load_embedder
from genoembed.errors import InputError, ModelError, StoreError, missing_extra

log = logging.getLogger(__name__)
PLAN_DIR = ".plan"


def ray_module():
    try:
        import ray
        import ray.data  # noqa: F401  (the [data] part of the extra)
    except ImportError:
        raise missing_extra("the ray engine", "dist", "Ray Data") from None
    return ray


# --------------------------------------------------------------------------- workers


def worker_spec(spec: dict, gpus_per_worker: float) -> dict:
    """The record an actor rebuilds its embedder from. A transformers model on an actor that holds a GPU runs
    there (the registry would otherwise pick the numpy token-table path for the default model and leave the GPU
    idle); the record's dtype (float32 unless it says otherwise) keeps the vectors those the driver records."""
    if gpus_per_worker and spec.get("kind") == "transformers":
        return {**spec, "device": "cuda"}
    return spec


class EmbedActor:
    """Ray Data actor: loads the embedder once, then embeds tile batches (pyarrow in, pyarrow out)."""

    def __init__(self, spec: dict, loader: Callable[[dict], Embedder] = load_embedder):
        self.embedder = loader(spec)
        expected = spec.get("fingerprint")
        if expected and self.embedder.fingerprint != expected:
            raise ModelError(f"worker loaded embedder {spec.get('model_id')!r} with fingerprint "
                             f"{self.embedder.fingerprint}, the driver's is {expected}; give every node "
                             "the same model files")

    def __call__(self, batch: pa.Table) -> pa.Table:
        vectors = np.asarray(self.embedder.embed(batch.column(schema.SEQUENCE).to_pylist()), dtype=np.float32)
        if vectors.shape != (batch.num_rows, self.embedder.dim):
            raise ModelError(f"embedder returned shape {vectors.shape}, expected ({batch.num_rows}, "
                             f"{self.embedder.dim})")
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), self.embedder.dim)
        return batch.select(schema.TILE_COLUMNS).append_column(schema.EMBEDDING, embedding)


# --------------------------------------------------------------------------- driver side


def write_plan(batches: Iterable[pa.RecordBatch], directory: Path, file_rows: int) -> int:
    """Stream tile batches (with sequences) into Parquet files of ~``file_rows`` rows; returns rows written."""
    directory.mkdir(parents=True, exist_ok=True)
    rows, number, writer, in_file = 0, 0, None, 0
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(directory / f"part-{number:06d}.parquet", schema.TILES_WITH_SEQUENCE,
                                          compression="zstd")
            writer.write_batch(batch, row_group_size=batch.num_rows)
            rows += batch.num_rows
            in_file += batch.num_rows
            if in_file >= file_rows:
                writer.close()
                writer, in_file, number = None, 0, number + 1
    finally:
        if writer is not None:
            writer.close()
    return rows


def _read_plan_files(paths: pa.Table) -> Iterator[pa.Table]:
    """Yield each plan row group (one embed batch) as its own block, so every actor gets work."""
    for path in paths.column("path").to_pylist():
        plan = pq.ParquetFile(path)
        for group in range(plan.num_row_groups):
            yield plan.read_row_group(group)


def _runs(table: pa.Table) -> Iterator[tuple[int, pa.RecordBatch, np.ndarray]]:
    """Split an embedded block into runs of consecutive tile ids: (first id, tiles, embeddings)."""
    ids = table.column("tile_id").to_numpy()
    if len(ids) > 1 and not (np.diff(ids) == 1).all():
        order = np.argsort(ids, kind="stable")
        table, ids = table.take(pa.array(order)), ids[order]
    batch = table.combine_chunks().to_batches()[0] if table.num_rows else None
    if batch is None:
        return
    breaks = np.flatnonzero(np.diff(ids) != 1) + 1
    dim = batch.schema.field(schema.EMBEDDING).type.list_size
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(ids)]):
        run = batch.slice(start, stop - start)
        vectors = run.column(schema.EMBEDDING).flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        yield int(ids[start]), run.select(schema.TILE_COLUMNS), vectors


class ReorderBuffer:
    """Holds embedded runs that arrive early and releases them in tile_id order, each id once."""

    def __init__(self, first_id: int):
        self.next_id = first_id
        self._held: dict[int, tuple[pa.RecordBatch, np.ndarray]] = {}
        self.duplicates = 0

    def push(self, first: int, tiles: pa.RecordBatch, vectors: np.ndarray):
        if first < self.next_id:  # a re-run batch already written: keep only what is new
            skip = min(self.next_id - first, tiles.num_rows)
            self.duplicates += skip
            first, tiles, vectors = first + skip, tiles.slice(skip), vectors[skip:]
            if not tiles.num_rows:
                return
        if first in self._held:
            self.duplicates += tiles.num_rows
            return
        self._held[first] = (tiles, vectors)
        while self.next_id in self._held:
            tiles, vectors = self._held.pop(self.next_id)
            self.next_id += tiles.num_rows
            yield tiles, vectors

    @property
    def held_rows(self) -> int:
        return sum(tiles.num_rows for tiles, _ in self._held.values())


@contextlib.contextmanager
def _cluster(address: str | None, num_cpus: int | None):
    """Join ``address`` (or the running cluster, or start a local one); shut down only what we started."""
    ray = ray_module()
    started = not ray.is_initialized()
    if started:
        options = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(**options, log_to_driver=True, configure_logging=False)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


class RayEngine:
    """Embeds on Ray actors (one model copy each); see the module docstring. ``stats`` after a run:
    rows embedded, tiles embedded twice and dropped, the largest reorder backlog."""

    def __init__(self, address: str | None = None, num_workers: int = 2, gpus_per_worker: float = 0,
                 cpus_per_worker: float = 1, preserve_order: bool = False, max_retries: int | None = None,
                 plan_file_rows: int = 65536, batch_rows: int = 1024,
                 loader: Callable[[dict], Embedder] = load_embedder):
        if num_workers < 1:
            raise InputError(f"num_workers={num_workers}: use at least one Ray worker")
        ray_module()  # fail before any work when the extra is missing
        self.address, self.num_workers, self.gpus_per_worker = address, num_workers, gpus_per_worker
        self.cpus_per_worker, self.preserve_order, self.max_retries = cpus_per_worker, preserve_order, max_retries
        self.plan_file_rows, self.batch_rows, self.loader = plan_file_rows, batch_rows, loader
        self.stats: dict = {"rows": 0, "duplicates": 0, "max_held_rows": 0}

    def vectors(self, batches: Iterable[pa.RecordBatch], embedder: Embedder, first_id: int,
                scratch: Path) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            planned = write_plan(batches, scratch, file_rows=self.plan_file_rows)
            if planned:
                yield from self._run_dataset(scratch, first_id, planned,
                                             worker_spec(embedder.describe(), self.gpus_per_worker))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def _run_dataset(self, plan: Path, first_id: int, planned: int,
                     spec: dict) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        with _cluster(self.address, None if self.address else max(self.num_workers, 1)) as ray:
            context = ray.data.DataContext.get_current()
            saved = (context.execution_options.preserve_order, context.enable_progress_bars)
            context.execution_options.preserve_order = self.preserve_order
            context.enable_progress_bars = False
            try:
                files = sorted(str(path) for path in plan.glob("part-*.parquet"))
                # Reading the plan costs next to nothing: it must not take a CPU slot from the embedders.
                tiles = ray.data.from_items([{"path": path} for path in files]).map_batches(
                    _read_plan_files, batch_size=1, batch_format="pyarrow", num_cpus=0)
                retries = {} if self.max_retries is None else \
                    {"max_restarts": self.max_retries, "max_task_retries": self.max_retries}
                embedded = tiles.map_batches(
                    EmbedActor, fn_constructor_kwargs={"spec": spec, "loader": self.loader},
                    batch_size=self.batch_rows, batch_format="pyarrow", zero_copy_batch=True,
                    compute=ray.data.ActorPoolStrategy(size=self.num_workers),
                    num_gpus=self.gpus_per_worker or None, num_cpus=self.cpus_per_worker, **retries)
                buffer = ReorderBuffer(first_id)
                max_held = 0
                for block in embedded.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
                    for first, run, vectors in _runs(block):
                        yield from buffer.push(first, run, vectors)
                    max_held = max(max_held, buffer.held_rows)
            finally:
                context.execution_options.preserve_order, context.enable_progress_bars = saved
        written = buffer.next_id - first_id
        if written != planned or buffer.held_rows:
            raise StoreError(f"ray engine: {planned} tiles planned but {written} arrived in order "
                             f"({buffer.held_rows} held after a gap); the store was left resumable, rerun to finish")
        if buffer.duplicates:
            log.warning("ray engine: dropped %d tiles embedded twice (retried batches)", buffer.duplicates)
        self.stats = {"rows": written, "duplicates": buffer.duplicates, "max_held_rows": max_held}


