"""Embedders turn DNA strings into fixed-size vectors behind one small interface.

Every embedder has ``dim``, ``fingerprint`` (changes whenever the vectors it
would produce change: weights, config, pooling, k), ``describe()`` (the
provenance dict stored with a store) and ``embed(sequences) -> (n, dim)
float32``. The pipeline only ever talks to this interface, so tests inject
tiny embedders and the store can rebuild the exact embedder it was made with.
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    dim: int
    fingerprint: str

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """Vectors for ``sequences`` (upper/lower case ACGTN), shape (n, dim), float32."""
        ...

    def describe(self) -> dict:
        """JSON-able provenance; ``load_embedder(describe())`` rebuilds an equal embedder."""
        ...


def load_embedder(spec: dict) -> Embedder:
    """Rebuild an embedder from its ``describe()`` dict (or a user spec with the same keys)."""
    kind = spec.get("kind")
    if kind == "kmer":
        from genoembed.embedders.kmer import KmerEmbedder

        return KmerEmbedder(k=int(spec.get("k", 4)), canonical=bool(spec.get("canonical", True)))
    if kind == "transformers":
        from genoembed.embedders.hf import TransformersEmbedder

        options = {key: value for key, value in spec.items() if key not in ("kind", "fingerprint", "dim", "model_id")}
        options.setdefault("frames", 1)  # stores written before frames existed hold single-frame vectors
        return TransformersEmbedder(**options)
    from genoembed.errors import ModelError

    raise ModelError(f"unknown embedder kind {kind!r}; expected 'kmer' or 'transformers'")
