"""Writing files so that readers see the old file or the new one, never a partial one (and failures say so).

At the bottom of the house, so the manifest, shards, saved searches and FAISS indexes all write through it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from pathlib import Path
from typing import Iterator

from genoembed.errors import StoreError


@contextlib.contextmanager
def atomic_file(path: Path, what: str = "file") -> Iterator[Path]:
    """A temporary name to write ``path`` under; on success it is fsynced and renamed into place, so readers
    see the old file or the new one, never a partial one. A failure removes it and says so in one line."""
    partial = path.with_name(f".{path.name}.partial.{os.getpid()}.{threading.get_ident()}")  # one per writer
    try:
        yield partial
        with open(partial, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write the {what} ({error.strerror or error}); free disk space or check "
                         "the directory's permissions, then rerun the same command") from None
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path) as partial:
        partial.write_bytes(data)


def version_name(stem: str, suffix: str = ".parquet") -> str:
    """A file name never used before: ``STEM.VERSION`` + suffix, VERSION 16 random hex digits. A file replaced
    under readers is written as a new version, never over the old one; and a name that has left the store never
    comes back, so the date its removal was recorded under stays true (:func:`genoembed.writers.sweep_retired`)."""
    return f"{stem}.{secrets.token_hex(8)}{suffix}"
