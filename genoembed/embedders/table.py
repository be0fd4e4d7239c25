"""Zero-layer ESM k-mer models (genoembed's default) embedded with numpy alone: no torch, no transformers.

A zero-layer ``EsmModel`` with rotary positions maps every token to
``LayerNorm(word_embedding[token])`` with no context (no layers to mix tokens,
no position embeddings to add). Its mean-pooled vector is therefore a weighted
sum of rows of one precomputed table, and everything
:class:`genoembed.embedders.hf.TransformersEmbedder` does around the model (6
reading frames, both strands, chunks weighted by the bases they cover) only
changes the weights. So a tile's vector is ``counts @ table``: one weighted
count of its tokens over the vocabulary, all frames and both strands folded
into the weights, times the table. This module computes exactly that, and
refuses (:func:`supports`) every model or option whose vectors it would not
reproduce, rather than approximating them.

Tokenisation is the Nucleotide Transformer's (:mod:`genoembed.embedders.tokenize`):
non-overlapping k-mers, single-base tokens for a run's last ``< k`` bases and
for every ``N``; ``<cls>`` and ``<eos>`` are added by the tokenizer and left
out of the mean. Three paths, fastest first:

- tiles of pure A/C/G/T whose every frame fits one chunk (genomic tiles of
  usual sizes): the k-mer at every position is read once, and position ``p``
  is a token of forward frame ``p % k`` and of reverse-complement frame
  ``(L - k - p) % k``, so the weights are the same for every tile of a length;
- tiles with ``N``s (or ``frames > k``) that fit one chunk: tokenised per frame
  with vectorised run bookkeeping (runs restart after every ``N``);
- sequences whose frames overflow one chunk (longer than ``(max_tokens - 2) * k``
  bases, or N-heavy): planned piece by piece as ``TransformersEmbedder`` plans them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
from safetensors import SafetensorError, safe_open

from genoembed.embedders import model_dir as md
from genoembed.embedders.fingerprint import (
    TOKENIZER_FILES,
    directory_digest,
    fingerprint_settings,
    model_fingerprint,
    weight_files,
)
from genoembed.errors import InputError, ModelError
from genoembed.seqio import codes_by_length, kmer_index, reverse_complement, reverse_complement_codes
from genoembed.embedders.tokenize import (
    SINGLE_BASES,
    SPECIAL_TOKENS,
    chunk_spans,
    kmer_token_ids,
    kmer_vocab,
    normalize_sequence,
)

FAMILY = "nucleotide-transformer"
#: ``TransformersEmbedder`` options that cannot change a zero-layer model's float32 vectors on CPU.
NEUTRAL_OPTIONS = frozenset({"batch_size", "threads", "fuse", "compile", "attention", "trust_remote_code"})
#: The options this embedder takes (the rest of ``TransformersEmbedder``'s are neutral or refused).
TABLE_OPTIONS = ("pooling", "layer", "reverse_complement", "max_tokens", "family", "frames")
_N_SPECIAL = 2  # EsmTokenizer: <cls> first, <eos> last
_WEIGHTS_FILE = "model.safetensors"
_PREFIXES = ("", "esm.")  # EsmModel / EsmForMaskedLM checkpoints
_FLOAT_DTYPES = ("F16", "F32", "F64")
_ROWS_PER_BLOCK = 512  # rows of the (rows x vocab) float64 count matrix built at a time (~17 MB at 4106)
_MAX_REFINEMENTS = 64


class _Unsupported(Exception):
    """Why a directory or an option cannot be served by the token table."""


class _Model(NamedTuple):
    config: dict
    tokenizer_config: dict
    vocab: dict[str, int]
    family: md.Family

    @property
    def k(self) -> int:
        return self.family.k


def supports(model_dir: str | os.PathLike, **options) -> bool:
    """True when ``TokenTableEmbedder(model_dir, **options)`` gives ``TransformersEmbedder``'s vectors.

    ``options`` are ``TransformersEmbedder``'s. Those in :data:`NEUTRAL_OPTIONS`, ``device`` "auto"/"cpu"
    and ``dtype`` "auto"/"float32" are accepted; drop them before constructing this embedder.
    """
    return unsupported_reason(model_dir, **options) is None


def unsupported_reason(model_dir: str | os.PathLike, **options) -> str | None:
    """None when the table path serves ``model_dir`` with ``options``, else the reason it does not."""
    device, dtype = options.pop("device", "auto"), options.pop("dtype", "auto")
    if device not in ("auto", "cpu"):
        return f"device {device!r} (the table path runs on the CPU)"
    if dtype not in ("auto", "float32", "fp32"):
        return f"dtype {dtype!r} (the table path computes in float32)"
    own = {key: value for key, value in options.items() if key not in NEUTRAL_OPTIONS}
    unknown = sorted(set(own) - set(TABLE_OPTIONS))
    if unknown:
        return f"unknown options {unknown}"
    directory = Path(model_dir).expanduser()
    try:
        model = _read_model(directory)
        _resolve_options(model, **own)
        _load_table(directory, model)
    except _Unsupported as reason:
        return str(reason)
    except ModelError as err:
        return str(err)
    return None


class TokenTableEmbedder:
    """``TransformersEmbedder(model_path, pooling="mean", layer=-1, ...)`` of a zero-layer ESM k-mer model,
    in numpy: same vectors (to float32 rounding), ``fingerprint`` and ``describe()``.

    Parameters are ``TransformersEmbedder``'s that shape the vectors; the model and
    options must pass :func:`supports` (else :class:`ModelError` says why).
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        pooling: str = "mean",
        layer: int = -1,
        reverse_complement: bool | str = "auto",
        max_tokens: int | None = None,
        family: str = "auto",
        frames: int | str = "auto",
    ):
        self.model_path = str(model_path)
        self.directory = Path(model_path).expanduser()
        try:
            model = _read_model(self.directory)
            self.reverse_complement, self.frames, self.max_tokens = _resolve_options(
                model, pooling=pooling, layer=layer, reverse_complement=reverse_complement,
                max_tokens=max_tokens, family=family, frames=frames)
        except _Unsupported as reason:
            raise ModelError(f"{self.directory}: the token-table embedder cannot serve this ({reason}); "
                             "use TransformersEmbedder") from None
        self.pooling, self.layer, self.family, self.k = pooling, layer, FAMILY, model.k
        self.vocab = model.vocab
        self.table = _load_table(self.directory, model)
        self.dim = int(self.table.shape[1])
        self.model_id = str(model.config.get("_name_or_path") or self.directory.resolve().name)
        self._max_content = self.max_tokens - _N_SPECIAL
        self._chunk_bases = self._max_content * self.k
        self._kmer_ids, self._rc_kmer_ids, self._base_ids = _id_lookups(model.vocab, model.k)
        settings = fingerprint_settings(FAMILY, pooling, layer, self.reverse_complement, self.max_tokens,
                                        self.frames)
        self.fingerprint = model_fingerprint(directory_digest(self.directory), settings)

    def describe(self) -> dict:
        """``TransformersEmbedder``'s provenance record: ``load_embedder`` rebuilds an equal embedder
        and stores written by either embedder open with the other."""
        return {
            "kind": "transformers", "model_path": self.model_path, "model_id": self.model_id,
            "family": self.family, "pooling": self.pooling, "layer": self.layer,
            "reverse_complement": self.reverse_complement, "max_tokens": self.max_tokens,
            "frames": self.frames, "fingerprint": self.fingerprint, "dim": self.dim,
        }

    def embed(self, sequences: Sequence[str]) -> np.ndarray:
        """(n, dim) float32: each sequence's weighted token counts times the table."""
        _check_sequences(sequences)
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        for rows, codes in codes_by_length(sequences):
            clean = (codes < 4).all(axis=1) & self._layout_applies(codes.shape[1])
            for block in _row_blocks(np.flatnonzero(clean)):
                out[rows[block]] = self._project(self._clean_counts(codes[block]))
            for block in _row_blocks(np.flatnonzero(~clean)):
                counts, one_chunk = self._frame_counts(codes[block])
                several = block[~one_chunk]
                if several.size:  # chunked like TransformersEmbedder: piece by piece
                    counts[~one_chunk] = [self._exact_counts(sequences[row]) for row in rows[several]]
                out[rows[block]] = self._project(counts)
        return out

    def token_weights(self, sequence: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(starts, lengths, token ids, weights) of every token the vector pools, on the sequence's forward
        coordinates: ``bincount(ids, weights) @ table`` is :meth:`embed`'s vector. Lets `genoembed explain`
        split a cosine exactly over bases; one-chunk sequences only (else :class:`ModelError`)."""
        _check_sequences([sequence])
        _, codes = next(codes_by_length([sequence]))
        length = codes.shape[1]
        if not self._frame_counts(codes)[1][0]:
            raise ModelError(f"{length} bases take more than one chunk of {self.max_tokens} tokens; "
                             f"explain sequences of at most {self._chunk_bases // self.frames} bases with this model")
        strands = [codes, reverse_complement_codes(codes)] if self.reverse_complement else [codes]
        used = _frame_count(length, self.k, self.frames)
        parts = []
        for reverse, strand in enumerate(strands):
            for ids, tokens in _frame_tokens(strand, self.k, used, self._kmer_ids, self._base_ids):
                at = np.flatnonzero(tokens[0])
                sizes = np.where(np.isin(ids[0, at], self._base_ids), 1, self.k)
                starts = length - at - sizes if reverse else at
                weight = np.full(len(at), 1.0 / (len(strands) * used * len(at)))
                parts.append((starts, sizes, ids[0, at], weight))
        return tuple(np.concatenate(column) for column in zip(*parts))

    # ------------------------------------------------------------------ internals

    def _layout_applies(self, length: int) -> bool:
        """Clean rows of ``length`` bases take :func:`_clean_layout`: each position in at most one frame
        (frames <= k) and every frame one chunk."""
        return self.frames <= self.k and _fits_one_chunk(length, self.k, self.frames, self._max_content)

    def _project(self, counts: np.ndarray) -> np.ndarray:
        return counts.astype(np.float32) @ self.table

    def _clean_counts(self, codes: np.ndarray) -> np.ndarray:
        """(m, vocab) token weights of rows of A/C/G/T codes, all one length, each frame one chunk."""
        layout = _clean_layout(codes.shape[1], self.k, self.frames, self.reverse_complement)
        index, _ = kmer_index(codes, self.k)
        columns = [self._kmer_ids[index], self._base_ids[codes[:, layout.forward_tails]]]
        if self.reverse_complement:
            columns += [self._rc_kmer_ids[index], self._base_ids[3 - codes[:, layout.reverse_tails]]]
        ids = np.empty((len(codes), sum(c.shape[1] for c in columns)), dtype=np.int64)  # C order: _bag ravels
        np.concatenate(columns, axis=1, out=ids)
        weights = _tiled_weights(codes.shape[1], self.k, self.frames, self.reverse_complement, len(codes))
        return _bag(ids, weights, len(self.vocab))

    def _frame_counts(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(m, vocab) token weights of rows of base codes (N = 4), all one length, and which rows they are
        right for: those whose every frame tokenises within one chunk (the others need :meth:`_exact_counts`)."""
        strands = [codes, reverse_complement_codes(codes)] if self.reverse_complement else [codes]
        used = _frame_count(codes.shape[1], self.k, self.frames)
        one_chunk = np.full(len(codes), codes.shape[1] <= self._chunk_bases)
        row = np.arange(len(codes))[:, None]
        cells, weights = [], []
        for strand in strands:
            for frame_ids, tokens in _frame_tokens(strand, self.k, used, self._kmer_ids, self._base_ids):
                count = tokens.sum(axis=1)
                one_chunk &= count <= self._max_content
                rows = np.broadcast_to(row, tokens.shape)[tokens]
                cells.append(rows * len(self.vocab) + frame_ids[tokens])
                weights.append(1.0 / (len(strands) * used * count[rows]))
        counts = np.bincount(np.concatenate(cells), weights=np.concatenate(weights),
                             minlength=len(codes) * len(self.vocab)).reshape(len(codes), len(self.vocab))
        return counts, one_chunk

    def _exact_counts(self, sequence: str) -> np.ndarray:
        """(vocab,) token weights of one sequence, planned as ``TransformersEmbedder`` plans it."""
        text = normalize_sequence(sequence)
        strands = [text, reverse_complement(text)] if self.reverse_complement else [text]
        counts = np.zeros(len(self.vocab))
        for strand in strands:
            pieces = _plan_strand(strand, self.k, self.frames, self._chunk_bases, self._max_content, self.vocab)
            total = sum(weight for weight, _ in pieces)
            for weight, ids in pieces:
                counts += np.bincount(ids, minlength=len(self.vocab)) * (weight / total / len(ids) / len(strands))
        return counts


# ---------------------------------------------------------------------- the model directory


def _read_model(directory: Path) -> _Model:
    """Config, tokenizer config, vocab and k of a directory the table path can serve, or _Unsupported."""
    if not (directory / "config.json").is_file():
        raise _Unsupported(f"no config.json in {directory}")
    config = md.read_config(directory)
    tokenizer_config = md.read_tokenizer_config(directory)
    if md.needs_remote_code(config, tokenizer_config):
        raise _Unsupported("the model ships custom code")
    if config.get("model_type") != "esm":
        raise _Unsupported(f"model_type {config.get('model_type')!r}, not esm")
    layers = config.get("num_hidden_layers")
    if layers != 0:
        raise _Unsupported(f"{layers} transformer layers (only zero-layer models are a token table)")
    if config.get("position_embedding_type", "absolute") != "rotary":
        raise _Unsupported("absolute position embeddings make each token's output depend on its position")
    if config.get("token_dropout") or config.get("emb_layer_norm_before"):
        raise _Unsupported("token_dropout / emb_layer_norm_before rescale embeddings by context")
    _check_tokenizer_files(directory, tokenizer_config)
    vocab = md.read_vocab(directory)
    family = md.detect_family(directory, config, tokenizer_config, vocab)
    if family.name != FAMILY or set(vocab) != set(kmer_vocab(family.k)):
        raise _Unsupported("the vocabulary is not exactly the special tokens, all k-mers and A C G T N")
    return _Model(config, tokenizer_config, vocab, family)


def _check_tokenizer_files(directory: Path, tokenizer_config: dict) -> None:
    """The slow EsmTokenizer over vocab.txt, adding no tokens: the tokenisation of genoembed.embedders.tokenize."""
    if tokenizer_config.get("tokenizer_class") != "EsmTokenizer":
        raise _Unsupported(f"tokenizer {tokenizer_config.get('tokenizer_class')!r}, not EsmTokenizer")
    others = [name for name in TOKENIZER_FILES
              if name not in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
              and (directory / name).is_file()]
    if others:
        raise _Unsupported(f"tokenizer files other than EsmTokenizer's ({', '.join(others)})")
    added = {entry.get("content") for entry in (tokenizer_config.get("added_tokens_decoder") or {}).values()}
    if not added <= set(SPECIAL_TOKENS):
        raise _Unsupported(f"added tokens {sorted(map(str, added - set(SPECIAL_TOKENS)))}")
    if tokenizer_config.get("do_lower_case"):
        raise _Unsupported("the tokenizer lower-cases its input")


def _resolve_options(model: _Model, pooling: str = "mean", layer: int = -1, reverse_complement: bool | str = "auto",
                     max_tokens: int | None = None, family: str = "auto",
                     frames: int | str = "auto") -> tuple[bool, int, int]:
    """(reverse_complement, frames, max_tokens) as ``TransformersEmbedder`` resolves them, or _Unsupported."""
    if pooling != "mean":
        raise _Unsupported(f"pooling {pooling!r} (the table path mean-pools)")
    if layer != -1 or isinstance(layer, bool):
        raise _Unsupported(f"layer {layer!r} (the table path is the final, normed output: layer -1)")
    if family not in ("auto", FAMILY):
        raise _Unsupported(f"family {family!r}")
    try:
        rc = md.resolve_reverse_complement(reverse_complement, model.family)
        frames = md.resolve_frames(frames, model.family)
        max_tokens, _ = md.resolve_max_tokens(max_tokens, model.config, model.tokenizer_config.get("model_max_length"))
    except InputError as err:
        raise _Unsupported(str(err)) from None
    if max_tokens - _N_SPECIAL < model.k:
        raise _Unsupported(f"max_tokens {max_tokens!r}")
    return rc, frames, max_tokens


def _load_table(directory: Path, model: _Model) -> np.ndarray:
    """(vocab, dim) float32, read-only: :func:`_compute_table`, kept while the directory's files are unchanged
    (checking a model and then building its embedder, as the registry does, reads the weights once)."""
    files = sorted((path.name, path.stat()) for path in directory.iterdir() if path.is_file())
    key = (str(directory.resolve()), tuple((name, info.st_size, info.st_mtime_ns) for name, info in files))
    if key not in _TABLES:
        if len(_TABLES) >= 4:
            _TABLES.pop(next(iter(_TABLES)))
        _TABLES[key] = _compute_table(directory, model)
        _TABLES[key].flags.writeable = False
    return _TABLES[key]


_TABLES: dict[tuple, np.ndarray] = {}


def _compute_table(directory: Path, model: _Model) -> np.ndarray:
    """(vocab, dim) float32: LayerNorm of every token's embedding row, then the projection if the model has one.

    The LayerNorm is per token row (``emb_layer_norm_after`` on each hidden state), so it is applied once here
    and the pooled vector stays linear in the token counts.
    """
    weights = weight_files(directory)
    if [p.name for p in weights if p.name != md.PROJECTION_FILE] != [_WEIGHTS_FILE]:
        raise ModelError(f"{directory}: the token-table embedder reads a single {_WEIGHTS_FILE} "
                         f"(found {', '.join(p.name for p in weights) or 'no weights'})")
    tensors = _read_tensors(directory / _WEIGHTS_FILE, ("embeddings.word_embeddings.weight",
                                                        "encoder.emb_layer_norm_after.weight",
                                                        "encoder.emb_layer_norm_after.bias"))
    embedding, gamma, beta = (t.astype(np.float64) for t in tensors)
    if embedding.shape[0] != len(model.vocab) or gamma.shape != (embedding.shape[1],):
        raise ModelError(f"{directory}: weights of shape {embedding.shape} do not match the vocabulary "
                         f"({len(model.vocab)} tokens) and LayerNorm ({gamma.shape})")
    eps = float(model.config.get("layer_norm_eps", 1e-12))
    centred = embedding - embedding.mean(axis=1, keepdims=True)
    table = centred / np.sqrt((centred**2).mean(axis=1, keepdims=True) + eps) * gamma + beta
    if (directory / md.PROJECTION_FILE).is_file():
        (projection,) = _read_tensors(directory / md.PROJECTION_FILE, ("weight",), prefixes=("",))
        if projection.ndim != 2 or projection.shape[1] != table.shape[1]:
            raise ModelError(f"{directory / md.PROJECTION_FILE} must hold a 'weight' matrix of shape "
                             f"(out, {table.shape[1]}); found {projection.shape}")
        table = table @ projection.astype(np.float64).T
    return table.astype(np.float32)


def _read_tensors(path: Path, names: tuple[str, ...], prefixes: tuple[str, ...] = _PREFIXES) -> list[np.ndarray]:
    """Named float tensors of a safetensors file (under any of ``prefixes``), as numpy arrays."""
    try:
        with safe_open(str(path), framework="numpy") as handle:
            keys = set(handle.keys())
            prefix = next((p for p in prefixes if all(p + name in keys for name in names)), None)
            if prefix is None:
                raise ModelError(f"{path} lacks {', '.join(names)}; copy the model's files again")
            found = [handle.get_slice(prefix + name).get_dtype() for name in names]
            if any(dtype not in _FLOAT_DTYPES for dtype in found):
                raise ModelError(f"{path}: tensors of dtype {found}; the token-table embedder reads "
                                 f"{', '.join(_FLOAT_DTYPES)}")
            return [handle.get_tensor(prefix + name) for name in names]
    except (SafetensorError, OSError) as err:
        raise ModelError(f"cannot read {path} ({err}); copy the model's files again") from None


def _id_lookups(vocab: dict[str, int], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vocabulary ids of every k-mer by base-4 index, of its reverse complement, and of A C G T N."""
    kmers = kmer_vocab(k)[len(SPECIAL_TOKENS) : len(SPECIAL_TOKENS) + 4**k]  # base-4 index order
    kmer_ids = np.array([vocab[t] for t in kmers], dtype=np.int64)
    rc_kmer_ids = np.array([vocab[reverse_complement(t)] for t in kmers], dtype=np.int64)
    base_ids = np.array([vocab[b] for b in SINGLE_BASES], dtype=np.int64)
    return kmer_ids, rc_kmer_ids, base_ids


# ---------------------------------------------------------------------- sequences -> token weights


def _check_sequences(sequences: Sequence[str]) -> None:
    """TransformersEmbedder's input errors: strings of at least one base."""
    for i, sequence in enumerate(sequences):
        if not isinstance(sequence, str):
            raise InputError(f"sequence {i} is a {type(sequence).__name__}, expected str")
        if not sequence:
            raise InputError(f"sequence {i} has 0 bases; the {FAMILY} model needs at least 1")


def _frame_count(length: int, k: int, frames: int) -> int:
    """Frames read per strand: a frame must keep at least one whole k-mer (one frame when none fits)."""
    return max(1, min(frames, length - k + 1))


def _fits_one_chunk(length: int, k: int, frames: int, max_content: int) -> bool:
    """Every frame of a pure A/C/G/T sequence of ``length`` bases tokenises within one chunk."""
    remaining = length - np.arange(_frame_count(length, k, frames))
    return bool((remaining // k + remaining % k <= max_content).all())


class _Layout(NamedTuple):
    """The token columns of clean rows of one length and their weights (the same for every row).

    Columns: the k-mer at every start position on the forward strand, the forward single-base tokens, the
    reverse complement of the k-mer at every start position, the reverse single-base tokens. Every start
    is kept (weight 0 in frames not read) so the k-mer columns are whole C-ordered look-ups, never gathers.
    """

    forward_tails: np.ndarray  # positions whose base is a single-base token of the forward strand
    reverse_tails: np.ndarray  # positions whose complement is a single-base token of the reverse strand
    weights: np.ndarray        # one per column


@functools.lru_cache(maxsize=64)
def _clean_layout(length: int, k: int, frames: int, reverse_complement: bool) -> _Layout:
    """Token columns and weights of a pure A/C/G/T sequence of ``length`` bases (frames <= k).

    Frame ``f`` reads k-mers at ``f, f + k, ...`` while one fits, then single bases: so every position
    ``p <= length - k`` starts a k-mer token of frame ``p % k`` exactly once. Each token of frame ``f``
    weighs ``1 / (strands * frames * tokens in frame f)`` (the mean over frames and strands of each frame's
    mean token); the reverse strand's position ``q`` is the forward position ``length - k - q``.
    """
    used = _frame_count(length, k, frames)
    strands = 2 if reverse_complement else 1
    frame = np.arange(used)
    remaining = length - frame
    frame_weight = np.zeros(k)
    frame_weight[:used] = 1.0 / (strands * used * (remaining // k + remaining % k))
    starts = np.arange(max(0, length - k + 1))
    tails = [np.arange(f + (length - f) // k * k, length) for f in frame]
    forward_tails = np.concatenate(tails)
    tail_weights = np.repeat(frame_weight[:used], [len(t) for t in tails])
    weights = [frame_weight[starts % k], tail_weights]
    if reverse_complement:
        weights += [frame_weight[(length - k - starts) % k], tail_weights]
    return _Layout(forward_tails, length - 1 - forward_tails, np.concatenate(weights))


def _frame_tokens(codes: np.ndarray, k: int, frames: int, kmer_ids: np.ndarray, base_ids: np.ndarray):
    """Per frame ``f < frames``: ((m, length) token id at each position, (m, length) whether one starts there)
    for rows of base codes (N = 4) read from base ``f``, as :mod:`genoembed.embedders.tokenize` reads them.

    A/C/G/T runs are cut at every N and at the frame's first base; a run gives k-mers from its start while
    one fits, then one token per base; every N is one token. So position ``p`` of a run starting at ``s``
    with ``full`` bases in whole k-mers starts a k-mer when ``(p - s) % k == 0`` and ``0 <= p - s < full``,
    and is a single-base token when ``p - s >= full``.
    """
    m, length = codes.shape
    position = np.arange(length, dtype=np.int32)
    is_n = codes == 4
    last_n = np.maximum.accumulate(np.where(is_n, position, np.int32(-1)), axis=1)
    next_n = np.minimum.accumulate(np.where(is_n, position, np.int32(length))[:, ::-1], axis=1)[:, ::-1]
    index = np.zeros((m, length), dtype=np.int32)  # k-mer index per start (junk where it spans an N or the end)
    index[:, : max(0, length - k + 1)] = kmer_index(codes, k)[0]
    kmer_or_base = (kmer_ids[index], base_ids[codes])
    for frame in range(frames):
        start = np.maximum(last_n + 1, np.int32(frame))  # of the run holding each position, within the frame
        offset = position - start
        full = (next_n - start) // k * k
        kmer = (offset >= 0) & (offset % k == 0) & (offset < full)
        single = (position >= frame) & (is_n | (offset >= full))
        yield np.where(kmer, *kmer_or_base), kmer | single


def _row_blocks(rows: np.ndarray):
    """``rows`` in blocks of at most _ROWS_PER_BLOCK (bounds the (rows x vocab) count matrix)."""
    for start in range(0, len(rows), _ROWS_PER_BLOCK):
        yield rows[start : start + _ROWS_PER_BLOCK]


@functools.lru_cache(maxsize=8)
def _tiled_weights(length: int, k: int, frames: int, reverse_complement: bool, rows: int) -> np.ndarray:
    """The layout's weights repeated for ``rows`` rows, flat: built once per block shape, not per block."""
    return np.tile(_clean_layout(length, k, frames, reverse_complement).weights, rows)


def _bag(ids: np.ndarray, weights: np.ndarray, vocab_size: int) -> np.ndarray:
    """(m, vocab_size) float64: row i sums the flat ``weights`` of its columns over the ids ``ids[i]``
    (``ids`` is consumed: offset in place to one flat index per cell)."""
    m = ids.shape[0]
    ids += np.arange(m, dtype=np.int64)[:, None] * vocab_size
    return np.bincount(ids.ravel(), weights=weights, minlength=m * vocab_size).reshape(m, vocab_size)


def _plan_strand(text: str, k: int, frames: int, chunk_bases: int, max_content: int,
                 vocab: dict[str, int]) -> list[tuple[float, np.ndarray]]:
    """(weight, content token ids) of every piece of one normalised strand, as ``TransformersEmbedder._plan``
    cuts it: each frame into near-equal chunks on k-base boundaries, a chunk that still tokenises to more
    than ``max_content`` tokens (N runs) halved again; a chunk weighs the bases it covers over its frame's."""
    pieces = []
    for frame in range(_frame_count(len(text), k, frames)):
        view = text[frame:]
        spans = [(0, len(view))] if len(view) <= chunk_bases else chunk_spans(len(view), chunk_bases, k).tolist()
        for _ in range(_MAX_REFINEMENTS):
            tokens = [_content_ids(view[a:b], vocab, k) for a, b in spans]
            too_long = [i for i, ids in enumerate(tokens) if len(ids) > max_content]
            if not too_long:
                break
            spans = _split_spans(spans, set(too_long), k, max_content)
        else:
            raise ModelError("could not cut sequences into chunks that fit the model; raise max_tokens")
        pieces += [((b - a) / len(view), ids) for (a, b), ids in zip(spans, tokens)]
    return pieces


def _split_spans(spans: list[tuple[int, int]], too_long: set[int], k: int,
                 max_content: int) -> list[tuple[int, int]]:
    """The spans with each one in ``too_long`` cut into halves on k-base boundaries."""
    refined = []
    for index, (a, b) in enumerate(spans):
        if index not in too_long:
            refined.append((a, b))
            continue
        if b - a <= k:
            raise ModelError(f"{b - a} bases need more than {max_content} tokens; raise max_tokens")
        half = -(-((b - a + 1) // 2) // k) * k
        refined += [(a + x, a + y) for x, y in chunk_spans(b - a, half, k).tolist()]
    return refined


def _content_ids(piece: str, vocab: dict[str, int], k: int) -> np.ndarray:
    """Token ids of one normalised piece without its ``<cls>`` and ``<eos>``."""
    return kmer_token_ids([piece], vocab, k=k)["input_ids"][0, 1:-1]
