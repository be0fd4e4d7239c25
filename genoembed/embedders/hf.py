"""Embed DNA with a Hugging Face transformers model loaded from a local directory.

Nothing is ever downloaded: every ``from_pretrained`` call is
``local_files_only=True``. Models whose directory ships Python code (an
``auto_map`` in ``config.json`` or ``tokenizer_config.json``) load only with
``trust_remote_code=True``; :mod:`genoembed.embedders.families` decides which
family a directory holds and how to tokenise for it.

The embed path, for a list of sequences:

1. normalise case / IUPAC letters as the vocabulary wants;
2. plan pieces: each sequence (and its reverse complement when RC averaging
   is on) is cut into chunks that fit the model's window (a tile that fits is
   one chunk);
3. tokenise every piece at once (vectorised for k-mer and single-base
   vocabularies), pad to the longest;
4. run the model in batches of pieces sorted by token length, each batch
   sliced to its own longest row, under ``torch.inference_mode``;
5. pool each piece over its content tokens (mean / max / CLS) on the device;
6. combine chunks weighted by bases covered, then average the two strands.

Steps 3 and 4 are separate so a later throughput pass can overlap them
(producer thread, pinned memory, CUDA graphs) without touching the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genoembed.embedders import families as fam
from genoembed.embedders.pooling import (
    POOLINGS,
    average_strands,
    chunk_spans,
    combine_chunks,
    pool,
    reverse_complement,
)
from genoembed.errors import InputError, MissingExtraError, ModelError

log = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
_NOT_WEIGHTS = ("training_args", "optimizer", "scheduler", "rng_state", "trainer_state")
_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, KeyError, TypeError, AttributeError)


class TransformersEmbedder:
    """A DNA language model from a local directory behind the ``Embedder`` interface.

    Parameters
    ----------
    model_path : directory with ``config.json``, tokenizer files and weights.
    pooling : ``mean`` | ``max`` | ``cls`` over the content (non-special) tokens.
    layer : which hidden state: 0 = embedding output, 1..L = layer outputs,
        negative counts from the end; -1 = the final (normed) output.
    reverse_complement : ``"auto"`` (on unless the model is RC-equivariant),
        True or False. On: the vector is the mean of the sequence's and its
        reverse complement's vectors.
    batch_size : pieces per forward pass.
    device : ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype : ``"auto"`` (bfloat16 on CUDA, float32 on CPU) or ``float32`` / ``bfloat16`` / ``float16``.
    max_tokens : tokens per forward input (special tokens included); default the
        model's limit. Longer sequences are cut into chunks, never truncated.
    trust_remote_code : allow the Python code shipped in the directory to run.
    family : ``"auto"`` or a name from :data:`genoembed.embedders.families.FAMILIES`.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        pooling: str = "mean",
        layer: int = -1,
        reverse_complement: bool | str = "auto",
        batch_size: int = 64,
        device: str = "auto",
        dtype: str = "auto",
        max_tokens: int | None = None,
        trust_remote_code: bool = False,
        family: str = "auto",
    ):
        if pooling not in POOLINGS:
            raise InputError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch size must be a positive integer, got {batch_size!r}")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InputError(f"layer must be an integer (-1 = last), got {layer!r}")
        rc_option = _rc_option(reverse_complement)

        self.model_path = str(model_path)
        self.directory = Path(model_path).expanduser()
        self.pooling = pooling
        self.layer = layer
        self.batch_size = batch_size
        self.notes: list[str] = []

        config = fam.read_config(self.directory)
        tokenizer_config = fam.read_tokenizer_config(self.directory)
        vocab = fam.read_vocab(self.directory)
        self.family = fam.detect_family(self.directory, config, tokenizer_config, vocab, family)
        if self.family.custom_code and not trust_remote_code:
            raise ModelError(
                f"{self.directory} contains custom code; rerun with --trust-remote-code if you trust it "
                f"(its config.json or tokenizer_config.json has an auto_map: this {self.family.name} model "
                "runs Python shipped with it; Python API: trust_remote_code=True)"
            )
        fam.require_extra(self.family)
        file_digest = _directory_digest(self.directory)

        self.device = _resolve_device(device)
        self.dtype = _resolve_dtype(dtype, self.device)
        tokenizer = _load_tokenizer(self.directory, trust_remote_code)
        model, self.attention = _load_model(self.directory, self.family, config, trust_remote_code, self.dtype)
        model.to(self.device).eval().requires_grad_(False)
        self.model = model
        self.adapter = fam.make_adapter(self.family, tokenizer, model)
        self.notes += self.adapter.notes

        self.reverse_complement = (not self.family.rc_equivariant) if rc_option == "auto" else rc_option
        self.max_tokens = self._resolve_max_tokens(max_tokens, config, tokenizer)
        self._max_content = self.max_tokens - self.adapter.n_special
        if self._max_content < max(1, self.adapter.step):
            raise InputError(
                f"max_tokens={self.max_tokens} leaves room for {self._max_content} base tokens; "
                f"raise it above {self.adapter.n_special + self.adapter.step}"
            )
        self._chunk_bases = self.adapter.max_chunk_bases(self._max_content)
        if pooling == "cls" and not self.adapter.has_cls:
            raise InputError(
                f"{self.family.name} model's tokenizer puts no CLS token first; use --pooling mean or max"
            )

        self.model_id = str(config.get("_name_or_path") or self.directory.resolve().name)
        probe = self._embed_batch(self.adapter.tokenize([self.adapter.normalize("ACGT" * 8)]))
        self.dim = int(probe.shape[1])
        settings = {
            "family": self.family.name, "pooling": pooling, "layer": layer,
            "reverse_complement": self.reverse_complement, "max_tokens": self.max_tokens,
        }
        digest = hashlib.sha256(b"genoembed.transformers.v1\0")
        digest.update(file_digest)
        digest.update(json.dumps(settings, sort_keys=True).encode())
        self.fingerprint = digest.hexdigest()[:16]

    # ------------------------------------------------------------------ Embedder interface

    def describe(self) -> dict:
        """Provenance; ``load_embedder(describe())`` rebuilds this embedder (trust_remote_code
        is deliberately not recorded: a store never grants code execution by itself)."""
        return {
            "kind": "transformers",
            "model_path": self.model_path,
            "model_id": self.model_id,
            "family": self.family.name,
            "pooling": self.pooling,
            "layer": self.layer,
            "reverse_complement": self.reverse_complement,
            "max_tokens": self.max_tokens,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
        }

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors; long sequences chunked, strands averaged when RC is on."""
        n = len(sequences)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        normalized = self._normalize_all(sequences)
        records, batch = self._plan(normalized)
        vectors = self._embed_batch(batch)
        owners, strands = records[:, 0], records[:, 1]
        weights = records[:, 3] - records[:, 2]
        how = "max" if self.pooling == "max" else "mean"
        forward = strands == 0
        out = combine_chunks(vectors[forward], weights[forward], owners[forward], n, how)
        if self.reverse_complement:
            reverse = ~forward
            out = average_strands(out, combine_chunks(vectors[reverse], weights[reverse], owners[reverse], n, how))
        return out

    # ------------------------------------------------------------------ internals

    def _normalize_all(self, sequences: Sequence[str]) -> list[str]:
        out = []
        minimum = self.adapter.min_bases()
        for i, sequence in enumerate(sequences):
            if not isinstance(sequence, str):
                raise InputError(f"sequence {i} is a {type(sequence).__name__}, expected str")
            if len(sequence) < minimum:
                raise InputError(
                    f"sequence {i} has {len(sequence)} bases; the {self.family.name} model needs at least {minimum}"
                )
            out.append(self.adapter.normalize(sequence))
        return out

    def _plan(self, normalized: list[str]) -> tuple[np.ndarray, "fam.TokenBatch"]:
        """Pieces (owner, strand, start, end) that each fit the model, and their tokens."""
        strands = (0, 1) if self.reverse_complement else (0,)
        texts: dict[tuple[int, int], str] = {}
        records: list[tuple[int, int, int, int]] = []
        for owner, sequence in enumerate(normalized):
            for strand in strands:
                text = sequence if strand == 0 else reverse_complement(sequence)
                texts[owner, strand] = text
                for start, end in chunk_spans(len(text), self._chunk_bases, self.adapter.step).tolist():
                    records.append((owner, strand, start, end))
        # A chunk whose tokens still do not fit (N runs in k-mer vocabularies, BPE) is split again.
        for _ in range(64):
            pieces = [self.adapter.piece(texts[o, s], a, b) for o, s, a, b in records]
            batch = self.adapter.tokenize(pieces)
            too_long = set(np.flatnonzero(batch.content_counts > self._max_content).tolist())
            if not too_long:
                return np.asarray(records, dtype=np.int64).reshape(-1, 4), batch
            refined = []
            for index, (o, s, a, b) in enumerate(records):
                if index not in too_long:
                    refined.append((o, s, a, b))
                    continue
                step = self.adapter.step
                if b - a <= step:
                    raise ModelError(f"{b - a} bases need more than {self._max_content} tokens; raise max_tokens")
                half = -(-((b - a + 1) // 2) // step) * step
                refined += [(o, s, a + x, a + y) for x, y in chunk_spans(b - a, half, step).tolist()]
            records = refined
        raise ModelError("could not cut sequences into chunks that fit the model; raise max_tokens")

    def _embed_batch(self, batch: "fam.TokenBatch") -> np.ndarray:
        """Pooled vectors (m, dim) for every row of ``batch``, in its row order."""
        m = batch.input_ids.shape[0]
        lengths = batch.lengths
        order = np.argsort(-lengths, kind="stable")
        out: np.ndarray | None = None
        for rows in self._batches(order, lengths):
            width = int(lengths[rows].max())
            ids = torch.from_numpy(np.ascontiguousarray(batch.input_ids[rows, :width])).to(self.device)
            attention = torch.from_numpy(np.ascontiguousarray(batch.attention_mask[rows, :width])).to(self.device)
            mask = torch.from_numpy(np.ascontiguousarray(batch.content_mask[rows, :width])).to(self.device)
            with torch.inference_mode():
                hidden = self.adapter.forward(ids, attention, self.layer)
                pooled = self.adapter.finish(pool(hidden, mask, self.pooling)).float().cpu().numpy()
            if out is None:
                out = np.empty((m, pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        return out if out is not None else np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)

    def _batches(self, order: np.ndarray, lengths: np.ndarray):
        """Row groups of at most batch_size; equal token length only when the model takes no mask."""
        if self.adapter.takes_attention_mask:
            for start in range(0, len(order), self.batch_size):
                yield order[start : start + self.batch_size]
            return
        sorted_lengths = lengths[order]
        cuts = np.flatnonzero(np.diff(sorted_lengths)) + 1
        for run in np.split(order, cuts):
            for start in range(0, len(run), self.batch_size):
                yield run[start : start + self.batch_size]

    def _resolve_max_tokens(self, requested: int | None, config: dict, tokenizer) -> int:
        limit, hard = fam.max_model_tokens(config, tokenizer)
        if requested is None:
            if limit is None:
                limit = 4096
                self.notes.append("the model states no maximum length; using 4096 tokens per chunk")
            return int(limit)
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
            raise InputError(f"max_tokens must be a positive integer, got {requested!r}")
        if hard and limit is not None and requested > limit:
            raise InputError(
                f"max_tokens={requested} exceeds the model's {limit} positions; use at most {limit}"
            )
        return requested


# ---------------------------------------------------------------------- loading


def _rc_option(value) -> bool | str:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false", "on", "off"):
        lowered = value.lower()
        return "auto" if lowered == "auto" else lowered in ("true", "on")
    raise InputError(f"reverse_complement must be 'auto', true or false, got {value!r}")


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu")
    return resolved


def _resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _weight_files(directory: Path) -> list[Path]:
    return [
        p for p in sorted(directory.iterdir())
        if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name.endswith(".index.json"))
        and not p.name.startswith(_NOT_WEIGHTS)
    ]


_FILE_DIGESTS: dict[tuple[str, int, int], bytes] = {}


def _file_digest(path: Path) -> bytes:
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


def _directory_digest(directory: Path) -> bytes:
    """One digest over config, tokenizer files, custom code and every weight file."""
    weights = _weight_files(directory)
    if not [p for p in weights if not p.name.endswith(".json")]:
        raise ModelError(
            f"{directory} holds no weights (model.safetensors or pytorch_model.bin); "
            "copy the model's weight files next to its config.json"
        )
    names = {"config.json", *fam.TOKENIZER_FILES}
    files = [p for p in sorted(directory.iterdir())
             if p.is_file() and (p.name in names or p.suffix == ".py")] + weights
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        try:
            digest.update(path.name.encode() + b"\0" + _file_digest(path))
        except OSError as err:
            raise ModelError(f"cannot read {path}: {err.strerror}; check its permissions or copy it again") from None
    return digest.digest()


@contextmanager
def _quiet_transformers():
    """Silence transformers' load reports and progress bars (genoembed checks loading itself)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_tokenizer(directory: Path, trust_remote_code: bool):
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                 trust_remote_code=trust_remote_code)
    except ImportError as err:
        raise MissingExtraError(f"the tokenizer code in {directory} needs a package that is not installed ({err}); "
                                "install it and rerun") from None
    except _LOAD_ERRORS as err:
        raise ModelError(
            f"cannot load the tokenizer in {directory} ({type(err).__name__}: {_first_line(err)}); "
            "the directory needs the model's tokenizer files (vocab.txt or tokenizer.json and tokenizer_config.json)"
        ) from None


def _load_model(directory: Path, family: fam.Family, config: dict, trust_remote_code: bool,
                dtype: torch.dtype):
    """The base model (no MLM/LM head), its attention implementation; every weight must load."""
    import transformers
    from safetensors import SafetensorError

    auto_map = config.get("auto_map") or {}
    loader_name = "AutoModel"
    if family.custom_code and "AutoModel" not in auto_map:
        candidates = [name for name in ("AutoModelForMaskedLM", "AutoModelForCausalLM") if name in auto_map]
        if not candidates:
            raise ModelError(f"{directory}/config.json auto_map names no AutoModel or AutoModelForMaskedLM class")
        loader_name = candidates[0]
    loader = getattr(transformers, loader_name)
    kwargs = {"local_files_only": True, "trust_remote_code": trust_remote_code, "dtype": dtype,
              "output_loading_info": True}
    if not family.custom_code and str(config.get("model_type")) in ("esm", "bert"):
        kwargs["add_pooling_layer"] = False
    attention = "sdpa"
    try:
        with _quiet_transformers():
            try:
                model, info = loader.from_pretrained(str(directory), attn_implementation="sdpa", **kwargs)
            except ValueError as err:
                if "scaled_dot_product_attention" not in str(err) and "sdpa" not in str(err).lower():
                    raise
                attention = "eager"
                log.info("%s: SDPA attention not supported by this model; using eager attention", directory)
                model, info = loader.from_pretrained(str(directory), attn_implementation="eager", **kwargs)
    except ImportError as err:
        raise MissingExtraError(f"the model code in {directory} needs a package that is not installed ({err}); "
                                "install it and rerun") from None
    except (*_LOAD_ERRORS, SafetensorError) as err:
        raise ModelError(
            f"cannot load the model in {directory} ({type(err).__name__}: {_first_line(err)}); the weights may "
            "be corrupt, incomplete or not match config.json: copy the model's files again"
        ) from None
    if loader_name != "AutoModel":
        model = model.base_model
    missing = sorted(k for k in info.get("missing_keys", ()) if not k.startswith(("lm_head", "pooler", "cls.")))
    if missing:
        raise ModelError(
            f"{len(missing)} weights of the model are missing from {directory} (e.g. {missing[:3]}); "
            "the weight files do not match config.json: copy the model's files again"
        )
    if family.custom_code:
        attention = str(getattr(model.config, "_attn_implementation", None) or "custom")
    return model, attention


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""
