"""Saved searches: hits written as a version file, then its sidecar switched to it (readers never see half).

``searches/NAME.VERSION.parquet`` (VERSION: 16 random hex digits) never
changes once named and its name is never used again, and ``searches/NAME.json``
is replaced by rename, so a reader sees one (sidecar, hits) pair or the other.
Superseded versions are deleted by :func:`genoembed.writers.sweep_retired` once
no reader that may hold them is left.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from genoembed import schema
from genoembed.errors import StoreError
from genoembed.files import atomic_file, atomic_write_bytes, version_name
from genoembed.leases import Lease
from genoembed.manifest import file_sha256
from genoembed.names import check_identifier
from genoembed.store import Store
from genoembed.writers import write_lock


def save_hits(store: Store, hits: pa.Table, name: str, details: dict) -> Path:
    """Save hits as a version of ``searches/NAME`` plus its sidecar ``searches/NAME.json`` (see :class:`HitsWriter`)."""
    with HitsWriter(store, name, details) as writer:
        writer.write(hits)
    return writer.path


class HitsWriter:
    """Writes a saved search chunk by chunk, as a new version ``searches/NAME.VERSION.parquet`` (VERSION: 16 random
    hex digits), then switches the sidecar ``searches/NAME.json`` (rows, sha256, details) to it.

    A version file never changes once named and the sidecar is replaced by rename, so a reader sees the old
    pair or the new pair, never one's sidecar with the other's hits, nor a half-written file. No store lock is
    taken, so searches never wait for a writer; versions no sidecar names are deleted by a later writer once
    no reader that may hold them is left (:func:`genoembed.writers.sweep_retired`), and this writer sweeps
    when the lock happens to be free. A failure leaves the previous search of that name as it was.

    Version names are random, not the content's hash: saving the same hits again must not bring back a name
    that has left its sidecar, whose retirement a sweep may have dated already. Between the version's
    rename and the sidecar's switch the version is named by nothing; this writer's own lease keeps a sweep
    from deleting it then.
    """

    def __init__(self, store: Store, name: str, details: dict):
        self.store, self.directory = store, store.root / "searches"
        self.name, self.details, self.rows = check_identifier(name, "search"), details, 0
        self.path = self.directory / f"{name}.parquet"  # the version's name once its hash is known
        self._partial = self.directory / f".{name}.parquet.partial.{os.getpid()}.{threading.get_ident()}"
        self._writer = None

    def __enter__(self) -> "HitsWriter":
        try:
            self.directory.mkdir(exist_ok=True)
        except OSError as error:
            raise StoreError(f"{self.directory}: cannot save the search ({error.strerror or error}); "
                             "if the store is read-only, search with --no-save") from None
        return self

    def write(self, hits: pa.Table) -> None:
        try:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._partial, hits.schema, compression="zstd")
            self._writer.write_table(hits)
        except OSError as error:
            raise StoreError(f"{self.path}: cannot save the search ({error.strerror or error}); free disk space, "
                             "or search with --no-save") from None
        self.rows += hits.num_rows

    def __exit__(self, kind, error, traceback) -> None:
        try:
            if self._writer is None and kind is None:  # no query answered: the saved search holds no hits
                self.write(schema.HITS.empty_table())
            if self._writer is not None:
                self._writer.close()
            if kind is None:
                in_flight = Lease(self.store.root)  # taken before the version exists, held until the sidecar names it
                try:
                    self._switch()
                finally:
                    in_flight.release()
        finally:
            self._partial.unlink(missing_ok=True)
        if kind is None:
            with contextlib.suppress(StoreError), write_lock(self.store.root, wait=0):
                pass  # taking the lock sweeps versions no reader needs; a busy store is swept by its writer

    def _switch(self) -> None:
        """The written hits renamed into place as a new version, then the sidecar switched to it."""
        sha256 = file_sha256(self._partial)
        self.path = self.directory / version_name(self.name)
        with atomic_file(self.path, "saved search") as partial:
            os.replace(self._partial, partial)  # fsynced and renamed into place as the version
        entry = {"path": f"searches/{self.path.name}", "rows": self.rows, "sha256": sha256,
                 "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **self.details}
        atomic_write_bytes(self.directory / f"{self.name}.json", json.dumps(entry, indent=2).encode())
