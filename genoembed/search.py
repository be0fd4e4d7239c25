"""Nearest-neighbour search: queries by region, sequence, FASTA or BED -> hits table.

Queries are embedded with the store's own embedder (same model files,
pooling and settings, checked by fingerprint), so query and tile vectors
live in one space. Hits follow ``schema.HITS``; a search saved under a name
(``searches/NAME.VERSION.parquet`` with its sidecar ``searches/NAME.json``; the CLI saves ``last`` unless
``--no-save``) becomes SQL views for `genoembed sql`.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.embedders.base import strand_invariant
from genoembed.errors import InputError, StoreError
from genoembed.seqio import open_text, read_fasta
from genoembed.names import check_identifier
from genoembed.saved_searches import save_hits
from genoembed.subsets import TileFilter, filtered_search, resolve, tile_filter
from genoembed.store import SNAPSHOT_RETRIES, Store
from genoembed.regions import (MAX_QUERY_BASES, Query, check_sequence, parse_region,  # noqa: F401 (this API)
                               query_pieces, refuse_long, resolve_region, too_long)
from genoembed.tiles import tile_starts
from genoembed.topology import circular_overlaps, flanked_round


def region_queries(genome, regions: list[str]) -> list[Query]:
    """One query per region string, each embedded whole (refused above :data:`genoembed.regions.MAX_QUERY_BASES`)."""
    located = list(locate_regions(genome, regions))
    for query in located:
        refuse_long(query.name, query.end - query.start)
    return list(fetch_queries(genome, located))


def locate_regions(genome, regions: list[str]) -> Iterator[Query]:
    """Regions resolved on ``genome``, their sequence not yet read (so a caller can weigh them first)."""
    for text in regions:
        chrom, start, end, strand = resolve_region(genome, text)
        holder, chrom = genome_holding(genome, chrom)
        yield Query(text, "", chrom, start, end, strand, holder)


def fetch_queries(genome, located: Iterable[Query]) -> Iterator[Query]:
    """Located queries with their sequence read from ``genome``, one at a time."""
    for query in located:
        sequence = genome.fetch_on(query.genome, query.chrom, query.start, query.end, query.strand) \
            if hasattr(genome, "fetch_on") else genome.fetch(query.chrom, query.start, query.end, query.strand)
        yield dataclasses.replace(query, sequence=sequence.upper())


def iter_region_queries(genome, regions: list[str], window: int, stride: int) -> Iterator[Query]:
    """:func:`region_queries`, but a region longer than :data:`genoembed.regions.MAX_QUERY_BASES` comes as its tiles
    (:func:`query_pieces`), each read from the genome when it is needed: memory stays one tile a query."""
    for text in regions:
        chrom, start, end, strand = resolve_region(genome, text)
        holder, contig = genome_holding(genome, chrom)
        if not too_long(end - start):
            yield Query(text, genome.fetch(chrom, start, end, strand).upper(), contig, start, end, strand, holder)
            continue
        for offset in tile_starts(end - start, window, stride):
            first, last = start + int(offset), start + int(offset) + window
            yield Query(f"{text}:{offset + 1}-{offset + window}", genome.fetch(chrom, first, last, strand).upper(),
                        contig, first, last, strand, holder)


def bed_queries(genome, path: str | Path) -> list[Query]:
    """Regions from a BED file (3+ columns; name from column 4, strand from column 6)."""
    return list(iter_bed_queries(genome, path))


def iter_bed_queries(genome, path: str | Path) -> Iterator[Query]:
    """:func:`bed_queries` one at a time, read as they are needed (memory does not grow with the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: BED file not found")
    try:
        with open_text(path) as handle:
            yield from fetch_queries(genome, locate_bed_lines(genome, handle, str(path)))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text BED file (undecodable bytes); give a plain or gzipped BED") from None


def locate_bed_lines(genome, lines: Iterable[str], where: str) -> Iterator[Query]:
    """BED lines as located queries (coordinates checked, sequence not yet read)."""
    found = False
    for number, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith(("#", "track", "browser")):
            continue
        fields = line.split("\t")
        if len(fields) < 3:
            raise InputError(f"{where}:{number}: expected chrom<TAB>start<TAB>end with integer coordinates "
                             "(tab-separated: names may hold spaces)")
        chrom, (start, end) = fields[0], (schema.coordinate(value, f"{where}:{number}") for value in fields[1:3])
        strand = fields[5] if len(fields) > 5 and fields[5] in ("+", "-") else "+"
        name = fields[3] if len(fields) > 3 and fields[3] else f"{chrom}:{start + 1}-{end}"
        if chrom not in genome.contigs:
            raise InputError(f"{where}:{number}: contig {chrom!r} is not in {genome.path}")
        if not 0 <= start < end <= genome.contigs[chrom]:
            raise InputError(f"{where}:{number}: {chrom}:{start}-{end} is empty or outside the contig "
                             f"(length {genome.contigs[chrom]})")
        found = True
        holder, chrom = genome_holding(genome, chrom)
        yield Query(name, "", chrom, start, end, strand, holder)
    if not found:
        raise InputError(f"{where}: no regions found")


def fasta_queries(path: str | Path) -> list[Query]:
    """Every record of a FASTA file (plain or gzip) as a sequence query."""
    return list(iter_fasta_queries(path))


def iter_fasta_queries(path: str | Path) -> Iterator[Query]:
    """:func:`fasta_queries` one record at a time."""
    for name, sequence in read_fasta(path):
        yield Query(name, check_sequence(sequence, f"{path} record {name!r}"))


class UniqueNames:
    """Suffixes repeated query names (``name#2``) across a stream, so every hit row is keyed by (query, rank)."""

    def __init__(self):
        self._seen: dict[str, int] = {}

    def __call__(self, query: Query) -> Query:
        count = self._seen[query.name] = self._seen.get(query.name, 0) + 1
        return query if count == 1 else dataclasses.replace(query, name=f"{query.name}#{count}")


class StoreGenomes:
    """The genomes of a store seen as one, for cutting region queries: ``contigs`` lists every
    contig, and ``fetch`` reads from the genome holding it (opened, and checksummed, once per store).
    A contig is named plainly (``chr1``) or with its genome as outputs name it (``B#0#chr1`` or ``B#chr1``,
    :func:`genoembed.schema.split_pansn`); a plain name held by several genomes is refused with the genomes
    to choose from (``--query-genome``, or the qualified name)."""

    def __init__(self, store: Store):
        self._store = store
        self.path = store.root
        self.contigs = _StoreContigs(store)
        self.circular = frozenset(name for genome, entry in store.genomes.items() for chrom in entry.get("circular", ())
                                  for name in (chrom, schema.pansn_name(genome, chrom),
                                               genome + schema.PANSN_DELIMITER + chrom))

    def locate(self, name: str) -> tuple[str, str]:
        """(genome, contig) of a contig name, plain or qualified."""
        return _locate(self._store, name)

    def genome_of(self, chrom: str) -> str:
        return self.locate(chrom)[0]

    def fetch(self, chrom: str, start: int, end: int, strand: str = "+") -> str:
        genome, chrom = self.locate(chrom)
        return self._store.genome(genome).fetch(chrom, start, end, strand)

    def fetch_on(self, genome: str, chrom: str, start: int, end: int, strand: str = "+") -> str:
        return self._store.genome(genome).fetch(chrom, start, end, strand)


def _locate(store: Store, name: str) -> tuple[str, str]:
    lengths = store.contig_lengths
    if not any(name in contigs for contigs in lengths.values()):
        for genome, chrom in schema.split_pansn(name):
            if chrom in lengths.get(genome, ()):
                return genome, chrom
    return store.genome_of_contig(name), name


class _StoreContigs(Mapping):
    """Contig name -> length over all genomes of a store (plain names listed; qualified ones looked up too);
    looking up a plain name several genomes share raises the store's one-line error naming them."""

    def __init__(self, store: Store):
        self._store = store  # not the StoreGenomes: no reference cycle, so a dropped store frees its lease at once
        self._lengths = store.contig_lengths
        self._names = list(dict.fromkeys(chrom for contigs in self._lengths.values() for chrom in contigs))

    def __getitem__(self, chrom: str) -> int:
        genome, chrom = _locate(self._store, chrom)
        return self._lengths[genome][chrom]

    def __contains__(self, chrom) -> bool:
        return any(chrom in contigs for contigs in self._lengths.values()) or \
            any(name in self._lengths.get(genome, ()) for genome, name in schema.split_pansn(chrom))

    def __iter__(self):
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def genome_holding(source, chrom: str) -> tuple[str | None, str]:
    """(store genome, plain contig) of a region on ``chrom`` of ``source`` (a store genome, or
    :class:`StoreGenomes`, whose ``chrom`` may be qualified)."""
    return source.locate(chrom) if hasattr(source, "locate") else (getattr(source, "name", None), chrom)


def query_source(store: Store, genome: str | None = None):
    """Where region/BED queries are cut from: the named genome, else all the store's genomes."""
    return store.genome(genome) if genome is not None or len(store.genomes) == 1 else StoreGenomes(store)


def _self_overlap_allowance(store: Store, query: Query) -> int:
    """How many tiles can overlap a query interval (fetched extra, then dropped)."""
    tiling = store.provenance["tiling"]
    strands = 2 if tiling["strands"] == "both" else 1
    return ((query.end - query.start) + tiling["window"]) // tiling["stride"] * strands + 2 * strands


def _unique_names(queries: list[Query]) -> list[Query]:
    return list(map(UniqueNames(), queries))


def search(store: Store, queries: list[Query | str], k: int = 10, nprobe: int | None = None,
           ef_search: int | None = None, exclude_self: bool = False, save_as: str | None = None,
           embedder=None, trust_remote_code: bool = False, genome: str | None = None,
           chrom: str | Sequence[str] | None = None, align: bool = False, min_identity: float | None = None,
           min_bit_score: float | None = None, k_factor: int | None = None, where: str | None = None) -> pa.Table:
    """Top-``k`` tiles per query as a ``schema.HITS`` table (rank 1 = best embedding score).

    ``nprobe`` / ``ef_search`` / ``k_factor`` (shortlist factor of a refine stage) override the settings
    tuned when the index was built. String queries are regions on the store's genomes (see :func:`query_source`).
    ``genome``, ``chrom`` (one contig or several) and ``where`` (a SQL condition on the ``tiles`` view, e.g.
    ``gc > 0.5``) restrict hits to that subset of the store, searched inside FAISS, and still return ``k`` hits
    when the subset has them (:mod:`genoembed.subsets`). ``save_as`` saves the hits
    in the store under that name (the SQL view ``hits_NAME``; ``last`` is the view ``hits``).

    Every hit's ``strand`` is the strand the query matches, read from sequence (see ``schema``).
    ``align`` adds ``schema.ALIGNMENT_FIELDS`` from a local alignment of each query to its hit tile
    plus flanks of the query's length (needs the ``align`` extra); ``min_identity`` and
    ``min_bit_score`` then drop hits whose alignment falls short (ranks keep their embedding order).
    """
    if not queries:
        raise InputError("no queries given")
    if not align and (min_identity is not None or min_bit_score is not None):
        raise InputError("min_identity / min_bit_score filter alignments: search with align=True (--align)")
    if any(isinstance(query, str) for query in queries):
        source = query_source(store)
        queries = [region_queries(source, [q])[0] if isinstance(q, str) else q for q in queries]
    queries = _unique_names(queries)
    for query in queries:
        refuse_long(query.name, len(query.sequence))
    if k < 1:
        raise InputError(f"k={k}: ask for at least one neighbour")
    if k > store.num_tiles:
        raise InputError(f"k={k} is larger than the store ({store.num_tiles} tiles); use k <= {store.num_tiles}")
    if save_as is not None:
        check_identifier(save_as, "search")
    embedder = embedder or store.embedder(trust_remote_code=trust_remote_code)
    if embedder.dim != store.dim:
        raise InputError(f"query embedder has dim {embedder.dim} but the store has dim {store.dim}; "
                         "search with the store's own model")
    vectors = embedder.embed([query.sequence for query in queries])
    extra = max((_self_overlap_allowance(store, q) for q in queries if q.chrom is not None), default=0) \
        if exclude_self else 0
    fetch = min(k + extra, store.num_tiles)
    for attempt in range(SNAPSHOT_RETRIES):
        try:
            hits = _hits(store, queries, vectors, k, fetch, {"nprobe": nprobe, "ef_search": ef_search, "k_factor": k_factor},
                         exclude_self, tile_filter(genome, chrom, where))
            break
        except StoreError:
            # A writer removed files of this snapshot (e.g. `genoembed remove`): answer from the newest one
            # (retried while writers keep committing; a store that is simply damaged fails at once).
            if attempt == SNAPSHOT_RETRIES - 1 or not store.moved_on():
                raise
    hits = add_evidence(store, queries, hits, align=align, embedder=embedder)
    if min_identity is not None or min_bit_score is not None:
        hits = filter_alignments(hits, min_identity, min_bit_score)
    if save_as:
        save_hits(store, hits, save_as, {"queries": len(queries), "k": k, "exclude_self": exclude_self})
    return hits


def _hits(store: Store, queries: list[Query], vectors: np.ndarray, k: int, fetch: int, settings: dict,
          exclude_self: bool, wanted: TileFilter) -> pa.Table:
    """Search one snapshot of the store (``settings``: nprobe, ef_search, k_factor; ``wanted``: the subset hits
    come from) and turn (scores, ids) into hit rows, column by column."""
    if wanted:
        scores, ids = filtered_search(store, vectors, fetch, resolve(store, wanted), settings=settings)
    else:
        scores, ids = store.vector_index().search(vectors, fetch, **settings)
    keep = ids >= 0
    if not keep.any():  # e.g. an IVF search whose probed lists were empty
        return schema.HITS.empty_table()
    tile_ids, position = np.unique(ids[keep], return_inverse=True)
    tiles = store.tiles(tile_ids)
    tile_row = np.zeros(ids.shape, dtype=np.int64)  # each hit's row in ``tiles``
    tile_row[keep] = position
    if exclude_self:
        keep &= ~_inside_own_region(store, queries, tiles, tile_row)
    rank = np.cumsum(keep, axis=1)
    keep &= rank <= k
    query_rows, columns = np.nonzero(keep)
    located = tiles.take(pa.array(tile_row[query_rows, columns]))
    picked = pa.array(query_rows)
    query_columns = [pa.array([getattr(query, attribute) for query in queries], schema.HITS.field(name).type)
                     .take(picked) for attribute, name in _QUERY_COLUMNS]
    return pa.table([*query_columns, pa.array(rank[query_rows, columns], pa.int32()),
                     pa.array(ids[query_rows, columns], pa.int64()),
                     *(located.column(name) for name in ("genome", "chrom", "start", "end", "strand")),
                     pa.array(scores[query_rows, columns], pa.float32())], schema=schema.HITS)


_QUERY_COLUMNS = (("name", "query"), ("chrom", "query_chrom"), ("start", "query_start"), ("end", "query_end"),
                  ("strand", "query_strand"))


def _inside_own_region(store: Store, queries: list[Query], tiles: pa.Table, tile_row: np.ndarray) -> np.ndarray:
    """(queries, hits) mask of hit tiles overlapping their query's own region (queries cut from the genome):
    same genome (when the query knows it: a Python caller may build one without), contig and overlap, round
    the origin on circular contigs."""
    genomes = tiles.column("genome").combine_chunks().to_numpy(zero_copy_only=False)
    chroms = tiles.column("chrom").combine_chunks().to_numpy(zero_copy_only=False)
    # each tile's circle length (a length no interval reaches on linear contigs, where nothing wraps)
    circle = np.array([store.genomes[g]["contig_lengths"][c] if c in store.genomes[g].get("circular", ()) else 1 << 62
                       for g, c in zip(genomes, chroms)], dtype=np.int64)[tile_row]
    genome, chrom = genomes[tile_row], chroms[tile_row]
    own_genome = np.array([query.genome for query in queries], dtype=object)[:, None]
    start = tiles.column("start").combine_chunks().to_numpy()[tile_row]
    end = tiles.column("end").combine_chunks().to_numpy()[tile_row]
    own_chrom = np.array([query.chrom for query in queries], dtype=object)[:, None]
    own_start = np.array([query.start or 0 for query in queries])[:, None]
    own_end = np.array([query.end or 0 for query in queries])[:, None]
    same_genome = (own_genome == None) | (genome == own_genome)  # noqa: E711 (elementwise)
    return same_genome & (chrom == own_chrom) & circular_overlaps(own_start, own_end, start, end, circle)


def tile_vectors(store: Store, tile_ids: Sequence[int]) -> np.ndarray:
    """Stored vectors of ``tile_ids`` (float32, in the order given), read from the row groups that can hold
    them (shards record their id range, row groups their tile_id min/max)."""
    tile_ids = np.asarray(tile_ids, dtype=np.int64)
    wanted = np.unique(tile_ids)
    ids, vectors = [np.empty(0, dtype=np.int64)], [np.empty((0, store.dim), dtype=np.float32)]
    for shard in store.shards:
        inside = wanted[(wanted >= shard["first_tile_id"]) & (wanted <= shard["last_tile_id"])]
        if not len(inside):
            continue
        parquet = store.open_shard(store.root / shard["path"])
        column = parquet.schema_arrow.get_field_index("tile_id")
        groups = [group for group in range(parquet.num_row_groups)
                  if (stats := parquet.metadata.row_group(group).column(column).statistics) is None
                  or not stats.has_min_max or ((inside >= stats.min) & (inside <= stats.max)).any()]
        table = parquet.read_row_groups(groups, columns=["tile_id", schema.EMBEDDING])
        found = table.column(0).combine_chunks().to_numpy()
        keep = np.isin(found, inside)
        flat = table.column(1).combine_chunks().flatten().to_numpy(zero_copy_only=False)
        ids.append(found[keep])
        vectors.append(np.asarray(flat, dtype=np.float32).reshape(len(found), store.dim)[keep])
    order = np.argsort(ids := np.concatenate(ids))
    at = np.minimum(np.searchsorted(ids[order], tile_ids), max(len(ids) - 1, 0))
    if len(tile_ids) and not (len(ids) and (ids[order][at] == tile_ids).all()):
        raise StoreError(f"{store.root}: a hit's tile has no stored vector; run `genoembed verify {store.root}`")
    return np.concatenate(vectors)[order][at]


class HitSequences:
    """Sequences of hit regions, read from the store's genomes (``Store.genome`` opens each once)."""

    def __init__(self, store: Store):
        self._store = store

    def fetch(self, genome: str, chrom: str, start: int, end: int) -> str:
        return self._store.genome(genome).fetch(chrom, start, end).upper()

    def fetch_all(self, hits: pa.Table) -> list[str]:
        """Every hit's sequence (upper case), in row order. A contig whose hits add up to a quarter of its
        length or more is read once and sliced (a many-query search on a bacterial genome); otherwise each
        hit is read on its own, so a search with few hits never reads a whole chromosome."""
        located = list(zip(*(hits.column(name).to_pylist() for name in ("genome", "chrom", "start", "end"))))
        by_contig: dict[tuple[str, str], list[int]] = {}
        for row, (genome, chrom, _, _) in enumerate(located):
            by_contig.setdefault((genome, chrom), []).append(row)
        sequences = [""] * len(located)
        for (genome, chrom), rows in by_contig.items():
            length = self._store.genome(genome).contigs[chrom]
            if 4 * sum(located[row][3] - located[row][2] for row in rows) >= length:
                whole = self.fetch(genome, chrom, 0, length)
                for row in rows:
                    start, end = located[row][2:]
                    sequences[row] = whole[start:end] + whole[:max(0, end - length)]  # through a circle's origin
            else:
                for row in rows:
                    sequences[row] = self.fetch(*located[row])
        return sequences


def add_evidence(store: Store, queries: list[Query], hits: pa.Table, align: bool = False,
                 embedder=None) -> pa.Table:
    """``hits`` with ``strand`` read from sequence and, with ``align``, alignment columns.

    The query is aligned to the tile plus flanks of its own length, so a query overlapping the tile
    aligns whole; an alignment that does not touch the tile is not evidence for it (nulls). The
    strand comes from the alignment, else from k-mer counts of the query and the tile on each strand
    (:func:`genoembed.evidence.match_strands`, all hits of a batch at once): tile orientation alone
    cannot tell it, because default vectors are the same for a tile and its reverse complement.
    """
    from genoembed.evidence import (align as align_pair, alignment_columns, database_length, flanked, kmer_presence,
                                    match_strands)

    if not align and not strand_invariant(embedder or store.embedder(), store.provenance["tiling"]["window"]):
        return hits  # strand-specific vectors: a tile matched on its own strand, the strand the store records
    regions = HitSequences(store)
    tiles = regions.fetch_all(hits)
    position = {query.name: number for number, query in enumerate(queries)}
    query_of_hit = np.array([position[name] for name in hits.column("query").to_pylist()], dtype=np.int64)
    strands = match_strands(kmer_presence([query.sequence for query in queries]), query_of_hit, tiles)
    if not align:
        return hits.set_column(hits.schema.get_field_index("strand"), schema.HITS.field("strand"), pa.array(strands))
    database = database_length(store.contig_lengths)
    rows = []
    for hit, query_number, strand in zip(hits.to_pylist(), query_of_hit, strands):
        query = queries[query_number].sequence.upper()
        genome = store.genome(hit["genome"])
        length = genome.contigs[hit["chrom"]]
        circular = hit["chrom"] in genome.circular
        start, end = (flanked_round(hit["start"], hit["end"], length, len(query)) if circular else
                      flanked(hit["start"], hit["end"], length, len(query)))
        alignment = align_pair(query, regions.fetch(hit["genome"], hit["chrom"], start, end), start)
        if alignment and circular and alignment.target_start >= length:  # back to the origin convention
            alignment = dataclasses.replace(alignment, target_start=alignment.target_start - length,
                                            target_end=alignment.target_end - length)
        if alignment and not circular_overlaps(alignment.target_start, alignment.target_end, hit["start"],
                                               hit["end"], length if circular else 1 << 62):
            alignment = None  # the query aligns next to the tile, not on it: no evidence for this hit
        hit.update(alignment_columns(alignment, len(query), database))
        hit["strand"] = alignment.strand if alignment else str(strand)
        rows.append(hit)
    return pa.Table.from_pylist(rows, schema=schema.ALIGNED_HITS)


def filter_alignments(hits: pa.Table, min_identity: float | None = None,
                      min_bit_score: float | None = None) -> pa.Table:
    """Aligned hits at or above both thresholds (hits that did not align fail any threshold)."""
    import pyarrow.compute as pc

    keep = pc.is_valid(hits["identity"])
    if min_identity is not None:
        keep = pc.and_(keep, pc.greater_equal(hits["identity"], min_identity))
    if min_bit_score is not None:
        keep = pc.and_(keep, pc.greater_equal(hits["bit_score"], min_bit_score))
    return hits.filter(pc.fill_null(keep, False))
