"""Evidence a biologist can check for a hit: the strand the query really matches, its local
alignment to the hit region, and hits merged into loci.

An embedding score says two windows look alike; it does not say where the query lies, on which
strand, or how many bases agree. This module answers those with sequence, not vectors:

* :func:`match_strand` compares k-mer counts of the query with those of the target and of its
  reverse complement (numpy only; no aligner needed), so a default store, whose vectors are the
  same for a tile and its reverse complement, still reports the strand of each hit.
* :func:`align` runs a local Smith-Waterman alignment (parasail, SIMD) of the query and of its
  reverse complement against the forward target region and keeps the better one. Scoring is
  BLASTN's +1/-2 with gap costs existence 2, extension 2 (a gap of k bases costs 2 + 2k), whose
  Karlin-Altschul parameters BLAST tabulates (lambda 1.33, K 0.62), so bit scores and E-values
  read like BLAST's. Identity is BLAST's: matches / alignment columns (gaps count as columns).
* :func:`merge_loci` merges overlapping or touching tile hits of one query on one contig and
  strand, like BLAST HSP chaining or ``bedtools merge -s``.

Coordinates are 0-based half-open like everywhere in genoembed (``schema``). Query coordinates
are on the query as given; target coordinates are on the forward strand of the contig, and a
``-`` alignment means the query's reverse complement matches there (PAF's convention).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.errors import missing_extra
from genoembed.seqio import codes_by_length, kmer_index, reverse_complement, reverse_complement_codes

MATCH, MISMATCH = 1, -2
GAP_EXISTENCE, GAP_EXTENSION = 2, 2  # BLAST convention: a gap of k bases costs existence + k * extension
LAMBDA, K = 1.33, 0.62  # BLAST's blastn_values_1_2 for gap costs 2/2
STRAND_K = 6  # k-mer length of strand profiles: long enough that shared k-mers mean shared sequence
_CIGAR = re.compile(r"(\d+)([=XIDM])")


@dataclass(frozen=True)
class Alignment:
    """One local alignment of a query (as given) to a forward-strand target region."""

    strand: str
    query_aligned_start: int
    query_aligned_end: int
    target_start: int
    target_end: int
    matches: int
    mismatches: int
    gap_opens: int
    aligned_length: int
    alignment_score: int
    cigar: str  # target forward vs query (reverse-complemented when strand is "-"), = X I D operations

    @property
    def identity(self) -> float:
        return self.matches / self.aligned_length if self.aligned_length else 0.0


def bit_score(score: int) -> float:
    """BLAST bit score of a raw +1/-2 score: (lambda * S - ln K) / ln 2."""
    return (LAMBDA * score - math.log(K)) / math.log(2)


def evalue(score: int, query_length: int, database_length: int) -> float:
    """Karlin-Altschul E-value K m n exp(-lambda S), without BLAST's edge-length correction."""
    return K * query_length * database_length * math.exp(-LAMBDA * score)


def _parasail():
    try:
        import parasail
    except ImportError:
        raise missing_extra("alignment evidence (--align, blast6, paf)", "align", "parasail") from None
    return parasail


def _matrix():
    parasail = _parasail()
    if not hasattr(_matrix, "cached"):
        _matrix.cached = parasail.matrix_create("ACGTN", MATCH, MISMATCH)
    return _matrix.cached


def _local(query: str, target: str):
    """parasail's traced local alignment (its gap open is the cost of a gap's first base);
    16-bit lanes are exact while the score, at most the query length, fits them."""
    trace = _parasail().sw_trace_striped_16 if len(query) < 32_000 else _parasail().sw_trace_striped_32
    return trace(query, target, GAP_EXISTENCE + GAP_EXTENSION, GAP_EXTENSION, _matrix())


def _best_end(query: str, target: str) -> tuple[int, int, int]:
    """(score, last query base, last target base) of the best local alignment, without traceback."""
    result = _parasail().sw_striped_sat(query, target, GAP_EXISTENCE + GAP_EXTENSION, GAP_EXTENSION, _matrix())
    return int(result.score), int(result.end_query), int(result.end_ref)


def _traced(query: str, target: str, end_query: int, end_target: int, score: int) -> tuple[object, int]:
    """Traceback of the best alignment, computed in a box ending where it ends (a fraction of the
    flanked target), and over the whole target when the box loses score; returns (result, box start)."""
    first = max(0, end_target - end_query - max(32, end_query // 8))
    result = _local(query, target[first:end_target + 1])
    return (result, first) if result.score == score else (_local(query, target), 0)


def cigar_operations(result) -> tuple[list[tuple[int, str]], int, int]:
    """CIGAR operations of the aligned part and its first query / target base.

    parasail may spell where the alignment begins as leading I/D operations from (0, 0);
    those are skipped (they are not columns of a local alignment), as are trailing ones.
    """
    operations = [(int(n), op) for n, op in _CIGAR.findall(result.cigar.decode.decode())]
    query_at, target_at = result.cigar.beg_query, result.cigar.beg_ref
    while operations and operations[0][1] in "ID":
        length, op = operations.pop(0)
        query_at, target_at = (query_at + length, target_at) if op == "I" else (query_at, target_at + length)
    while operations and operations[-1][1] in "ID":
        operations.pop()
    return operations, query_at, target_at


def align(query: str, target: str, target_offset: int = 0) -> Alignment | None:
    """Best local alignment of ``query`` or its reverse complement to ``target`` (forward strand,
    starting at genomic ``target_offset``); None when nothing scores above zero."""
    query, target = query.upper(), target.upper()
    reverse = reverse_complement(query)
    forward_end, reverse_end = _best_end(query, target), _best_end(reverse, target)
    strand = "-" if reverse_end[0] > forward_end[0] else "+"
    score, end_query, end_target = reverse_end if strand == "-" else forward_end
    if score <= 0:
        return None
    result, box = _traced(reverse if strand == "-" else query, target, end_query, end_target, score)
    operations, query_at, target_at = cigar_operations(result)
    target_at += box
    counts = {op: sum(n for n, o in operations if o == op) for op in "=XID"}
    query_span = counts["="] + counts["X"] + counts["I"]
    target_span = counts["="] + counts["X"] + counts["D"]
    start, end = query_at, query_at + query_span
    if strand == "-":  # coordinates on the query as given
        start, end = len(query) - end, len(query) - start
    return Alignment(strand=strand, query_aligned_start=start, query_aligned_end=end,
                     target_start=target_offset + target_at, target_end=target_offset + target_at + target_span,
                     matches=counts["="], mismatches=counts["X"],
                     gap_opens=sum(1 for _, op in operations if op in "ID"),
                     aligned_length=sum(n for n, _ in operations), alignment_score=int(result.score),
                     cigar="".join(f"{n}{op}" for n, op in operations))


def operations_score(operations: list[tuple[int, str]]) -> int:
    """Raw score of alignment columns under this module's scoring (+1/-2, a gap of k bases costs 2 + 2k)."""
    return sum(n * MATCH if op == "=" else n * MISMATCH if op == "X" else -(GAP_EXISTENCE + GAP_EXTENSION * n)
               for n, op in operations)


def cut_alignment(alignment: Alignment, at: int) -> tuple[Alignment, Alignment]:
    """``alignment`` cut where its target reaches ``at`` (``target_start < at < target_end``): the columns before
    and after, each an alignment with its own counts and score (a gap the cut crosses counts on both sides; an
    insertion at the cut goes after it). How one alignment through a circular contig's origin becomes two, one
    each side of it, as minimap2 and BLAST report a match across the ends of a linear reference."""
    wanted, consumed, before, after = at - alignment.target_start, 0, [], []
    for length, op in ((int(n), op) for n, op in _CIGAR.findall(alignment.cigar)):
        take = 0 if consumed >= wanted else length if op == "I" else min(length, wanted - consumed)
        consumed += take if op != "I" else 0
        before += [(take, op)] if take else []
        after += [(length - take, op)] if length > take else []
    first_query = sum(n for n, op in before if op != "D")
    plus = alignment.strand == "+"
    query_cut = alignment.query_aligned_start + first_query if plus else alignment.query_aligned_end - first_query
    spans = ((alignment.query_aligned_start, query_cut), (query_cut, alignment.query_aligned_end))
    pieces = zip((before, after), spans if plus else spans[::-1],
                 ((alignment.target_start, at), (at, alignment.target_end)))
    return tuple(Alignment(
        strand=alignment.strand, query_aligned_start=query[0], query_aligned_end=query[1], target_start=target[0],
        target_end=target[1], matches=sum(n for n, op in operations if op == "="),
        mismatches=sum(n for n, op in operations if op == "X"), gap_opens=sum(1 for _, op in operations if op in "ID"),
        aligned_length=sum(n for n, _ in operations), alignment_score=operations_score(operations),
        cigar="".join(f"{n}{op}" for n, op in operations)) for operations, query, target in pieces)


def match_strand(query: str, target: str, k: int = STRAND_K) -> str:
    """``+`` when more of ``target``'s k-mers occur in ``query`` than of its reverse complement's,
    ``-`` when fewer, ``.`` on a tie (e.g. no shared k-mer on either strand)."""
    return str(match_strands(kmer_presence([query], k), np.zeros(1, dtype=np.int64), [target], k)[0])


def kmer_presence(sequences: Sequence[str], k: int = STRAND_K) -> np.ndarray:
    """(n, 4**k) bool: which k-mers (without ambiguous bases) occur in each sequence as read."""
    present = np.zeros((len(sequences), 4**k), dtype=bool)
    for rows, codes in _blocks(sequences):
        index, clean = kmer_index(codes, k)
        present.ravel()[(index + (rows * 4**k)[:, None])[clean]] = True
    return present


STRAND_ELEMENTS = 2_000_000  # k-mer positions handled at a time: index arrays stay ~10 MB however long the sequences


def _blocks(sequences: Sequence[str]):
    """(row indices, base codes) of equal-length rows, at most :data:`STRAND_ELEMENTS` bases at a time."""
    for rows, codes in codes_by_length(sequences):
        step = max(1, STRAND_ELEMENTS // max(codes.shape[1], 1))
        for first in range(0, len(rows), step):
            yield rows[first:first + step], codes[first:first + step]


def match_strands(query_presence: np.ndarray, query_of_target: np.ndarray, targets: Sequence[str],
                  k: int = STRAND_K) -> np.ndarray:
    """:func:`match_strand` of every target against its query, given as a row of :func:`kmer_presence`
    (``query_presence[query_of_target[i]]``); an array of ``+``, ``-`` and ``.``.

    Counting target k-mers found in the query (not a multiset intersection) needs no k-mer count matrix
    per target, only one lookup per target position: all hits of a search are checked in a few array passes.
    """
    flat = query_presence.ravel()
    strands = np.full(len(targets), ".", dtype="<U1")
    for chosen, block in _blocks(targets):
        offset = (query_of_target[chosen].astype(np.int64) * 4**k)[:, None]
        forward, reverse = (_found_kmers(flat, strand, offset, k)
                            for strand in (block, reverse_complement_codes(block)))
        strands[chosen] = np.where(forward > reverse, "+", np.where(reverse > forward, "-", "."))
    return strands


def _found_kmers(flat_presence: np.ndarray, codes: np.ndarray, offset: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``codes``, how many of its k-mers are present in its query's row (at ``offset``)."""
    index, clean = kmer_index(codes, k)
    if flat_presence.size > np.iinfo(index.dtype).max:  # many queries at once: offsets beyond int32
        index = index.astype(np.int64)
    index[~clean] = 0  # k-mers with an ambiguous base hold no valid index; they count for neither strand
    index += offset.astype(index.dtype)
    return np.count_nonzero(np.take(flat_presence, index) & clean, axis=1)


def database_length(contig_lengths: dict[str, dict[str, int]]) -> int:
    """An E-value's database: every base of every contig of every genome searched (genome -> {contig: length})."""
    return sum(sum(contigs.values()) for contigs in contig_lengths.values())


def alignment_columns(alignment: Alignment | None, query_length: int, database_length: int) -> dict:
    """The ``schema.ALIGNMENT_FIELDS`` of one hit (nulls when nothing aligned)."""
    if alignment is None:
        return {"query_length": query_length, **{name: None for name in schema.ALIGNMENT_COLUMNS[1:]}}
    columns = asdict(alignment)
    columns.pop("strand")
    covered = alignment.query_aligned_end - alignment.query_aligned_start
    return {"query_length": query_length, "identity": alignment.identity, **columns,
            "query_coverage": covered / query_length,
            "bit_score": bit_score(alignment.alignment_score),
            "evalue": evalue(alignment.alignment_score, query_length, database_length)}


def flanked(start: int, end: int, contig_length: int, flank: int) -> tuple[int, int]:
    """``[start - flank, end + flank)`` clipped to the contig: where a query overlapping the tile can align."""
    return max(0, start - flank), min(contig_length, end + flank)


def merge_loci(hits: pa.Table, higher_is_better: bool = True) -> pa.Table:
    """One row per locus: overlapping or touching hits of one query on one genome, contig and strand.

    A locus spans its tiles, keeps its best tile's score, ``tile_id`` and query columns, counts
    its ``tiles``, and, when hits carry alignments, the alignment with the best alignment score
    (the first such tile by position wins ties). Loci are ranked per query by that best score
    (by the best protein bit score when hits carry protein evidence, ``protein_evidence``);
    queries stay in the order they come in. Done with sorts and segmented reductions over whole
    columns (like ``bedtools merge -s``), not row by row: a many-query search merges in milliseconds.
    """
    fields = pa.schema(list(hits.schema) + [pa.field("tiles", pa.int32(), nullable=False)])
    if not hits.num_rows:
        return fields.empty_table()
    sign = 1.0 if higher_is_better else -1.0
    first_seen: dict[str, int] = {}
    query = np.array([first_seen.setdefault(name, len(first_seen)) for name in hits.column("query").to_pylist()])
    place = [np.unique(np.asarray(hits.column(name).to_pylist(), dtype=object), return_inverse=True)[1]
             for name in ("genome", "chrom", "strand")]
    start, end = (hits.column(name).to_numpy() for name in ("start", "end"))
    order = np.lexsort((end, start, place[2], place[1], place[0], query))
    key = np.stack([query, *place])[:, order]
    new_locus = np.ones(len(order), dtype=bool)
    new_locus[1:] = (key[:, 1:] != key[:, :-1]).any(axis=0)  # another query, genome, contig or strand
    group = np.cumsum(new_locus) - 1
    shift = group * (int(end.max()) + 1)  # keeps each running end within its own group
    reach = np.maximum.accumulate(end[order] + shift)
    new_locus[1:] |= start[order][1:] + shift[1:] > reach[:-1]  # a gap after everything before it
    locus = np.cumsum(new_locus) - 1
    firsts = np.flatnonzero(new_locus)

    def first_best(values: np.ndarray) -> np.ndarray:
        """Row (in ``hits``) of each locus's highest value, the first by position on ties."""
        return order[np.lexsort((np.arange(len(order)), -values[order], locus))[firsts]]

    score = hits.column("score").to_numpy().astype(np.float64)
    best = first_best(sign * score)
    loci = hits.take(pa.array(order[firsts]))
    columns = {"end": pa.array(np.maximum.reduceat(end[order], firsts), hits.schema.field("end").type),
               "score": hits.column("score").take(pa.array(best)),
               "tile_id": hits.column("tile_id").take(pa.array(best)),
               **({"score_evalue": hits.column("score_evalue").take(pa.array(best))}
                  if "score_evalue" in hits.column_names else {})}
    if "alignment_score" in hits.column_names:
        aligned = hits.column("alignment_score").fill_null(0).to_numpy().astype(np.float64)
        best_alignment = pa.array(first_best(aligned))
        columns.update({name: hits.column(name).take(best_alignment) for name in schema.ALIGNMENT_COLUMNS})
    rank_by = -sign * score[best]
    if "protein_bit_score" in hits.column_names:  # re-ranked by protein evidence: loci keep that order
        bits = hits.column("protein_bit_score").fill_null(-1.0).to_numpy()
        best_protein = first_best(bits)
        columns.update({name: hits.column(name).take(pa.array(best_protein)) for name in schema.PROTEIN_COLUMNS})
        rank_by = -bits[best_protein]
    for name, column in columns.items():
        loci = loci.set_column(loci.schema.get_field_index(name), loci.schema.field(name), column)
    loci = loci.append_column(fields.field("tiles"), pa.array(np.diff(np.append(firsts, len(order))), pa.int32()))
    ranked = np.lexsort((np.arange(len(firsts)), rank_by, query[order[firsts]]))
    loci = loci.take(pa.array(ranked))
    locus_query = query[order[firsts]][ranked]
    starts_of_query = np.flatnonzero(np.r_[True, locus_query[1:] != locus_query[:-1]])
    rank = np.arange(len(ranked)) - np.repeat(starts_of_query, np.diff(np.append(starts_of_query, len(ranked)))) + 1
    return loci.set_column(loci.schema.get_field_index("rank"), loci.schema.field("rank"), pa.array(rank, pa.int32()))


