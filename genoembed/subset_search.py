"""Searching a subset of the store's tiles inside FAISS: each part of the index searched through an ID selector,
as broad as the subset's members near each query require.

A selector alone restricts which vectors are *returned*, not where an approximate search *looks*: an IVF search
probes the lists nearest the query, an HNSW search walks the graph towards the query, and a subset lying away
from the query (another genome, of other GC: in a pangenome the usual case) has no members there. A fixed breadth
scaled by the subset's share of the store (tried first) gave recall@10 0.08 (IVF) and 0.19 (HNSW) for the half of
a two-cluster store away from the query, and took HNSW to efSearch ~6,000 (seconds per batch) for 0.5 % subsets.
So the breadth is chosen per query and per part, from where the members are (:func:`search_subset`):

* a part holding no member is skipped; a part all of whose vectors are members is searched unfiltered;
* IVF: the subset's members per inverted list are counted once per subset and part; each query probes, nearest
  list first, as many lists as it takes to examine as many *members* as an unfiltered search at the tuned
  nprobe examines vectors (at least ``k``): a subset mixed evenly through the store gets the tuned nprobe
  divided by its share, one lying elsewhere gets the lists where it lies;
* HNSW: an unfiltered search at the tuned efSearch shows the share of members among the query's neighbours
  (its *local* share); the filtered walk runs at efSearch divided by that share, unless that walk would cost
  more distance computations (efSearch times the graph's links) than scanning the part's members, or no
  neighbour is a member (the walk would have to pass every nearer non-member first): those queries, and any
  the walk leaves short of ``k``, scan the part's members exactly (its flat storage, through the selector);
* Flat: the selector search is exact.

Queries a part cannot answer this way (an HNSW part with compressed storage) come back with ids of -1;
:func:`genoembed.subsets.filtered_search` answers them exactly from the subset's vectors in the shards.
"""

from __future__ import annotations

import math

import numpy as np

from genoembed.errors import InputError
from genoembed.vector_index import FaissIndex, Metric, first_stage, import_faiss, merged, prepare, search_index, search_knob


class TileSubset:
    """The tile ids a filtered search may return: a range ``[low, high)`` (a genome's ids are contiguous) or a
    boolean mask over tile ids (contigs, SQL-chosen tiles); ``size`` = how many stored tiles it holds.

    :meth:`selector` is the FAISS ``IDSelector`` of it (``IDSelectorRange``, or ``IDSelectorBitmap`` over the
    packed mask); the object keeps the bitmap alive for as long as FAISS may read it. Where its members lie in
    each index part searched (:class:`PartMembers`) is kept on it too."""

    def __init__(self, size: int, low: int | None = None, high: int | None = None, mask: np.ndarray | None = None):
        if mask is None and (low is None or high is None):
            raise ValueError("a subset is a range (low, high) or a mask")
        self.size, self.low, self.high, self.mask = int(size), low, high, mask
        self.vectors = None  # (ids, exact index of its vectors) once read for an exact search, when small
        self.in_parts: dict[int, tuple[object, PartMembers]] = {}  # id(part) -> (part, its members)
        self._selector = None

    def contains(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if self.mask is None:
            return (ids >= self.low) & (ids < self.high)
        inside = (ids >= 0) & (ids < len(self.mask))
        inside[inside] = self.mask[ids[inside]]
        return inside

    def selector(self):
        if self._selector is None:
            faiss = import_faiss()
            if self.mask is None:
                self._selector = faiss.IDSelectorRange(int(self.low), int(self.high))
            else:
                self._bitmap = np.packbits(self.mask, bitorder="little")  # bit i of byte i >> 3 is id i, as FAISS reads it
                self._selector = faiss.IDSelectorBitmap(len(self._bitmap), faiss.swig_ptr(self._bitmap))
        return self._selector


class PartMembers:
    """How many of a subset's tiles one index part holds (``count`` of ``total``), and for an IVF part how many
    each inverted list holds (``per_list``)."""

    def __init__(self, part, subset: TileSubset):
        faiss = import_faiss()
        id_map = _id_map(part)
        self.total = int(part.ntotal)
        self.per_list = None
        ivf = faiss.try_extract_index_ivf(part)
        if ivf is not None:
            self.per_list = np.zeros(ivf.nlist, dtype=np.int64)
            for number in range(ivf.nlist):
                size = ivf.invlists.list_size(number)
                if size:
                    pointer = ivf.invlists.get_ids(number)
                    ids = faiss.rev_swig_ptr(pointer, size).copy()
                    ivf.invlists.release_ids(number, pointer)
                    self.per_list[number] = subset.contains(id_map[ids] if id_map is not None else ids).sum()
            self.count = int(self.per_list.sum())
        else:
            self.count = int(subset.contains(id_map).sum()) if id_map is not None else self.total


def members(part, subset: TileSubset) -> PartMembers:
    """``subset``'s :class:`PartMembers` in ``part``, counted once per subset and part."""
    kept = subset.in_parts.get(id(part))
    if kept is None or kept[0] is not part:
        kept = subset.in_parts[id(part)] = (part, PartMembers(part, subset))
    return kept[1]


def _id_map(part) -> np.ndarray | None:
    """Tile id of each position of an IndexIDMap(2) part, a view of the part's own array (None: the part stores
    tile ids itself)."""
    faiss = import_faiss()
    if isinstance(part, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.rev_swig_ptr(part.id_map.data(), part.id_map.size()) if part.ntotal else np.empty(0, np.int64)
    return None


def search_subset(index: FaissIndex, vectors: np.ndarray, k: int, subset: TileSubset, nprobe: int | None = None,
                  ef_search: int | None = None, k_factor: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (scores, ids) of each query among ``subset``'s tiles, every part searched as broadly as the
    members near each query require (module docstring); rows of -1 ids are queries left to an exact search of
    the subset (and places past the subset's size). ``nprobe`` / ``ef_search`` / ``k_factor`` replace the
    index's tuned settings as the unfiltered breadth the filtered one is derived from."""
    queries = prepare(vectors, index.metric)
    if queries.shape[1] != index.d:
        raise InputError(f"query vectors have dim {queries.shape[1]} but the index has dim {index.d}; "
                         "embed queries with the store's own model")
    settings = index.settings(nprobe=nprobe, ef_search=ef_search, k_factor=k_factor)
    found, unanswered = [], np.zeros(len(queries), dtype=bool)
    for part in index.parts:
        held = members(part, subset)
        if held.count == 0:
            continue
        if held.count == held.total:
            found.append(search_index(part, queries, k, index.metric, **settings))
            continue
        scores, ids, left = _search_part(part, queries, k, subset, held, settings, index.metric)
        found.append((scores, ids))
        unanswered |= left
    if not found:
        return _empty(len(queries), k, index.metric)
    scores, ids = merged(found, len(queries), k, index.metric)
    scores, ids = scores.copy(), ids.copy()
    empty = _empty(int(unanswered.sum()), k, index.metric)
    scores[unanswered], ids[unanswered] = empty
    return scores, ids


def _empty(rows: int, k: int, metric: Metric):
    worst = -np.inf if Metric(metric) is Metric.ip else np.inf
    return np.full((rows, k), worst, dtype=np.float32), np.full((rows, k), -1, dtype=np.int64)


EXACT = 0  # the breadth of a query that scans the part's members instead of searching its structure


def _search_part(part, queries: np.ndarray, k: int, subset: TileSubset, held: PartMembers, settings: dict,
                 metric: Metric):
    """(scores, ids, unanswered) of one part holding some of the subset: each query at its breadth."""
    knob, values = search_knob(part)
    if knob == "nprobe":
        breadths = _probes(part, queries, k, held, settings["nprobe"] or current_breadth(part, knob), values)
    elif knob == "ef_search":
        breadths = _walks(part, queries, subset, held, settings["ef_search"] or current_breadth(part, knob), metric)
    else:
        breadths = np.ones(len(queries), dtype=np.int64)  # Flat: the selector search is exact
    scores, ids = _empty(len(queries), k, metric)
    for breadth in np.unique(breadths[breadths != EXACT]):
        rows = np.flatnonzero(breadths == breadth)
        keep = []
        params = search_parameters(part, subset.selector(), int(breadth) if knob == "nprobe" else None,
                                   int(breadth) if knob == "ef_search" else None, settings["k_factor"], keep)
        scores[rows], ids[rows] = part.search(queries[rows], k, params=params)
    if knob == "ef_search":  # a walk the filter cut apart may come back short
        breadths[(ids >= 0).sum(axis=1) < min(k, held.count)] = EXACT
    exact = np.flatnonzero(breadths == EXACT)
    unanswered = np.zeros(len(queries), dtype=bool)
    if len(exact):
        scanned = _scan_members(part, queries[exact], k, subset)
        if scanned is None:
            unanswered[exact] = True
        else:
            scores[exact], ids[exact] = scanned
    return scores, ids, unanswered


def _probes(part, queries: np.ndarray, k: int, held: PartMembers, nprobe: int, values: list[int]) -> np.ndarray:
    """Per query, the nprobe (rounded up to one of ``values``) whose nearest lists hold as many members as the
    unfiltered search at ``nprobe`` examines vectors (``nprobe`` mean lists; at least ``k``, at most all)."""
    faiss = import_faiss()
    ivf = faiss.extract_index_ivf(part)
    coarse = queries
    stage = first_stage(part)
    if isinstance(stage, faiss.IndexPreTransform):
        for number in range(stage.chain.size()):
            coarse = stage.chain.at(number).apply(coarse)
    _, order = ivf.quantizer.search(np.ascontiguousarray(coarse, dtype=np.float32), ivf.nlist)
    wanted = min(held.count, max(k, math.ceil(nprobe * held.total / ivf.nlist)))
    reached = np.cumsum(held.per_list[order], axis=1) >= wanted
    needed = reached.argmax(axis=1) + 1
    steps = np.asarray(values)
    return steps[np.searchsorted(steps, needed)]


def _walks(part, queries: np.ndarray, subset: TileSubset, held: PartMembers, ef_search: int,
           metric: Metric) -> np.ndarray:
    """Per query, the efSearch of the filtered walk (a power of two), or :data:`EXACT` where scanning the part's
    members costs fewer distance computations or no unfiltered neighbour is a member."""
    _, near = search_index(part, queries, ef_search, metric, ef_search=ef_search)
    valid = np.maximum((near >= 0).sum(axis=1), 1)
    local = subset.contains(near).sum(axis=1) / valid
    links = import_faiss().downcast_index(first_stage(part)).hnsw.nb_neighbors(0)
    with np.errstate(divide="ignore"):
        walk = np.where(local > 0, ef_search / local, np.inf)
    exact = walk * links >= held.count
    breadth = 2 ** np.ceil(np.log2(np.clip(walk, ef_search, 2 ** 30))).astype(np.int64)
    return np.where(exact, EXACT, breadth)


def _scan_members(part, queries: np.ndarray, k: int, subset: TileSubset):
    """(scores, ids) of an exact scan of the part's members through its flat storage and the selector, or None
    when the part keeps no uncompressed vectors (HNSW over PQ / SQ codes)."""
    faiss = import_faiss()
    stage = first_stage(part)
    storage = faiss.downcast_index(stage.storage) if isinstance(stage, faiss.IndexHNSW) else stage
    if not isinstance(storage, faiss.IndexFlat):
        return None
    id_map = _id_map(part)
    selector = subset.selector()
    if id_map is not None:
        selector = faiss.IDSelectorTranslated(part.id_map, selector)
    params = faiss.SearchParameters()
    params.sel = selector
    scores, positions = storage.search(queries, k, params=params)
    return scores, np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1) if id_map is not None else positions


def search_parameters(index, selector, nprobe: int | None, ef_search: int | None, k_factor: int | None,
                      keep: list) -> object:
    """FAISS ``SearchParameters`` for ``index`` that restrict it to ``selector`` (on tile ids) at the given breadth
    (None: the index's own setting), built down the index's stages; ``keep`` collects every object FAISS holds
    only as a pointer, so Python does not free it during the search.

    An IndexIDMap(2) translates a top-level selector from tile ids to its positions itself; a refine stage below
    it passes only its base's parameters on, so the base gets the selector translated here
    (``IDSelectorTranslated`` over the map's ids)."""
    faiss = import_faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexRefine):
            translated = faiss.IDSelectorTranslated(index.id_map, selector)
            keep.append(translated)
            return search_parameters(inner, translated, nprobe, ef_search, k_factor, keep)
        return search_parameters(inner, selector, nprobe, ef_search, k_factor, keep)
    if isinstance(index, faiss.IndexRefine):
        params = faiss.IndexRefineSearchParameters()
        params.k_factor = float(k_factor if k_factor is not None else index.k_factor)
        params.base_index_params = search_parameters(index.base_index, selector, nprobe, ef_search, None, keep)
    elif isinstance(index, faiss.IndexPreTransform):
        params = faiss.SearchParametersPreTransform()
        params.index_params = search_parameters(index.index, selector, nprobe, ef_search, k_factor, keep)
    elif isinstance(index, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe if nprobe is not None else index.nprobe)
    elif isinstance(index, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search if ef_search is not None else index.hnsw.efSearch)
    else:
        params = faiss.SearchParameters()
    if not isinstance(index, (faiss.IndexRefine, faiss.IndexPreTransform)):
        params.sel = selector
    keep.append(params)
    return params


def current_breadth(index, knob: str) -> int:
    """The nprobe / efSearch ``index`` searches with when none is given."""
    faiss = import_faiss()
    if knob == "nprobe":
        return int(faiss.extract_index_ivf(index).nprobe)
    return int(faiss.downcast_index(first_stage(index)).hnsw.efSearch)
