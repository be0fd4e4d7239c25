"""Seeded synthetic genomes and mutations, shared by tests, benchmarks and the evaluation.

Real data is preferred everywhere it exists; these make inputs of any size
and known truth (where a mutated copy came from).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

_BASES = np.frombuffer(b"ACGT", dtype=np.uint8)


def random_sequence(length: int, seed: int = 0, gc: float = 0.5) -> str:
    rng = np.random.default_rng(seed)
    weights = np.array([1 - gc, gc, gc, 1 - gc]) / 2
    return _BASES[rng.choice(4, size=length, p=weights)].tobytes().decode()


def random_genome(lengths: dict[str, int], seed: int = 0) -> dict[str, str]:
    """{contig: sequence}, each contig seeded from ``seed`` and its position."""
    return {name: random_sequence(length, seed=seed * 1000 + i) for i, (name, length) in enumerate(lengths.items())}


def write_fasta(path: str | Path, records: dict[str, str], line_width: int = 60, compression: str | None = None,
                newline: str = "\n") -> Path:
    """Write records as FASTA; ``compression`` is None, "gzip" or "bgzip"."""
    path = Path(path)
    lines = []
    for name, sequence in records.items():
        lines.append(f">{name}")
        lines += [sequence[i:i + line_width] for i in range(0, len(sequence), line_width)]
    data = (newline.join(lines) + newline).encode()
    if compression == "gzip":
        path.write_bytes(gzip.compress(data))
    elif compression == "bgzip":
        from Bio import bgzf

        with bgzf.BgzfWriter(str(path), "wb") as handle:
            handle.write(data)
    else:
        path.write_bytes(data)
    return path


def mutate(sequence: str, substitution_rate: float = 0.0, indel_rate: float = 0.0, seed: int = 0) -> str:
    """Copy with random substitutions (always to a different base) and 1-3 bp indels."""
    rng = np.random.default_rng(seed)
    codes = np.frombuffer(sequence.upper().encode(), dtype=np.uint8).copy()
    hit = rng.random(len(codes)) < substitution_rate
    for position in np.flatnonzero(hit):
        choices = _BASES[_BASES != codes[position]]
        codes[position] = choices[rng.integers(len(choices))]
    if indel_rate <= 0:
        return codes.tobytes().decode()
    pieces, last = [], 0
    for position in np.flatnonzero(rng.random(len(codes)) < indel_rate):
        if position < last:
            continue
        size = int(rng.integers(1, 4))
        pieces.append(codes[last:position].tobytes())
        if rng.random() < 0.5:  # deletion
            last = position + size
        else:  # insertion
            pieces.append(_BASES[rng.integers(0, 4, size)].tobytes())
            last = position
    pieces.append(codes[last:].tobytes())
    return b"".join(pieces).decode()
