"""Where contrastive fine-tuning's positive pairs come from: related-strain alignments, shifted windows,
mutated copies, and the k-mer checks that keep repeats out of the negatives (see :mod:`genoembed.train.finetune`).

A :class:`PairSampler` draws seeded batches of (anchor, positive) windows from one genome at a time;
its ``config`` is a :class:`genoembed.train.finetune.FinetuneConfig` (only its pair fields are read).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from genoembed.errors import InputError
from genoembed.seqio import BASE_CODES, COMPLEMENT_BYTES, kmer_index, reverse_complement, reverse_complement_codes
from genoembed.train.corpus import Contig


@dataclass(frozen=True)
class RelatedPair:
    """Two genomes of related strains; homologous windows between them are positives.

    ``coords``: a NUCmer ``show-coords`` table of ``query`` on ``reference``;
    None = align with minimap2 when the run starts.
    """

    reference: Path
    query: Path
    coords: Path | None = None


# --------------------------------------------------------------------------- k-mer helpers


PAIR_K = 12


def kmer_codes(sequence: bytes | str | np.ndarray, k: int = PAIR_K, both_strands: bool = False) -> np.ndarray:
    """Unique base-4 codes of the k-mers without N (and of the reverse complement's, with both_strands)."""
    if isinstance(sequence, str):
        sequence = sequence.encode("ascii", errors="replace")
    raw = np.frombuffer(sequence, dtype=np.uint8) if isinstance(sequence, bytes) else sequence
    codes = BASE_CODES[raw]
    strands = [codes] + ([reverse_complement_codes(codes)] if both_strands else [])
    out = []
    for strand in strands:
        index, clean = kmer_index(strand[None, :], k)
        out.append(index[clean].astype(np.int64))
    return np.unique(np.concatenate(out))


def shared_kmer_fraction(a, b, k: int = PAIR_K) -> float:
    """Fraction of ``b``'s k-mers found in ``a`` on either strand (0 when ``b`` has none)."""
    kb = kmer_codes(b, k)
    if kb.size == 0:
        return 0.0
    return float(np.isin(kb, kmer_codes(a, k, both_strands=True), assume_unique=True).mean())


def false_negative_mask(anchors: Sequence, threshold: float, k: int = PAIR_K) -> np.ndarray:
    """(n, n) bool, True where anchors i != j share >= ``threshold`` of k-mers (either direction, either strand).

    Such pairs (repeats, paralogs, overlapping windows) are left out of the
    loss: the positive of one is also a positive of the other.
    """
    n = len(anchors)
    fwd = [kmer_codes(a, k) for a in anchors]
    both = [kmer_codes(a, k, both_strands=True) for a in anchors]
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(i + 1, n):
            if fwd[i].size == 0 or fwd[j].size == 0:
                continue
            share = max(np.isin(fwd[j], both[i], assume_unique=True).mean(),
                        np.isin(fwd[i], both[j], assume_unique=True).mean())
            if share >= threshold:
                mask[i, j] = mask[j, i] = True
    return mask


# --------------------------------------------------------------------------- pairs from alignments


@dataclass(frozen=True)
class TrainingGenome:
    """A training genome: its contigs and where they are."""

    name: str
    path: Path
    contigs: tuple[Contig, ...]

    @property
    def length(self) -> int:
        return int(sum(len(c.bases) for c in self.contigs))


def pair_alignments(pair: RelatedPair, min_length: int = 2000, preset: str = "asm20",
                    threads: int = 2) -> pa.Table:
    """Alignment blocks (``genoembed.eval.run.ALIGNMENTS``) of ``pair.query`` on ``pair.reference``.

    From the NUCmer table when ``pair.coords`` is set, else minimap2 at build
    time (primary and secondary blocks). Blocks shorter than ``min_length``
    are dropped.
    """
    import pyarrow.compute as pc

    from genoembed.eval import derive_truth_minimap2, read_coords

    if pair.coords is not None:
        table = read_coords(pair.coords)
    else:
        table = derive_truth_minimap2(pair.reference, pair.query, preset=preset, min_length=min_length,
                                      threads=threads)
    keep = pc.greater_equal(pc.subtract(table["ref_end"], table["ref_start"]), min_length)
    return table.filter(keep)


def map_window(ref_span: tuple[int, int], query_span: tuple[int, int], strand: str,
               start: int, end: int) -> tuple[int, int]:
    """Map ``[start, end)`` on the reference side of a block linearly onto its query side.

    ``ref_span``/``query_span`` are the block's 0-based half-open spans;
    ``strand`` '-' means the query runs backwards along the reference.
    """
    r0, r1 = ref_span
    q0, q1 = query_span
    if not (r0 <= start < end <= r1):
        raise InputError(f"window {start}-{end} is not inside the block's reference span {r0}-{r1}")
    scale = (q1 - q0) / max(r1 - r0, 1)
    a, b = (start - r0) * scale, (end - r0) * scale
    if strand == "+":
        mapped = (q0 + a, q0 + b)
    else:
        mapped = (q1 - b, q1 - a)
    return int(round(mapped[0])), int(round(mapped[1]))


@dataclass(frozen=True)
class _Blocks:
    """Alignment blocks seen from one genome: this side's spans and the other genome's."""

    this_contig: np.ndarray  # int index into the genome's contigs
    this_start: np.ndarray
    this_end: np.ndarray
    other_genome: np.ndarray
    other_contig: np.ndarray
    other_start: np.ndarray
    other_end: np.ndarray
    strand: np.ndarray  # bool: True for '-'
    identity: np.ndarray


def blocks_by_genome(genomes: list[TrainingGenome], pairs: Sequence[RelatedPair], tables: Sequence[pa.Table],
                      window_bp: int) -> dict[int, _Blocks]:
    """Index every pair's blocks from both sides, keeping blocks at least one window long."""
    by_path = {g.path.resolve(): i for i, g in enumerate(genomes)}
    contig_index = [{c.name: j for j, c in enumerate(g.contigs)} for g in genomes]
    rows: dict[int, list[tuple]] = {}
    for pair, table in zip(pairs, tables):
        ref, qry = by_path[Path(pair.reference).resolve()], by_path[Path(pair.query).resolve()]
        for r in table.to_pylist():
            if r["ref_end"] - r["ref_start"] < window_bp or r["query_end"] - r["query_start"] < window_bp:
                continue
            rc, qc = contig_index[ref].get(r["ref_chrom"]), contig_index[qry].get(r["query_chrom"])
            if rc is None or qc is None:
                raise InputError(f"alignment of {pair.query} on {pair.reference} names contig "
                                 f"{r['ref_chrom'] if rc is None else r['query_chrom']}, not in the FASTA files")
            minus = r["strand"] == "-"
            rows.setdefault(ref, []).append((rc, r["ref_start"], r["ref_end"], qry, qc, r["query_start"],
                                             r["query_end"], minus, r["identity"]))
            rows.setdefault(qry, []).append((qc, r["query_start"], r["query_end"], ref, rc, r["ref_start"],
                                             r["ref_end"], minus, r["identity"]))
    out = {}
    for genome, items in rows.items():
        cols = list(zip(*items))
        out[genome] = _Blocks(*(np.asarray(c) for c in cols))
    return out


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class PairBatch:
    anchors: list[str]
    positives: list[str]
    kinds: list[str]  # "strain" or "shift" per pair
    exclude: np.ndarray  # (n, n) bool: off-diagonal pairs left out of the loss
    genome: str


def _window(contig: Contig, start: int, end: int, reverse: bool) -> str:
    bases = contig.bases[start:end]
    if reverse:
        bases = COMPLEMENT_BYTES[bases[::-1]]
    return bases.tobytes().decode("ascii")


class PairSampler:
    """Seeded batches of (anchor, positive) windows from one genome at a time."""

    def __init__(self, genomes: list[TrainingGenome], blocks: dict[int, _Blocks], config):
        self.genomes = genomes
        self.blocks = blocks
        self.config = config
        w = config.window_bp
        self.usable = [[c for c in g.contigs if len(c.bases) >= w] for g in genomes]
        lengths = np.array([sum(len(c.bases) - w + 1 for c in cs) for cs in self.usable], dtype=np.float64)
        if not (lengths > 0).any():
            raise InputError(f"no training sequence is as long as one window ({w} bp); lower --window-bp")
        self.genome_weights = lengths / lengths.sum()
        self.stats = {"strain": 0, "shift": 0, "strain_rejected": 0, "excluded_pairs": 0}

    def sample(self, rng: np.random.Generator, n: int, substitution: tuple[float, float] | None = None,
               cross_fraction: float | None = None) -> PairBatch:
        from genoembed.synthetic import mutate

        config = self.config
        g = int(rng.choice(len(self.genomes), p=self.genome_weights))
        genome = self.genomes[g]
        blocks = self.blocks.get(g)
        cross = config.cross_strain_fraction if cross_fraction is None else cross_fraction
        taken: list[tuple[int, int]] = []  # (contig id, start) of anchors: never overlapping
        anchors, positives, kinds = [], [], []
        while len(anchors) < n:
            pair = None
            if blocks is not None and rng.random() < cross:
                pair = self._strain_pair(rng, genome, blocks, taken)
            kind = "strain"
            if pair is None:
                pair = self._shift_pair(rng, genome, taken)
                kind = "shift"
            if pair is None:
                continue
            anchor, positive, key = pair
            taken.append(key)
            lo, hi = substitution or ((0.0, config.max_substitution / 2) if kind == "strain"
                                      else (0.0, config.max_substitution))
            rate = float(rng.uniform(lo, hi))
            indel = float(rng.uniform(0, config.max_indel)) if rng.random() < config.indel_probability else 0.0
            positive = mutate(positive, rate, indel, seed=int(rng.integers(2**31)))
            anchors.append(anchor)
            positives.append(positive)
            kinds.append(kind)
            self.stats[kind] += 1
        exclude = false_negative_mask(anchors, config.repeat_kmer_share)
        self.stats["excluded_pairs"] += int(exclude.sum()) // 2
        return PairBatch(anchors, positives, kinds, exclude, genome.name)

    def _overlaps(self, taken, contig_id: int, start: int) -> bool:
        w = self.config.window_bp
        return any(c == contig_id and abs(s - start) < w for c, s in taken)

    def _shift_pair(self, rng, genome: TrainingGenome, taken):
        w = self.config.window_bp
        contigs = self.usable[self.genomes.index(genome)]
        sizes = np.array([len(c.bases) - w + 1 for c in contigs], dtype=np.float64)
        ci = int(rng.choice(len(contigs), p=sizes / sizes.sum()))
        contig = contigs[ci]
        for _ in range(20):
            start = int(rng.integers(0, len(contig.bases) - w + 1))
            if not self._overlaps(taken, id(contig), start):
                break
        else:
            return None
        span = int(self.config.max_shift * w)
        shift = int(rng.integers(-span, span + 1))
        p_start = min(max(start + shift, 0), len(contig.bases) - w)
        reverse = bool(rng.random() < 0.5)
        flip = bool(rng.random() < self.config.strand_flip)
        anchor = _window(contig, start, start + w, reverse)
        positive = _window(contig, p_start, p_start + w, reverse != flip)
        return anchor, positive, (id(contig), start)

    def _strain_pair(self, rng, genome: TrainingGenome, blocks: _Blocks, taken):
        w = self.config.window_bp
        sizes = (blocks.this_end - blocks.this_start - w + 1).astype(np.float64)
        b = int(rng.choice(len(sizes), p=sizes / sizes.sum()))
        contig = genome.contigs[int(blocks.this_contig[b])]
        start = int(rng.integers(blocks.this_start[b], blocks.this_end[b] - w + 1))
        if self._overlaps(taken, id(contig), start):
            return None
        other = self.genomes[int(blocks.other_genome[b])].contigs[int(blocks.other_contig[b])]
        q0, q1 = map_window((int(blocks.this_start[b]), int(blocks.this_end[b])),
                            (int(blocks.other_start[b]), int(blocks.other_end[b])),
                            "-" if blocks.strand[b] else "+", start, start + w)
        centre = (q0 + q1) // 2 + int(rng.integers(-w // 4, w // 4 + 1))
        p_start = min(max(centre - w // 2, 0), len(other.bases) - w)
        if p_start < 0:
            return None
        minus = bool(blocks.strand[b])
        anchor = _window(contig, start, start + w, False)
        positive = _window(other, p_start, p_start + w, minus)  # in the anchor's orientation
        if shared_kmer_fraction(anchor, positive) < self.config.min_pair_kmer_share:
            self.stats["strain_rejected"] += 1
            return None
        reverse = bool(rng.random() < 0.5)
        flip = bool(rng.random() < self.config.strand_flip)
        anchor = _window(contig, start, start + w, reverse)
        positive = _window(other, p_start, p_start + w, minus != (reverse != flip))
        return anchor, positive, (id(contig), start)


def frame_views(windows: Sequence[str], k: int, frames: int, rng: np.random.Generator | None = None,
                both_strands: bool = False) -> list[str]:
    """Each window read from ``frames`` offsets in 0..k-1 (random distinct ones with ``rng``, else the
    first), consecutive per window (and per strand, forward first, with ``both_strands``)."""
    out = []
    for window in windows:
        for text in (window, reverse_complement(window)) if both_strands else (window,):
            offsets = rng.choice(k, size=frames, replace=False) if rng is not None else range(frames)
            out += [text[int(f):] for f in offsets]
    return out
