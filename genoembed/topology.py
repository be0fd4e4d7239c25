"""Circular molecules: which contigs are circular, and interval arithmetic around their origin.

Where topology comes from (any one makes a contig circular): a FASTA header that says so (Unicycler and
Trycycler write ``circular=true``; NCBI's submission modifiers, used by Bakta, ``[topology=circular]``), a
GenBank ``LOCUS`` line ending ``circular``, a GFF3 ``region`` row with ``Is_circular=true``, or the user
(``genoembed index --circular NAME``). The store records the circular contigs of each genome
(``genomes.NAME.circular`` in the manifest).

Intervals on a circular contig of length ``L`` follow GFF3's convention (see :mod:`genoembed.schema`):
``0 <= start < L`` and ``start < end <= start + L``; ``end > L`` means the interval runs through the origin,
covering ``[start, L)`` then ``[0, end - L)``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from genoembed.seqio import open_text

_HEADER_CIRCULAR = re.compile(r"(?:^|\s)(?:circular=(?:true|yes|1)|\[topology=circular\])(?=\s|$)", re.IGNORECASE)
_GFF3_CIRCULAR = re.compile(r"(?:^|;)\s*Is_circular=true\s*(?:;|$)", re.IGNORECASE)


def header_says_circular(description: str) -> bool:
    """True when the words after a FASTA record's name mark it circular (``circular=true``, ``[topology=circular]``)."""
    return bool(_HEADER_CIRCULAR.search(description))


def annotation_circular(path: str | Path) -> set[str]:
    """Contigs an annotation file marks circular: GenBank ``LOCUS ... circular`` (named by LOCUS name and by
    VERSION accession, as the GenBank reader names them) or GFF3 ``Is_circular=true`` on any row (the spec puts
    it on the ``region`` row). Other formats say nothing about topology: empty. Streams the file line by line."""
    found: set[str] = set()
    with open_text(path, errors="replace") as handle:
        first = handle.readline()
        if first.startswith("LOCUS"):
            circular = False
            for line in [first, *handle]:
                if line.startswith("LOCUS"):
                    words = line.split()
                    circular = "circular" in (word.lower() for word in words[2:])
                    if circular and len(words) > 1:
                        found.add(words[1])
                elif line.startswith("VERSION") and circular and len(line.split()) > 1:
                    found.add(line.split()[1])
        elif first.startswith("##gff-version 3"):
            for line in handle:
                if "s_circular" in line and not line.startswith("#"):
                    fields = line.rstrip("\r\n").split("\t")
                    if len(fields) == 9 and _GFF3_CIRCULAR.search(fields[8]):
                        found.add(fields[0])
    return found


def circular_overlaps(a_start, a_end, b_start, b_end, length) -> np.ndarray:
    """Whether intervals ``a`` and ``b`` on circular contigs of ``length`` overlap (arrays broadcast; each
    interval in the origin convention above, so ``end`` may pass ``length``)."""
    a_start, a_end, b_start, b_end, length = map(np.asarray, (a_start, a_end, b_start, b_end, length))
    direct = (a_start < b_end) & (b_start < a_end)
    return direct | ((a_start + length < b_end) & (b_start < a_end + length)) | \
        ((a_start < b_end + length) & (b_start + length < a_end))


def circular_gap(a_start, a_end, b_start, b_end, length) -> np.ndarray:
    """Bases between intervals ``a`` and ``b`` on a circle of ``length``, the shorter way round (0 when they
    touch or overlap; arrays broadcast)."""
    a_start, a_end, b_start, b_end, length = map(np.asarray, (a_start, a_end, b_start, b_end, length))
    after = np.mod(b_start - a_end, length)  # from a's end forward to b's start
    before = np.mod(a_start - b_end, length)  # from b's end forward to a's start
    gap = np.minimum(after, before)
    return np.where(circular_overlaps(a_start, a_end, b_start, b_end, length), 0, gap)


def flanked_round(start: int, end: int, length: int, flank: int) -> tuple[int, int]:
    """``[start - flank, end + flank)`` on a circle of ``length``, in the origin convention (at most the whole
    circle, kept centred on the interval): where a query overlapping a tile of a circular contig can align."""
    span = min(end - start + 2 * flank, length)
    first = (start - (span - (end - start)) // 2) % length
    return first, first + span


def linear_pieces(start: int, end: int, length: int) -> list[tuple[int, int]]:
    """An interval in the origin convention as pieces inside ``[0, length)``: itself, or, through the origin,
    ``[start, length)`` then ``[0, end - length)``. What a format without the convention (BED, PAF, BLAST, a
    browser track) is given: each piece is a record, so every record lies on the contig."""
    return [(start, end)] if end <= length else [(start, length), (0, end - length)]


def one_based_span(start: int, end: int, length: int) -> str:
    """``start+1-end`` as the ``--region`` option reads it: through a circle's origin the end is past the origin
    (``9001-200``), so the text is a region of the contig."""
    return f"{start + 1}-{end - length if end > length else end}"


def covering_arc(starts, ends, length: int) -> tuple[int, int]:
    """The shortest interval (origin convention) covering parts ``[starts[i], ends[i])`` of a circle: the arc
    left when the widest gap between consecutive parts, the one across the origin included, is taken out.
    So a feature given as rows on both sides of the origin spans the origin, not the whole molecule."""
    order = np.argsort(starts, kind="stable")
    starts, ends = np.asarray(starts)[order] % length, np.asarray(ends)[order]
    reach = np.maximum.accumulate(ends)
    gaps = np.append(starts[1:] - reach[:-1], starts[0] + length - reach[-1])  # after part i, round to the first
    widest = int(np.argmax(gaps))
    if widest == len(starts) - 1 or gaps[widest] <= 0:
        return int(starts[0]), int(reach[-1])
    return int(starts[widest + 1]), int(reach[widest]) + length
