"""Files shipped inside the package (demo genome, annotations, default model).

Recipes refer to them as ``genoembed:data/...`` so they work wherever the
package is installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE_PREFIX = "genoembed:"
# What `--model default` embeds with: the contrastively trained retrieval model (it won the held-out
# retrieval evaluation, benchmarks/RESULTS.md). `--model mlm` is the masked-LM model it was compared
# with, and the default starting point of `genoembed finetune`.
SHIPPED_MODELS = {"default": "data/models/genoembed-nt6-retrieval", "mlm": "data/models/genoembed-nt6"}
# What `--model protein` embeds with: the translation-aware encoder of issue 17 (numpy, not transformers).
PROTEIN_MODEL = "data/models/genoembed-aa-protein"


def resolve(path: str | Path, base: Path | None = None) -> Path:
    """``genoembed:REL`` -> the installed package file; relative paths -> relative to ``base``."""
    text = str(path)
    if text.startswith(PACKAGE_PREFIX):
        return Path(str(resources.files("genoembed") / text[len(PACKAGE_PREFIX):]))
    resolved = Path(text).expanduser()
    return resolved if resolved.is_absolute() or base is None else base / resolved


def default_model_dir(name: str = "default") -> Path | None:
    """A shipped model's directory (``default`` or ``mlm``), or None when its weights are not installed."""
    directory = resolve(PACKAGE_PREFIX + SHIPPED_MODELS[name])
    return directory if (directory / "model.safetensors").is_file() else None


def shipped_model_for(recorded_path: str | Path) -> Path | None:
    """This installation's copy of a shipped model that a store recorded under another installation's path."""
    name = Path(recorded_path).name
    for relative in SHIPPED_MODELS.values():
        if Path(relative).name == name:
            directory = resolve(PACKAGE_PREFIX + relative)
            return directory if directory.is_dir() else None
    return None
