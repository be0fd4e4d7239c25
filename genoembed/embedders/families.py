"""How to feed each DNA language model family: one adapter per family (torch).

:func:`genoembed.embedders.model_dir.detect_family` says which family a
directory holds; :func:`make_adapter` then wraps the loaded tokenizer and model
in an :class:`Adapter` with one small interface::

    adapter.normalize(sequence)        -> str          case / IUPAC as the vocab wants
    adapter.max_chunk_bases(tokens)    -> int          bases that fit ``tokens`` content tokens
    adapter.piece(sequence, start, end)-> str          model input for the bases [start, end)
    adapter.tokenize(pieces)           -> TokenBatch   ids, attention mask, content mask
    adapter.forward(ids, mask, layer)  -> torch hidden states (b, t, h)
    adapter.finish(pooled)             -> torch (b, dim)  family-specific post-pooling

Tokenisation has a vectorised numpy path for the k-mer and single-base
families; at construction it is checked token for token (ids and content
mask) against the model's own tokenizer on probe sequences, and when they
differ the tokenizer itself is used (announced in ``adapter.notes``).
"""

from __future__ import annotations

import inspect
import itertools
import logging
from typing import NamedTuple, Sequence

import numpy as np
import torch

from genoembed.embedders.model_dir import Family
from genoembed.errors import InputError, MissingExtraError, ModelError
from genoembed.seqio import BASE_CODES, kmer_index, rows_by_length

log = logging.getLogger(__name__)


def require_extra(family: Family) -> None:
    """Import the package that registers the family's classes, or say how to install it."""
    if family.extra is None:
        return
    try:
        __import__(f"{family.extra}.model")
    except ImportError:
        raise MissingExtraError(
            f"{family.name} models need the '{family.extra}' package, which registers their classes "
            f"with transformers; install it with `pip install {family.extra}` and rerun"
        ) from None


# --------------------------------------------------------------------------- adapters


class TokenBatch(NamedTuple):
    """Right-padded token ids (n, w), attention mask (n, w) and content mask (n, w, bool)."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    content_mask: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return self.attention_mask.sum(axis=1)

    @property
    def content_counts(self) -> np.ndarray:
        return self.content_mask.sum(axis=1)



_PROBES = (
    "ACGTACGTTGCAAGCT",
    "ACGTNACGTTTGCAGGATTACA",
    "TTGCANNNNACGTACGGGCCCATA",
    "GATTACA",
    "ACGTACGTACGTACGTACGTACGTACGTAC",
    "NNNNNNACGTAC",
)


class Adapter:
    """tokenize -> forward -> pool for one family, with the model's own tokenizer.

    Subclasses add a vectorised tokenisation (``_fast``) that must agree with
    the tokenizer on the probe sequences, or it is switched off.
    """

    step = 1          # chunk boundaries fall on multiples of this many bases
    context = 0       # extra bases a chunk's piece reads past its end (k-1 for overlapping k-mers)

    def __init__(self, family: Family, tokenizer, model):
        self.family = family
        self.tokenizer = tokenizer
        self.model = model
        self.notes: list[str] = []
        tokenizer.padding_side = "right"
        self.vocab = tokenizer.get_vocab()
        self._case_table = _case_table(self.vocab)
        self.pad_id = _pad_id(tokenizer)
        parameters = inspect.signature(model.forward).parameters
        self.takes_attention_mask = "attention_mask" in parameters
        self.takes_hidden_states = "output_hidden_states" in parameters or _has_var_keyword(parameters)
        self.takes_return_dict = "return_dict" in parameters or _has_var_keyword(parameters)
        probe = self._slow([self.normalize(p) for p in _PROBES[:1]])
        self.n_special = int(probe.lengths[0] - probe.content_counts[0])
        unk = tokenizer.unk_token_id
        if unk is not None and (probe.input_ids[0][probe.content_mask[0]] == unk).all():
            raise ModelError(
                f"the tokenizer of this {family.name} model turns plain ACGT into unknown tokens "
                "(e.g. do_lower_case=true in tokenizer_config.json for an upper-case vocab); fix its tokenizer files"
            )
        self.has_cls = bool(probe.attention_mask[0, 0] and not probe.content_mask[0, 0]
                            and tokenizer.cls_token_id is not None
                            and probe.input_ids[0, 0] == tokenizer.cls_token_id)
        self.bases_per_token = self._bases_per_token()
        self.fast = False
        self._enable_fast()

    # ---- sequences and chunks

    def normalize(self, sequence: str) -> str:
        """Letter case (and non-ACGT letters) as the vocabulary expects."""
        try:
            return sequence.encode("ascii").translate(self._case_table).decode("ascii")
        except UnicodeEncodeError:
            raise InputError("a sequence contains non-ASCII characters; DNA must be plain letters") from None

    def max_chunk_bases(self, content_tokens: int) -> int:
        """Bases one chunk may cover so that it tokenises to at most ``content_tokens``."""
        return max(self.step, int(content_tokens * self.bases_per_token) // self.step * self.step)

    def piece(self, sequence: str, start: int, end: int) -> str:
        return sequence[start : min(len(sequence), end + self.context)]

    def min_bases(self) -> int:
        return 1

    # ---- tokenisation

    def tokenize(self, pieces: Sequence[str]) -> TokenBatch:
        """Token ids, attention and content masks for normalised pieces, padded to the longest."""
        if not pieces:
            empty = np.zeros((0, 0), dtype=np.int64)
            return TokenBatch(empty, empty, empty.astype(bool))
        return self._fast(pieces) if self.fast else self._slow(pieces)

    def text(self, piece: str) -> str:
        """What is handed to the tokenizer for one piece."""
        return piece

    def _slow(self, pieces: Sequence[str]) -> TokenBatch:
        encoded = self.tokenizer(
            [self.text(p) for p in pieces], padding=True, return_special_tokens_mask=True,
            return_attention_mask=True, return_token_type_ids=False, return_tensors="np",
        )
        ids = np.asarray(encoded["input_ids"], dtype=np.int64)
        attention = np.asarray(encoded["attention_mask"], dtype=np.int64)
        special = np.asarray(encoded["special_tokens_mask"])
        return TokenBatch(ids, attention, (attention != 0) & (special == 0))

    def _fast(self, pieces: Sequence[str]) -> TokenBatch:  # pragma: no cover - overridden
        raise NotImplementedError

    def _enable_fast(self) -> None:
        if type(self)._fast is Adapter._fast:
            return
        probes = [self.normalize(p) for p in _PROBES]
        try:
            self._template = self._special_template()
            fast = self._fast(probes)
        except (KeyError, ValueError, IndexError) as err:
            self.notes.append(f"vectorised tokenisation off ({err}); using the model's tokenizer")
            return
        slow = self._slow(probes)
        if all(np.array_equal(a, b) for a, b in zip(fast, slow)):
            self.fast = True
        else:
            self.notes.append("vectorised tokenisation disagrees with the model's tokenizer on probe "
                              "sequences; using the tokenizer (slower, same result)")
            log.warning("%s: %s", self.family.name, self.notes[-1])

    def _special_template(self) -> tuple[np.ndarray, np.ndarray]:
        """The special ids the tokenizer puts before and after the content tokens."""
        probe = self._slow([self.normalize(_PROBES[0])])
        ids, content = probe.input_ids[0], probe.content_mask[0]
        length = int(probe.lengths[0])
        positions = np.flatnonzero(content)
        if positions.size == 0 or not content[positions[0] : positions[-1] + 1].all():
            raise ValueError("special tokens inside the content")
        return ids[: positions[0]].copy(), ids[positions[-1] + 1 : length].copy()

    def _pack(self, groups: list[tuple[np.ndarray, np.ndarray]], n: int) -> TokenBatch:
        """Assemble ``prefix content suffix`` rows from (row indices, content ids) groups."""
        prefix, suffix = self._template
        p, s = len(prefix), len(suffix)
        widest = max((content.shape[1] for _, content in groups), default=0)
        width = p + widest + s
        ids = np.full((n, width), self.pad_id, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=bool)
        for rows, content in groups:
            t = content.shape[1]
            ids[rows, :p] = prefix
            ids[rows, p : p + t] = content
            ids[rows, p + t : p + t + s] = suffix
            attention[rows, : p + t + s] = 1
            mask[rows, p : p + t] = True
        return TokenBatch(ids, attention, mask)

    def _bases_per_token(self) -> float:
        return 1.0

    # ---- model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, layer: int,
                model=None) -> torch.Tensor:
        """Hidden states (b, t, h) of ``layer`` (index into embeddings + layers; -1 = last).

        ``attention_mask`` None means no padding (every token attended); ``model``
        replaces the loaded model for this call (e.g. its ``torch.compile`` wrapper).
        """
        kwargs = {"input_ids": input_ids}
        if self.takes_attention_mask and attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        if self.takes_return_dict:
            kwargs["return_dict"] = True
        if layer != -1:
            if not self.takes_hidden_states:
                raise ModelError(f"{self.family.name} models do not return per-layer states; use layer -1")
            kwargs["output_hidden_states"] = True
        output = (model if model is not None else self.model)(**kwargs)
        if layer == -1:
            hidden = getattr(output, "last_hidden_state", None)
            return hidden if hidden is not None else output[0]
        states = getattr(output, "hidden_states", None)
        if states is None:
            raise ModelError(f"{self.family.name} model returned no per-layer states; use layer -1")
        try:
            return states[layer]
        except IndexError:
            raise ModelError(
                f"layer {layer} does not exist: the model has {len(states)} hidden states "
                f"(0 = embeddings, {len(states) - 1} = last layer)"
            ) from None

    def finish(self, pooled: torch.Tensor) -> torch.Tensor:
        """Family-specific step after pooling (identity except Caduceus-PS)."""
        return pooled


class KmerAdapter(Adapter):
    """Nucleotide Transformer v1/v2 and genoembed's default: non-overlapping k-mers, single-base fallback."""

    def __init__(self, family: Family, tokenizer, model):
        self.step = family.k
        super().__init__(family, tokenizer, model)

    def normalize(self, sequence: str) -> str:
        from genoembed.embedders.tokenize import normalize_sequence

        return normalize_sequence(sequence)

    def _bases_per_token(self) -> float:
        return float(self.family.k)

    def _fast(self, pieces):
        from genoembed.embedders.tokenize import kmer_token_ids

        prefix, suffix = self._template
        eos = self.tokenizer.eos_token_id
        if len(prefix) != 1 or prefix[0] != self.vocab.get("<cls>") or len(suffix) > 1:
            raise ValueError("special tokens are not <cls> ... [<eos>]")
        add_eos = len(suffix) == 1
        if add_eos and (suffix[0] != eos or eos != self.vocab.get("<eos>")):
            raise ValueError("end token is not <eos>")
        if self.pad_id != self.vocab.get("<pad>"):
            raise ValueError("pad token is not <pad>")
        try:
            encoded = kmer_token_ids(list(pieces), self.vocab, k=self.family.k, add_eos=add_eos)
        except InputError as err:
            raise ValueError(str(err)) from None
        ids, attention = encoded["input_ids"], encoded["attention_mask"]
        mask = attention.astype(bool)
        mask[:, 0] = False
        if add_eos:
            mask[np.arange(len(ids)), attention.sum(axis=1) - 1] = False
        return TokenBatch(ids, attention, mask)


class OverlappingKmerAdapter(Adapter):
    """DNABERT: every k-mer (stride 1) is a token, so token j covers bases [j, j+k).

    A sequence of L bases gives L-k+1 tokens. For chunking, a chunk covering
    bases [s, e) is fed bases [s, e+k-1): its tokens are exactly the k-mers
    that *start* in [s, e), so each k-mer of the sequence is embedded once
    and the k-1 shift never drops or repeats a k-mer at a boundary.
    """

    def __init__(self, family: Family, tokenizer, model):
        self.context = family.k - 1
        super().__init__(family, tokenizer, model)

    def normalize(self, sequence: str) -> str:
        from genoembed.embedders.tokenize import normalize_sequence

        return normalize_sequence(sequence)

    def min_bases(self) -> int:
        return self.family.k

    def text(self, piece: str) -> str:
        k = self.family.k
        return " ".join(piece[i : i + k] for i in range(len(piece) - k + 1))

    def _fast(self, pieces):
        k = self.family.k
        unk = self.tokenizer.unk_token_id
        kmers = ["".join(p) for p in itertools.product("ACGT", repeat=k)]
        table = np.array([self.vocab.get(t, unk) for t in kmers], dtype=np.int64)
        groups = []
        for rows, block in rows_by_length(pieces):
            index, valid = kmer_index(BASE_CODES[block], k)  # (rows, 0) when shorter than k
            groups.append((rows, np.where(valid, table[index], unk)))
        return self._pack(groups, len(pieces))


class CharAdapter(Adapter):
    """One token per base (HyenaDNA, Caduceus, GPN, single-base stand-ins)."""

    def _fast(self, pieces):
        unk = self.tokenizer.unk_token_id
        lookup = np.full(256, -1 if unk is None else unk, dtype=np.int64)
        for token, index in self.vocab.items():
            if len(token) == 1 and ord(token) < 256:
                lookup[ord(token)] = index
        groups = [(rows, lookup[block]) for rows, block in rows_by_length(pieces)]
        if any((content < 0).any() for _, content in groups):
            raise ValueError("a character is not in the vocabulary and there is no unk token")
        return self._pack(groups, len(pieces))


class CaduceusAdapter(CharAdapter):
    """Caduceus. With ``rcps`` the channels are [forward half | reverse half]; the
    RC-invariant vector is the mean of the forward half and the channel-flipped
    reverse half, pooled over tokens (the recipe of Caduceus's own classifier)."""

    def finish(self, pooled):
        if not self.family.rc_equivariant:
            return pooled
        half = pooled.shape[-1] // 2
        return (pooled[..., :half] + torch.flip(pooled[..., half:], dims=[-1])) / 2


class BpeAdapter(Adapter):
    """DNABERT-2 (BPE): the model's tokenizer; chunk sizes start from the probe's bases per token
    and a chunk that still tokenises too long is split again."""

    def _bases_per_token(self) -> float:
        rng = np.random.default_rng(0)
        probe = "".join(rng.choice(list("ACGT"), size=2048))
        counts = self._slow([probe]).content_counts
        return max(1.0, 0.75 * len(probe) / max(int(counts[0]), 1))


def make_adapter(family: Family, tokenizer, model) -> Adapter:
    if family.tokens == "kmer":
        return KmerAdapter(family, tokenizer, model)
    if family.tokens == "overlapping-kmer":
        return OverlappingKmerAdapter(family, tokenizer, model)
    if family.name == "caduceus":
        return CaduceusAdapter(family, tokenizer, model)
    if family.tokens == "char":
        return CharAdapter(family, tokenizer, model)
    if family.tokens == "bpe":
        return BpeAdapter(family, tokenizer, model)
    return Adapter(family, tokenizer, model)


# --------------------------------------------------------------------------- helpers


def _case_table(vocab: dict[str, int]) -> bytes:
    """bytes.translate table: letter case as the vocab has it; non-ACGT letters to N when N exists."""
    upper = any(t and not t.strip("ACGT") for t in vocab)
    lower = any(t and not t.strip("acgt") for t in vocab)
    table = bytearray(range(256))
    if upper and lower:  # case-sensitive vocab (soft-masking is information): keep as is
        return bytes(table)
    case = str.lower if lower else str.upper
    n_token = case("N") if case("N") in vocab else None
    for code in range(ord("A"), ord("Z") + 1):
        for letter in (chr(code), chr(code).lower()):
            target = case(letter)
            if target.upper() not in "ACGT" and n_token is not None:
                target = n_token
            table[ord(letter)] = ord(target)
    return bytes(table)


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ModelError("the model's tokenizer has no padding token; add pad_token to its tokenizer_config.json")
    return int(pad)


def _has_var_keyword(parameters) -> bool:
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
