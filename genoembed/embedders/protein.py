"""Translation-aware learned embeddings (``--model protein``), run in numpy.

The tile is translated in its six frames (:func:`genoembed.embedders.translated.six_frames`); each
frame's residues (20 amino acids, stop, unknown) go through a residue embedding and one 1-D
convolution (ReLU), are mean-pooled over the frame and projected; a learned score per frame
vector weighs the six frames (soft-max), so the coding frame can dominate wherever it lies, and
the six frames of a reverse complement are the same set (strand-invariant by construction).

Inference needs no torch: embedding followed by a convolution is a sum of per-offset look-up
tables (``table[o][residue] = embedding[residue] @ weight[o]``), so a frame costs ``width``
fancy-indexed adds per residue. :mod:`genoembed.train.protein` trains the same network in torch
and writes ``model.safetensors`` + ``config.json`` that :class:`ProteinEmbedder` reads.

:class:`DilatedProteinEmbedder` (issue 27) reads a deeper network from the same kind of directory
(``config["architecture"]`` starts with ``dilated``): the same first convolution as look-up tables,
then residual dilated convolutions over each frame (context of ~20 residues), then attention and
max pooling over every position of all six frames at once, so the coding part of a tile that only
half overlaps a gene dominates the vector instead of being averaged with the rest of its frame.
:func:`protein_embedder` picks the class a directory needs.
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


DILATED_TENSORS = ("embedding", "conv_weight", "conv_bias", "attention_weight", "attention_bias",
                   "projection_weight", "projection_bias")


def load_weights(directory: Path, names: Sequence[str] = TENSORS) -> tuple[dict, dict[str, np.ndarray]]:
    """``(config, tensors)`` of a model directory, with a one-line error naming what is missing."""
    from safetensors.numpy import load_file

    if not (directory / WEIGHTS).is_file() or not (directory / CONFIG).is_file():
        raise ModelError(f"{directory}: not a protein model directory (needs {WEIGHTS} and {CONFIG}); "
                         "train one with `python -m genoembed.train.protein`")
    config = json.loads((directory / CONFIG).read_text())
    tensors = load_file(directory / WEIGHTS)
    missing = [name for name in names if name not in tensors]
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


def fingerprint_of(tensors: dict[str, np.ndarray], names: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for name in names:
        digest.update(np.ascontiguousarray(tensors[name]).tobytes())
    return digest.hexdigest()[:16]


def residue_tables(embedding: np.ndarray, conv: np.ndarray) -> np.ndarray:
    """(width, 22, C) look-up tables of embedding followed by convolution; UNKNOWN (padding) adds nothing."""
    tables = np.einsum("re,cew->wrc", embedding, conv).astype(np.float32)
    tables[:, UNKNOWN] = 0.0
    return tables


class ProteinEmbedder:
    """The trained translation-aware encoder of a model directory (numpy forward pass, L2-normalised)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config, tensors = load_weights(self.directory)
        embedding, conv = tensors["embedding"], tensors["conv_weight"]  # (22, E), (C, E, W)
        self.width = conv.shape[2]
        # table[o, residue] = embedding[residue] @ conv[:, :, o].T : embedding + convolution as look-ups
        self.tables = residue_tables(embedding, conv)
        self.conv_bias = tensors["conv_bias"]
        self.projection = (tensors["projection_weight"].T, tensors["projection_bias"])
        self.frame_score = (tensors["frame_score_weight"].T, tensors["frame_score_bias"])
        self.dim = int(self.projection[0].shape[1])
        self.fingerprint = fingerprint_of(tensors, TENSORS)

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


def residue_codes(sequences: Sequence[str]) -> np.ndarray:
    """(n, 6, L) residue codes of the six frames of each sequence, padded with UNKNOWN to the longest frame."""
    frames = [six_frames(s) for s in sequences]
    length = max((len(f) for tile in frames for f in tile), default=1)
    out = np.full((len(sequences), FRAMES, max(length, 1)), UNKNOWN, dtype=np.int64)
    for row, tile in enumerate(frames):
        for frame, residues in enumerate(tile):
            out[row, frame, :len(residues)] = residues
    return out


class DilatedProteinEmbedder:
    """The issue-27 encoder: residue convolution, residual dilated convolutions per frame, attention + max
    pooling over all positions of the six frames, linear projection, L2 norm (numpy forward pass).

    Padding and unknown residues (``N``) are masked to zero after every layer, so a vector does not depend
    on how far its batch pads; the six frames of a reverse complement are the same set and pooling is over
    the set, so the vector is strand-invariant by construction.
    """

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.config, tensors = load_weights(self.directory, DILATED_TENSORS)
        self.dilations = [int(d) for d in self.config["dilations"]]
        self.layers = []
        for number, dilation in enumerate(self.dilations):
            weight = tensors.get(f"dilated_{number}_weight")
            if weight is None:
                raise ModelError(f"{self.directory / WEIGHTS}: missing tensor dilated_{number}_weight")
            out_channels, in_channels, taps = weight.shape  # torch Conv1d layout
            # columns of taps side by side: x[p - d], x[p], x[p + d] concatenated -> one matrix product
            self.layers.append((dilation, weight.transpose(2, 1, 0).reshape(taps * in_channels, out_channels)
                                .astype(np.float32), tensors[f"dilated_{number}_bias"].astype(np.float32)))
        self.tables = residue_tables(tensors["embedding"], tensors["conv_weight"])
        self.width = self.tables.shape[0]
        self.conv_bias = tensors["conv_bias"].astype(np.float32)
        self.attention = (tensors["attention_weight"].T.astype(np.float32), tensors["attention_bias"])
        self.projection = (tensors["projection_weight"].T.astype(np.float32), tensors["projection_bias"])
        self.dim = int(self.projection[0].shape[1])
        self.fingerprint = fingerprint_of(tensors, (*DILATED_TENSORS, *(f"dilated_{i}_{part}" for i in
                                                                       range(len(self.dilations))
                                                                       for part in ("weight", "bias"))))

    def hidden(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, L, C) features and (rows, L) mask of (rows, L) residue codes (one row per frame)."""
        rows, length = codes.shape
        half = self.width // 2
        padded = np.full((rows, length + 2 * half), UNKNOWN, dtype=codes.dtype)
        padded[:, half:half + length] = codes
        hidden = np.broadcast_to(self.conv_bias, (rows, length, len(self.conv_bias))).copy()
        for offset in range(self.width):
            hidden += self.tables[offset][padded[:, offset:offset + length]]
        mask = (codes != UNKNOWN).astype(np.float32)[..., None]
        np.maximum(hidden, 0.0, out=hidden)
        hidden *= mask
        channels = hidden.shape[2]
        for dilation, weight, bias in self.layers:
            taps = weight.shape[0] // channels
            reach = dilation * (taps // 2)
            wide = np.zeros((rows, length + 2 * reach, channels), dtype=np.float32)
            wide[:, reach:reach + length] = hidden
            stacked = np.concatenate([wide[:, t * dilation:t * dilation + length] for t in range(taps)], axis=2)
            update = stacked @ weight + bias
            np.maximum(update, 0.0, out=update)
            hidden += update * mask
        return hidden, mask[..., 0]

    def embed(self, sequences: Sequence[str], batch: int = 4) -> np.ndarray:
        """Unit vectors, ``batch`` tiles per pass."""
        out = np.zeros((len(sequences), self.dim), dtype=np.float32)
        for first in range(0, len(sequences), batch):
            codes = residue_codes(sequences[first:first + batch])
            n, frames, length = codes.shape
            hidden, mask = self.hidden(codes.reshape(n * frames, length))
            hidden = hidden.reshape(n, frames * length, -1)
            mask = mask.reshape(n, frames * length)
            scores = hidden @ self.attention[0] + self.attention[1]  # (n, positions, heads)
            scores = np.where(mask[..., None] > 0, scores, -np.inf)
            scores -= np.maximum(scores.max(axis=1, keepdims=True), -1e30)
            weights = np.exp(scores)
            weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-30)
            attended = np.einsum("nph,npc->nhc", weights, hidden).reshape(n, -1)
            pooled = np.concatenate([attended, hidden.max(axis=1)], axis=1)
            out[first:first + n] = pooled @ self.projection[0] + self.projection[1]
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def describe(self) -> dict:
        return {"kind": "protein", "argument": str(self.directory), "dim": self.dim,
                "fingerprint": self.fingerprint, "model_id": self.config.get("name", self.directory.name)}


def protein_embedder(directory: str | Path):
    """The embedder class a trained protein model directory needs (by its ``config.json`` architecture)."""
    config_path = Path(directory) / CONFIG
    architecture = json.loads(config_path.read_text()).get("architecture", "") if config_path.is_file() else ""
    return DilatedProteinEmbedder(directory) if architecture.startswith("dilated") else ProteinEmbedder(directory)
