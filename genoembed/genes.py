"""Genes as units (issue 27): one row per called gene instead of one per window.

A protein-homolog search answers with genes. Cutting the genome into fixed windows splits a gene
across tiles and mixes neighbours into a tile; with ``units = "genes"`` (``genoembed index --units
genes``) each row is one gene called by pyrodigal (prokaryotic gene finder, trained on the genome
itself, or its metagenomic models below 100 kbp), its span on the contig (0-based half-open), its
strand, and its coding-strand DNA as the sequence embedded, so a vector is one protein and a hit
is a gene. Region queries by a gene's coordinates (``chrom:start-end:strand``) then ask for that gene.
With ``units = "cds"`` the genes are the CDS of given annotations instead (:mod:`genoembed.cds` reads them;
a spliced CDS is one row spanning its parts, its embedded DNA the parts joined in reading frame).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError, missing_extra
from genoembed.seqio import window_fractions

META_BELOW = 100_000  # bp: shorter genomes are too small to train pyrodigal on; its metagenomic models are used


@dataclass(frozen=True)
class Gene:
    """A called or annotated gene: 0-based half-open span, strand, coding-strand DNA and protein (no stop);
    an annotated one also its ``name`` and, when spliced, its ``parts`` ((start, end, strand), transcription
    order, each inside its contig)."""

    contig: str
    start: int
    end: int
    strand: str
    dna: str
    protein: str
    name: str | None = None
    parts: tuple[tuple[int, int, str], ...] = ()

    @property
    def pieces(self) -> tuple[tuple[int, int, str], ...]:
        """The intervals the gene's DNA is read from: its parts, or its one span."""
        return self.parts or ((self.start, self.end, self.strand),)


def call_genes(records: Sequence[tuple[str, str]], meta: bool | None = None) -> list[Gene]:
    """pyrodigal genes of a genome given as (name, sequence) records, in contig then position order."""
    try:
        import pyrodigal
    except ImportError:
        raise missing_extra("gene calls (--units genes, protein truth)", "protein", "pyrodigal") from None
    total = sum(len(sequence) for _, sequence in records)
    meta = total < META_BELOW if meta is None else meta
    finder = pyrodigal.GeneFinder(meta=meta)
    if not meta:
        finder.train(*(sequence.encode() for _, sequence in records))
    genes = []
    for name, sequence in records:
        for gene in finder.find_genes(sequence.encode()):
            genes.append(Gene(name, gene.begin - 1, gene.end, "+" if gene.strand == 1 else "-", gene.sequence(),
                              gene.translate(include_stop=False)))
    return genes


def plan_genes(genome, contigs: Sequence[str], max_n_fraction: float, batch_rows: int = 2048,
               first_tile_id: int = 0, genes: Sequence[Gene] | None = None) -> Iterator[pa.RecordBatch]:
    """Rows of ``schema.TILES_WITH_SEQUENCE``, one per gene of the selected contigs (ids from ``first_tile_id``):
    pyrodigal's calls, or the given ``genes`` (annotated CDS) on those contigs."""
    records = [(chrom, genome.fetch(chrom, 0, genome.contigs[chrom])) for chrom in contigs]
    if genes is None:
        genes = call_genes([(name, sequence.upper()) for name, sequence in records])
        if not genes:
            raise InputError(f"{genome.path}: pyrodigal called no gene on the selected contigs; is it a prokaryotic "
                             "nucleotide genome? (use tile units for anything else)")
    soft = dict(records)
    rows = {name: [] for name in schema.TILES_WITH_SEQUENCE.names}
    next_id = first_tile_id
    for gene in (gene for gene in genes if gene.contig in soft):
        piece = "".join(soft[gene.contig][start:end] for start, end, _ in gene.pieces)
        gc, n_fraction, lower = (float(value[0]) for value in
                                 window_fractions(piece.encode("ascii"), np.zeros(1, dtype=np.int64), len(piece)))
        if n_fraction > max_n_fraction:
            continue
        for name, value in (("tile_id", next_id), ("genome", genome.name), ("chrom", gene.contig),
                            ("start", gene.start), ("end", gene.end), ("strand", gene.strand), ("gc", gc),
                            ("n_fraction", n_fraction), ("soft_masked_fraction", lower),
                            (schema.SEQUENCE, gene.dna)):
            rows[name].append(value)
        next_id += 1
        if len(rows["tile_id"]) == batch_rows:
            yield pa.RecordBatch.from_pydict(rows, schema=schema.TILES_WITH_SEQUENCE)
            rows = {name: [] for name in schema.TILES_WITH_SEQUENCE.names}
    if rows["tile_id"]:
        yield pa.RecordBatch.from_pydict(rows, schema=schema.TILES_WITH_SEQUENCE)
