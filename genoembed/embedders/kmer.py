"""k-mer spectrum baseline: a fast, training-free, alignment-free vector."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

from genoembed.seqio import encode_bases

def kmer_indices(codes: np.ndarray, k: int) -> np.ndarray:
    """Base-4 index (int64) of every k-mer that contains no ambiguous base."""
    index, clean = kmer_index_rows(codes[None, :], k)
    return index[clean].astype(np.int64)


def kmer_index_rows(codes: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, length - k + 1) base-4 index of every k-mer of each row of base codes, and which hold no
    ambiguous base (code >= 4); the index of those that do is meaningless.

    Built in place by k shifted adds over whole rows (a rolling base-4 number, int32 up to k = 15) and
    checked by a running count of ambiguous bases: several times faster than a (length x k) window matrix.
    """
    count = max(codes.shape[1] - k + 1, 0)
    index = np.zeros((len(codes), count), dtype=np.int32 if k <= 15 else np.int64)
    for offset in range(k if count else 0):
        index *= 4
        index += codes[:, offset:offset + count]
    ambiguous = codes >= 4
    if not ambiguous.any():
        return index, np.ones(index.shape, dtype=bool)
    running = np.zeros((len(codes), codes.shape[1] + 1), dtype=np.int32)
    np.cumsum(ambiguous, axis=1, out=running[:, 1:])
    return index, running[:, k:k + count] == running[:, :count]


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
                reverse_complement = np.where(codes < 4, 3 - codes, 4)[::-1]
                out[row] += np.bincount(kmer_indices(reverse_complement, self.k), minlength=self.dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def token_weights(self, sequence: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, k-mer indices, weights) of every counted k-mer on the sequence's forward
        coordinates (a canonical k-mer counted on both strands appears twice): ``bincount(ids, weights)`` is
        :meth:`embed`'s vector before normalising. Lets `genoembed explain` split a cosine exactly over bases."""
        codes = encode_bases(sequence)
        if len(codes) < self.k:
            return (np.empty(0, dtype=np.int64),) * 3 + (np.empty(0),)
        starts = np.flatnonzero((np.lib.stride_tricks.sliding_window_view(codes, self.k) < 4).all(axis=1))
        ids = [kmer_indices(codes, self.k)]
        if self.canonical:  # the reverse strand's k-mers, in the order of their forward starts
            ids.append(kmer_indices(np.where(codes < 4, 3 - codes, 4)[::-1], self.k)[::-1])
        ids = np.concatenate(ids)
        starts = np.tile(starts, len(ids) // max(len(starts), 1))
        return starts, np.full(len(ids), self.k), ids, np.ones(len(ids))

    def describe(self) -> dict:
        return {"kind": "kmer", "k": self.k, "canonical": self.canonical, "dim": self.dim,
                "fingerprint": self.fingerprint, "model_id": f"kmer-{self.k}"}
