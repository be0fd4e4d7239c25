"""What a local model directory holds, read without torch: config, tokenizer files, family, limits, options.

Both embedders of a transformers model directory read it here: the torch one
(:class:`genoembed.embedders.hf.TransformersEmbedder`) and the numpy one
(:class:`genoembed.embedders.table.TokenTableEmbedder`). Their fingerprints
hash the family, reverse-complement, frame and token settings resolved by these
functions, so a store written by either reopens with the other only because
there is one definition of each.

:func:`detect_family` reads ``config.json`` and the tokenizer files (never the
weights) and returns a :class:`Family`:

``nucleotide-transformer``      native ``EsmForMaskedLM``, non-overlapping 6-mers (NT v1; genoembed's default model)
``nucleotide-transformer-v2``   esm with ``auto_map`` custom code (rotary, SwiGLU): needs trust_remote_code
``dnabert``                     native ``BertForMaskedLM``, overlapping k-mers (k = 3..6), ``[CLS] ... [SEP]``
``dnabert-2``                   bert with ``auto_map`` custom code (ALiBi), BPE tokenizer: needs trust_remote_code
``hyenadna``                    custom code, single-base characters, long context
``caduceus``                    custom code, single-base characters; ``rcps`` models are RC-equivariant
``gpn``                         convolutional MLM, single-base; classes registered by ``import gpn.model``
``char``                        any native model with a single-base vocabulary
``generic``                     anything else: the model's own tokenizer, no fast path
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from genoembed.errors import InputError, ModelError

#: Tokens per input when neither the config nor the tokenizer states a limit.
FALLBACK_MAX_TOKENS = 4096
#: The (out, hidden) matrix `genoembed finetune` writes; every embedder applies it after pooling.
PROJECTION_FILE = "genoembed_projection.safetensors"


@dataclass(frozen=True)
class Family:
    """What genoembed knows about a model family.

    ``tokens``: ``kmer`` (non-overlapping k-mers), ``overlapping-kmer``,
    ``char`` (one token per base), ``bpe`` or ``tokenizer`` (the model's own
    tokenizer decides). ``custom_code``: the directory's ``auto_map`` Python
    code must run (``trust_remote_code``). ``extra``: a package whose import
    registers the model classes with transformers.
    """

    name: str
    tokens: str
    k: int = 1
    custom_code: bool = False
    rc_equivariant: bool = False
    extra: str | None = None
    notes: tuple[str, ...] = field(default=())


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("nucleotide-transformer", "kmer", k=6),
        Family("nucleotide-transformer-v2", "kmer", k=6, custom_code=True),
        Family("dnabert", "overlapping-kmer", k=6),
        Family("dnabert-2", "bpe", custom_code=True),
        Family("hyenadna", "char", custom_code=True),
        Family("caduceus", "char", custom_code=True),
        Family("gpn", "char", extra="gpn"),
        Family("char", "char"),
        Family("generic", "tokenizer"),
    )
}


# --------------------------------------------------------------------------- files


def read_json(path: Path) -> dict:
    """A JSON object file, with errors that say what to fix."""
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except OSError as err:
        raise ModelError(f"cannot read {path}: {err.strerror}; check the file's permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON ({err}); restore it from the model's original files") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path} should hold a JSON object; restore it from the model's original files")
    return value


def read_config(directory: Path) -> dict:
    """``config.json`` of a model directory, with errors that say what to fix."""
    if not directory.exists():
        raise ModelError(
            f"model directory {directory} does not exist; pass a local directory holding config.json, "
            "the tokenizer files and the weights (as written by save_pretrained)"
        )
    if not directory.is_dir():
        raise ModelError(f"model path {directory} is a file; pass the directory that holds config.json")
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise ModelError(
            f"{directory} is not a transformers model directory (no config.json); pass the directory "
            "written by save_pretrained, or copy the model's config.json, tokenizer files and weights into it"
        )
    return read_json(config_file)


def read_tokenizer_config(directory: Path) -> dict:
    """``tokenizer_config.json``, or {} when the directory has none."""
    path = directory / "tokenizer_config.json"
    return read_json(path) if path.is_file() else {}


def read_vocab(directory: Path) -> dict[str, int]:
    """The token -> id map from the tokenizer files, without loading the tokenizer (may be empty)."""
    vocab_txt = directory / "vocab.txt"
    if vocab_txt.is_file():
        try:
            lines = vocab_txt.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ModelError(f"cannot read {vocab_txt} ({err}); copy the model's tokenizer files again") from None
        return {token.strip(): i for i, token in enumerate(lines) if token.strip()}
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.is_file():
        model = read_json(tokenizer_json).get("model") or {}
        vocab = model.get("vocab")
        if isinstance(vocab, dict):
            return {str(t): int(i) for t, i in vocab.items()}
        if isinstance(vocab, list):  # unigram: [[token, score], ...]
            return {str(item[0]): i for i, item in enumerate(vocab)}
    vocab_json = directory / "vocab.json"
    if vocab_json.is_file():
        return {str(t): int(i) for t, i in read_json(vocab_json).items()}
    return {}


# --------------------------------------------------------------------------- what the files say


def needs_remote_code(config: dict, tokenizer_config: dict | None = None) -> bool:
    """True when loading would execute Python shipped with the model (an ``auto_map``)."""
    for source in (config, tokenizer_config or {}):
        auto_map = source.get("auto_map")
        if isinstance(auto_map, dict) and auto_map:
            return True
        if isinstance(auto_map, (list, tuple)) and auto_map:  # old tokenizer_config style
            return True
    return False


def kmer_size(vocab: dict[str, int]) -> int | None:
    """k when the vocab holds (nearly) all 4**k upper-case k-mers for some k >= 2, the largest such k."""
    counts: dict[int, int] = {}
    for token in vocab:
        if len(token) >= 2 and not token.strip("ACGT"):
            counts[len(token)] = counts.get(len(token), 0) + 1
    found = [k for k, n in counts.items() if k <= 8 and n >= 0.9 * 4**k]
    return max(found) if found else None


def has_single_bases(vocab: dict[str, int]) -> bool:
    return all(b in vocab for b in "ACGT") or all(b in vocab for b in "acgt")


def detect_family(directory: Path, config: dict, tokenizer_config: dict | None = None,
                  vocab: dict[str, int] | None = None, family: str = "auto") -> Family:
    """The :class:`Family` of a model directory from its config and tokenizer files.

    ``family`` other than ``"auto"`` forces the adapter (for a model whose
    files do not say what it is); code execution is still decided by the
    files' ``auto_map``, never by the name.
    """
    tokenizer_config = read_tokenizer_config(directory) if tokenizer_config is None else tokenizer_config
    vocab = read_vocab(directory) if vocab is None else vocab
    custom = needs_remote_code(config, tokenizer_config)
    k = kmer_size(vocab)
    if family != "auto":
        if family not in FAMILIES:
            raise ModelError(f"unknown model family {family!r}; use 'auto' or one of {', '.join(FAMILIES)}")
        chosen = FAMILIES[family]
        return replace(chosen, k=k or chosen.k, custom_code=custom,
                       rc_equivariant=_rc_equivariant(config, family))

    model_type = str(config.get("model_type", "")).lower()
    architectures = [str(a).lower() for a in config.get("architectures") or []]
    if model_type in ("gpn", "convnet") or any(a.startswith(("convnet", "gpn")) for a in architectures):
        return replace(FAMILIES["gpn"], custom_code=custom)
    if model_type == "caduceus" or "rcps" in config:
        return replace(FAMILIES["caduceus"], custom_code=True,
                       rc_equivariant=_rc_equivariant(config, "caduceus"))
    if "hyena" in model_type:
        return replace(FAMILIES["hyenadna"], custom_code=True)
    if model_type == "esm" and k:
        name = "nucleotide-transformer-v2" if custom else "nucleotide-transformer"
        return replace(FAMILIES[name], k=k, custom_code=custom)
    if model_type == "bert" and custom:
        return replace(FAMILIES["dnabert-2"], custom_code=True)
    if model_type == "bert" and k and 3 <= k <= 6 and _only_kmers(vocab, k):
        return replace(FAMILIES["dnabert"], k=k)
    if has_single_bases(vocab) and not k:
        return replace(FAMILIES["char"], custom_code=custom)
    return replace(FAMILIES["generic"], custom_code=custom, k=k or 1)


def _only_kmers(vocab: dict[str, int], k: int) -> bool:
    """Every token is a bracketed special token or an upper-case k-mer (a DNABERT vocab, not BPE)."""
    return all(
        (t.startswith("[") and t.endswith("]")) or (t.startswith("<") and t.endswith(">"))
        or (len(t) == k and not t.strip("ACGT"))
        for t in vocab
    )


def _rc_equivariant(config: dict, family: str) -> bool:
    return family == "caduceus" and bool(config.get("rcps", False))


def max_model_tokens(config: dict, tokenizer_max_length: int | None) -> tuple[int | None, bool]:
    """(tokens per input the model takes, whether that is a hard limit).

    Hard: learned absolute position tables (ESM positions start after the pad
    id; BERT at 0). Soft: rotary/ALiBi/convolutional/SSM models, bounded by
    what the config or the tokenizer's ``model_max_length`` say they were trained on.
    """
    limits: list[int] = []
    hard = False
    model_type = str(config.get("model_type", "")).lower()
    max_positions = config.get("max_position_embeddings")
    position_type = str(config.get("position_embedding_type", "absolute")).lower()
    if isinstance(max_positions, int) and max_positions > 0:
        if model_type == "esm" and position_type == "absolute":
            limits.append(max_positions - int(config.get("pad_token_id") or 0) - 1)
            hard = True
        else:
            limits.append(max_positions)
            hard = position_type == "absolute" and model_type == "bert" and "alibi_starting_size" not in config
    for key in ("max_seq_len", "n_positions", "seq_len"):
        value = config.get(key)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    if isinstance(tokenizer_max_length, int) and 0 < tokenizer_max_length < 10_000_000:
        limits.append(tokenizer_max_length)
    return (min(limits) if limits else None), hard


# --------------------------------------------------------------------------- options


def resolve_reverse_complement(value: bool | str, family: Family) -> bool:
    """Average both strands? ``"auto"``: yes unless the model is RC-equivariant (Caduceus-PS)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false", "on", "off"):
        lowered = value.lower()
        return not family.rc_equivariant if lowered == "auto" else lowered in ("true", "on")
    raise InputError(f"reverse_complement must be 'auto', true or false, got {value!r}")


def resolve_frames(frames: int | str, family: Family) -> int:
    """Reading frames per strand: k for non-overlapping k-mer tokens under "auto", else as given."""
    if frames == "auto":
        return family.k if family.tokens == "kmer" else 1
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 1:
        raise InputError(f"frames must be a positive integer or 'auto', got {frames!r}")
    return frames


def resolve_max_tokens(requested: int | None, config: dict, tokenizer_max_length: int | None) -> tuple[int, str | None]:
    """(tokens per forward input, a note when the model states no limit): the model's limit by default;
    a request beyond a hard limit (learned position tables) is refused."""
    limit, hard = max_model_tokens(config, tokenizer_max_length)
    if requested is None:
        if limit is None:
            return FALLBACK_MAX_TOKENS, f"the model states no maximum length; using {FALLBACK_MAX_TOKENS} tokens per chunk"
        return int(limit), None
    if not isinstance(requested, int) or isinstance(requested, bool) or requested < 1:
        raise InputError(f"max_tokens must be a positive integer, got {requested!r}")
    if hard and limit is not None and requested > limit:
        raise InputError(f"max_tokens={requested} exceeds the model's {limit} positions; use at most {limit}")
    return requested, None
