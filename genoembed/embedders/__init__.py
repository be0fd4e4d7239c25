"""Embedders turn DNA strings into fixed-size vectors behind one small interface, found through one registry.

Every embedder has ``dim``, ``fingerprint`` (changes whenever the vectors it
would produce change: weights, config, pooling, k), ``describe()`` (the
provenance dict stored with a store) and ``embed(sequences) -> (n, dim)
float32``. The pipeline only ever talks to this interface, so tests inject
tiny embedders and the store can rebuild the exact embedder it was made with.

One registry decides which class serves a model name: :func:`get_embedder`
takes what a user types (``default``, ``mlm``, ``kmer:5``, ``aa:2``, ``protein``, a local model
directory, or ``SCHEME:ARG`` of a plugin) plus :class:`EmbedderOptions`;
:func:`load_embedder` rebuilds an embedder from a store's provenance. Other
packages add schemes through the ``genoembed.embedders`` entry-point group
(each entry point names a ``factory(argument: str, options: EmbedderOptions)``)
or, in-process, :func:`register_embedder`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from genoembed.embedders.base import POOLINGS, Embedder, EmbedderOptions, Pooling
from genoembed.errors import InputError, MissingExtraError, ModelError
from genoembed.resources import SHIPPED_MODELS, default_model_dir, shipped_model_for

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "genoembed.embedders"
__all__ = ["POOLINGS", "Embedder", "EmbedderOptions", "Pooling", "get_embedder", "load_embedder",
           "register_embedder"]


Factory = Callable[[str, EmbedderOptions], Embedder]
_SCHEMES: dict[str, Factory] = {}


def register_embedder(scheme: str, factory: Factory) -> None:
    """Serve model names ``SCHEME:ARG`` (or the bare ``SCHEME``) with ``factory(ARG, options)``."""
    _SCHEMES[scheme] = factory


def _kmer(argument: str, options: EmbedderOptions) -> Embedder:
    from genoembed.embedders.kmer import KmerEmbedder

    k = argument or "4"
    if not k.isdigit():
        raise InputError(f"model 'kmer:{argument}': use kmer:K with an integer K, e.g. kmer:5")
    ignored = sorted(options.given())
    if ignored:
        raise InputError(f"model 'kmer:{k}' takes no model options (got {', '.join(ignored)})")
    return KmerEmbedder(k=int(k))


def _model_directory(path: str | Path, options: EmbedderOptions) -> Embedder:
    """A local model directory: the numpy token-table path where it gives the same vectors, else transformers."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"model {str(path)!r}: no such directory; give 'default', 'mlm', 'kmer[:K]' "
                         "or a local model directory (nothing is downloaded)")
    return _transformers_or_table(str(path), options.given())


def _transformers_or_table(model_path: str, options: dict) -> Embedder:
    """The token-table embedder (numpy, no torch) when it serves the model and options exactly, else
    the transformers embedder; without torch installed, a one-line message naming the extra."""
    from genoembed.embedders import table

    reason = table.unsupported_reason(model_path, **options)
    if reason is None:
        kept = {key: value for key, value in options.items() if key in table.TABLE_OPTIONS}
        return table.TokenTableEmbedder(model_path, **kept)
    try:
        from genoembed.embedders.hf import TransformersEmbedder
    except ImportError:
        raise MissingExtraError(f"model {model_path}: needs torch and transformers ({reason}); "
                                "pip install 'genoembed[lm]'") from None
    return TransformersEmbedder(model_path=model_path, **options)


def _translated(argument: str, options: EmbedderOptions) -> Embedder:
    """``aa:K`` (six frames summed) or ``aa:K:orf`` (open reading frames only)."""
    from genoembed.embedders.translated import TranslatedProfileEmbedder

    k, _, mode = (argument or "2").partition(":")
    if not k.isdigit():
        raise InputError(f"model 'aa:{argument}': use aa:K or aa:K:orf with an integer K, e.g. aa:2")
    ignored = sorted(options.given())
    if ignored:
        raise InputError(f"model 'aa:{argument}' takes no model options (got {', '.join(ignored)})")
    return TranslatedProfileEmbedder(k=int(k), mode=mode or "sum")


def _protein(argument: str, options: EmbedderOptions) -> Embedder:
    """``protein`` (the shipped translation-aware model) or ``protein:DIRECTORY`` (one trained elsewhere)."""
    from genoembed.embedders.protein import protein_embedder
    from genoembed.resources import PACKAGE_PREFIX, PROTEIN_MODEL, resolve

    ignored = sorted(options.given())
    if ignored:
        raise InputError(f"model 'protein' takes no model options (got {', '.join(ignored)})")
    shipped = resolve(PACKAGE_PREFIX + PROTEIN_MODEL)
    # a store records the directory it was built with; another installation finds its own copy
    directory = Path(argument) if argument and (Path(argument).is_dir() or Path(argument).name != shipped.name) \
        else shipped
    return protein_embedder(directory)


register_embedder("kmer", _kmer)
register_embedder("aa", _translated)
register_embedder("protein", _protein)


def _plugins() -> dict[str, Factory]:
    from importlib.metadata import entry_points

    found = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found[entry.name] = entry.load()
        except Exception as error:  # a broken plugin must not break the built-in models
            log.warning("embedder plugin %r failed to load: %s", entry.name, error)
    return found


def get_embedder(name: str = "default", options: EmbedderOptions = EmbedderOptions()) -> Embedder:
    """The embedder a model name stands for: ``default``, ``mlm``, ``kmer[:K]``, ``SCHEME:ARG``, or a directory."""
    if name in SHIPPED_MODELS:
        directory = default_model_dir(name)
        if directory is None:
            raise ModelError(f"model {name!r}: the shipped model files are not installed with this genoembed; "
                             "reinstall the package")
        return _model_directory(directory, options)
    scheme, _, argument = name.partition(":")
    if scheme in _SCHEMES:
        return _SCHEMES[scheme](argument, options)
    if not Path(name).exists():
        plugins = _plugins()
        if scheme in plugins:
            return plugins[scheme](argument, options)
    return _model_directory(name, options)


def load_embedder(spec: dict, trust_remote_code: bool = False) -> Embedder:
    """Rebuild an embedder from its ``describe()`` dict (a store's provenance).

    A shipped model recorded under another installation's path is found in this one
    (the caller checks the fingerprint, so a different model is never taken for it).
    """
    kind = spec.get("kind")
    if kind == "kmer":
        from genoembed.embedders.kmer import KmerEmbedder

        return KmerEmbedder(k=int(spec.get("k", 4)), canonical=bool(spec.get("canonical", True)))
    if kind == "transformers":
        options = {key: value for key, value in spec.items()
                   if key not in ("kind", "fingerprint", "dim", "model_id", "model_path")}
        options.setdefault("frames", 1)  # stores written before frames existed hold single-frame vectors
        options.setdefault("dtype", "float32")  # a record without a dtype is of float32 vectors, on any device
        model_path = spec["model_path"]
        if not Path(model_path).is_dir():
            model_path = str(shipped_model_for(model_path) or model_path)
        if trust_remote_code:
            options["trust_remote_code"] = True
        return _transformers_or_table(model_path, options)
    if kind in _SCHEMES or kind in _plugins():
        factory = _SCHEMES.get(kind) or _plugins()[kind]
        return factory(str(spec.get("argument", "")), EmbedderOptions())
    raise ModelError(f"unknown embedder kind {kind!r}; expected 'kmer', 'transformers' or an installed plugin")
