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
"""

from __future__ import annotations

import pyarrow as pa

from genoembed.errors import InputError

BLAST6_FIELDS = ("query acc.ver, subject acc.ver, % identity, alignment length, mismatches, gap opens, "
                 "q. start, q. end, s. start, s. end, evalue, bit score")
BED_HEADER = "#chrom\tstart\tend\tname\tscore\tstrand"


def bed_score(score: float, higher_is_better: bool = True) -> int:
    """BED's 0-1000 score: cosine similarity * 1000 (negatives as 0) for the ip metric; for the l2
    metric, where lower is better, 1000 / (1 + squared distance)."""
    value = max(0.0, min(1.0, score)) if higher_is_better else 1.0 / (1.0 + max(0.0, score))
    return int(round(1000 * value))


def _require_alignments(hits: pa.Table, fmt: str) -> None:
    if "alignment_score" not in hits.column_names:
        raise InputError(f"--format {fmt} reports alignments: search with --align")


def _aligned_rows(hits: pa.Table) -> list[dict]:
    return [row for row in hits.to_pylist() if row["alignment_score"] is not None]


def _evalue_text(value: float) -> str:
    """BLAST's style: 0.0 below what a double shows, else three significant digits."""
    return "0.0" if value < 1e-180 else f"{value:.3g}"


def blast6(hits: pa.Table, title: str = "genoembed search", comments: bool = True) -> str:
    """BLAST outfmt 6 text of aligned hits; with ``comments``, two ``#`` lines first (outfmt 7's header)."""
    _require_alignments(hits, "blast6")
    lines = [f"# {title}", f"# Fields: {BLAST6_FIELDS}"] if comments else []
    for row in _aligned_rows(hits):
        subject = (row["target_start"] + 1, row["target_end"])
        if row["strand"] == "-":
            subject = subject[::-1]
        lines.append("\t".join(str(value) for value in (
            row["query"], row["chrom"], f"{100 * row['identity']:.3f}", row["aligned_length"], row["mismatches"],
            row["gap_opens"], row["query_aligned_start"] + 1, row["query_aligned_end"], *subject,
            _evalue_text(row["evalue"]), f"{row['bit_score']:.1f}")))
    return "\n".join(lines) + ("\n" if lines else "")


def bed(hits: pa.Table, higher_is_better: bool = True, header: bool = True, ranked_names: bool = False) -> str:
    """BED6 text of hits or loci; ``header``: one ``#`` line naming the columns first; ``ranked_names``: each row
    named ``query#rank`` (as the server's BED), else by its query."""
    lines = [BED_HEADER] if header else []
    lines += ["\t".join(str(value) for value in (row["chrom"], row["start"], row["end"],
                                                 f"{row['query']}#{row['rank']}" if ranked_names else row["query"],
                                                 bed_score(row["score"], higher_is_better), row["strand"]))
              for row in hits.to_pylist()]
    return "\n".join(lines) + ("\n" if lines else "")


def paf(hits: pa.Table, contig_lengths: dict[str, dict[str, int]]) -> str:
    """PAF text of aligned hits (no header); ``contig_lengths`` is genome -> {contig: length}
    (:attr:`genoembed.store.Store.contig_lengths`): the target length is that of the hit's own genome."""
    _require_alignments(hits, "paf")
    lines = []
    for row in _aligned_rows(hits):
        lines.append("\t".join(str(value) for value in (
            row["query"], row["query_length"], row["query_aligned_start"], row["query_aligned_end"], row["strand"],
            row["chrom"], contig_lengths[row["genome"]][row["chrom"]], row["target_start"], row["target_end"], row["matches"],
            row["aligned_length"], 255, f"AS:i:{row['alignment_score']}", f"cg:Z:{row['cigar']}",
            f"es:f:{row['score']:.6g}")))
    return "\n".join(lines) + ("\n" if lines else "")
