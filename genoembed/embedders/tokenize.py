"""Nucleotide-Transformer-style tokenisation: non-overlapping k-mers (k=6).

A sequence is read left to right in non-overlapping k-mers; wherever a full
k-mer of A/C/G/T is not available (an ``N``, any other IUPAC letter, or the
last ``< k`` bases before an ``N`` or the end) the bases are emitted one token
each. This is exactly what the Hugging Face ``EsmTokenizer`` does with the
vocabulary written by :func:`write_kmer_tokenizer`: it splits raw text with a
trie built from every vocabulary entry, taking the longest match starting at
the leftmost unconsumed character, so a run of A/C/G/T becomes k-mers with a
single-base tail, and each ``N`` is one token (the behaviour of the
Nucleotide Transformer tokenizer).

Normalisation. The Hugging Face tokenizer is case-sensitive and knows only
``A C G T N``: a lowercase (soft-masked) stretch or another IUPAC letter
becomes one ``<unk>`` per whitespace-free chunk. genoembed therefore
normalises every sequence first (:func:`normalize_sequence`: upper case, every
letter other than A/C/G/T to ``N``); :func:`kmer_token_ids` does so itself, and
its output equals ``tokenizer([normalize_sequence(s) ...])`` token for token.
Anyone who uses the saved tokenizer without genoembed should upper-case and
replace non-ACGT letters by ``N`` first.

Token layout of the vocabulary (ids in this order): ``<unk> <pad> <mask> <cls>
<eos>``, the ``4**k`` k-mers in lexicographic A<C<G<T order, then ``A C G T N``.
An encoded sequence is ``<cls> tokens... <eos>``, right-padded with ``<pad>``.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from genoembed.errors import InputError
from genoembed.seqio import BASE_CODES, NORMALIZED_BASES, kmer_index

SPECIAL_TOKENS = ("<unk>", "<pad>", "<mask>", "<cls>", "<eos>")
SINGLE_BASES = ("A", "C", "G", "T", "N")
DEFAULT_K = 6



def kmer_vocab(k: int = DEFAULT_K) -> list[str]:
    """The vocabulary, in id order: special tokens, all k-mers, single bases."""
    _check_k(k)
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
    return [*SPECIAL_TOKENS, *kmers, *SINGLE_BASES]


def write_kmer_tokenizer(directory: str | Path, k: int = DEFAULT_K) -> Path:
    """Save a Hugging Face ``EsmTokenizer`` for k-mer tokens into ``directory``.

    The directory then loads with ``AutoTokenizer.from_pretrained(directory)``
    and no genoembed code. Returns the directory.
    """
    from transformers import EsmTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(kmer_vocab(k)) + "\n", encoding="utf-8")
    tokenizer = EsmTokenizer(vocab_file=str(vocab_file), model_max_length=1_000_000)
    tokenizer.save_pretrained(str(directory))
    return directory


def normalize_sequence(sequence: str) -> str:
    """Upper-case; every letter other than A/C/G/T (N, IUPAC, gaps) becomes ``N``."""
    raw = np.frombuffer(sequence.encode("ascii", errors="replace"), dtype=np.uint8)
    return NORMALIZED_BASES[raw].tobytes().decode("ascii")


def kmer_tokens(sequence: str, k: int = DEFAULT_K) -> list[str]:
    """Token strings of one sequence (no special tokens): the exact, slow reference."""
    _check_k(k)
    sequence = normalize_sequence(sequence)
    tokens: list[str] = []
    for run in _acgt_runs_and_ns(sequence):
        if run == "N":
            tokens.append("N")
            continue
        full = len(run) - len(run) % k
        tokens.extend(run[i : i + k] for i in range(0, full, k))
        tokens.extend(run[full:])
    return tokens


def kmer_token_ids(
    sequences: Sequence[str] | Sequence[bytes] | np.ndarray,
    vocab: Mapping[str, int],
    k: int = DEFAULT_K,
    max_length: int | None = None,
    add_eos: bool = True,
) -> dict[str, np.ndarray]:
    """Token ids and attention mask for a batch, equal to the HF tokenizer's.

    ``sequences`` is a list of ``str``/``bytes`` or a 2-D ``uint8`` array of
    ASCII bases (one row per sequence, all the same length). Rows of pure
    A/C/G/T (any case) take a vectorised path; rows with any other letter take
    the exact per-sequence path. ``vocab`` maps token to id (e.g.
    ``tokenizer.get_vocab()``). The result is ``{"input_ids", "attention_mask"}``
    as ``int64`` arrays of shape ``(n, max_length)``, ``<cls>`` first and
    ``<eos>`` last when ``add_eos``, right-padded with ``<pad>``; with
    ``max_length=None`` the batch is padded to its longest row. A sequence
    whose tokens do not fit ``max_length`` is an error, never truncated.
    """
    _check_k(k)
    tables = _lookup_tables(vocab, k)
    rows = _as_byte_rows(sequences)
    n = len(rows) if isinstance(rows, list) else rows.shape[0]
    token_rows: list[np.ndarray | None] = [None] * n

    for indices, block in _blocks_by_length(rows):
        codes = BASE_CODES[block]
        clean = (codes < 4).all(axis=1)
        if clean.any():
            ids = _fast_ids(codes[clean], k, tables, add_eos)
            for row_index, row_ids in zip(indices[clean], ids):
                token_rows[row_index] = row_ids
        for row_index, raw in zip(indices[~clean], block[~clean]):
            token_rows[row_index] = _exact_ids(raw.tobytes().decode("ascii", errors="replace"), k, tables, add_eos)

    lengths = np.fromiter((len(r) for r in token_rows), dtype=np.int64, count=n)
    width = int(lengths.max(initial=0)) if max_length is None else max_length
    too_long = np.flatnonzero(lengths > width)
    if too_long.size:
        first = int(too_long[0])
        raise InputError(
            f"sequence {first} needs {int(lengths[first])} tokens but max_length is {width} "
            f"({too_long.size} sequence(s) too long); cut shorter tiles or raise max_length"
        )
    input_ids = np.full((n, width), tables.pad, dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    if n and _all_same_length(lengths):
        # Common case (fixed-length clean tiles): one stacked copy.
        input_ids[:, : lengths[0]] = np.stack(token_rows)
        attention_mask[:, : lengths[0]] = 1
    else:
        for row_index, row_ids in enumerate(token_rows):
            input_ids[row_index, : len(row_ids)] = row_ids
            attention_mask[row_index, : len(row_ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


# --------------------------------------------------------------------------- internals


class _Tables:
    """Id lookups derived from a vocab mapping."""

    def __init__(self, vocab: Mapping[str, int], k: int):
        missing = [t for t in (*SPECIAL_TOKENS, *SINGLE_BASES) if t not in vocab]
        kmers = kmer_vocab(k)[len(SPECIAL_TOKENS) : len(SPECIAL_TOKENS) + 4**k]
        missing += [t for t in kmers[:1] + kmers[-1:] if t not in vocab]
        if missing:
            raise InputError(
                f"vocabulary is not a {k}-mer vocabulary: missing {missing[:5]}; "
                "build it with genoembed.embedders.tokenize.write_kmer_tokenizer"
            )
        try:
            self.kmer = np.array([vocab[t] for t in kmers], dtype=np.int64)
        except KeyError as err:
            raise InputError(f"vocabulary is not a {k}-mer vocabulary: missing {err.args[0]!r}") from None
        self.base = np.array([vocab[b] for b in SINGLE_BASES], dtype=np.int64)  # code 0..4
        self.cls = int(vocab["<cls>"])
        self.eos = int(vocab["<eos>"])
        self.pad = int(vocab["<pad>"])
        self.vocab = vocab


def _lookup_tables(vocab: Mapping[str, int], k: int) -> _Tables:
    key = (id(vocab), len(vocab), k)
    cached = _TABLE_CACHE.get(key)
    if cached is not None and cached.vocab is vocab:
        return cached
    tables = _Tables(vocab, k)
    _TABLE_CACHE.clear()  # keep one entry: vocabularies are few and large
    _TABLE_CACHE[key] = tables
    return tables


_TABLE_CACHE: dict[tuple[int, int, int], _Tables] = {}


def _check_k(k: int) -> None:
    if not 1 <= k <= 8:
        raise InputError(f"k-mer size k={k} is out of range; use 1..8")


def _as_byte_rows(sequences) -> np.ndarray | list[np.ndarray]:
    if isinstance(sequences, np.ndarray):
        if sequences.ndim != 2 or sequences.dtype != np.uint8:
            raise InputError(
                f"sequence array must be 2-D uint8 ASCII, got {sequences.ndim}-D {sequences.dtype}"
            )
        return sequences
    rows = []
    for i, seq in enumerate(sequences):
        if isinstance(seq, str):
            try:
                seq = seq.encode("ascii")
            except UnicodeEncodeError:
                raise InputError(f"sequence {i} contains non-ASCII characters") from None
        elif not isinstance(seq, (bytes, bytearray)):
            raise InputError(f"sequence {i} is a {type(seq).__name__}, expected str or bytes")
        rows.append(seq)
    if rows and all(len(r) == len(rows[0]) for r in rows):
        return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(len(rows), len(rows[0]))
    return [np.frombuffer(bytes(r), dtype=np.uint8) for r in rows]


def _blocks_by_length(rows):
    """Yield (row indices, 2-D uint8 block) with all rows of one length."""
    if isinstance(rows, np.ndarray):
        yield np.arange(rows.shape[0]), rows
        return
    by_length: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_length.setdefault(len(r), []).append(i)
    for length, idx in by_length.items():
        block = np.stack([rows[i] for i in idx]) if length else np.zeros((len(idx), 0), dtype=np.uint8)
        yield np.asarray(idx), block


def _fast_ids(codes: np.ndarray, k: int, tables: _Tables, add_eos: bool) -> np.ndarray:
    """Vectorised ids for rows of pure A/C/G/T codes (0..3), all one length."""
    n, length = codes.shape
    n_full = length // k
    full = n_full * k
    index, _ = kmer_index(codes[:, :full], k, step=k)  # non-overlapping: a k-mer every k bases
    width = 1 + n_full + (length - full) + int(add_eos)
    out = np.empty((n, width), dtype=np.int64)
    out[:, 0] = tables.cls
    out[:, 1 : 1 + n_full] = tables.kmer[index]
    out[:, 1 + n_full : 1 + n_full + length - full] = tables.base[codes[:, full:]]
    if add_eos:
        out[:, -1] = tables.eos
    return out


def _exact_ids(sequence: str, k: int, tables: _Tables, add_eos: bool) -> np.ndarray:
    vocab = tables.vocab
    ids = [tables.cls, *(vocab[t] for t in kmer_tokens(sequence, k))]
    if add_eos:
        ids.append(tables.eos)
    return np.asarray(ids, dtype=np.int64)


def _acgt_runs_and_ns(sequence: str):
    """Split a normalised sequence into maximal A/C/G/T runs and single ``N``s."""
    start = 0
    for i, ch in enumerate(sequence):
        if ch == "N":
            if i > start:
                yield sequence[start:i]
            yield "N"
            start = i + 1
    if start < len(sequence):
        yield sequence[start:]


def _all_same_length(lengths: np.ndarray) -> bool:
    return bool((lengths == lengths[0]).all())


def chunk_spans(length: int, max_bases: int, multiple: int = 1) -> np.ndarray:
    """Cut ``[0, length)`` into the fewest near-equal spans of at most ``max_bases``.

    Returns an ``(m, 2)`` int64 array of ``[start, end)`` spans that tile the
    sequence exactly once. Every boundary but the last is a multiple of
    ``multiple`` (the k of a non-overlapping k-mer tokenizer, so a chunk
    tokenises exactly as the same bases do inside the whole sequence).
    """
    if length <= 0:
        return np.zeros((0, 2), dtype=np.int64)
    if multiple < 1 or max_bases < multiple:
        raise InputError(f"cannot cut chunks of at most {max_bases} bases on multiples of {multiple}")
    units = -(-length // multiple)  # ceil: number of k-blocks, last one maybe partial
    max_units = max_bases // multiple
    n_chunks = -(-units // max_units)
    # Spread the blocks evenly: the first (units % n) chunks get one block more.
    base, extra = divmod(units, n_chunks)
    sizes = np.full(n_chunks, base, dtype=np.int64)
    sizes[:extra] += 1
    ends = np.minimum(np.cumsum(sizes) * multiple, length)
    starts = np.concatenate([[0], ends[:-1]])
    return np.stack([starts, ends], axis=1)
