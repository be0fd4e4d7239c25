"""Which way a query is answered, by its length against the store's window.

* longer than the window: cut into tiles like the store and chained into mapped blocks (:mod:`genoembed.chain`);
* shorter than ``SHORT_FRACTION`` of the window: placed by shared minimizers (:mod:`genoembed.seeds`), because
  one vector of a read a fraction of the window long is close to nothing in the store;
* otherwise: one vector, nearest tiles (:func:`genoembed.search.search`), as always.

:func:`answer` runs all three and returns (hits, blocks): hits of tile and seed queries in ``schema.HITS``
(``schema.ALIGNED_HITS`` with ``align``), blocks of mapped queries in :data:`genoembed.chain.BLOCKS`.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from genoembed.chain import BLOCKS, ChainSettings, align_blocks, map_queries, query_tile_starts
from genoembed.errors import InputError
from genoembed.evidence import merge_loci
from genoembed.search import Query, add_evidence, filter_alignments, search
from genoembed.seeds import place_queries
from genoembed.significance import add_evalues, significant
from genoembed.store import Store

SHORT_FRACTION = 0.5
LOCI_FETCH = 4  # tiles fetched per locus asked for: neighbouring tiles of one locus merge
ROUTES = ("tiles", "seeds", "chain")


def route(query: Query, window: int) -> str:
    """``chain`` for queries longer than the window, ``seeds`` for those under half of it, else ``tiles``."""
    length = len(query.sequence)
    if length > window:
        return "chain"
    return "seeds" if length < SHORT_FRACTION * window else "tiles"


def answer(store: Store, queries: list[Query], k: int = 10, exclude_self: bool = False, genome: str | None = None,
           chrom: str | list[str] | None = None, where: str | None = None, align: bool = False, min_identity: float | None = None,
           min_bit_score: float | None = None, search_settings: dict | None = None, embedder=None,
           trust_remote_code: bool = False, chain_settings: ChainSettings = ChainSettings(),
           evalue: float | None = None, min_score: float | None = None, loci: bool = False,
           by_length: bool = True) -> tuple[pa.Table, pa.Table]:
    """(hits of tile and seed queries, mapped blocks of long queries); ``k`` results per query either way, fewer
    where ``evalue`` / ``min_score`` drop some (see :func:`genoembed.significance.significant`). A block's
    ``score_evalue`` is its best tile's, times the query's tiles searched (each was a chance to score that well).
    With ``loci``, hits are loci (:func:`genoembed.evidence.merge_loci`) and ``k`` counts loci: up to
    ``LOCI_FETCH * k`` tiles are fetched to fill them. ``by_length=False`` embeds every query whole (no
    mapping, no seeds). ``genome`` / ``chrom`` / ``where`` restrict hits to a subset of tiles
    (:mod:`genoembed.subsets`); with ``where`` short queries are embedded like tile queries, since seed
    placements are not tiles a tile condition could be checked on."""
    if not store.num_tiles:
        raise InputError(f"{store.root}: the store holds no tiles (every genome removed?); nothing to search")
    window, stride = store.provenance["tiling"]["window"], store.provenance["tiling"]["stride"]
    embedder = embedder or store.embedder(trust_remote_code=trust_remote_code)
    higher_is_better = store.metric == "ip"
    routed = {name: [query for query in queries if (route(query, window) if by_length else "tiles") == name]
              for name in ROUTES}
    if where is not None:
        routed["tiles"], routed["seeds"] = routed["tiles"] + routed["seeds"], []
    settings = search_settings or {}
    pieces = []
    if routed["tiles"]:
        fetch = min(LOCI_FETCH * k, store.num_tiles) if loci else k
        found = search(store, routed["tiles"], k=fetch, exclude_self=exclude_self, genome=genome, chrom=chrom,
                       where=where, align=align, min_identity=min_identity, min_bit_score=min_bit_score, embedder=embedder,
                       trust_remote_code=trust_remote_code, **settings)
        if evalue is not None or min_score is not None:
            found = significant(add_evalues(store, routed["tiles"], found, embedder, settings), evalue, min_score,
                                higher_is_better)
        pieces.append(found)
    if routed["seeds"]:
        placed = place_queries(store, routed["seeds"], k + 8)
        placed = _ranked(_restricted(placed, routed["seeds"], exclude_self, genome, chrom), k)
        if align:
            placed = add_evidence(store, routed["seeds"], placed, align=True)
            if min_identity is not None or min_bit_score is not None:
                placed = filter_alignments(placed, min_identity, min_bit_score)
        if evalue is not None:
            placed = placed.append_column(pa.field("score_evalue", pa.float64()), pa.nulls(placed.num_rows, pa.float64()))
            placed = significant(placed, evalue)  # the alignment's E-value, where there is one
        pieces.append(placed)
    blocks = BLOCKS.empty_table()
    if routed["chain"]:
        blocks = map_queries(store, routed["chain"], k + 8, chain_settings, settings, genome, chrom, embedder, where)
        blocks = _restricted(blocks, routed["chain"], exclude_self, None, None)
        if align:
            blocks = align_blocks(store, routed["chain"], blocks)
            if min_identity is not None or min_bit_score is not None:
                blocks = filter_alignments(blocks, min_identity, min_bit_score)
        if evalue is not None or min_score is not None:
            tiles = {query.name: len(query_tile_starts(len(query.sequence), window, stride)) for query in routed["chain"]}
            blocks = add_evalues(store, routed["chain"], blocks, embedder, settings,
                                 lengths={name: window for name in tiles}, multiplier=tiles)
            blocks = significant(blocks, evalue, min_score, higher_is_better)
        blocks = _ranked(blocks, k)
    hits = pa.concat_tables(pieces, promote_options="default") if pieces else None
    if hits is not None and loci:
        hits = merge_loci(hits, higher_is_better=higher_is_better)
        hits = hits.filter(pc.less_equal(hits["rank"], k))
    return hits, blocks


def _restricted(table: pa.Table, queries: list[Query], exclude_self: bool, genome: str | None,
                chrom: str | list[str] | None) -> pa.Table:
    """Rows in the ``genome`` / ``chrom`` subset and, with ``exclude_self``, off their query's own region."""
    keep = np.ones(table.num_rows, dtype=bool)
    if genome is not None:
        keep &= np.asarray(table.column("genome").to_pylist(), dtype=object) == genome
    if chrom is not None:
        keep &= np.isin(np.asarray(table.column("chrom").to_pylist(), dtype=object),
                        [chrom] if isinstance(chrom, str) else list(chrom))
    if exclude_self:
        own = {query.name: query for query in queries if query.chrom is not None}
        for row, (name, hit_chrom, start, end) in enumerate(zip(*(table.column(c).to_pylist()
                                                                  for c in ("query", "chrom", "start", "end")))):
            query = own.get(name)
            if query is not None and query.chrom == hit_chrom and query.start < end and start < query.end:
                keep[row] = False
    return table.filter(pa.array(keep))


def _ranked(table: pa.Table, k: int) -> pa.Table:
    """Ranks 1..n again per query after filtering, keeping the first ``k``."""
    if not table.num_rows:
        return table
    names = table.column("query").to_pylist()
    rank = np.ones(len(names), dtype=np.int32)
    for row in range(1, len(names)):
        rank[row] = rank[row - 1] + 1 if names[row] == names[row - 1] else 1
    table = table.set_column(table.schema.get_field_index("rank"), table.schema.field("rank"), pa.array(rank))
    return table.filter(pc.less_equal(table["rank"], k))
