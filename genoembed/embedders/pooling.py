"""Pooling of token states into one vector per sequence: small pure functions.

Token-level pooling (:func:`mean_pool`, :func:`max_pool`, :func:`cls_pool`)
works on torch tensors so it runs where the model ran (GPU or CPU) and only
``(batch, dim)`` comes back to the host. ``mask`` is the *content* mask: true
for tokens that stand for bases, false for padding and for the special tokens
the tokenizer added (``<cls>``, ``<eos>``, ``[SEP]``...). Build it with
:func:`content_mask` from the tokenizer's ``special_tokens_mask``, not from the
attention mask alone, or ``<cls>``/``<eos>`` leak into the mean.

Sequence-level combination (:func:`combine_chunks`,
:func:`average_strands`, :func:`reverse_complement`) works on numpy: a
sequence longer than the model's window is cut into chunks that fit, each
chunk is embedded, and the chunk vectors are combined weighted by the number
of bases each chunk covers. Nothing is ever truncated.
"""

from __future__ import annotations

import numpy as np
import torch

from genoembed.embedders.base import POOLINGS
from genoembed.errors import InputError




# --------------------------------------------------------------------------- token pooling (torch)


def content_mask(attention_mask, special_tokens_mask):
    """True where a token is real (attended) and not a tokenizer-added special token."""
    return (attention_mask != 0) & (special_tokens_mask == 0)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` (b, t, d) over the tokens where ``mask`` (b, t) is true, in float32."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    counts = weights.sum(dim=1)
    _require_content(counts)
    return (hidden.to(torch.float32) * weights).sum(dim=1) / counts


def max_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Element-wise max of ``hidden`` (b, t, d) over the tokens where ``mask`` is true."""
    _require_content(mask.sum(dim=1))
    hidden = hidden.to(torch.float32)
    lowest = torch.finfo(torch.float32).min
    return hidden.masked_fill(~mask.bool().unsqueeze(-1), lowest).amax(dim=1)


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The state of the first token (the ``<cls>``/``[CLS]`` token the tokenizer puts first)."""
    return hidden[:, 0].to(torch.float32)


def pool(hidden: torch.Tensor, mask: torch.Tensor, method: str) -> torch.Tensor:
    """Dispatch to :func:`mean_pool`, :func:`max_pool` or :func:`cls_pool`."""
    if method == "mean":
        return mean_pool(hidden, mask)
    if method == "max":
        return max_pool(hidden, mask)
    if method == "cls":
        return cls_pool(hidden, mask)
    raise InputError(f"unknown pooling {method!r}; use one of {', '.join(POOLINGS)}")


def _require_content(counts: torch.Tensor) -> None:
    if bool((counts == 0).any()):
        raise InputError("a sequence has no base tokens to pool (empty, or shorter than the model's k-mer)")


# --------------------------------------------------------------------------- sequences and chunks (numpy)


def combine_chunks(vectors: np.ndarray, weights: np.ndarray, owners: np.ndarray, n: int,
                   how: str = "mean") -> np.ndarray:
    """One vector per owner from its chunk vectors.

    ``vectors`` (m, d) are chunk embeddings, ``owners`` (m,) the index of the
    sequence each chunk belongs to (0..n-1), ``weights`` (m,) the bases each
    chunk covers. ``how="mean"``: the weighted mean (for mean/CLS pooling, so a
    mean-pooled sequence is the mean over all its bases whatever the chunking);
    ``how="max"``: the element-wise max (so max pooling stays a max over all
    tokens). Every owner must have at least one chunk.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    owners = np.asarray(owners, dtype=np.int64)
    weights = np.asarray(weights, dtype=np.float64)
    counts = np.bincount(owners, minlength=n)
    if counts.shape[0] != n or (counts == 0).any():
        raise InputError("every sequence needs at least one chunk")
    out = np.zeros((n, vectors.shape[1]), dtype=np.float64)
    if how == "max":
        out[:] = -np.inf
        np.maximum.at(out, owners, vectors)
        return out.astype(np.float32)
    if how != "mean":
        raise InputError(f"unknown chunk combination {how!r}; use 'mean' or 'max'")
    np.add.at(out, owners, vectors * weights[:, None])
    totals = np.bincount(owners, weights=weights, minlength=n)
    return (out / totals[:, None]).astype(np.float32)


def average_strands(forward: np.ndarray, reverse: np.ndarray) -> np.ndarray:
    """Mean of the forward-strand and reverse-complement embeddings (strand-agnostic vector)."""
    return ((np.asarray(forward, dtype=np.float64) + np.asarray(reverse, dtype=np.float64)) / 2).astype(np.float32)
