"""Cut a genome into tiles (windows) under an explicit, recorded policy.

Tiles start at 0, stride, 2*stride, ... and, when that grid does not reach
the contig end, one last tile is flush with the end so every base of a contig
at least ``window`` long is covered. On a circular contig the grid goes on round
the origin instead: tiles start at every ``stride`` below the contig's length, and
those starting within ``window`` of its end run through the origin (``end`` past
the length, the convention of :mod:`genoembed.schema`), so a read across the origin
meets a tile like any other read. Contigs shorter than the window yield no
tile (they are counted and reported). ``tile_id`` is the dense rank of a tile
in plan order (contig order of the FASTA, or of ``TilingSpec.contigs`` when
given, then start, then ``+`` before ``-``), so the same genome and spec always give the same ids.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa

from genoembed import schema
from genoembed.errors import InputError
from genoembed.genome import Genome
from genoembed.seqio import reverse_complement, window_fractions

log = logging.getLogger(__name__)


class SoftMask(str, Enum):
    """What to do with soft-masked (lowercase) bases."""

    upper = "upper"  # uppercase them: embed repeats like any sequence
    keep = "keep"  # pass case through to the embedder
    skip = "skip"  # drop tiles whose lowercase fraction exceeds max_soft_masked_fraction


UNITS = ("tiles", "genes", "cds")


class Strands(str, Enum):
    forward = "+"
    reverse = "-"
    both = "both"


@dataclass(frozen=True)
class TilingSpec:
    window: int = 1000
    stride: int = 500
    strands: Strands = Strands.forward
    max_n_fraction: float = 0.1
    soft_mask: SoftMask = SoftMask.upper
    max_soft_masked_fraction: float = 0.5
    contigs: tuple[str, ...] | None = None
    units: str = "tiles"  # "genes": a row per called gene (genoembed.genes); "cds": per annotated CDS (genoembed.cds)

    def __post_init__(self):
        if self.units not in UNITS:
            raise InputError(f"tiling: units={self.units!r} must be one of {', '.join(map(repr, UNITS))}")
        for name, kind in (("strands", Strands), ("soft_mask", SoftMask)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                raise InputError(f"tiling: {name}={getattr(self, name)!r} must be one of "
                                 f"{', '.join(repr(v.value) for v in kind)}") from None
        if self.contigs is not None:
            object.__setattr__(self, "contigs", tuple(self.contigs))
        if self.window <= 0:
            raise InputError(f"tiling: window={self.window} must be a positive number of bases")
        if self.stride <= 0:
            raise InputError(f"tiling: stride={self.stride} must be > 0 (use stride=window for no overlap)")
        for name in ("max_n_fraction", "max_soft_masked_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"tiling: {name}={getattr(self, name)} must be between 0 and 1")

    def describe(self) -> dict:
        described = asdict(self)
        described["strands"] = self.strands.value
        described["soft_mask"] = self.soft_mask.value
        described["contigs"] = list(self.contigs) if self.contigs is not None else None
        if self.units == "tiles":  # stores made before gene units describe their tiling without the key
            del described["units"]
        return described

    @property
    def strand_list(self) -> tuple[str, ...]:
        return ("+", "-") if self.strands is Strands.both else (self.strands.value,)


def tile_starts(length: int, window: int, stride: int, circular: bool = False) -> np.ndarray:
    """Start positions covering ``[0, length)`` (round the origin on a ``circular`` contig); empty when the
    contig is shorter than the window."""
    if window <= 0 or stride <= 0:
        raise InputError(f"tiling: window={window} and stride={stride} must both be positive")
    if length < window:
        return np.empty(0, dtype=np.int64)
    if circular:
        return np.arange(0, length, stride, dtype=np.int64)
    starts = np.arange(0, length - window + 1, stride, dtype=np.int64)
    if starts[-1] + window < length:
        starts = np.append(starts, length - window)
    return starts


def select_contigs(genome: Genome, spec: TilingSpec) -> list[str]:
    if spec.contigs is None:
        return list(genome.contigs)
    if not spec.contigs:
        raise InputError(f"{genome.path}: tiling.contigs is empty; name at least one contig or leave it unset")
    repeated = sorted(c for c, times in Counter(spec.contigs).items() if times > 1)
    if repeated:
        raise InputError(f"{genome.path}: contig {repeated[0]!r} is listed more than once in tiling.contigs; "
                         "list each contig once")
    unknown = [c for c in spec.contigs if c not in genome.contigs]
    if unknown:
        raise InputError(f"{genome.path}: unknown contig {unknown[0]!r} in tiling.contigs; "
                         f"known: {', '.join(list(genome.contigs)[:5])}")
    return list(spec.contigs)


def count_tiles(genome: Genome, spec: TilingSpec, genes: Sequence | None = None) -> int:
    """Upper bound of tiles the plan yields (before N / soft-mask filtering), for progress bars; for called
    genes an estimate (one gene per kbp, as in bacteria), for annotated ones (``genes``) their number."""
    if genes is not None:
        return len(genes)
    if spec.units == "genes":
        return sum(genome.contigs[c] for c in select_contigs(genome, spec)) // 1000
    return sum(len(tile_starts(genome.contigs[c], spec.window, spec.stride, c in genome.circular))
               for c in select_contigs(genome, spec)) \
        * len(spec.strand_list)


def plan_tiles(genome: Genome, spec: TilingSpec, batch_rows: int = 2048,
               first_tile_id: int = 0, genes: Sequence | None = None) -> Iterator[pa.RecordBatch]:
    """Stream tiles with their sequences as RecordBatches of ``schema.TILES_WITH_SEQUENCE``.

    ids run from ``first_tile_id`` (a genome appended to a store continues its ids). Gene units: one row per
    gene, pyrodigal's (``units = "genes"``) or the given ``genes`` (``"cds"``, :mod:`genoembed.cds`).

    Every batch holds exactly ``batch_rows`` rows except the last, so batch
    boundaries do not depend on contig boundaries. Memory is bounded by
    ``batch_rows`` windows, not by contig or genome size.
    """
    if batch_rows <= 0:
        raise InputError(f"tiling: batch_rows={batch_rows} must be a positive number of rows")
    contigs = select_contigs(genome, spec)
    if spec.units in ("genes", "cds"):
        from genoembed.genes import plan_genes

        if spec.units == "cds" and genes is None:
            raise InputError(f"{genome.path}: tiling units 'cds' need the annotated genes "
                             "(genoembed.cds.annotated_genes)")
        yield from plan_genes(genome, contigs, spec.max_n_fraction, batch_rows, first_tile_id, genes)
        return
    too_short = [c for c in contigs if genome.contigs[c] < spec.window]
    if len(too_short) == len(contigs):
        longest = max(genome.contigs[c] for c in contigs)
        raise InputError(f"{genome.path}: window {spec.window} is longer than every selected contig "
                         f"(longest {longest} bp); use --window <= {longest}")
    if too_short:
        log.warning("%s: %d contigs shorter than the %d bp window get no tiles (e.g. %s)",
                    genome.path, len(too_short), spec.window, too_short[0])
    next_id = first_tile_id
    per_block = max(1, batch_rows // len(spec.strand_list))
    rows = {name: [] for name in schema.TILES_WITH_SEQUENCE.names}
    for chrom in contigs:
        length = genome.contigs[chrom]
        starts = tile_starts(length, spec.window, spec.stride, chrom in genome.circular)
        for first in range(0, len(starts), per_block):
            block_starts = starts[first:first + per_block]
            block_begin, block_end = int(block_starts[0]), int(block_starts[-1]) + spec.window
            block = genome.fetch(chrom, block_begin, min(block_end, length))
            if block_end > length:  # tiles through the origin of a circular contig go on from its start
                block += genome.fetch(chrom, 0, block_end - length)
            offsets = block_starts - block_begin
            gc, n_fraction, lower = window_fractions(block.encode("ascii"), offsets, spec.window)
            keep = n_fraction <= spec.max_n_fraction
            if spec.soft_mask is SoftMask.skip:
                keep &= lower <= spec.max_soft_masked_fraction
            if spec.soft_mask is SoftMask.upper:
                block = block.upper()
            for index in np.flatnonzero(keep):
                offset = int(offsets[index])
                forward = block[offset:offset + spec.window]
                for strand in spec.strand_list:
                    rows["tile_id"].append(next_id)
                    rows["genome"].append(genome.name)
                    rows["chrom"].append(chrom)
                    rows["start"].append(int(block_starts[index]))
                    rows["end"].append(int(block_starts[index]) + spec.window)
                    rows["strand"].append(strand)
                    rows["gc"].append(gc[index])
                    rows["n_fraction"].append(n_fraction[index])
                    rows["soft_masked_fraction"].append(lower[index])
                    rows[schema.SEQUENCE].append(forward if strand == "+" else reverse_complement(forward))
                    next_id += 1
                    if len(rows["tile_id"]) == batch_rows:
                        yield pa.RecordBatch.from_pydict(rows, schema=schema.TILES_WITH_SEQUENCE)
                        rows = {name: [] for name in schema.TILES_WITH_SEQUENCE.names}
    if rows["tile_id"]:
        yield pa.RecordBatch.from_pydict(rows, schema=schema.TILES_WITH_SEQUENCE)
    if next_id == first_tile_id:
        probe = genome.fetch(contigs[0], 0, min(genome.contigs[contigs[0]], 10_000)).upper() if contigs else ""
        if probe.count("U") > probe.count("T"):
            raise InputError(f"{genome.path}: contig {contigs[0]!r} looks like RNA (U instead of T); "
                             "convert it to DNA first, e.g. `seqkit seq --rna2dna in.fa > out.fa`")
        raise InputError(f"{genome.path}: every tile was filtered out (max_n_fraction={spec.max_n_fraction}, "
                         f"soft_mask={spec.soft_mask.value}); relax the N or soft-mask policy")
