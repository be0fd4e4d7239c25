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
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from genoembed import schema
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



def _toml_types(hint) -> tuple[type, ...]:
    """The TOML values (as tomllib returns them) a field annotated ``hint`` takes."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(kind for arg in typing.get_args(hint) if arg is not type(None) for kind in _toml_types(arg))
    if hint is bool:
        return (bool,)
    if hint is int:
        return (int,)
    if hint is float:
        return (int, float)
    if typing.get_origin(hint) in (tuple, list):
        return (list,)
    return (str,)  # str and the str-valued enums (strands, soft_mask, metric)


# What each key must hold, from the fields the recipe fills (checked before they are built, so `factory = 0`
# is a line naming the key, not a TypeError from FAISS).
_TYPES = {
    **{("tiling", name): _toml_types(hint) for name, hint in typing.get_type_hints(TilingSpec).items()},
    **{("index", name): _toml_types(hint) for name, hint in typing.get_type_hints(IndexSpec).items()},
    **{("model", name): _toml_types(hint) for name, hint in typing.get_type_hints(EmbedderOptions).items()},
    ("model", "name"): (str,), ("model", "kind"): (str,), ("model", "path"): (str,), ("model", "k"): (int,),
    ("genome", "name"): (str,), ("annotations", "files"): (list,), ("annotations", "aliases"): (dict,),
    ("annotations", "auto_alias"): (bool,), ("store", "output"): (str,), ("store", "out"): (str,),
    ("store", "shard_rows"): (int,), ("store", "batch_rows"): (int,), ("store", "embedding_dtype"): (str,),
}


def _type_problems(data: dict) -> list[str]:
    problems = []
    for (section, key), kinds in _TYPES.items():
        value = data.get(section, {}).get(key)
        if value is not None and (not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds)):
            names = " or ".join(sorted({_KIND_NAMES[kind] for kind in kinds}))
            problems.append(f"[{section}] {key} = {value!r:.40}: expected {names}")
    return problems


_KIND_NAMES = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
               dict: "a table"}


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

    def __post_init__(self):
        for name in ("shard_rows", "batch_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"[store] {name} = {getattr(self, name)}: give a positive number of rows")
        if self.embedding_dtype not in schema.EMBEDDING_DTYPES:
            raise ValueError(f"[store] embedding_dtype {self.embedding_dtype!r}: use "
                             f"{' or '.join(schema.EMBEDDING_DTYPES)}")


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
    problems += _type_problems(data)
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
