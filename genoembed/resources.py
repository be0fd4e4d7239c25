"""Files shipped inside the package (demo genome, annotations, default model).

Recipes refer to them as ``genoembed:data/...`` so they work wherever the
package is installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PACKAGE_PREFIX = "genoembed:"
DEFAULT_MODEL = "data/models/genoembed-nt6"


def resolve(path: str | Path, base: Path | None = None) -> Path:
    """``genoembed:REL`` -> the installed package file; relative paths -> relative to ``base``."""
    text = str(path)
    if text.startswith(PACKAGE_PREFIX):
        return Path(str(resources.files("genoembed") / text[len(PACKAGE_PREFIX):]))
    resolved = Path(text).expanduser()
    return resolved if resolved.is_absolute() or base is None else base / resolved


def default_model_dir() -> Path | None:
    """The shipped default model directory, or None when its weights are not installed."""
    directory = resolve(PACKAGE_PREFIX + DEFAULT_MODEL)
    return directory if (directory / "model.safetensors").is_file() else None
