"""Queries and region strings: the :class:`Query` a search takes, ``chrom:start-end`` parsed and placed on a
genome (round the origin of a circular contig), and queries too long to embed as one sequence cut into tiles.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

from genoembed import schema
from genoembed.errors import InputError, quoted
from genoembed.tiles import tile_starts

_VALID_BASES = re.compile(r"^[ACGTNRYKMSWBDHV]+$", re.IGNORECASE)
# Thousands separators are commas only (samtools style); "1_0" is not the number 10.
_REGION = re.compile(r"^(?P<chrom>.+?)(?::(?P<start>\d[\d,]*)-(?P<end>\d[\d,]*))?(?::(?P<strand>[+-]))?$")


@dataclass(frozen=True)
class Query:
    """One query; genomic coordinates (0-based half-open) and the store genome they are on are set when it came
    from the store's genomes."""

    name: str
    sequence: str
    chrom: str | None = None
    start: int | None = None
    end: int | None = None
    strand: str | None = None
    genome: str | None = None


def check_sequence(sequence: str, where: str) -> str:
    sequence = "".join(sequence.split())
    if not sequence:
        raise InputError(f"{where}: empty sequence")
    if not _VALID_BASES.match(sequence):
        bad = sorted({c for c in sequence if not _VALID_BASES.match(c)})
        hint = " (RNA? replace U with T)" if "U" in bad or "u" in bad else ""
        raise InputError(f"{where}: sequence has characters other than DNA bases/IUPAC codes: "
                         f"{''.join(bad)[:20]!r}{hint}")
    return sequence


def parse_region(text: str, across_origin: bool = False) -> tuple[str, int | None, int | None, str]:
    """``chrom:start-end[:strand]`` (1-based closed, commas allowed) -> 0-based half-open.

    ``across_origin`` lets ``start > end`` through (``plasmid:9001-200`` on a circular contig); such a region
    comes back with ``end <= start``, for :func:`region_queries` to carry round the origin.
    """
    match = _REGION.match(text.strip())
    if not match or not match.group("chrom"):
        raise InputError(f"region {quoted(text)}: expected chrom:start-end (1-based, e.g. chr1:1001-2000)")
    start, end = match.group("start"), match.group("end")
    strand = match.group("strand") or "+"
    if start is None:
        return match.group("chrom"), None, None, strand
    start, end = (schema.coordinate(value.replace(",", ""), f"region {quoted(text)}") for value in (start, end))
    if start < 1 or end < 1 or (end < start and not across_origin):
        raise InputError(f"region {quoted(text)}: need 1 <= start <= end (1-based closed coordinates)")
    return match.group("chrom"), start - 1, end, strand


# The longest query embedded as one sequence: embedding costs ~100 bytes a base (a 248 Mbp chromosome would
# take ~25 GB). Longer queries are answered tile by tile (:func:`query_pieces`; the CLI does so), or refused.
MAX_QUERY_BASES = 1_000_000


def resolve_region(genome, text: str) -> tuple[str, int, int, str]:
    """(chrom, start, end, strand) of a region string on ``genome`` (anything with ``contigs`` and ``circular``),
    0-based half-open; a region across a circular contig's origin (``plasmid:9001-200``) ends past its length."""
    chrom, start, end, strand = parse_region(text, across_origin=True)
    if chrom not in genome.contigs:
        raise InputError(f"region {quoted(text)}: contig {chrom!r} is not in {genome.path}; "
                         f"known: {', '.join(list(genome.contigs)[:5])}")
    length, circular = genome.contigs[chrom], chrom in genome.circular
    start, end = (0, length) if start is None else (start, end)
    if end <= start:
        if not circular:
            raise InputError(f"region {quoted(text)}: start is past end, which only a circular contig allows "
                             f"(across its origin) and {chrom} is linear; need 1 <= start <= end")
        end += length
    if start >= length or end > length and (not circular or end > start + length):
        raise InputError(f"region {quoted(text)}: ends at {end} but {chrom} has {length} bp; "
                         "clip the region to the contig")
    return chrom, start, end, strand


def too_long(length: int) -> bool:
    return length > MAX_QUERY_BASES


def refuse_long(name: str, length: int) -> None:
    if too_long(length):
        raise InputError(f"query {name!r} is {length:,} bp, longer than the {MAX_QUERY_BASES:,} bp embedded as one "
                         "sequence (~100 bytes a base); `genoembed search` answers it tile by tile (the store's "
                         "window and stride), or split it (`bedtools makewindows`) and search the windows with --bed")


def query_pieces(query: Query, window: int, stride: int) -> Iterator[Query]:
    """``query`` itself, or, when longer than :data:`MAX_QUERY_BASES`, its tiles (``window`` bases every ``stride``,
    the last flush with its end) named ``NAME:START-END`` (1-based offsets in the query), one at a time."""
    if not too_long(len(query.sequence)):
        yield query
        return
    for offset in tile_starts(len(query.sequence), window, stride):
        offset = int(offset)
        genomic = {}
        if query.chrom is not None:
            first = query.start + offset if query.strand != "-" else query.end - offset - window
            genomic = dict(chrom=query.chrom, start=first, end=first + window, strand=query.strand, genome=query.genome)
        yield Query(f"{query.name}:{offset + 1}-{offset + window}", query.sequence[offset:offset + window], **genomic)
