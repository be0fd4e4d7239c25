"""What every embedder is and how it is asked to embed: the interface, the pooling choices, the options.

Kept apart from the registry (``genoembed.embedders``) so that embedder
implementations can import it without importing the registry that loads them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import Enum
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from genoembed.seqio import reverse_complement


class Pooling(str, Enum):
    """How token vectors become one tile vector (transformer models)."""

    mean = "mean"
    max = "max"
    cls = "cls"


POOLINGS = tuple(pooling.value for pooling in Pooling)


@runtime_checkable
class Embedder(Protocol):
    """Anything that turns DNA strings into (n, dim) float32 vectors and can say how (``describe``)."""

    dim: int
    fingerprint: str

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """Vectors for ``sequences`` (upper/lower case ACGTN), shape (n, dim), float32."""
        ...

    def describe(self) -> dict:
        """JSON-able provenance; ``load_embedder(describe())`` rebuilds an equal embedder."""
        ...


@dataclass(frozen=True)
class EmbedderOptions:
    """How a model embeds a tile. ``None`` leaves the model's own default; k-mer models take none of these.

    The same names are the recipe's ``[model]`` keys and the `genoembed index` options.
    """

    pooling: str | None = None  # mean | max | cls: token vectors -> one tile vector
    layer: int | None = None  # hidden layer to pool, -1 = last
    frames: int | None = None  # reading frames averaged per strand (k-mer tokenizers)
    reverse_complement: bool | None = None  # average each tile with its reverse complement
    dtype: str | None = None  # auto | float32 | bfloat16 | float16
    compile: bool | None = None  # torch.compile the model
    batch_size: int | None = None  # sequences per forward pass
    device: str | None = None  # auto | cpu | cuda | cuda:N
    trust_remote_code: bool | None = None  # let a model directory run its own Python code

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(field.name for field in dataclasses.fields(cls))

    def given(self) -> dict:
        """The options that were set, as keyword arguments."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}

    def merged(self, overrides: "EmbedderOptions") -> "EmbedderOptions":
        """These options with every option set in ``overrides`` replacing its value."""
        return dataclasses.replace(self, **overrides.given())


def strand_invariant(embedder: Embedder, length: int) -> bool:
    """True when ``embedder`` gives a sequence and its reverse complement the same vector (canonical
    k-mer counts, transformer vectors averaged over both strands, plugins alike), tried on a seeded
    random sequence of one tile's length rather than trusted from settings."""
    described = embedder.describe()
    if described.get("reverse_complement") is True or described.get("canonical") is True:
        return True  # averaged over both strands (or canonical k-mers) by construction: no probe needed
    known = _INVARIANCE.get((embedder.fingerprint, length))
    if known is not None:
        return known
    probe = "".join(np.random.default_rng(0).choice(list("ACGT"), size=length))
    forward, reverse = embedder.embed([probe, reverse_complement(probe)])
    cosine = float(forward @ reverse) / max(float(np.linalg.norm(forward) * np.linalg.norm(reverse)), 1e-12)
    _INVARIANCE[(embedder.fingerprint, length)] = invariant = cosine > 0.9999
    return invariant


_INVARIANCE: dict[tuple[str, int], bool] = {}  # the probe's answer per model fingerprint and tile length
