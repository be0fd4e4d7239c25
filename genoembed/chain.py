"""Long queries mapped, not averaged: query tiles searched one by one and collinear tile hits chained.

One vector for a 40 kb contig is the average of forty windows' worth of k-mers; its nearest 1 kb tile
is noise. A query longer than the store's window is instead cut like the store (same window and
stride, plus a last window ending at the query's end), every query tile is searched, and each tile
hit becomes an *anchor*: (query span, target span, strand, score). Anchors of one query on one
genome, contig and strand are chained by dynamic programming like minimap2's chaining of seeds
(Li 2018, section 2.1): an anchor extends a chain when it lies further along both sequences (the
query backwards on ``-``), its offset drifts by at most ``max_drift`` bases from the previous
anchor's (an indel), and the gap is at most ``max_gap``. A chain scores the sum of its anchors'
scores less a penalty for drift and gap; chains are taken best first, each anchor used once, and
each becomes a *mapped block*: query and target spans, fraction of the query covered, best and
mean tile scores, anchors chained.

Anchors' strands are read from sequence (``evidence.match_strands``) when the store's vectors do
not depend on orientation, as ``search.add_evidence`` does for hits. Block spans are the union of
their tiles, so a block's ends are as exact as the store's stride (the tile grid), not base-exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.embedders.base import strand_invariant
from genoembed.evidence import kmer_presence, match_strands
from genoembed.search import HitSequences, Query
from genoembed.store import Store
from genoembed.subsets import filtered_search, resolve, tile_filter
from genoembed.tiles import tile_starts
from genoembed.topology import linear_pieces

BLOCKS = schema.BLOCKS  # columns of a mapped block: see schema


@dataclass(frozen=True)
class ChainSettings:
    """How anchors chain. ``neighbours``: store tiles fetched per query tile (repeat copies compete);
    ``max_drift``: largest change of offset between chained anchors (an indel), in bases, default one
    window; ``max_gap``: largest distance between chained anchors on either sequence, default ten
    windows; ``bandwidth``: predecessors tried per anchor (minimap2's ``h``)."""

    neighbours: int = 5
    max_drift: int | None = None
    max_gap: int | None = None
    bandwidth: int = 50


def should_map(query: Query, window: int) -> bool:
    """A query longer than one window is mapped tile by tile."""
    return len(query.sequence) > window


def query_tile_starts(length: int, window: int, stride: int) -> np.ndarray:
    """Where a query is cut: the store's grid plus a last window ending at the query's end."""
    return tile_starts(length, window, stride)


def map_queries(store: Store, queries: list[Query], k: int = 10, settings: ChainSettings = ChainSettings(),
                search_settings: dict | None = None, genome: str | None = None,
                chrom: str | list[str] | None = None, embedder=None, where: str | None = None) -> pa.Table:
    """Top-``k`` mapped blocks per query (rank 1 = highest chain score) as a :data:`BLOCKS` table."""
    tiling = store.provenance["tiling"]
    window, stride = tiling["window"], tiling["stride"]
    embedder = embedder or store.embedder()
    anchors = find_anchors(store, queries, window, stride, settings.neighbours, search_settings or {},
                           genome, chrom, embedder, where)
    max_drift = settings.max_drift if settings.max_drift is not None else window
    max_gap = settings.max_gap if settings.max_gap is not None else 10 * window
    rows = []
    for number, query in enumerate(queries):
        mine = {name: values[anchors["query"] == number] for name, values in anchors.items()}
        blocks = chain_blocks(mine, max_drift, max_gap, settings.bandwidth, window, limit=k)
        for rank, block in enumerate(blocks[:k], 1):
            block.update(query=query.name, query_length=len(query.sequence), rank=rank,
                         query_coverage=block.pop("covered") / len(query.sequence))
            rows.append(block)
    return pa.Table.from_pylist(rows, schema=BLOCKS)


def find_anchors(store: Store, queries: list[Query], window: int, stride: int, neighbours: int,
                 search_settings: dict, genome: str | None, chrom: str | list[str] | None, embedder,
                 where: str | None = None) -> dict[str, np.ndarray]:
    """Every query tile's nearest store tiles, as columns: query (its number), query_start, query_end,
    tile_id, genome, chrom, start, end, strand (matched strand), score (higher is better)."""
    owner, starts, sequences = [], [], []
    for number, query in enumerate(queries):
        cut = query_tile_starts(len(query.sequence), window, stride)
        owner.extend([number] * len(cut))
        starts.extend(cut.tolist())
        sequences.extend(query.sequence[start:start + window].upper() for start in cut)
    owner, starts = np.asarray(owner, dtype=np.int64), np.asarray(starts, dtype=np.int64)
    vectors = embedder.embed(sequences)
    fetch = min(neighbours, store.num_tiles)
    if genome is None and not chrom and where is None:
        scores, ids = store.vector_index().search(vectors, fetch, **search_settings)
    else:
        subset = resolve(store, tile_filter(genome, chrom, where))
        scores, ids = filtered_search(store, vectors, min(fetch, subset.size), subset, settings=search_settings)
    tile_of, column = np.nonzero(ids >= 0)
    hit_ids = ids[tile_of, column]
    unique, position = np.unique(hit_ids, return_inverse=True)
    located = store.tiles(unique).take(pa.array(position))
    score = scores[tile_of, column].astype(np.float64)
    if store.metric != "ip":
        score = 1.0 / (1.0 + np.maximum(score, 0.0))  # squared L2 distance -> higher is better
    if strand_invariant(embedder, window):
        targets = HitSequences(store).fetch_all(located)
        strand = match_strands(kmer_presence(sequences), tile_of, targets)
    else:  # strand-specific vectors: a query tile matches a tile on the tile's own strand
        strand = np.asarray(located.column("strand").to_pylist(), dtype="<U1")
    return {"query": owner[tile_of], "query_start": starts[tile_of], "query_end": starts[tile_of] + window,
            "tile_id": hit_ids, "genome": np.asarray(located.column("genome").to_pylist(), dtype=object),
            "chrom": np.asarray(located.column("chrom").to_pylist(), dtype=object),
            "start": located.column("start").to_numpy(), "end": located.column("end").to_numpy(),
            "strand": strand, "score": score}


def chain_blocks(anchors: dict[str, np.ndarray], max_drift: int, max_gap: int, bandwidth: int,
                 window: int, limit: int | None = None) -> list[dict]:
    """Chains of one query's anchors, best first, as block dicts (no query columns yet); the best ``limit``."""
    keep = anchors["strand"] != "."  # no sequence evidence for either strand: not an anchor
    groups: dict[tuple, np.ndarray] = {}
    for row in np.flatnonzero(keep):
        key = (anchors["genome"][row], anchors["chrom"][row], anchors["strand"][row])
        groups.setdefault(key, []).append(row)
    chains = []
    for (genome, chrom, strand), rows in groups.items():
        rows = np.asarray(rows)
        rows = rows[np.lexsort((anchors["query_start"][rows], anchors["start"][rows]))]
        for members, total in _chain_group(anchors, rows, strand, max_drift, max_gap, bandwidth, window):
            chains.append((total, genome, chrom, strand, members))
    chains.sort(key=lambda chain: -chain[0])
    chains = _distinct(chains, anchors, None if limit is None else max(limit, 2))
    best = chains[0][0] if chains else 0.0
    second = chains[1][0] if len(chains) > 1 else 0.0
    blocks = []
    for number, (total, genome, chrom, strand, members) in enumerate(chains):
        scores = anchors["score"][members]
        top = members[int(np.argmax(scores))]
        query_start, query_end = anchors["query_start"][members], anchors["query_end"][members]
        blocks.append({
            "query_block_start": int(query_start.min()), "query_block_end": int(query_end.max()),
            "tile_id": int(anchors["tile_id"][top]), "genome": genome, "chrom": chrom,
            "start": int(anchors["start"][members].min()), "end": int(anchors["end"][members].max()),
            "strand": strand, "score": float(scores.max()), "mean_score": float(scores.mean()),
            "tiles": len(members), "covered": _union_length(query_start, query_end), "chain_score": float(total),
            "mapq": 0 if number else int(round(60 * (1 - second / best))) if best > 0 else 0})
    return blocks


def _chain_group(anchors: dict[str, np.ndarray], rows: np.ndarray, strand: str, max_drift: int, max_gap: int,
                 bandwidth: int, window: int) -> list[tuple[np.ndarray, float]]:
    """minimap2-style DP over anchors of one contig and strand, sorted by target start.

    f(i) = s(i) + max(0, max_j f(j) - penalty(j, i)) over the ``bandwidth`` anchors before i that lie
    before it on the target and on the query (after it on ``-``) within ``max_gap`` and ``max_drift``;
    the penalty grows with the drift (per window) and, slowly, with the gap. Chains are read back from
    the best ends; an anchor belongs to one chain (a backtrack stops at a used anchor)."""
    target = anchors["start"][rows]
    query = anchors["query_start"][rows] if strand == "+" else -anchors["query_end"][rows]
    score = anchors["score"][rows]
    best = score.copy()
    previous = np.full(len(rows), -1)
    for i in range(1, len(rows)):
        first = max(0, i - bandwidth)
        gap_target = target[i] - target[first:i]
        gap_query = query[i] - query[first:i]
        drift = np.abs(gap_target - gap_query)
        allowed = (gap_target > 0) & (gap_query > 0) & (drift <= max_drift) & \
            (np.maximum(gap_target, gap_query) <= max_gap)
        if not allowed.any():
            continue
        gain = best[first:i] - drift / window - 0.05 * np.log2(1 + np.maximum(gap_target, gap_query) / window)
        gain[~allowed] = -np.inf
        j = int(np.argmax(gain))
        if gain[j] > 0:
            best[i], previous[i] = score[i] + gain[j], first + j
    used = np.zeros(len(rows), dtype=bool)
    chains = []
    for end in np.argsort(-best, kind="stable"):
        if used[end]:
            continue
        members, at = [], end
        while at >= 0 and not used[at]:
            members.append(at)
            used[at] = True
            at = previous[at]
        members = np.asarray(members[::-1])
        stop = previous[members[0]]
        total = best[end] - (best[stop] if stop >= 0 else 0.0)  # a chain cut at a used anchor scores its own part
        chains.append((rows[members], float(total)))
    return chains


def _distinct(chains: list[tuple], anchors: dict[str, np.ndarray], limit: int | None) -> list[tuple]:
    """The first ``limit`` chains (best first) that do not lie mostly (over half their target span) inside a better
    chain on the same contig and strand: the leftover neighbours of one placement (a tile's overlapping neighbours)."""
    kept, spans = [], []
    for chain in chains:
        if limit is not None and len(kept) == limit:
            break
        _, genome, chrom, strand, members = chain
        start, end = int(anchors["start"][members].min()), int(anchors["end"][members].max())
        inside = max((min(end, e) - max(start, s) for g, c, d, s, e in spans if (g, c, d) == (genome, chrom, strand)),
                     default=0)
        if inside <= (end - start) / 2:
            kept.append(chain)
            spans.append((genome, chrom, strand, start, end))
    return kept


def _union_length(starts: np.ndarray, ends: np.ndarray) -> int:
    """Bases covered by the union of intervals."""
    order = np.argsort(starts)
    covered, reach = 0, -math.inf
    for start, end in zip(starts[order], ends[order]):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return int(covered)


ALIGN_CELLS = 40_000_000  # query x target bases aligned per block at most (parasail's traceback holds them all)


def align_blocks(store: Store, queries: list[Query], blocks: pa.Table) -> pa.Table:
    """``blocks`` with ``schema.ALIGNMENT_FIELDS`` from a local alignment of the whole query to the block's target
    span plus flanks of the query's unplaced ends; blocks over :data:`ALIGN_CELLS` stay unaligned (nulls)."""
    from genoembed.evidence import align, alignment_columns, flanked

    by_name = {query.name: query.sequence for query in queries}
    lengths = store.contig_lengths
    database = sum(sum(contigs.values()) for contigs in lengths.values())
    window = store.provenance["tiling"]["window"]
    regions = HitSequences(store)
    rows = []
    for block in blocks.to_pylist():
        query = by_name[block["query"]]
        flank = max(block["query_block_start"], len(query) - block["query_block_end"]) + window  # ends: a tile's play
        start, end = flanked(block["start"], block["end"], lengths[block["genome"]][block["chrom"]], flank)
        alignment = None
        if len(query) * (end - start) <= ALIGN_CELLS:
            alignment = align(query, regions.fetch(block["genome"], block["chrom"], start, end), start)
        columns = alignment_columns(alignment, len(query), database)
        if alignment is not None and alignment.strand != block["strand"]:
            columns = alignment_columns(None, len(query), database)  # the other strand aligns better: no evidence
        if columns["query_coverage"] is None:
            del columns["query_coverage"]  # unaligned: the block's own coverage (by its tiles) stands
        rows.append({**block, **columns})
    fields = list(blocks.schema) + [field for field in schema.ALIGNMENT_FIELDS if field.name not in blocks.schema.names]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


def blocks_paf(blocks: pa.Table, contig_lengths: dict[str, dict[str, int]]) -> str:
    """PAF text of mapped blocks, as minimap2 writes mappings without base-level alignment (no ``-c``):
    column 10 is the query bases inside the block's anchors (minimap2: bases in its seeds), column 11 the
    block's length on the target, mapq as minimap2 derives it from the second-best chain. Tags:
    ``tp:A:P``/``S`` primary or secondary, ``cm:i:`` anchors chained, ``s1:i:`` chain score * 100,
    ``es:f:`` best and ``em:f:`` mean embedding score, ``qc:f:`` query coverage. A block through a circular
    contig's origin is two lines, one each side (as ``hit_formats`` writes hits, and naming the target as it
    does), its query span and matching bases shared in proportion to the target bases on each side (a block's ends are approximate anyway)."""
    lines, target = [], schema.contig_namer(contig_lengths)
    for row in blocks.to_pylist():
        length = contig_lengths[row["genome"]][row["chrom"]]
        query_span = row["query_block_end"] - row["query_block_start"]
        matching = int(round(row["query_coverage"] * row["query_length"]))
        done = 0  # target bases of the block written so far
        for start, end in linear_pieces(row["start"], row["end"], length):
            share = (done, done + end - start)
            first, last = (int(round(part * query_span / (row["end"] - row["start"]))) for part in share)
            query = (row["query_block_start"] + first, row["query_block_start"] + last) if row["strand"] != "-" else \
                (row["query_block_end"] - last, row["query_block_end"] - first)
            lines.append("\t".join(str(value) for value in (
                row["query"], row["query_length"], *query, row["strand"], target(row["genome"], row["chrom"]), length,
                start, end,
                int(round(matching * (end - start) / (row["end"] - row["start"]))), end - start, row["mapq"],
                f"tp:A:{'P' if row['rank'] == 1 else 'S'}", f"cm:i:{row['tiles']}",
                f"s1:i:{int(round(100 * row['chain_score']))}", f"es:f:{row['score']:.4g}",
                f"em:f:{row['mean_score']:.4g}", f"qc:f:{row['query_coverage']:.3f}")))
            done += end - start
    return "\n".join(lines) + ("\n" if lines else "")
