"""Index recipes (TOML, e.g. ``indexes/demo.toml``): everything a build needs, checked in.

The store a recipe builds goes beside it: ``indexes/demo.toml`` -> ``indexes/demo/``.
Relative paths are relative to the recipe; ``genoembed:data/...`` names a
file shipped in the package. The allowed keys come from the dataclasses they
fill (:class:`~genoembed.tiles.TilingSpec`, :class:`~genoembed.embedders.EmbedderOptions`,
:class:`~genoembed.vector_index.IndexSpec`), so a recipe can say whatever the CLI can.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from genoembed.embedders import EmbedderOptions
from genoembed.errors import InputError
from genoembed.resources import PACKAGE_PREFIX, resolve
from genoembed.tiles import TilingSpec
from genoembed.vector_index import IndexSpec

# Keys of stores written before the registry: ``kind = "default" | "kmer" | "transformers"``, ``k``, ``path``.
_LEGACY_MODEL_KEYS = {"kind", "k", "path"}
_SECTIONS = {
    "genome": {"fasta", "name", "circular"},
    "tiling": {f.name for f in dataclasses.fields(TilingSpec)},
    "model": {"name", *EmbedderOptions.names(), *_LEGACY_MODEL_KEYS},
    "index": {f.name for f in dataclasses.fields(IndexSpec)},
    "annotations": {"files", "aliases", "auto_alias"},
    "store": {"output", "out", "shard_rows", "batch_rows", "embedding_dtype"},
}


@dataclass(frozen=True)
class Recipe:
    """One build: genomes (added in order), model, tiling, index, annotations and where the store goes."""

    fastas: tuple[Path, ...]
    output: Path
    genome_name: str | None = None
    circular: tuple[str, ...] = ()  # contigs tiled round their origin (beyond those FASTA headers / annotations mark)
    tiling: TilingSpec = TilingSpec()
    model: str = "default"  # a name for :func:`genoembed.embedders.get_embedder`
    model_options: EmbedderOptions = EmbedderOptions()
    index: IndexSpec | None = IndexSpec()
    annotations: tuple[Path, ...] = ()
    aliases: dict = field(default_factory=dict)
    auto_alias: bool = False
    shard_rows: int = 65536
    batch_rows: int = 1024
    embedding_dtype: str = "float32"


def model_name(model: dict, base: Path | None) -> str:
    """The registry name a recipe's ``[model]`` table stands for (``name``, or the legacy kind/k/path)."""
    if "name" in model:
        name = str(model["name"])
        looks_like_path = name.startswith((".", "/", "~", PACKAGE_PREFIX)) or "/" in name
        return str(resolve(name, base)) if looks_like_path else name
    kind = model.get("kind", "transformers" if "path" in model else "default")
    if kind == "kmer":
        return f"kmer:{int(model.get('k', 4))}"
    if kind == "transformers":
        if "path" not in model:
            raise InputError("[model] kind 'transformers' needs path = 'local/model/dir' (or name = 'local/model/dir')")
        return str(resolve(model["path"], base))
    if kind == "default":
        return "default"
    raise InputError(f"[model] unknown kind {kind!r}; use name = 'default' | 'mlm' | 'kmer:K' | 'path/to/model'")


def _names(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"{where} must be a list of contig names, e.g. circular = [\"plasmid1\"]")
    return tuple(value)


def load_recipe(path: str | Path) -> Recipe:
    """Parse and check a recipe, reporting every unknown key at once."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: recipe not found")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: invalid TOML ({error})") from None
    problems = [f"unknown section [{name}]" for name in data if name not in _SECTIONS]
    problems += [f"[{name}] must be a table" for name in _SECTIONS if name in data and not isinstance(data[name], dict)]
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}")
    for section, allowed in _SECTIONS.items():
        problems += [f"[{section}] unknown key {key!r}" for key in data.get(section, {}) if key not in allowed]
    fastas = data.get("genome", {}).get("fasta")
    fastas = [fastas] if isinstance(fastas, str) else fastas
    if not fastas or not isinstance(fastas, list) or not all(isinstance(f, str) for f in fastas):
        problems.append("[genome] needs fasta = 'path/to/genome.fa' (or a list of FASTA paths, one genome each)")
    elif len(fastas) > 1 and "name" in data["genome"]:
        problems.append("[genome] name applies to a single fasta; with several, each genome is named after its file")
    if problems:
        raise InputError(f"{path}: {'; '.join(problems)}; allowed keys: "
                         + ", ".join(f"[{s}] {'/'.join(sorted(k))}" for s, k in _SECTIONS.items()))
    base = path.parent
    annotations = data.get("annotations", {})
    store = data.get("store", {})
    model = data.get("model", {})
    output = store.get("output", store.get("out"))
    try:
        return Recipe(
            fastas=tuple(resolve(f, base) for f in fastas),
            genome_name=data["genome"].get("name"),
            circular=_names(data["genome"].get("circular", []), "[genome] circular"),
            output=resolve(output, base) if output else path.with_suffix(""),
            tiling=TilingSpec(**data.get("tiling", {})),
            model=model_name(model, base),
            model_options=EmbedderOptions(**{k: v for k, v in model.items() if k in EmbedderOptions.names()}),
            index=IndexSpec(**data.get("index", {})),
            annotations=tuple(resolve(f, base) for f in annotations.get("files", [])),
            aliases=dict(annotations.get("aliases", {})),
            auto_alias=bool(annotations.get("auto_alias", False)),
            shard_rows=int(store.get("shard_rows", 65536)),
            batch_rows=int(store.get("batch_rows", 1024)),
            embedding_dtype=store.get("embedding_dtype", "float32"),
        )
    except (ValueError, TypeError) as error:
        raise InputError(f"{path}: {error}") from None
