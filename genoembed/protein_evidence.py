"""Protein evidence for a hit: a translated Smith-Waterman of the query against the hit region, and a
re-rank of embedding hits by it (retrieve, then align; issue 27).

An embedding shortlist is cheap but says nothing a biologist can check. Here each query is
translated in its six frames, the frames that can be coding are kept (long stop-free runs), and
each is aligned (parasail, SIMD, BLOSUM62, gap open 11 / extend 1 as blastp and tblastx count
them) against the six frames of the hit tile plus flanks of the query's length. The best frame
pair gives:

- ``protein_identity``: identical residues / alignment columns (gaps count, as BLAST's);
- the aligned span in DNA coordinates: on the contig's forward strand for the target (0-based
  half-open, like every interval in genoembed) and on the query as given;
- ``protein_query_frame`` / ``protein_target_frame``: BLAST's +1..+3 / -1..-3, counted from the start
  of the query and from the contig's start (forward) or end (reverse);
- ``protein_bit_score`` and ``protein_evalue``: Karlin-Altschul with blastp's gapped BLOSUM62 11/1
  constants (lambda 0.267, K 0.041), the query's residues (a third of its length) times the
  database's (six frames of every base of the store: twice its length).

:func:`rerank` orders a query's hits by bit score (hits without an alignment after, by embedding
score), so an embedding shortlist of K tiles is answered in the order an aligner would give;
:func:`rerank_store_hits` does it for the hits of ``genoembed.search`` (``search --protein-rerank K``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.embedders.translated import STOP, six_frames, translate
from genoembed.errors import missing_extra
from genoembed.evidence import cigar_operations, flanked
from genoembed.topology import circular_overlaps, flanked_round

GAP_OPEN, GAP_EXTEND = 11, 1  # blastp / tblastx defaults: a gap of k residues costs 11 + k
LAMBDA, K = 0.267, 0.041  # NCBI BLAST's gapped BLOSUM62 11/1 constants (blast_stat.c)
CODING_SHARE = 0.5  # a query frame is aligned when its longest stop-free run is >= this share of the best frame's


def _parasail():
    try:
        import parasail
    except ImportError:
        raise missing_extra("protein evidence (--protein-rerank)", "align", "parasail") from None
    return parasail


def bit_score(score: int) -> float:
    return (LAMBDA * score - math.log(K)) / math.log(2)


def evalue(score: int, query_residues: int, database_residues: int) -> float:
    return K * query_residues * database_residues * math.exp(-LAMBDA * score)


def longest_open_run(residues: np.ndarray) -> int:
    """Length of the longest stretch of a frame without a stop codon."""
    bounds = np.concatenate(([-1], np.flatnonzero(residues == STOP), [len(residues)]))
    return int(np.diff(bounds).max()) - 1


def coding_frames(sequence: str) -> list[int]:
    """Frames (0-2 forward, 3-5 reverse complement) of a query that may be coding: whose longest
    stop-free run is at least :data:`CODING_SHARE` of the longest one (one or two frames for a gene)."""
    runs = [longest_open_run(residues) for residues in six_frames(sequence)]
    best = max(runs)
    return [frame for frame, run in enumerate(runs) if run >= CODING_SHARE * best and run > 0]


def blast_frame(frame: int) -> int:
    """BLAST's frame label (+1..+3, -1..-3) of a frame index 0..5 counted from the sequence's start / end."""
    return frame + 1 if frame < 3 else -(frame - 2)


def dna_span(frame: int, first: int, last: int, length: int) -> tuple[int, int]:
    """Forward-strand [start, end) of residues [first, last) of ``frame`` of a sequence of ``length`` bp."""
    if frame < 3:
        return frame + 3 * first, frame + 3 * last
    offset = frame - 3
    return length - offset - 3 * last, length - offset - 3 * first


@dataclass(frozen=True)
class ProteinAlignment:
    """The best translated local alignment of a query to a target region (coordinates as in the module doc)."""

    score: int
    identity: float
    aligned_length: int
    query_frame: int  # 0..5
    target_frame: int  # 0..5, of the target region
    query_start: int
    query_end: int
    target_start: int
    target_end: int


class TranslatedAligner:
    """One query's coding frames as parasail profiles, aligned to any number of target regions."""

    def __init__(self, query: str):
        parasail = _parasail()
        self.query_length = len(query)
        self.frames = coding_frames(query) if len(query) >= 3 else []
        self.proteins = {frame: translate(query, frame) for frame in self.frames}
        self.profiles = {frame: parasail.profile_create_sat(protein, parasail.blosum62)
                         for frame, protein in self.proteins.items() if protein}

    def align(self, target: str, offset: int = 0) -> ProteinAlignment | None:
        """Best alignment over (query frame, target frame); None when nothing scores above zero."""
        parasail = _parasail()
        best = (0, None, None, "")
        for target_frame in range(6):
            protein = translate(target, target_frame)
            if not protein:
                continue
            for query_frame, profile in self.profiles.items():
                score = parasail.sw_striped_profile_sat(profile, protein, GAP_OPEN + GAP_EXTEND, GAP_EXTEND).score
                if score > best[0]:
                    best = (score, query_frame, target_frame, protein)
        score, query_frame, target_frame, protein = best
        if score <= 0:
            return None
        traced = parasail.sw_trace_striped_32(self.proteins[query_frame], protein, GAP_OPEN + GAP_EXTEND,
                                              GAP_EXTEND, parasail.blosum62)
        operations, query_at, target_at = cigar_operations(traced)
        columns = sum(n for n, _ in operations)
        counts = {op: sum(n for n, o in operations if o == op) for op in "=XIDM"}
        query_residues = counts["="] + counts["X"] + counts["M"] + counts["I"]
        target_residues = counts["="] + counts["X"] + counts["M"] + counts["D"]
        query_start, query_end = dna_span(query_frame, query_at, query_at + query_residues, self.query_length)
        target_start, target_end = dna_span(target_frame, target_at, target_at + target_residues, len(target))
        return ProteinAlignment(int(score), counts["="] / max(columns, 1), columns, query_frame, target_frame,
                                query_start, query_end, offset + target_start, offset + target_end)


def alignment_row(alignment: ProteinAlignment | None, query_length: int, contig_length: int,
                  database_residues: int) -> dict:
    """The ``schema.PROTEIN_FIELDS`` of one hit (all null but the query length when nothing aligned)."""
    row = {field.name: None for field in schema.PROTEIN_FIELDS}
    row["query_length"] = query_length
    if alignment is None:
        return row
    if alignment.target_frame < 3:
        target_frame = alignment.target_start % 3 + 1
    else:
        target_frame = -((contig_length - alignment.target_end) % 3 + 1)
    row.update(protein_identity=alignment.identity, protein_aligned_length=alignment.aligned_length,
               protein_score=alignment.score, protein_bit_score=bit_score(alignment.score),
               protein_evalue=evalue(alignment.score, max(query_length // 3, 1), database_residues),
               protein_query_frame=blast_frame(alignment.query_frame), protein_target_frame=target_frame,
               protein_query_start=alignment.query_start, protein_query_end=alignment.query_end,
               protein_target_start=alignment.target_start, protein_target_end=alignment.target_end)
    return row


def rerank(hits: pa.Table, queries: dict[str, str], fetch: Callable[[str, str, int, int], str],
           contig_lengths: Mapping[str, Mapping[str, int]], k: int,
           circular: Mapping[str, Collection[str]] | None = None) -> pa.Table:
    """Hits with protein evidence, re-ranked per query by bit score, ``k`` per query.

    ``queries`` maps query names to sequences; ``fetch(genome, chrom, start, end)`` reads a hit region;
    ``contig_lengths`` and ``circular`` are per genome (``Store.contig_lengths``, each genome's circular
    contigs). Each hit is aligned over its tile plus flanks of the query's length (round the origin on a
    circular contig); an alignment that does not touch the tile is not evidence for it (nulls). Ties and
    unaligned hits keep embedding order.
    """
    database_residues = 2 * sum(sum(contigs.values()) for contigs in contig_lengths.values())
    aligners: dict[str, TranslatedAligner] = {}
    rows = []
    for hit in hits.to_pylist():
        query = queries[hit["query"]]
        aligner = aligners.get(hit["query"]) or aligners.setdefault(hit["query"], TranslatedAligner(query))
        length = contig_lengths[hit["genome"]][hit["chrom"]]
        round_origin = hit["chrom"] in (circular or {}).get(hit["genome"], ())
        start, end = (flanked_round if round_origin else flanked)(hit["start"], hit["end"], length, len(query))
        alignment = aligner.align(fetch(hit["genome"], hit["chrom"], start, end), start)
        if alignment and round_origin and alignment.target_start >= length:  # back to the origin convention
            alignment = dataclasses.replace(alignment, target_start=alignment.target_start - length,
                                            target_end=alignment.target_end - length)
        if alignment and not circular_overlaps(alignment.target_start, alignment.target_end, hit["start"],
                                               hit["end"], length if round_origin else 1 << 62):
            alignment = None  # the query's protein aligns next to the tile, not on it: no evidence for this hit
        hit.update(alignment_row(alignment, len(query), length, database_residues))
        if alignment:  # the strand on which the query's protein matches
            hit["strand"] = "+" if (alignment.query_frame < 3) == (alignment.target_frame < 3) else "-"
        rows.append(hit)
    return rank_by_bits(rows, k)


def rerank_store_hits(store, queries: Sequence, hits: pa.Table, k: int) -> pa.Table:
    """:func:`rerank` of the hits of a search of ``store`` (``queries``: the searched ``search.Query`` objects;
    search with ``k`` = the re-rank depth K first, e.g. ``rerank_store_hits(store, qs, search(store, qs, k=200), 10)``)."""
    return rerank(hits, {query.name: query.sequence for query in queries},
                  lambda genome, chrom, start, end: store.genome(genome).fetch(chrom, start, end).upper(),
                  store.contig_lengths, k, {name: entry.get("circular", ()) for name, entry in store.genomes.items()})


def rank_by_bits(rows: Sequence[dict], k: int) -> pa.Table:
    """Per query (in order of first appearance): best bit score first, unaligned last, embedding rank on ties."""
    by_query: dict[str, list[dict]] = {}
    for row in rows:
        by_query.setdefault(row["query"], []).append(row)
    out = []
    for group in by_query.values():
        group.sort(key=lambda r: (r["protein_bit_score"] is None, -(r["protein_bit_score"] or 0.0), r["rank"]))
        for rank, row in enumerate(group[:k], 1):
            out.append(dict(row, embedding_rank=row["rank"], rank=rank))
    return pa.Table.from_pylist(out, schema=schema.PROTEIN_HITS)
