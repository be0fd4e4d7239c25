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
6. combine chunks weighted by bases covered, average the reading frames, then the two strands.

Reading frames: a model with non-overlapping k-mer tokens (Nucleotide
Transformer, genoembed's default) sees the same bases shifted by one as an
entirely different token sequence, so a query region that does not start on
the reference tiling's k-mer grid shares no tokens with it (measured: the
R@1 of such models at retrieval was that of random init). ``frames=k`` (the
default for those models) embeds each strand read from each of its first k
offsets and averages them: the vector then depends on the bases, not on
where the tile happens to start. It costs k forward passes per tile;
``frames=1`` is the single-frame vector of earlier releases.

Steps 3 and 4 are separate so a later throughput pass can overlap them
(producer thread, pinned memory, CUDA graphs) without touching the rest.

Throughput knobs (each with a safe default; ``benchmarks/embed_throughput.py``
measures them against a stock transformers loop):

- a batch without padding (fixed-length tiles) is run without an attention
  mask, so SDPA takes its fused kernel (flash on CUDA) and nothing is masked;
- ``dtype``: ``auto`` is bfloat16 on CUDA and float32 on CPU (where ``bfloat16``,
  fast with AMX/AVX512-BF16, is opt-in); reduced precision on either device is
  refused unless the vectors of probe tiles keep cosine >= 0.999 to float32,
  and ``describe()`` records it, so a store never mixes bfloat16 and float32 vectors. (Dynamic
  int8 quantisation of the Linear layers was measured and left out: on the
  default shape it gained 1.1-1.4x but fell to cosine 0.9990 on real tiles.)
- ``compile=True``: ``torch.compile`` for the common batch shape (full batches
  of fixed-length tiles), eager for the rest; the first call compiles
  (tens of seconds on a small CPU), so it pays on long runs only;
- ``threads``: intra-op CPU threads while embedding (default: torch's, one per
  physical core); ``batch_size="auto"`` sizes batches from free GPU memory;
- on CUDA, token ids go through pinned host memory with non-blocking copies;
  ``attention="xformers"`` (the ``gpu`` extra) swaps in xformers'
  memory-efficient attention where the model supports pluggable attention.

Loading (device, dtype, tokenizer, model, attention backends, projection) is
:mod:`genoembed.embedders.loading`; what a directory holds, :mod:`genoembed.embedders.model_dir`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from genoembed.embedders import families as fam
from genoembed.embedders import model_dir as md
from genoembed.embedders.loading import (
    ATTENTIONS,
    auto_batch_size,
    first_line,
    intra_op_threads,
    load_model,
    load_projection,
    load_tokenizer,
    resolve_device,
    dtype_name,
    resolve_dtype,
)
from genoembed.embedders import fused
from genoembed.embedders.fingerprint import (
    directory_digest,
    fingerprint_settings,
    model_fingerprint,
)
from genoembed.embedders.pooling import (
    POOLINGS,
    average_strands,
    combine_chunks,
    pool,
)
from genoembed.errors import InputError, ModelError
from genoembed.embedders.tokenize import chunk_spans
from genoembed.seqio import reverse_complement

log = logging.getLogger(__name__)

#: Reduced precision (bfloat16, float16; CPU or CUDA) must keep this cosine to float32 on probe tiles.
MIN_PROBE_COSINE = 0.999
MIN_FUSED_COSINE = 0.99999  # float32: the fused passes differ from stock by rounding only
_AUTO_BATCH_CPU = 64


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
    batch_size : pieces per forward pass, or ``"auto"`` (from free GPU memory on CUDA; 64 on CPU).
    device : ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    dtype : ``"auto"`` (bfloat16 on CUDA, float32 on CPU) or ``float32`` / ``bfloat16`` / ``float16``.
        Reduced precision is checked at load on any device: probe tiles must keep cosine >= 0.999 to
        float32, or it is refused.
    max_tokens : tokens per forward input (special tokens included); default the
        model's limit. Longer sequences are cut into chunks, never truncated.
    trust_remote_code : allow the Python code shipped in the directory to run.
    family : ``"auto"`` or a name from :data:`genoembed.embedders.model_dir.FAMILIES`.
    compile : run the model through ``torch.compile`` for the common batch shape (opt-in).
    fuse : ESM-family models run fused forward passes (:mod:`genoembed.embedders.fused`), and
        zero-layer ESM models (the shipped default) mean-pool straight from a per-token table
        (``token_table_lookup``); each kept only when probe tiles get the stock model's vectors
        (cosine >= 0.99999 in float32).
    threads : intra-op CPU threads while embedding; None keeps torch's setting.
    attention : ``"auto"`` (SDPA, eager when the model lacks it), ``"sdpa"``, ``"eager"`` or
        ``"xformers"`` (needs the ``gpu`` extra).
    frames : reading frames averaged per strand: ``"auto"`` (k for non-overlapping k-mer tokenizers,
        1 otherwise) or a positive integer (at most the token's k bases apart matter).
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
        compile: bool = False,
        fuse: bool = True,
        threads: int | None = None,
        attention: str = "auto",
        frames: int | str = "auto",
    ):
        if pooling not in POOLINGS:
            raise InputError(f"unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}")
        if batch_size != "auto" and (not isinstance(batch_size, int) or isinstance(batch_size, bool)
                                     or batch_size < 1):
            raise InputError(f"batch size must be a positive integer or 'auto', got {batch_size!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise InputError(f"threads must be a positive integer (or None for torch's default), got {threads!r}")
        if attention not in ATTENTIONS:
            raise InputError(f"unknown attention {attention!r}; use one of {', '.join(ATTENTIONS)}")
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise InputError(f"layer must be an integer (-1 = last), got {layer!r}")

        self.model_path = str(model_path)
        self.directory = Path(model_path).expanduser()
        self.pooling = pooling
        self.layer = layer
        self.threads = threads
        self.notes: list[str] = []
        self._compiled = None
        self._compiled_shape: tuple[int, int] | None = None
        self._token_table: torch.Tensor | None = None  # zero-layer models: output row per token id
        self._free_memory: int | None = None  # set by batch_size="auto" on CUDA
        self._config: dict = {}

        config = md.read_config(self.directory)
        tokenizer_config = md.read_tokenizer_config(self.directory)
        vocab = md.read_vocab(self.directory)
        self.family = md.detect_family(self.directory, config, tokenizer_config, vocab, family)
        self.reverse_complement = md.resolve_reverse_complement(reverse_complement, self.family)
        self.frames = md.resolve_frames(frames, self.family)
        if self.family.custom_code and not trust_remote_code:
            raise ModelError(
                f"{self.directory} contains custom code; rerun with --trust-remote-code if you trust it "
                f"(its config.json or tokenizer_config.json has an auto_map: this {self.family.name} model "
                "runs Python shipped with it; Python API: trust_remote_code=True)"
            )
        fam.require_extra(self.family)
        files_digest = directory_digest(self.directory)

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        # Reduced precision (CPU or CUDA) is loaded in float32 first, checked against it on probes, then converted.
        tokenizer = load_tokenizer(self.directory, trust_remote_code)
        model, self.attention = load_model(self.directory, self.family, config, trust_remote_code, torch.float32,
                                            attention)
        model.to(self.device).eval().requires_grad_(False)
        self.model = model
        self.adapter = fam.make_adapter(self.family, tokenizer, model)
        self.projection = load_projection(self.directory, config, self.device)  # None unless fine-tuned
        self.notes += self.adapter.notes

        self.max_tokens, note = md.resolve_max_tokens(max_tokens, config, getattr(tokenizer, "model_max_length", None))
        self.notes += [note] if note else []
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

        self.batch_size = self._resolve_batch_size(batch_size, config)
        self.model_id = str(config.get("_name_or_path") or self.directory.resolve().name)
        probe = self._embed_batch(self.adapter.tokenize([self.adapter.normalize("ACGT" * 8)]))
        self.dim = int(probe.shape[1])
        self.probe_cosine: float | None = None
        self.fused_forward = fuse and fused.can_fuse(self.model) and self._fuse_if_unchanged()
        if self.dtype != torch.float32:
            self._reduce_precision()
        self.token_table_lookup = fuse and self._use_token_table_if_unchanged()
        if compile:
            self._compiled = torch.compile(self.model, dynamic=False)
        settings = fingerprint_settings(self.family.name, pooling, layer, self.reverse_complement,
                                        self.max_tokens, self.frames)
        self.fingerprint = model_fingerprint(files_digest, settings)

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
            "frames": self.frames,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            # Vectors computed in reduced precision say so (float32 ones keep the record of earlier releases):
            # a store's writers compare records, so bfloat16 and float32 vectors never share one store.
            **({"dtype": dtype_name(self.dtype)} if self.dtype != torch.float32 else {}),
        }

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors; long sequences chunked, strands averaged when RC is on."""
        n = len(sequences)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        normalized = self._normalize_all(sequences)
        records, batch = self._plan(normalized)
        with intra_op_threads(self.threads):
            vectors = self._embed_batch(batch)
        owners, strands, frames = records[:, 0], records[:, 1], records[:, 2]
        # Chunks weigh by the bases they cover within their frame; each frame of a strand weighs the same.
        frame_bases = np.array([len(text) for text in normalized], dtype=np.int64)[owners] - frames
        weights = (records[:, 4] - records[:, 3]) / frame_bases
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
        """Pieces (owner, strand, frame, start, end) that each fit the model, and their tokens."""
        strands = (0, 1) if self.reverse_complement else (0,)
        step = self.adapter.step
        texts: dict[tuple[int, int, int], str] = {}
        records: list[tuple[int, int, int, int, int]] = []
        for owner, sequence in enumerate(normalized):
            for strand in strands:
                text = sequence if strand == 0 else reverse_complement(sequence)
                # Frame f reads the strand from base f; a frame must keep at least one whole token.
                for frame in range(max(1, min(self.frames, len(text) - step + 1))):
                    texts[owner, strand, frame] = text[frame:]
                    length = len(text) - frame
                    if length <= self._chunk_bases:  # the common case: one chunk
                        records.append((owner, strand, frame, 0, length))
                        continue
                    for start, end in chunk_spans(length, self._chunk_bases, step).tolist():
                        records.append((owner, strand, frame, start, end))
        # A chunk whose tokens still do not fit (N runs in k-mer vocabularies, BPE) is split again.
        for _ in range(64):
            pieces = [self.adapter.piece(texts[o, s, f], a, b) for o, s, f, a, b in records]
            batch = self.adapter.tokenize(pieces)
            too_long = set(np.flatnonzero(batch.content_counts > self._max_content).tolist())
            if not too_long:
                return np.asarray(records, dtype=np.int64).reshape(-1, 5), batch
            refined = []
            for index, (o, s, f, a, b) in enumerate(records):
                if index not in too_long:
                    refined.append((o, s, f, a, b))
                    continue
                if b - a <= step:
                    raise ModelError(f"{b - a} bases need more than {self._max_content} tokens; raise max_tokens")
                half = -(-((b - a + 1) // 2) // step) * step
                refined += [(o, s, f, a + x, a + y) for x, y in chunk_spans(b - a, half, step).tolist()]
            records = refined
        raise ModelError("could not cut sequences into chunks that fit the model; raise max_tokens")

    def _embed_batch(self, batch: "fam.TokenBatch") -> np.ndarray:
        """Pooled vectors (m, dim) for every row of ``batch``, in its row order."""
        m = batch.input_ids.shape[0]
        if self._token_table is not None and self.pooling == "mean" and m and batch.content_mask.any(1).all():
            return self._mean_from_token_table(batch)
        lengths = batch.lengths
        order = np.argsort(-lengths, kind="stable")
        out: np.ndarray | None = None
        for rows in self._batches(order, lengths):
            width = int(lengths[rows].max())
            ids = self._to_device(batch.input_ids[rows, :width])
            mask = self._to_device(batch.content_mask[rows, :width])
            # No padding (fixed-length tiles): no attention mask, so SDPA takes its fused kernel.
            padded = bool((lengths[rows] < width).any())
            attention = self._to_device(batch.attention_mask[rows, :width]) if padded else None
            with torch.inference_mode():
                hidden = self._forward(ids, attention)
                pooled = self.adapter.finish(pool(hidden, mask, self.pooling)).float()
                if self.projection is not None:
                    pooled = pooled @ self.projection.T
                pooled = pooled.cpu().numpy()
            if out is None:
                out = np.empty((m, pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
        return out if out is not None else np.zeros((0, getattr(self, "dim", 0)), dtype=np.float32)

    def _mean_from_token_table(self, batch: "fam.TokenBatch") -> np.ndarray:
        """Mean pooling of a zero-layer model without materialising hidden states: a weighted bag of rows."""
        ids = self._to_device(batch.input_ids.astype(np.int64))
        weights = self._to_device(batch.content_mask.astype(np.float32)).to(self._token_table.dtype)
        with torch.inference_mode():
            summed = torch.nn.functional.embedding_bag(ids, self._token_table, per_sample_weights=weights, mode="sum")
            pooled = self.adapter.finish(summed / weights.sum(1, keepdim=True)).float()
            if self.projection is not None:
                pooled = pooled @ self.projection.T
            return pooled.cpu().numpy()

    def _to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return tensor
        return tensor.pin_memory().to(self.device, non_blocking=True)

    def _forward(self, ids: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        """The adapter's forward; the compiled model for the one batch shape it was compiled for."""
        if self._token_table is not None:
            return self._token_table[ids]
        shape = tuple(ids.shape)
        use_compiled = (self._compiled is not None and attention is None
                        and (self._compiled_shape == shape
                             or (self._compiled_shape is None and shape[0] == self._rows_per_batch(shape[1]))))
        if not use_compiled:
            return self.adapter.forward(ids, attention, self.layer)
        if self._compiled_shape is not None:
            return self.adapter.forward(ids, None, self.layer, model=self._compiled)
        try:  # the first call compiles; a failure (no C++ compiler, unsupported op) is announced
            hidden = self.adapter.forward(ids, None, self.layer, model=self._compiled)
        except Exception as err:  # noqa: BLE001 - torch.compile raises many kinds; eager stays correct
            self._compiled = None
            note = f"torch.compile failed ({type(err).__name__}: {first_line(err)}); running eagerly"
            self.notes.append(note)
            log.warning("%s: %s", self.directory, note)
            return self.adapter.forward(ids, attention, self.layer)
        self._compiled_shape = shape
        return hidden

    def _probe_cosine(self, change) -> float:
        """Lowest cosine between 8 seeded probe tiles' vectors before and after ``change()``: every
        speed-up and precision change is kept only if it leaves the vectors where they were."""
        from genoembed.synthetic import random_sequence

        probes = [random_sequence(min(1000, self._chunk_bases), seed=7919 + i) for i in range(8)]
        before = self.embed(probes)
        change()
        return float(_row_cosines(before, self.embed(probes)).min())

    def _warn(self, note: str) -> None:
        self.notes.append(note)
        log.warning("%s: %s", self.directory, note)

    def _fuse_if_unchanged(self) -> bool:
        """Switch to the fused forward passes if probe tiles keep their vectors; else stay stock."""
        cosine = self._probe_cosine(lambda: fused.fuse(self.model))
        if cosine >= MIN_FUSED_COSINE:  # both in float32: reduced precision is applied (and checked) after
            fused.drop_unfused_weights(self.model)
            return True
        fused.unfuse(self.model)
        self._warn(f"fused forward passes changed probe vectors (cosine {cosine:.6f}); running the stock model")
        return False

    def _use_token_table_if_unchanged(self) -> bool:
        """A zero-layer ESM model (genoembed's default) maps each token to LayerNorm(its embedding) with no
        context: precompute that row per token id and look it up, if probe tiles keep their vectors."""
        config = self.model.config
        if (getattr(config, "model_type", None) != "esm" or getattr(config, "num_hidden_layers", None) != 0
                or self.layer != -1 or getattr(config, "token_dropout", False)
                or getattr(config, "emb_layer_norm_before", False)
                or getattr(config, "position_embedding_type", "absolute") != "rotary"):
            return False
        def build_table() -> None:
            with torch.inference_mode():
                self._token_table = self.model.encoder.emb_layer_norm_after(
                    self.model.embeddings.word_embeddings.weight)

        cosine = self._probe_cosine(build_table)
        if cosine >= MIN_FUSED_COSINE:
            return True
        self._token_table = None
        self._warn(f"token-table look-up changed probe vectors (cosine {cosine:.6f}); running the model")
        return False

    def _reduce_precision(self) -> None:
        """Convert the float32 model to the requested dtype if probe tiles keep their vectors (on CPU and on
        CUDA alike: bfloat16 is CUDA's default, and a model whose vectors it moves must not pass unnoticed)."""
        cosine = self._probe_cosine(lambda: self.model.to(self.dtype))
        name, where = dtype_name(self.dtype), self.device.type.upper()
        self.probe_cosine = cosine
        if not cosine >= MIN_PROBE_COSINE:
            raise ModelError(
                f"{name} on {where} changes this model's vectors too much (cosine {cosine:.5f} < "
                f"{MIN_PROBE_COSINE} to float32 on probe tiles); use dtype float32"
            )
        self.notes.append(f"{name} on {where}: probe tiles keep cosine >= {cosine:.5f} to float32")

    def _resolve_batch_size(self, requested: int | str, config: dict) -> int:
        if requested != "auto":
            return int(requested)
        if self.device.type != "cuda":
            return _AUTO_BATCH_CPU
        free, _ = torch.cuda.mem_get_info(self.device)
        self._free_memory, self._config = free, config
        size = auto_batch_size(free, tokens=min(self.max_tokens, 512), config=config,
                               bytes_per_value=torch.finfo(self.dtype).bits // 8)
        self.notes.append(f"batch size from {free / 2**30:.1f} GiB free GPU memory ({size} rows of 512 tokens)")
        return size

    def _batches(self, order: np.ndarray, lengths: np.ndarray):
        """Row groups of at most batch_size; equal token length only when the model takes no mask."""
        size = self._rows_per_batch(int(lengths.max(initial=1)))
        if self.adapter.takes_attention_mask:
            for start in range(0, len(order), size):
                yield order[start : start + size]
            return
        sorted_lengths = lengths[order]
        cuts = np.flatnonzero(np.diff(sorted_lengths)) + 1
        for run in np.split(order, cuts):
            for start in range(0, len(run), size):
                yield run[start : start + size]

    def _rows_per_batch(self, width: int) -> int:
        """batch_size, or with batch_size='auto' on CUDA the rows of ``width`` tokens that fit free memory."""
        if self._free_memory is None:
            return self.batch_size
        return auto_batch_size(self._free_memory, tokens=width, config=self._config,
                               bytes_per_value=torch.finfo(self.dtype).bits // 8)


def _row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-30)
