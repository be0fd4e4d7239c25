"""The CDS of given annotations as gene units (``genoembed index --units cds --annotations FILE``).

A store of gene units holds one vector per protein; a genome that is already annotated should get its
annotated proteins, not a gene finder's. The annotation readers (:mod:`genoembed.features`) already make
one row of a multi-part feature: a GenBank ``join``, GFF3 rows sharing one ID, a GTF transcript's CDS
rows. Here CDS rows are also grouped by their Parent (one protein per transcript, for GFF3 files whose CDS
rows have no ID or one ID each), the parts put in transcription order (GenBank lists them so already,
trans-spliced ones included; GFF3/GTF rows are sorted along their strand), each part read on its strand
and joined, and the reading frame set by the 5' part's phase (GFF3/GTF column 8) or the GenBank
``codon_start``. A CDS that a circular GenBank record splits at the origin (two rows, ``origin_split``) is
joined again, its span written across the origin as schema.py says. Two transcripts coding one protein
(same parts, same frame) give one unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from genoembed.embedders.translated import translate
from genoembed.errors import InputError
from genoembed.features import apply_aliases, detect_format, read_annotations, suggest_aliases
from genoembed.genes import Gene
from genoembed.seqio import reverse_complement

CDS = "CDS"
Part = tuple[int, int, str]


@dataclass(frozen=True)
class CodingSequence:
    """One annotated protein: its parts in transcription order, the bases to skip before its first codon, a
    span (``end`` past the contig's length when it crosses a circular contig's origin) and its name."""

    contig: str
    start: int
    end: int
    strand: str
    parts: tuple[Part, ...]
    phase: int
    name: str | None


def read_coding_sequences(paths: Iterable[str | Path], contig_lengths: dict[str, int],
                          aliases: dict[str, str] | None = None, auto_alias: bool = False) -> list[CodingSequence]:
    """The CDS of the annotation files on the genome's contigs (renamed by ``aliases``, and by the suggested
    renames with ``auto_alias``), in contig then position order, each protein once."""
    found: dict[tuple, CodingSequence] = {}
    for path in paths:
        table = read_annotations(path, aliases=aliases)
        table = table.filter(pc.equal(table["type"], CDS))
        if auto_alias:
            table = apply_aliases(table, suggest_aliases(table, contig_lengths))
        table = table.filter(pc.is_in(table["chrom"], pa.array(list(contig_lengths), pa.string())))
        genbank = detect_format(path) == "genbank"
        for coding in coding_sequences(table.to_pylist(), contig_lengths, file_order=genbank):
            found.setdefault((coding.contig, coding.parts, coding.phase), coding)
    order = {name: number for number, name in enumerate(contig_lengths)}
    return sorted(found.values(), key=lambda c: (order[c.contig], c.start, c.end, c.strand))


def coding_sequences(rows: Sequence[dict], contig_lengths: dict[str, int], file_order: bool) -> list[CodingSequence]:
    """``FEATURES`` rows of type CDS as proteins: rows sharing a Parent joined (one protein per transcript, whether
    its rows share an ID, have none or one each), origin-split halves joined; ``file_order`` keeps the parts in
    the order given (GenBank: transcription order)."""
    groups: dict[tuple, list[dict]] = {}
    for number, row in enumerate(rows):
        attributes = dict(row["attributes"] or ())
        if "origin_split" in attributes:
            key = (row["chrom"], "origin", attributes.get("parts"))
        elif row["parent"] is not None:
            key = (row["chrom"], "parent", row["parent"])
        else:
            key = (number,)
        groups.setdefault(key, []).append(row)
    return [_coding(group, contig_lengths[group[0]["chrom"]], file_order) for group in groups.values()]


def _coding(rows: list[dict], length: int, file_order: bool) -> CodingSequence:
    first = rows[0]
    attributes = dict(first["attributes"] or ())
    if "origin_split" in attributes:  # both halves list every part; the span goes round the origin
        parts = [_part(text) for text in attributes["parts"].split(",")] if "parts" in attributes else \
            [p for row in rows for p in _row_parts(row)]
        before = next(row for row in rows if row["end"] == length)
        after = next((row for row in rows if row["start"] == 0), before)
        start, end = before["start"], length + after["end"] if after is not before else before["end"]
        phases = [_phase(attributes, 0)] + [0] * (len(parts) - 1)
    else:
        parts = [p for row in rows for p in _row_parts(row)]
        phases = [phase for row in rows for phase in _row_phases(row)]
        start, end = min(p[0] for p in parts), max(p[1] for p in parts)
        strands = {p[2] for p in parts}
        if not file_order and len(strands) == 1:
            ordered = sorted(zip(parts, phases), key=lambda item: item[0][0], reverse=strands == {"-"})
            parts, phases = [item[0] for item in ordered], [item[1] for item in ordered]
    strand = parts[0][2] if len({p[2] for p in parts}) == 1 else "."
    return CodingSequence(first["chrom"], start, end, strand, tuple(parts), phases[0],
                          first["name"] or first["feature_id"] or first["parent"])


def _row_parts(row: dict) -> list[Part]:
    return [(p["start"], p["end"], p["strand"]) for p in row["parts"]] if row["parts"] else \
        [(row["start"], row["end"], row["strand"])]


def _row_phases(row: dict) -> list[int]:
    """The phase of each part of a row: GFF3/GTF ``phase`` (one value, or one per part comma-joined), GenBank
    ``codon_start`` - 1 on the first part."""
    attributes = dict(row["attributes"] or ())
    count = len(row["parts"]) if row["parts"] else 1
    if "phase" in attributes:
        values = attributes["phase"].split(",")
        values = values if len(values) == count else values[:1] * count
        return [_phase_value(value, row) for value in values]
    return [_phase(attributes, 0)] + [0] * (count - 1)


def _phase(attributes: dict, default: int) -> int:
    codon_start = attributes.get("codon_start")
    return int(codon_start) - 1 if codon_start in ("1", "2", "3") else default


def _phase_value(text: str, row: dict) -> int:
    text = text.strip()
    if text in ("", "."):
        return 0
    if text not in ("0", "1", "2"):
        raise InputError(f"{row['source']}: CDS {row['name'] or row['feature_id'] or row['chrom']} has phase "
                         f"{text!r}; a CDS phase is 0, 1 or 2")
    return int(text)


def _part(text: str) -> Part:
    span, strand = text.rsplit(":", 1)
    start, end = span.split("-")
    return int(start), int(end), strand


def coding_genes(genome, codings: Sequence[CodingSequence]) -> list[Gene]:
    """The proteins as :class:`Gene` units: each part read on its strand (soft-masking kept), joined, read from
    the phase, cut to whole codons; contig by contig, so memory holds one contig."""
    by_contig: dict[str, list[CodingSequence]] = {}
    for coding in codings:
        by_contig.setdefault(coding.contig, []).append(coding)
    genes = []
    for contig, listed in by_contig.items():
        sequence = genome.fetch(contig, 0, genome.contigs[contig])
        for coding in listed:
            joined = "".join(sequence[s:e] if strand != "-" else reverse_complement(sequence[s:e])
                             for s, e, strand in coding.parts)[coding.phase:]
            dna = joined[:len(joined) // 3 * 3].upper()
            genes.append(Gene(contig, coding.start, coding.end, coding.strand, dna, translate(dna).rstrip("*"),
                              coding.name, coding.parts if len(coding.parts) > 1 or coding.end > len(sequence)
                              else ()))
    return genes


def annotated_genes(genome, paths: Sequence[str | Path], contigs: Sequence[str],
                    aliases: dict[str, str] | None = None, auto_alias: bool = False) -> list[Gene]:
    """The CDS of ``paths`` on the selected ``contigs`` of ``genome`` as gene units; a one-line InputError when
    there is none (no annotation file, or none naming these contigs)."""
    if not paths:
        raise InputError("--units cds reads the CDS of the --annotations files: give at least one (GenBank, GFF3 "
                         "or GTF)")
    lengths = {contig: genome.contigs[contig] for contig in contigs}
    codings = read_coding_sequences(paths, lengths, aliases, auto_alias)
    if not codings:
        listed = ", ".join(str(path) for path in paths)
        raise InputError(f"{listed}: no CDS feature on the contigs of genome {genome.name!r} (e.g. "
                         f"{next(iter(lengths))!r}); check the feature type (CDS), or rename contigs with "
                         "--alias FROM=TO / --auto-alias")
    return coding_genes(genome, codings)
