"""A translation-aware learned embedding (``--model protein``), run in numpy.

The tile is translated in its six frames (:func:`genoembed.embedders.translated.six_frames`); each
frame's residues (20 amino acids, stop, unknown) go through a residue embedding and one 1-D
convolution (ReLU), are mean-pooled over the frame and projected; a learned score per frame
vector weighs the six frames (soft-max), so the coding frame can dominate wherever it lies, and
the six frames of a reverse complement are the same set (strand-invariant by construction).

Inference needs no torch: embedding followed by a convolution is a sum of per-offset look-up
tables (``table[o][residue] = embedding[residue] @ weight[o]``), so a frame costs ``width``
fancy-indexed adds per residue. :mod:`genoembed.train.protein` trains the same network in torch
and writes ``model.safetensors`` + ``config.json`` that :class:`ProteinEmbedder` reads.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from genoembed.embedders.translated import FRAMES, UNKNOWN, six_frames
from genoembed.errors import ModelError

WEIGHTS, CONFIG = "model.safetensors", "config.json"
TENSORS = ("embedding", "conv_weight", "conv_bias", "projection_weight", "projection_bias", "frame_score_weight",
           "frame_score_bias")


def load_weights(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config, tensors)`` of a model directory, with a one-line error naming what is missing."""
    from safetensors.numpy import load_file

    if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
        raise ModelError(f"{directory}: not a protein model directory (needs {WEIGHTS} and {CONFIG}); "
                         "train one with `python -m genoembed.train.protein`")
    config = json.loads((directory / CONFIG).read_text())
    tensors = load_file(directory / WEIGHTS)
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise ModelError(f"{directory / WEIGHTS}: missing tensors {', '.join(missing)}; retrain or re-export it")
    return config, tensors


def frame_codes(sequence: str, width: int) -> np.ndarray:
    """(6, L) residue codes of the six frames, each followed by at least ``width - 1`` UNKNOWN (padding).

    Every residue then starts one convolution window, whatever the padded length, so the vector
    does not depend on how far a batch pads (windows starting on padding are masked out)."""
    frames = six_frames(sequence)
    length = max(len(f) for f in frames) + width - 1
    out = np.full((FRAMES, length), UNKNOWN, dtype=np.int64)
    for row, residues in enumerate(frames):
        out[row, :len(residues)] = residues
    return out


class ProteinEmbedder:
    """The trained translation-aware encoder of a model directory (numpy forward pass, L2-normalised)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config, tensors = load_weights(self.directory)
        embedding, conv = tensors["embedding"], tensors["conv_weight"]  # (22, E), (C, E, W)
        self.width = conv.shape[2]
        # table[o, residue] = embedding[residue] @ conv[:, :, o].T : embedding + convolution as look-ups
        self.tables = np.einsum("re,cew->wrc", embedding, conv).astype(np.float32)
        self.tables[:, UNKNOWN] = 0.0  # unknown residues are padding (the embedding's padding row is 0)
        self.conv_bias = tensors["conv_bias"]
        self.projection = (tensors["projection_weight"].T, tensors["projection_bias"])
        self.frame_score = (tensors["frame_score_weight"].T, tensors["frame_score_bias"])
        self.dim = int(self.projection[0].shape[1])
        digest = hashlib.sha256()
        for name in TENSORS:
            digest.update(np.ascontiguousarray(tensors[name]).tobytes())
        self.fingerprint = digest.hexdigest()[:16]

    def frame_vectors(self, codes: np.ndarray) -> np.ndarray:
        """(n, 6, dim) projected frame vectors of (n, 6, L) residue codes."""
        n, frames, length = codes.shape
        flat = codes.reshape(n * frames, length)
        positions = length - self.width + 1
        hidden = np.broadcast_to(self.conv_bias, (n * frames, positions, len(self.conv_bias))).copy()
        for offset in range(self.width):
            hidden += self.tables[offset][flat[:, offset:offset + positions]]
        np.maximum(hidden, 0.0, out=hidden)
        valid = (flat[:, :positions] != UNKNOWN).astype(np.float32)
        pooled = (valid[:, None, :] @ hidden)[:, 0] / np.maximum(valid.sum(axis=1, keepdims=True), 1)
        return (pooled @ self.projection[0] + self.projection[1]).reshape(n, frames, -1)

    def embed(self, sequences: Sequence[str], batch: int = 1) -> np.ndarray:
        """Unit vectors; ``batch`` tiles per pass (1 measured fastest: the hidden array stays in cache)."""
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for first in range(0, len(sequences), batch):
            coded = [frame_codes(s, self.width) for s in sequences[first:first + batch]]
            codes = np.full((len(coded), FRAMES, max(c.shape[1] for c in coded)), UNKNOWN, dtype=np.int64)
            for row, tile in enumerate(coded):
                codes[row, :, :tile.shape[1]] = tile
            frames = self.frame_vectors(codes)
            scores = (frames @ self.frame_score[0] + self.frame_score[1])[..., 0]
            weights = np.exp(scores - scores.max(axis=1, keepdims=True))
            out[first:first + len(coded)] = np.einsum("nf,nfd->nd", weights / weights.sum(axis=1, keepdims=True),
                                                      frames)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def describe(self) -> dict:
        return {"kind": "protein", "argument": str(self.directory), "dim": self.dim,
                "fingerprint": self.fingerprint, "model_id": self.config.get("name", self.directory.name)}
