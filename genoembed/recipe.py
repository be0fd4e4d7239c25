"""Index recipes (TOML, e.g. ``indexes/demo.toml``): everything `genoembed index` needs, checked in.

The store a recipe builds goes beside it: ``indexes/demo.toml`` -> ``indexes/demo/``.
Relative paths are relative to the recipe; ``genoembed:data/...`` names a
file shipped in the package.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from genoembed.errors import InputError
from genoembed.resources import PACKAGE_PREFIX, SHIPPED_MODELS, resolve
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

_SECTIONS = {
    "genome": {"fasta", "name"},
    "tiling": {"window", "stride", "strands", "max_n_fraction", "soft_mask", "max_soft_masked_fraction", "contigs"},
    "model": {"kind", "path", "k", "pooling", "layer", "reverse_complement", "frames", "batch_size", "device",
              "trust_remote_code"},
    "index": {"factory", "metric", "train_size", "seed"},
    "annotations": {"files", "aliases", "auto_alias"},
    "store": {"out", "shard_rows", "embedding_dtype"},
}


@dataclass(frozen=True)
class Recipe:
    fastas: tuple[Path, ...]  # one genome each, added to the store in this order
    out: Path
    genome_name: str | None = None
    tiling: TilingSpec = TilingSpec()
    model: dict = field(default_factory=dict)
    index: IndexSpec = IndexSpec()
    annotations: tuple[Path, ...] = ()
    aliases: dict = field(default_factory=dict)
    auto_alias: bool = False
    shard_rows: int = 65536
    embedding_dtype: str = "float32"


def make_embedder(model: dict, base: Path | None = None):
    """Embedder from a recipe ``[model]`` table or CLI spec; ``{}`` means the shipped default."""
    from genoembed.pipeline import default_embedder

    kind = model.get("kind", "transformers" if "path" in model else "default")
    options = {key: value for key, value in model.items() if key not in ("kind", "path", "k")}
    if kind == "default":
        return default_embedder(**options)
    if kind == "kmer":
        from genoembed.embedders.kmer import KmerEmbedder

        return KmerEmbedder(k=int(model.get("k", 4)))
    if kind == "transformers":
        from genoembed.embedders.hf import TransformersEmbedder

        if "path" not in model:
            raise InputError("model: kind 'transformers' needs path = 'local/model/dir'")
        return TransformersEmbedder(model_path=str(resolve(model["path"], base)), **options)
    raise InputError(f"model: unknown kind {kind!r}; use 'default', 'kmer' or 'transformers'")


def parse_model_option(text: str) -> dict:
    """CLI ``--model``: ``default``, ``mlm`` (the shipped masked-LM model), ``kmer`` / ``kmer:K``,
    or a local model directory."""
    if text == "default":
        return {}
    if text in SHIPPED_MODELS:
        return {"kind": "transformers", "path": PACKAGE_PREFIX + SHIPPED_MODELS[text]}
    if text == "kmer" or text.startswith("kmer:"):
        k = text.partition(":")[2] or "4"
        if not k.isdigit():
            raise InputError(f"--model {text!r}: use kmer:K with an integer K, e.g. kmer:5")
        return {"kind": "kmer", "k": int(k)}
    return {"kind": "transformers", "path": text}


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe, reporting every unknown key at once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path}: invalid TOML ({error})") from None
    problems = [f"unknown section [{name}]" for name in data if name not in _SECTIONS]
    for section, allowed in _SECTIONS.items():
        problems += [f"[{section}] unknown key {key!r}" for key in data.get(section, {}) if key not in allowed]
    fastas = data.get("genome", {}).get("fasta")
    fastas = [fastas] if isinstance(fastas, str) else fastas
    if not fastas or not all(isinstance(f, str) for f in fastas):
        problems.append("[genome] needs fasta = 'path/to/genome.fa' (or a list of FASTA paths, one genome each)")
    elif len(fastas) > 1 and "name" in data["genome"]:
        problems.append("[genome] name applies to a single fasta; with several, each genome is named after its file")
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}; allowed keys: "
                         + ", ".join(f"[{s}] {'/'.join(sorted(k))}" for s, k in _SECTIONS.items()))
    base = path.parent
    annotations = data.get("annotations", {})
    store = data.get("store", {})
    try:
        return Recipe(
            fastas=tuple(resolve(f, base) for f in fastas),
            genome_name=data["genome"].get("name"),
            out=resolve(store["out"], base) if "out" in store else path.with_suffix(""),
            tiling=TilingSpec(**data.get("tiling", {})),
            model=data.get("model", {}),
            index=IndexSpec(**data.get("index", {})),
            annotations=tuple(resolve(f, base) for f in annotations.get("files", [])),
            aliases=dict(annotations.get("aliases", {})),
            auto_alias=bool(annotations.get("auto_alias", False)),
            shard_rows=int(store.get("shard_rows", 65536)),
            embedding_dtype=store.get("embedding_dtype", "float32"),
        )
    except ValueError as error:
        raise InputError(f"{path}: {error}") from None
