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

Cost: score first, trace back only what is reported. Every candidate is scored without traceback by
pyopal's SIMD database search (one call per coding query frame against the six frames of all
candidates at once; BLOSUM62 and gaps as parasail, so the scores are parasail's), and parasail traces
back the best-scoring candidates only until ``k`` of them carry evidence: the order and the evidence
are those of aligning every candidate, at a fraction of the cost (``benchmarks/RESULTS.md``, issue 27).

Near-identical copies (a pangenome): with N near-identical genomes every locus comes back N times, so
K tiles hold K / N loci and the re-rank mostly re-orders copies of a few wrong loci. With candidate
vectors, :func:`near_duplicate_groups` collapses candidates whose vectors are nearly equal (cosine >=
:data:`NEAR_DUPLICATE`) into one group, K counts groups (distinct loci), one representative per group
is aligned, and the members of the best groups (up to ``k`` each, cheap after scoring) are scored and
reported by their own scores with their own evidence. Vectors rather than sequence: they are what the
search already holds, and a copy the embedding cannot tell apart from its group's first member is one
it cannot rank differently either; a group is a guess that only decides which hits get aligned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.embedders.translated import AMINO_ACIDS, STOP, six_frames, translate, translate_codes
from genoembed.errors import missing_extra
from genoembed.evidence import cigar_operations, flanked
from genoembed.seqio import encode_bases, reverse_complement_codes
from genoembed.topology import circular_overlaps, flanked_round

GAP_OPEN, GAP_EXTEND = 11, 1  # blastp / tblastx defaults: a gap of k residues costs 11 + k
LAMBDA, K = 0.267, 0.041  # NCBI BLAST's gapped BLOSUM62 11/1 constants (blast_stat.c)
CODING_SHARE = 0.5  # a query frame is aligned when its longest stop-free run is >= this share of the best frame's
# Candidates whose vectors are this close are one group (one locus in several genomes): tiles of SJM180 and of a
# copy with 1 % substitutions reach it for 98 % of tiles under the shipped protein model, two different tiles of
# one genome for 5 % (mostly neighbours sharing half their bases; benchmarks/RESULTS.md, issue 27).
NEAR_DUPLICATE = 0.98
STOP_LETTER = "J"  # pyopal's alphabets hold letters only: a stop is scored as J with BLOSUM62's '*' row
_SCORED_LETTERS = np.frombuffer((AMINO_ACIDS + STOP_LETTER + "X").encode(), dtype=np.uint8)


def _parasail():
    try:
        import parasail
    except ImportError:
        raise missing_extra("protein evidence (--protein-rerank)", "align", "parasail") from None
    return parasail


@functools.cache
def _database_aligner():
    """pyopal's aligner with parasail's BLOSUM62 (the stop row renamed :data:`STOP_LETTER`) and gaps."""
    try:
        import pyopal
        from scoring_matrices import ScoringMatrix
    except ImportError:
        raise missing_extra("protein evidence (--protein-rerank)", "protein", "pyopal") from None
    blosum = ScoringMatrix.from_name("BLOSUM62")
    matrix = ScoringMatrix(list(blosum), alphabet=blosum.alphabet.replace("*", STOP_LETTER))
    return pyopal, pyopal.Aligner(matrix, gap_open=GAP_OPEN + GAP_EXTEND, gap_extend=GAP_EXTEND)


def frame_proteins(regions: Sequence[str]) -> list[list[str]]:
    """The six frames of each region as :func:`translate` reads them but with stops as :data:`STOP_LETTER`;
    regions of one length are translated as one matrix (a shortlist is mostly tiles plus equal flanks)."""
    out: list[list[str]] = [[] for _ in regions]
    by_length: dict[int, list[int]] = {}
    for row, region in enumerate(regions):
        by_length.setdefault(len(region), []).append(row)
    for length, rows in by_length.items():
        codes = encode_bases("".join(regions[row] for row in rows)).reshape(len(rows), length)
        frames = [_SCORED_LETTERS[translate_codes(strand, frame)]
                  for strand in (codes, reverse_complement_codes(codes)) for frame in range(3)]
        for at, row in enumerate(rows):
            out[row] = [frame[at].tobytes().decode() for frame in frames]
    return out


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


@dataclass(frozen=True)
class FrameScores:
    """Each region's best Smith-Waterman score over (query frame, region frame), and that pair (first in
    region-frame then query-frame order on ties), with the region's six frame proteins."""

    scores: np.ndarray
    query_frames: np.ndarray
    target_frames: np.ndarray
    proteins: list[list[str]]


class TranslatedAligner:
    """One query's coding frames, scored against many target regions at once and traced back against one."""

    def __init__(self, query: str):
        self.query_length = len(query)
        self.frames = coding_frames(query) if len(query) >= 3 else []
        self.proteins = {frame: protein for frame in self.frames if (protein := translate(query, frame))}

    def score(self, regions: Sequence[str]) -> FrameScores:
        """Score-only alignments of every coding query frame to the six frames of all ``regions``, one SIMD
        database search per query frame (pyopal; no traceback)."""
        proteins = frame_proteins(regions)
        scores = np.zeros((len(regions), 6, max(len(self.proteins), 1)), dtype=np.int64)
        if self.proteins and regions:
            pyopal, aligner = _database_aligner()
            database = pyopal.Database([protein for frames in proteins for protein in frames],
                                       alphabet=aligner.alphabet)
            for column, protein in enumerate(self.proteins.values()):
                found = aligner.align(protein.replace("*", STOP_LETTER), database, mode="score", algorithm="sw")
                scores[:, :, column] = np.fromiter((result.score for result in found), np.int64).reshape(-1, 6)
        best = scores.reshape(len(regions), -1).argmax(axis=1)
        query_frames = np.array(list(self.proteins) or [0])[best % scores.shape[2]]
        return FrameScores(scores.reshape(len(regions), -1)[np.arange(len(regions)), best], query_frames,
                           best // scores.shape[2], proteins)

    def trace(self, target: str, scored: FrameScores, row: int, offset: int = 0) -> ProteinAlignment | None:
        """The alignment behind ``scored``'s row ``row`` (``target`` is that region), traced back (parasail)."""
        score, query_frame, target_frame = (int(scored.scores[row]), int(scored.query_frames[row]),
                                            int(scored.target_frames[row]))
        if score <= 0:
            return None
        parasail = _parasail()
        protein = scored.proteins[row][target_frame].replace(STOP_LETTER, "*")
        traced = parasail.sw_trace_striped_32(self.proteins[query_frame], protein, GAP_OPEN + GAP_EXTEND,
                                              GAP_EXTEND, parasail.blosum62)
        operations, query_at, target_at = cigar_operations(traced)
        columns = sum(n for n, _ in operations)
        counts = {op: sum(n for n, o in operations if o == op) for op in "=XIDM"}
        query_residues = counts["="] + counts["X"] + counts["M"] + counts["I"]
        target_residues = counts["="] + counts["X"] + counts["M"] + counts["D"]
        query_start, query_end = dna_span(query_frame, query_at, query_at + query_residues, self.query_length)
        target_start, target_end = dna_span(target_frame, target_at, target_at + target_residues, len(target))
        return ProteinAlignment(score, counts["="] / max(columns, 1), columns, query_frame, target_frame,
                                query_start, query_end, offset + target_start, offset + target_end)

    def align(self, target: str, offset: int = 0) -> ProteinAlignment | None:
        """Best alignment over (query frame, target frame); None when nothing scores above zero."""
        return self.trace(target, self.score([target]), 0, offset)


def near_duplicate_groups(vectors: np.ndarray, limit: int | None = None, threshold: float = NEAR_DUPLICATE,
                          block: int = 1024, recent: int = 64) -> np.ndarray:
    """Each row's group (rows in embedding order): the index of the first row of its group, or -1.

    Greedy, in order: a row joins an earlier group whose leader (first row) has cosine >= ``threshold`` with
    it, else it leads a new group; once ``limit`` groups are open, rows that would lead another get -1 (they
    lie beyond the re-rank depth). Rows are compared with leaders only, block by block (a matrix product per
    block), first with the ``recent`` latest leaders and only when none is close with the older ones: copies of
    a locus score alike, so they come near each other and their leader is a recent one (K groups over N
    candidates cost about N x ``recent`` dot products instead of N x K). Among close leaders a row joins the
    most similar of the first set that holds one; rows of one block left over lead in order and take every
    later left-over row of the block close to them.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    labels = np.full(len(unit), -1, dtype=np.int64)
    leaders: list[int] = []

    def join(rows: np.ndarray, candidates: list[int]) -> None:  # unlabelled ``rows`` join their closest leader
        if len(rows) and candidates:
            similar = unit[rows] @ unit[candidates].T
            nearest = similar.argmax(axis=1)
            joined = similar[np.arange(len(rows)), nearest] >= threshold
            labels[rows[joined]] = np.array(candidates)[nearest[joined]]

    for start in range(0, len(unit), block):
        rows = np.arange(start, min(start + block, len(unit)))
        join(rows, leaders[-recent:])
        join(rows[labels[rows] < 0], leaders[:-recent])
        pending = rows[labels[rows] < 0]  # no earlier leader is close: they lead, or join a leader of this block
        similar = unit[pending] @ unit[pending].T
        free = np.ones(len(pending), dtype=bool)
        for at in range(len(pending)):
            if not free[at]:
                continue
            if limit is not None and len(leaders) >= limit:
                break
            members = free & (similar[at] >= threshold)
            members[at] = True
            leaders.append(int(pending[at]))
            labels[pending[members]] = pending[at]
            free &= ~members
    return labels


def best_alignments(aligner: TranslatedAligner, region: Callable[[int], str], count: int, k: int,
                    evidence: Callable[[int, ProteinAlignment], ProteinAlignment | None] = lambda row, found: found,
                    groups: np.ndarray | None = None) -> list[tuple[int, ProteinAlignment | None]]:
    """The ``k`` best of ``count`` candidates (0 .. count - 1, in embedding order) with their alignments:
    best score first (embedding order on ties), then candidates without evidence in embedding order.

    ``region(row)`` is the candidate's sequence; ``evidence(row, alignment)`` turns an alignment of it into
    the hit's evidence or None (e.g. it does not touch the tile). Everything scored is scored at once;
    alignments are traced back best first until ``k`` carry evidence (the same answer as tracing all).
    ``groups`` (:func:`near_duplicate_groups`): only each group's first row is scored, then the members of
    the best groups, up to ``k`` each in embedding order, until the opened groups hold ``k`` rows; rows
    labelled -1 are left out.
    """
    groups = np.arange(count) if groups is None else groups
    leaders = [row for row in range(count) if groups[row] == row]
    sequences = {row: region(row) for row in leaders}
    scored = aligner.score([sequences[row] for row in leaders])
    score_of = dict(zip(leaders, scored.scores.tolist()))
    where = {row: (scored, at) for at, row in enumerate(leaders)}
    members: dict[int, list[int]] = {}
    for row in range(count):
        if groups[row] >= 0:
            members.setdefault(int(groups[row]), []).append(row)
    opened: list[int] = []
    for leader in sorted(leaders, key=lambda row: (-score_of[row], row)):
        if sum(min(len(members[group]), k) for group in opened) >= k:
            break
        opened.append(leader)
    extra = [row for leader in opened for row in members[leader][:k] if row not in score_of]
    if extra:
        sequences.update((row, region(row)) for row in extra)
        more = aligner.score([sequences[row] for row in extra])
        score_of.update(zip(extra, more.scores.tolist()))
        where.update((row, (more, at)) for at, row in enumerate(extra))
    found: list[tuple[int, ProteinAlignment | None]] = []
    for row in sorted(score_of, key=lambda row: (-score_of[row], row)):
        if len(found) == k or score_of[row] <= 0:
            break
        alignment = aligner.trace(sequences[row], *where[row])
        alignment = evidence(row, alignment) if alignment else None
        if alignment:
            found.append((row, alignment))
    taken = {row for row, _ in found}
    return found + [(row, None) for row in sorted(score_of) if row not in taken][:k - len(found)]


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
           circular: Mapping[str, Collection[str]] | None = None, groups: np.ndarray | None = None) -> pa.Table:
    """Hits with protein evidence, re-ranked per query by bit score, ``k`` per query.

    ``queries`` maps query names to sequences; ``fetch(genome, chrom, start, end)`` reads a hit region;
    ``contig_lengths`` and ``circular`` are per genome (``Store.contig_lengths``, each genome's circular
    contigs). Each hit is aligned over its tile plus flanks of the query's length (round the origin on a
    circular contig); an alignment that does not touch the tile is not evidence for it (nulls). Ties and
    unaligned hits keep embedding order. ``groups`` (:func:`hit_groups`, one per hit row): near-identical
    hits grouped, and only the groups' first hits and the best groups' members aligned (module doc).
    """
    database_residues = 2 * sum(sum(contigs.values()) for contigs in contig_lengths.values())
    rows = hits.to_pylist()
    by_query: dict[str, list[int]] = {}
    for at, hit in enumerate(rows):
        by_query.setdefault(hit["query"], []).append(at)
    out = []
    for name, at in by_query.items():
        query = queries[name]
        candidates = [rows[i] for i in at]

        def located(row: int, query=query, candidates=candidates) -> tuple[int, int, int, bool]:
            hit = candidates[row]
            length = contig_lengths[hit["genome"]][hit["chrom"]]
            round_origin = hit["chrom"] in (circular or {}).get(hit["genome"], ())
            start, end = (flanked_round if round_origin else flanked)(hit["start"], hit["end"], length, len(query))
            return start, end, length, round_origin

        def region(row: int, candidates=candidates, located=located) -> str:
            return fetch(candidates[row]["genome"], candidates[row]["chrom"], *located(row)[:2])

        def evidence(row: int, alignment: ProteinAlignment, candidates=candidates, located=located):
            hit, (start, _, length, round_origin) = candidates[row], located(row)
            alignment = dataclasses.replace(alignment, target_start=alignment.target_start + start,
                                            target_end=alignment.target_end + start)
            if round_origin and alignment.target_start >= length:  # back to the origin convention
                alignment = dataclasses.replace(alignment, target_start=alignment.target_start - length,
                                                target_end=alignment.target_end - length)
            if not circular_overlaps(alignment.target_start, alignment.target_end, hit["start"], hit["end"],
                                     length if round_origin else 1 << 62):
                return None  # the query's protein aligns next to the tile, not on it: no evidence for this hit
            return alignment

        for row, alignment in best_alignments(TranslatedAligner(query), region, len(at), k, evidence,
                                              None if groups is None else groups[at]):
            hit = candidates[row]
            hit.update(alignment_row(alignment, len(query), located(row)[2], database_residues))
            if alignment:  # the strand on which the query's protein matches
                hit["strand"] = "+" if (alignment.query_frame < 3) == (alignment.target_frame < 3) else "-"
            out.append(hit)
    return rank_by_bits(out, k)


def hit_groups(hits: pa.Table, vectors: np.ndarray, depth: int) -> tuple[np.ndarray, bool]:
    """Each hit's :func:`near_duplicate_groups` label among its query's hits (``vectors``: one per hit row),
    at most ``depth`` groups per query; and whether every query reached ``depth`` groups."""
    labels = np.full(hits.num_rows, -1, dtype=np.int64)
    names = np.asarray(hits.column("query").to_pylist(), dtype=object)
    complete = True
    for name in dict.fromkeys(names.tolist()):
        at = np.flatnonzero(names == name)
        labels[at] = near_duplicate_groups(vectors[at], depth)
        complete &= int((labels[at] == np.arange(len(at))).sum()) >= depth
    return labels, complete


def rerank_store_hits(store, queries: Sequence, hits: pa.Table, k: int, groups: np.ndarray | None = None) -> pa.Table:
    """:func:`rerank` of the hits of a search of ``store`` (``queries``: the searched ``search.Query`` objects;
    search with ``k`` = the re-rank depth K first, e.g. ``rerank_store_hits(store, qs, search(store, qs, k=200), 10)``;
    ``groups``: :func:`hit_groups` of those hits' vectors)."""
    return rerank(hits, {query.name: query.sequence for query in queries},
                  lambda genome, chrom, start, end: store.genome(genome).fetch(chrom, start, end).upper(),
                  store.contig_lengths, k, {name: entry.get("circular", ()) for name, entry in store.genomes.items()},
                  groups)


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
