"""FAISS indexes over a store, with the index-factory string as the one knob.

``metric="ip"`` (default) L2-normalises stored and query vectors, so scores
are cosine similarities; ``metric="l2"`` keeps raw vectors and scores are
squared L2 distances. FAISS ids are ``tile_id`` (dense, added in order).
GPU FAISS is used for training and searching when the installed faiss has it
and a GPU is visible (``GENOEMBED_FAISS_GPU=0`` turns it off); the saved index
is always a CPU index, and layouts without a GPU form (HNSW, refine stages)
stay on the CPU. The PyPI ``faiss-cpu`` wheel genoembed depends on has no GPU
support; see the README for installing a GPU build in its place.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import shlex
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np

from genoembed.errors import InputError, StoreError
from genoembed.files import atomic_file

log = logging.getLogger(__name__)
INDEX_FILE = "index/vectors.faiss"


class Metric(str, Enum):
    ip = "ip"  # cosine on normalised vectors
    l2 = "l2"


@dataclass(frozen=True)
class IndexSpec:
    """The one knob is the FAISS factory string; ``recall_target`` is what an approximate index is tuned
    to reach (recall@10 against exact search), by choosing nprobe (IVF) or efSearch (HNSW) at build time,
    and the shortlist factor ``k_factor`` when the factory ends in a refine stage (``IVF1024,PQ32,Refine(SQfp16)``:
    the PQ search returns ``k * k_factor`` candidates, re-ranked with the finer SQfp16 codes).
    ``part_rows`` caps the vectors of one index file (a store bigger than RAM is indexed in parts, each
    written and opened memory-mapped on its own); None: one file."""

    factory: str = "Flat"
    metric: Metric = Metric.ip
    train_size: int = 100_000
    seed: int = 0
    recall_target: float = 0.95
    part_rows: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "metric", Metric(self.metric))
        if not 0 < self.recall_target <= 1:
            raise InputError(f"recall_target={self.recall_target}: give a recall between 0 and 1, e.g. 0.95")
        if self.part_rows is not None and self.part_rows < 1:
            raise InputError(f"part_rows={self.part_rows}: give at least 1 vector per index part (or none: one file)")

    def describe(self) -> dict:
        """What identifies the built index (the tuning target only picks search settings, and parts answer as
        one index: neither is part of it)."""
        described = asdict(self)
        described["metric"] = self.metric.value
        del described["recall_target"], described["part_rows"]
        return described


def import_faiss():
    import faiss

    return faiss


def gpu_available() -> bool:
    """True when the installed faiss has GPU support, a GPU is visible and ``GENOEMBED_FAISS_GPU`` is not 0."""
    faiss = import_faiss()
    return os.environ.get("GENOEMBED_FAISS_GPU", "1") != "0" and hasattr(faiss, "StandardGpuResources") \
        and faiss.get_num_gpus() > 0


@functools.cache
def gpu_resources():
    """One ``StandardGpuResources`` per process: each reserves scratch memory on the GPU."""
    return import_faiss().StandardGpuResources()


# FAISS GPU search selects at most this many neighbours and probes at most this many lists per query.
GPU_MAX_SELECT = 2048


def on_search_device(index):
    """A copy of ``index`` on the first GPU for searching, or None when there is no GPU or FAISS has no GPU
    form of the layout (HNSW, refine stages: ``index_cpu_to_gpu`` raises; said once in the log)."""
    if not gpu_available():
        return None
    try:
        return import_faiss().index_cpu_to_gpu(gpu_resources(), 0, index)
    except RuntimeError as error:
        log.info("searching on the CPU: FAISS has no GPU form of this index (%s)", str(error).strip().splitlines()[-1])
        return None


def prepare(vectors: np.ndarray, metric: Metric | str) -> np.ndarray:
    """float32, C-contiguous, and unit-norm for the inner-product metric."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if Metric(metric) is Metric.ip:
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    return vectors


POINTS_PER_LIST = 39  # FAISS k-means warns, and clusters poorly and slowly, below 39 training points per centroid


def _check_trainable(factory: str, train_rows: int, store_rows: int) -> None:
    """Refuse k-means steps with fewer than 39 training vectors per centroid (FAISS's own rule, which
    it only prints as a warning after a slow, poor clustering): IVFn has n centroids, PQmxb 2**b per
    sub-quantizer (b = 8 unless given). The message suggests a factory that fits."""
    import re

    suggestion, short = factory, None
    ivf = re.search(r"IVF(\d+)", factory)
    if ivf and int(ivf.group(1)) * POINTS_PER_LIST > train_rows:
        lists = max(1, min(int(4 * math.sqrt(store_rows)), train_rows // POINTS_PER_LIST))
        suggestion = suggestion.replace(ivf.group(0), f"IVF{lists}", 1)
        short = f"{ivf.group(1)} inverted lists"
    pq = re.search(r"PQ(\d+)(?:x(\d+))?", factory)
    if pq and 2 ** int(pq.group(2) or 8) * POINTS_PER_LIST > train_rows:
        bits = max(1, int(math.log2(max(1, train_rows // POINTS_PER_LIST))))
        suggestion = suggestion.replace(pq.group(0), f"PQ{pq.group(1)}x{bits}", 1)
        short = f"{short} and " if short else ""
        short += f"{2 ** int(pq.group(2) or 8)} codes per PQ sub-quantizer"
    if short:
        raise InputError(f"index factory {factory!r}: {short} need at least {POINTS_PER_LIST} training vectors "
                         f"per centroid, the store has {train_rows} tiles to train on; use e.g. "
                         f"--factory {shlex.quote(suggestion)} (or --factory Flat: exact)")


def train_index(store, spec: IndexSpec):
    """An empty index of ``spec.factory``, trained (when it needs training) on a seeded sample
    of the store streamed from its shards; on the GPU when faiss has one."""
    faiss = import_faiss()
    metric = faiss.METRIC_INNER_PRODUCT if spec.metric is Metric.ip else faiss.METRIC_L2
    try:
        index = faiss.index_factory(store.dim, spec.factory, metric)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "invalid"
        raise InputError(f"index factory {spec.factory!r} is not valid for dim {store.dim} ({first}); "
                         "see the FAISS index-factory docs, e.g. 'Flat', 'IVF256,PQ16', 'HNSW32'") from None
    if index.is_trained:
        return index
    _check_trainable(spec.factory, min(spec.train_size, store.num_tiles), store.num_tiles)
    training = prepare(store.sample_embeddings(spec.train_size, spec.seed)[1], spec.metric)
    # HNSW has no GPU form; a refine stage stays on the CPU too (cloning IndexRefine to a GPU is untested here)
    if gpu_available() and "HNSW" not in spec.factory and refine_stage(index) is None:
        gpu_index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
        gpu_index.train(training)
        return faiss.index_gpu_to_cpu(gpu_index)
    index.train(training)
    return index


def with_tile_ids(index):
    """``index``, able to store tile ids: IVF layouts take ids natively, others get an IndexIDMap2 (so does
    a refine stage over an IVF: it numbers its vectors 0..n-1 in both stages and has no add_with_ids)."""
    faiss = import_faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return index
    if faiss.try_extract_index_ivf(index) is not None and refine_stage(index) is None:
        return index
    return faiss.IndexIDMap2(index)


def refine_stage(index):
    """The IndexRefine of ``index`` (its last factory stage, ``Refine(...)`` or ``RFlat``), or None."""
    faiss = import_faiss()
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.downcast_index(index.index)
    return index if isinstance(index, faiss.IndexRefine) else None


def add_store_vectors(index, store, metric: Metric | str, paths: list[Path] | None = None,
                      progress: Callable[[int], None] | None = None) -> None:
    """Add the store's vectors (all shards, or ``paths``) to ``index`` under their tile ids, streaming."""
    for ids, vectors in store.iter_embeddings(paths=paths):
        index.add_with_ids(prepare(vectors, metric), ids)
        if progress:
            progress(len(ids))


def remove_tile_ids(index, tile_ids: np.ndarray) -> int | None:
    """Drop ``tile_ids`` (those it holds) from ``index`` in place; how many it held, or None when its type cannot
    remove (HNSW, a refine stage): rebuild it."""
    faiss = import_faiss()
    try:
        return int(index.remove_ids(faiss.IDSelectorBatch(np.asarray(tile_ids, dtype=np.int64))))
    except RuntimeError:
        return None


def build_index(store, spec: IndexSpec, progress: Callable[[int], None] | None = None):
    """Build a FAISS index (ids = tile ids) from the store's shards, streaming; returns the (CPU) index."""
    index = with_tile_ids(train_index(store, spec))
    add_store_vectors(index, store, spec.metric, progress=progress)
    return index


def save_index(index, path: Path) -> None:
    """Serialise through :func:`genoembed.files.atomic_file` (temp name, fsync, rename)."""
    faiss = import_faiss()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path, "index") as partial:
        try:
            faiss.write_index(index, str(partial))
        except RuntimeError as error:  # FAISS reports a failed write (a full disk) as RuntimeError
            raise OSError(str(error).strip().splitlines()[-1]) from None


def load_index(path: Path):
    """One FAISS file read into memory (to add to or remove from it); searches use :func:`open_part`."""
    return open_part(path, mmap=False)


def set_search_params(index, nprobe: int | None = None, ef_search: int | None = None,
                      k_factor: int | None = None) -> None:
    """Apply nprobe (IVF) / efSearch (HNSW) / k_factor (refine stage) wherever they are meaningful in the index."""
    faiss = import_faiss()
    # GpuParameterSpace (GPU builds) sets GPU indexes' knobs and hands every other index to ParameterSpace
    parameters = getattr(faiss, "GpuParameterSpace", faiss.ParameterSpace)()
    for name, value in (("nprobe", nprobe), ("efSearch", ef_search), ("k_factor_rf", k_factor)):
        if value is not None:
            # ParameterSpace raises when the index has no such knob (e.g. nprobe on Flat)
            with contextlib.suppress(RuntimeError):
                parameters.set_index_parameter(index, name, value)


def search_index(index, queries: np.ndarray, k: int, metric: Metric | str, nprobe: int | None = None,
                 ef_search: int | None = None, k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids), each (n_queries, k); ids of -1 mean fewer than k results."""
    if queries.shape[1] != index.d:
        raise InputError(f"query vectors have dim {queries.shape[1]} but the index has dim {index.d}; "
                         "embed queries with the store's own model")
    set_search_params(index, nprobe, ef_search, k_factor)
    return index.search(prepare(queries, metric), k)


def index_parts(entry: dict | None) -> list[dict]:
    """The parts (path, ntotal, sha256, ...) a manifest's index entry lists; an entry written before indexes had
    parts is its one file."""
    if not entry:
        return []
    return entry.get("parts") or [{"path": entry["path"], "ntotal": entry["ntotal"], "sha256": entry["sha256"],
                                   "tile_ids": [0, entry["ntotal"]]}]


def index_files(entry: dict | None) -> set[str]:
    """Every file an index entry lists: its parts and the trained index they are cloned from."""
    trained = (entry or {}).get("trained")
    return {part["path"] for part in index_parts(entry)} | ({trained["path"]} if trained else set())


def mmap_flags() -> int:
    """FAISS read flags that map a file instead of reading it, read-only. ``IO_FLAG_MMAP_IFC`` maps the whole file
    (flat codes of Flat, HNSW storage and refine stages, and IVF lists: 2-18 MB resident for 200 MB indexes
    of each kind, FAISS 1.15); adding ``IO_FLAG_MMAP`` makes IVF files fail to open. FAISS releases without
    ``IO_FLAG_MMAP_IFC`` (the declared floor, 1.8, has none) read the file into memory (0)."""
    faiss = import_faiss()
    if not hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        return 0
    return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def open_part(path: Path, mmap: bool = True):
    """One FAISS file, memory-mapped by default (:func:`mmap_flags`: inverted lists and flat codes stay on disk
    and in the page cache, so an index bigger than RAM opens and only the pages a search touches are read)."""
    faiss = import_faiss()
    if not path.is_file():
        raise StoreError(f"{path}: no vector index; build it with `genoembed index` (or Store.build_index)")
    try:
        return faiss.read_index(str(path), mmap_flags() if mmap else 0)
    except RuntimeError as error:
        raise StoreError(f"{path}: unreadable FAISS index ({str(error).strip().splitlines()[-1]}); "
                         "rebuild it by rerunning `genoembed index` with the store's recipe or options "
                         "(a missing or mismatched index is rebuilt)") from None


class FaissIndex:
    """The store's vector index: one or more FAISS parts (the base, parts of a base too big for one file, one
    delta per append), all cloned from one trained index, searched in turn with a running top-k merge, behind
    ``search(vectors, k, nprobe, ef_search, k_factor) -> (scores, ids)`` on raw query vectors,
    ``ntotal``, ``d`` and ``metric``. Parts share the trained quantizer, so the merged answer of Flat and IVF
    parts is what one index holding every vector would return.

    ``defaults`` are the search settings tuned at build time (:func:`genoembed.recall.tune_search`), used when a
    search names none. Unfiltered searches run on a GPU copy of each part when there is one
    (:func:`on_search_device`), except those asking more than FAISS's GPU limits (:data:`GPU_MAX_SELECT`
    neighbours or lists); filtered ones (:mod:`genoembed.subset_search`) run on the CPU, where FAISS has
    ID selectors."""

    def __init__(self, index, metric: Metric | str, defaults: dict | None = None):
        self.parts = list(index) if isinstance(index, (list, tuple)) else [index]
        self.metric = Metric(metric)
        self.defaults = dict(defaults or {})
        self.gpu_parts = [on_search_device(part) for part in self.parts]

    @classmethod
    def load(cls, paths: Path | list[Path], metric: Metric | str, defaults: dict | None = None,
             mmap: bool = True) -> "FaissIndex":
        paths = [paths] if isinstance(paths, Path) else list(paths)
        return cls([open_part(path, mmap) for path in paths], metric, defaults)

    @property
    def index(self):  # the first part: the only one of a store built in one go and not appended to since
        return self.parts[0]

    @property
    def gpu_index(self):
        return self.gpu_parts[0]

    @property
    def ntotal(self) -> int:
        return sum(int(part.ntotal) for part in self.parts)

    @property
    def d(self) -> int:
        return int(self.parts[0].d)

    def search(self, vectors: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
               k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (n_queries, k); ids of -1 mean fewer than ``k`` results. Filtered searches:
        :func:`genoembed.subset_search.search_subset`."""
        settings = self.settings(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)
        within_gpu_limits = max(k, settings["nprobe"] or 0) <= GPU_MAX_SELECT
        found = []
        for part, gpu_part in zip(self.parts, self.gpu_parts):
            part = gpu_part if gpu_part is not None and within_gpu_limits else part
            found.append(search_index(part, vectors, k, self.metric, **settings))
        return merged(found, len(vectors), k, self.metric)

    def settings(self, **given) -> dict:
        """nprobe, ef_search and k_factor: those given, else the tuned ``defaults`` (None: the index's own)."""
        return {name: self.defaults.get(name) if given.get(name) is None else given[name]
                for name in ("nprobe", "ef_search", "k_factor")}


def merged(found: list[tuple[np.ndarray, np.ndarray]], rows: int, k: int, metric: Metric | str):
    """The top-``k`` (scores, ids) of each row over several searches' answers (parts of one index)."""
    if len(found) == 1:
        return found[0]
    heap = import_faiss().ResultHeap(rows, k, keep_max=Metric(metric) is Metric.ip)
    for scores, ids in found:
        heap.add_result(np.ascontiguousarray(scores, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    heap.finalize()
    return heap.D, heap.I


def first_stage(index):
    """The index that finds candidates: beneath the tile-id map and the refine stage, if any."""
    faiss = import_faiss()
    refine = refine_stage(index)
    if refine is not None:
        return faiss.downcast_index(refine.base_index)
    return faiss.downcast_index(index.index) if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)) else index


def search_knob(index) -> tuple[str | None, list[int | None]]:
    """The breadth knob of ``index`` and the settings to sweep: nprobe (IVF), efSearch (HNSW), else none."""
    faiss = import_faiss()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return "nprobe", [1 << i for i in range(0, 31) if (1 << i) < ivf.nlist] + [int(ivf.nlist)]
    if isinstance(first_stage(index), faiss.IndexHNSW):
        return "ef_search", [16 << i for i in range(0, 9)]
    return None, [None]
