"""k-mer spectrum baseline: a fast, training-free, alignment-free vector."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from genoembed.seqio import encode_bases, kmer_index, reverse_complement_codes

def kmer_indices(codes: np.ndarray, k: int) -> np.ndarray:
    """Base-4 index (int64) of every k-mer of a 1-D run of base codes that contains no ambiguous base."""
    index, clean = kmer_index(codes[None, :], k)
    return index[clean].astype(np.int64)


class KmerEmbedder:
    """L2-normalised k-mer frequency vector (4**k dims).

    With ``canonical`` (default) the counts of the sequence and of its reverse
    complement are summed, so a tile and its reverse complement get the same
    vector: strand-agnostic like the double-stranded molecule.
    """

    def __init__(self, k: int = 4, canonical: bool = True):
        if not 1 <= k <= 8:
            from genoembed.errors import InputError

            raise InputError(f"k-mer size k={k} is out of range; use 1..8")
        self.k = k
        self.canonical = canonical
        self.dim = 4**k
        self.fingerprint = hashlib.sha256(f"kmer:k={k}:canonical={canonical}".encode()).hexdigest()[:16]

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for row, sequence in enumerate(sequences):
            codes = encode_bases(sequence)
            out[row] = np.bincount(kmer_indices(codes, self.k), minlength=self.dim)
            if self.canonical:
                out[row] += np.bincount(kmer_indices(reverse_complement_codes(codes), self.k), minlength=self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def token_weights(self, sequence: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, k-mer indices, weights) of every counted k-mer on the sequence's forward
        coordinates (a canonical k-mer counted on both strands appears twice): ``bincount(ids, weights)`` is
        :meth:`embed`'s vector before normalising. Lets `genoembed explain` split a cosine exactly over bases."""
        codes = encode_bases(sequence)
        if len(codes) < self.k:
            return (np.empty(0, dtype=np.int64),) * 3 + (np.empty(0),)
        starts = np.flatnonzero(kmer_index(codes[None, :], self.k)[1][0])
        ids = [kmer_indices(codes, self.k)]
        if self.canonical:  # the reverse strand's k-mers, in the order of their forward starts
            ids.append(kmer_indices(reverse_complement_codes(codes), self.k)[::-1])
        ids = np.concatenate(ids)
        starts = np.tile(starts, len(ids) // max(len(starts), 1))
        return starts, np.full(len(ids), self.k), ids, np.ones(len(ids))

    def describe(self) -> dict:
        return {"kind": "kmer", "k": self.k, "canonical": self.canonical, "dim": self.dim,
                "fingerprint": self.fingerprint, "model_id": f"kmer-{self.k}"}
