"""Translated peptide profiles: a training-free vector that sees DNA through the genetic code.

Homologous genes of distant bacteria (E. coli vs H. pylori: 30-55 % protein identity) share almost
no DNA k-mers, because synonymous codons and GC-driven codon usage rewrite the DNA while the
protein keeps much of its sequence. Translating a tile in its six reading frames and counting
amino-acid k-mers (dipeptides for ``k=2``: 400 dims per frame) keeps what the protein keeps.

Three readings of the same six frames (``benchmarks/RESULTS.md``, issue 17, measures them):

- ``frame_vectors``: one L2-normalised profile per frame (forward 0, 1, 2, then reverse-complement
  0, 1, 2), for an index that stores six rows per tile and scores a tile by its best frame;
- ``mode="sum"`` (``aa:2``): the six frames' counts summed into one vector, strand-invariant;
- ``mode="orf"`` (``aa:2:orf``): the same sum over open reading frames only (stop-free runs of at
  least ``min_orf`` codons), so the five non-coding frames of a gene add less noise.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from genoembed.errors import InputError
from genoembed.seqio import encode_bases, reverse_complement_codes

# Standard genetic code, codons in A C G T order (index 16*b1 + 4*b2 + b3), '*' = stop.
CODON_TABLE = "KNKNTTTTRSRSIIMIQHQHPPPPRRRRLLLLEDEDAAAAGGGGVVVV*Y*YSSSS*CWCLFLF"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
STOP, UNKNOWN = 20, 21  # residue codes after the 20 amino acids
_CODON_RESIDUES = np.array([STOP if aa == "*" else AMINO_ACIDS.index(aa) for aa in CODON_TABLE] + [UNKNOWN],
                           dtype=np.int64)
# The same code over base codes 0-4 (4: not A/C/G/T), indexed 25 * b1 + 5 * b2 + b3: a codon with an unknown
# base reads UNKNOWN by lookup, with no mask to build (uint8 arithmetic: the largest index is 124).
_BASE5 = np.arange(125)
_CODON_RESIDUES_5 = np.where((_BASE5 // 25 == 4) | (_BASE5 // 5 % 5 == 4) | (_BASE5 % 5 == 4), UNKNOWN,
                             _CODON_RESIDUES[np.minimum(_BASE5 // 25, 3) * 16 + np.minimum(_BASE5 // 5 % 5, 3) * 4
                                             + np.minimum(_BASE5 % 5, 3)]).astype(np.int64)
MODES = ("sum", "orf")
FRAMES = 6


def translate_codes(codes: np.ndarray, frame: int) -> np.ndarray:
    """Residue codes (0-19 amino acids, 20 stop, 21 unknown) of base codes (last axis: several sequences of
    one length translate as one matrix) read from offset ``frame``."""
    usable = max((codes.shape[-1] - frame) // 3, 0)
    codons = codes[..., frame:frame + 3 * usable].reshape(*codes.shape[:-1], usable, 3).astype(np.uint8)
    return _CODON_RESIDUES_5[codons[..., 0] * 25 + codons[..., 1] * 5 + codons[..., 2]]


def six_frames(sequence: str) -> list[np.ndarray]:
    """Residue codes of the forward frames 0, 1, 2 and the reverse-complement frames 0, 1, 2."""
    codes = encode_bases(sequence)
    return [translate_codes(strand, frame) for strand in (codes, reverse_complement_codes(codes)) for frame in range(3)]


def translate(sequence: str, frame: int = 0) -> str:
    """Protein string of one of the six frames (``X`` unknown, ``*`` stop): for tests and reading."""
    letters = np.frombuffer((AMINO_ACIDS + "*X").encode(), dtype=np.uint8)
    return letters[six_frames(sequence)[frame]].tobytes().decode()


def orf_mask(residues: np.ndarray, min_orf: int) -> np.ndarray:
    """True for residues inside a stop-free run of at least ``min_orf`` codons (runs end at stops or ends)."""
    stops = np.flatnonzero(residues == STOP)
    bounds = np.concatenate(([-1], stops, [len(residues)]))
    mask = np.zeros(len(residues), dtype=bool)
    for before, after in zip(bounds[:-1], bounds[1:]):
        if after - before - 1 >= min_orf:
            mask[before + 1:after] = True
    return mask


def peptide_counts(residues: np.ndarray, k: int, keep: np.ndarray | None = None) -> np.ndarray:
    """Counts of the 20**k amino-acid k-mers (skipping any that holds a stop, an unknown or a dropped residue)."""
    counts = np.zeros(20**k, dtype=np.float32)
    if len(residues) < k:
        return counts
    windows = np.lib.stride_tricks.sliding_window_view(residues, k)
    valid = (windows < 20).all(axis=1)
    if keep is not None:
        valid &= np.lib.stride_tricks.sliding_window_view(keep, k).all(axis=1)
    powers = 20 ** np.arange(k - 1, -1, -1, dtype=np.int64)
    counts += np.bincount(windows[valid] @ powers, minlength=20**k).astype(np.float32)
    return counts


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)


class TranslatedProfileEmbedder:
    """Six-frame amino-acid k-mer profile (``aa:K`` summed, ``aa:K:orf`` open reading frames only).

    Strand-invariant: the six frames of a reverse complement are the same six frames, so a tile and
    its reverse complement get the same vector (like ``kmer:K``).
    """

    def __init__(self, k: int = 2, mode: str = "sum", min_orf: int = 60):
        if not 1 <= k <= 3:
            raise InputError(f"model 'aa:{k}': amino-acid k-mer size must be 1..3 (20**k dims), e.g. aa:2")
        if mode not in MODES:
            raise InputError(f"model 'aa:{k}:{mode}': unknown mode; use aa:{k} (six frames summed) or aa:{k}:orf")
        self.k, self.mode, self.min_orf = k, mode, min_orf
        self.dim = 20**k
        self.argument = f"{k}" if mode == "sum" else f"{k}:{mode}"
        self.fingerprint = hashlib.sha256(f"aa:k={k}:mode={mode}:min_orf={min_orf}".encode()).hexdigest()[:16]

    def frame_vectors(self, sequences: Sequence[str]) -> np.ndarray:
        """(n, 6, 20**k) L2-normalised profiles, one per frame (forward 0-2, reverse complement 0-2)."""
        out = np.zeros((len(sequences), FRAMES, self.dim), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            for frame, residues in enumerate(six_frames(sequence)):
                out[row, frame] = peptide_counts(residues, self.k)
        return _unit(out)

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            for residues in six_frames(sequence):
                keep = orf_mask(residues, self.min_orf) if self.mode == "orf" else None
                out[row] += peptide_counts(residues, self.k, keep)
        return _unit(out)

    def describe(self) -> dict:
        return {"kind": "aa", "argument": self.argument, "k": self.k, "mode": self.mode, "min_orf": self.min_orf,
                "dim": self.dim, "fingerprint": self.fingerprint, "model_id": f"aa-{self.argument.replace(':', '-')}"}
