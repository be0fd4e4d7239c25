"""Hits (or loci) as text any genomics tool reads without genoembed: BLAST tabular, BED6, PAF.

Each writer keeps the rows in the order given (``search`` returns queries in input order) and
turns genoembed's 0-based half-open intervals into the format's own convention:

* **blast6** -- BLAST ``-outfmt 6``'s 12 standard columns (qseqid sseqid pident length mismatch
  gapopen qstart qend sstart send evalue bitscore), 1-based closed; on the minus strand sstart > send
  as BLAST writes it. Two ``#`` comment lines come first (a title and BLAST ``-outfmt 7``'s
  ``# Fields:`` line); ``csv.reader`` after dropping ``#`` lines, ``pandas.read_csv(comment="#")``
  and BLAST-parsing tools skip them. Needs alignment columns; hits that did not align are left out.
* **bed** -- BED6: chrom, start, end (the hit's tile or locus span, 0-based half-open), name (the
  query), score (the embedding score scaled to 0-1000, see :func:`bed_score`), strand (the strand
  the query matches). One ``#`` header line names the columns; bedtools skips it.
* **paf** -- minimap2's PAF: 12 columns (qname qlen qstart qend strand tname tlen tstart tend
  matches alignment-length mapq=255, i.e. unknown) plus ``AS:i:`` (alignment score), ``cg:Z:``
  (CIGAR, target forward against the query, reverse-complemented on ``-``) and ``es:f:`` (the
  embedding score). No header lines. Needs alignment columns; unaligned hits are left out.

None of these formats knows circular molecules: BED describes "a linear chromosome" (the BED v1 spec), PAF and
BLAST coordinates lie on the target sequence, and minimap2 and BLAST report a match across a circular genome's
origin as two alignments, one each side of it. So do these writers: a hit through the origin of a circular contig
(``end`` past its length, the convention of :mod:`genoembed.schema`) becomes two records, ``[start, length)`` then
``[0, end - length)``, that together cover exactly the hit's bases; BED's two keep the hit's name, score and
strand, and an alignment is cut at the origin into two, each with its own query span, counts, CIGAR, score, bit
score and E-value (:func:`genoembed.evidence.cut_alignment`, same query and database as the whole). Every record then lies on its contig, as bedtools, ``bedToBigBed`` and PAF readers require.

In a store of several genomes the target contig is named ``GENOME#0#CONTIG`` (PanSN-spec; the rule is
:mod:`genoembed.schema`'s), so strain A's ``chr1`` and strain B's ``chr1`` stay apart in every record.
"""

from __future__ import annotations

import math

import pyarrow as pa

from genoembed.errors import InputError
from genoembed.schema import contig_namer
from genoembed.evidence import Alignment, alignment_columns, cut_alignment, database_length
from genoembed.topology import linear_pieces

BLAST6_FIELDS = ("query acc.ver, subject acc.ver, % identity, alignment length, mismatches, gap opens, "
                 "q. start, q. end, s. start, s. end, evalue, bit score")
BED_HEADER = "#chrom\tstart\tend\tname\tscore\tstrand"


def bed_score(score: float | None, higher_is_better: bool = True) -> int:
    """BED's 0-1000 score, for every BED genoembed writes (hits, tracks): cosine similarity * 1000 (negatives
    as 0) for the ip metric; for the l2 metric, where lower is better, 1000 / (1 + squared distance); a
    missing score (None, NaN) is 0 under either."""
    if score is None or math.isnan(score):
        return 0
    value = max(0.0, min(1.0, score)) if higher_is_better else 1.0 / (1.0 + max(0.0, score))
    return int(round(1000 * value))


def _require_alignments(hits: pa.Table, fmt: str) -> None:
    if "alignment_score" not in hits.column_names:
        raise InputError(f"--format {fmt} reports alignments: search with --align")


ALIGNMENT_FIELDS = tuple(Alignment.__dataclass_fields__)


def _aligned_rows(hits: pa.Table, contig_lengths: dict[str, dict[str, int]]) -> list[dict]:
    """Aligned hits as records on their contigs: an alignment through a circular contig's origin as its two pieces."""
    rows, database = [], database_length(contig_lengths)
    for row in hits.to_pylist():
        if row["alignment_score"] is None:
            continue
        length = contig_lengths[row["genome"]][row["chrom"]]
        if row["target_end"] <= length:
            rows.append(row)
            continue
        whole = Alignment(**{name: row[name] for name in ALIGNMENT_FIELDS})
        for piece in cut_alignment(whole, length):
            rows.append({**row, **alignment_columns(piece, row["query_length"], database)})
        rows[-1].update(target_start=rows[-1]["target_start"] - length, target_end=rows[-1]["target_end"] - length)
    return rows


def _evalue_text(value: float) -> str:
    """BLAST's style: 0.0 below what a double shows, else three significant digits."""
    return "0.0" if value < 1e-180 else f"{value:.3g}"


def blast6(hits: pa.Table, contig_lengths: dict[str, dict[str, int]], title: str = "genoembed search",
           comments: bool = True) -> str:
    """BLAST outfmt 6 text of aligned hits; with ``comments``, two ``#`` lines first (outfmt 7's header).
    ``contig_lengths`` (genome -> {contig: length}) places alignments through a circular contig's origin."""
    _require_alignments(hits, "blast6")
    lines = [f"# {title}", f"# Fields: {BLAST6_FIELDS}"] if comments else []
    target = contig_namer(contig_lengths)
    for row in _aligned_rows(hits, contig_lengths):
        subject = (row["target_start"] + 1, row["target_end"])
        if row["strand"] == "-":
            subject = subject[::-1]
        lines.append("\t".join(str(value) for value in (
            row["query"], target(row["genome"], row["chrom"]), f"{100 * row['identity']:.3f}", row["aligned_length"], row["mismatches"],
            row["gap_opens"], row["query_aligned_start"] + 1, row["query_aligned_end"], *subject,
            _evalue_text(row["evalue"]), f"{row['bit_score']:.1f}")))
    return "\n".join(lines) + ("\n" if lines else "")


def bed(hits: pa.Table, contig_lengths: dict[str, dict[str, int]], higher_is_better: bool = True,
        header: bool = True, ranked_names: bool = False) -> str:
    """BED6 text of hits or loci; ``header``: one ``#`` line naming the columns first; ``ranked_names``: each row
    named ``query#rank`` (as the server's BED), else by its query. A hit through a circular contig's origin is
    two lines (``contig_lengths``: genome -> {contig: length})."""
    lines = [BED_HEADER] if header else []
    target = contig_namer(contig_lengths)
    for row in hits.to_pylist():
        name = f"{row['query']}#{row['rank']}" if ranked_names else row["query"]
        score = bed_score(row["score"], higher_is_better)
        lines += ["\t".join(str(value) for value in (target(row["genome"], row["chrom"]), start, end, name, score, row["strand"]))
                  for start, end in linear_pieces(row["start"], row["end"],
                                                  contig_lengths[row["genome"]][row["chrom"]])]
    return "\n".join(lines) + ("\n" if lines else "")


def paf(hits: pa.Table, contig_lengths: dict[str, dict[str, int]]) -> str:
    """PAF text of aligned hits (no header); ``contig_lengths`` is genome -> {contig: length}
    (:attr:`genoembed.store.Store.contig_lengths`): the target length is that of the hit's own genome, and an
    alignment through a circular contig's origin is two lines, each inside ``[0, tlen]``."""
    _require_alignments(hits, "paf")
    lines, target = [], contig_namer(contig_lengths)
    for row in _aligned_rows(hits, contig_lengths):
        lines.append("\t".join(str(value) for value in (
            row["query"], row["query_length"], row["query_aligned_start"], row["query_aligned_end"], row["strand"],
            target(row["genome"], row["chrom"]), contig_lengths[row["genome"]][row["chrom"]], row["target_start"],
            row["target_end"], row["matches"],
            row["aligned_length"], 255, f"AS:i:{row['alignment_score']}", f"cg:Z:{row['cigar']}",
            f"es:f:{row['score']:.6g}")))
    return "\n".join(lines) + ("\n" if lines else "")
