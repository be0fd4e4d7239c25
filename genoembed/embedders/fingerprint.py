"""The fingerprint of a transformers model directory plus embedding settings, without torch.

Stores record the fingerprint of the embedder they were built with and refuse
to reopen when it changes, so every embedder that serves a model directory
(:class:`genoembed.embedders.hf.TransformersEmbedder`, and the torch-free
:class:`genoembed.embedders.table.TokenTableEmbedder`) must compute it with
this one function: same files and settings, same fingerprint, whichever
embedder wrote the store.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from genoembed.errors import ModelError

#: Tokenizer files hashed into the fingerprint; equal to ``families.TOKENIZER_FILES`` (checked by a test,
#: as ``families`` imports torch and this module must not).
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "trainer_state")


def model_fingerprint(files_digest: bytes, settings: dict) -> str:
    """16 hex digits over a :func:`directory_digest` and the settings that shape the vectors."""
    digest = hashlib.sha256(b"genoembed.transformers.v1\0")
    digest.update(files_digest)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def fingerprint_settings(family: str, pooling: str, layer: int, reverse_complement: bool, max_tokens: int,
                         frames: int) -> dict:
    """The settings hashed into the fingerprint; ``frames`` only when not 1, so single-frame
    fingerprints stay those of releases before frames existed."""
    settings = {
        "family": family, "pooling": pooling, "layer": layer,
        "reverse_complement": reverse_complement, "max_tokens": max_tokens,
    }
    if frames != 1:
        settings["frames"] = frames
    return settings


def weight_files(directory: Path) -> list[Path]:
    """Weight files (and shard indexes) of a model directory, training state left out."""
    return [
        p for p in sorted(directory.iterdir())
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
        and not p.name.startswith(_NOT_WEIGHTS)
    ]


_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def file_digest(path: Path) -> bytes:
    """sha256 of a file's bytes, streamed; memoised by (path, size, mtime)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    cached = _FILE_DIGESTS.get(key)
    if cached is None:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 22), b""):
                digest.update(block)
        cached = _FILE_DIGESTS[key] = digest.digest()
    return cached


def directory_digest(directory: Path) -> bytes:
    """One digest over config, tokenizer files, custom code and every weight file."""
    weights = weight_files(directory)
    if not [p for p in weights if not p.name.endswith(".json")]:
        raise ModelError(
            f"{directory} holds no weights (model.safetensors or pytorch_model.bin); "
            "copy the model's weight files next to its config.json"
        )
    names = {"config.json", *TOKENIZER_FILES}
    files = [p for p in sorted(directory.iterdir())
             if p.is_file() and (p.name in names or p.suffix == ".py")] + weights
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        try:
            digest.update(path.name.encode() + b"\0" + file_digest(path))
        except OSError as err:
            raise ModelError(f"cannot read {path}: {err.strerror}; check its permissions or copy it again") from None
    return digest.digest()
