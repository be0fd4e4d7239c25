"""Who may write a store, and what writers leave behind: the lock, the sweep of retired files, saved searches.

One writer at a time holds ``ROOT/.lock`` (:func:`write_lock`), from its first
byte to its last. Readers take no lock; a file a writer takes out of the store
(a shard ``remove`` rewrote, a saved search's older version) is deleted by a
later writer only once no reader's lease is older than its removal
(:func:`sweep_retired`, :mod:`genoembed.leases`). Saved searches are written
without the lock (searches never wait), as versions their sidecars switch to.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import re
import threading
import time
from pathlib import Path

from genoembed.errors import GenoembedError, StoreError
from genoembed.files import atomic_write_bytes
from genoembed.leases import fs_now_ns, oldest_reader
from genoembed.manifest import SEALED, genome_files, read_manifest, sealed_files, sequence_files
from genoembed.names import IDENTIFIER
from genoembed.vector_index import index_files

# How long a writer waits for another one (a saved search sweeping old files holds the lock for milliseconds;
# a writer that holds it longer is reported, not waited for).
LOCK_WAIT_S = 2.0
_LOCK_POLL_S = 0.05
_HELD = threading.local()  # roots whose lock this thread holds -> depth (the lock is re-entrant per thread)


@contextlib.contextmanager
def write_lock(root: Path, wait: float = LOCK_WAIT_S):
    """Exclusive writer lock: ``flock`` on ``ROOT/.lock``, held from the writer's first byte to its last.

    The kernel gives the lock to one open file at a time and drops it when its holder dies, so two writers
    can never both hold it and a dead writer's lock is free whatever its PID became. The file itself stays
    (deleting it would let a second writer lock a new file while the first holds the old one); its text,
    the holder's PID, is only for the message. Re-entrant in one thread; another thread is another writer.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        key = str(root.resolve())
    except OSError as error:
        raise StoreError(f"{root}: cannot create the store ({error.strerror or error}); check the path and "
                         "its permissions") from None
    held = _HELD.__dict__.setdefault("roots", {})
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    try:
        descriptor = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise StoreError(f"{root}: cannot take the writer lock ({error.strerror or error}); a read-only "
                         "store can be searched and queried, not written") from None
    try:
        _lock(descriptor, root, wait)
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, str(os.getpid()).encode(), 0)
        held[key] = 1
        try:
            listings = {folder: folder_names(root / folder) for folder in {*_WRITER_FOLDERS, *dict(_SWEPT)}}
            _remove_partial_files(root, listings)
            sweep_retired(root, listings=listings)
            yield
        finally:
            del held[key]
            with contextlib.suppress(OSError):
                os.ftruncate(descriptor, 0)
    finally:
        os.close(descriptor)  # releases the lock


def _lock(descriptor: int, root: Path, wait: float) -> None:
    """Take the lock within ``wait`` seconds, else a one-line error naming the writer that holds it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = os.pread(descriptor, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise StoreError(f"{root}: store is being written by process {holder}; wait for it to finish "
                                 "(two writers on one store are refused)") from None
            time.sleep(_LOCK_POLL_S)


# Where writers leave temporary files (saved searches are written without the lock and are not swept).
_WRITER_FOLDERS = (".", "shards", "index", "index/shards", "annotations", "sequences", SEALED)


def _remove_partial_files(root: Path, listings: dict[str, list[str]]) -> None:
    """Delete temporary files of writers that died mid-write (SIGKILL, power loss): whoever holds the lock
    is the only writer, so any partial file under the writer folders (``listings``: their names) is a dead
    writer's."""
    for folder in _WRITER_FOLDERS:
        hidden = [name for name in listings[folder] if name[0] == "."]  # a cheap test before the pattern's
        for name in fnmatch.filter(hidden, ".*.partial.*"):
            (root / folder / name).unlink(missing_ok=True)


def folder_names(folder: Path) -> list[str]:
    """The names in ``folder`` (none when it is missing): one ``listdir``, not a ``Path`` per file, since
    a pangenome's store holds a few files per genome and writers list them on every commit."""
    try:
        return os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []


RETIRED = ".retired.json"  # files no committed snapshot lists: since when (ns), and what their search named then
_SWEPT = (("shards", "part-*.parquet"), ("annotations", "*.parquet"), ("searches", "*.parquet"), ("sequences", "*"),
          ("index", "*.faiss"), (SEALED, "genomes-*.json"))


def sweep_retired(root: Path, retired: list[str] = (), since: int | None = None, folders: tuple[str, ...] = (),
                  listings: dict[str, list[str]] | None = None) -> None:
    """Delete the store's files that no committed snapshot lists, once no live reader is older than that.

    Called under the writer lock. ``retired`` (store paths) left the manifest at ``since`` (the committing
    writer knows when); any other unlisted file is dated when first seen here. A file some reader may
    still need (its lease started before the file left) waits for a later writer. Never fails the writer:
    a store it cannot read is left as it is. ``folders`` limits the sweep to those (a commit sweeps the folders
    of what it retired); ``listings`` are the folders' names when the caller has listed them.

    A saved search's version is dated together with the version its sidecar named then: searches are saved
    without the lock, so a version seen here before its sidecar switched to it (a save in flight) may be
    named, read and replaced before the next sweep, and its first date would be older than its readers. Once
    the sidecar names another version the date is void and the file is dated again (the save in flight is
    kept meanwhile by its saver's own lease, :class:`genoembed.saved_searches.HitsWriter`).
    """
    try:
        manifest = read_manifest(root)
    except GenoembedError:
        return
    records = _read_retired(root)
    swept = [(folder, pattern) for folder, pattern in _SWEPT if not folders or folder in folders]
    listed = committed_files(manifest, root, {folder for folder, _ in swept})
    named: dict[str, str] = {}
    if any(folder == "searches" for folder, _ in swept):
        damaged: dict[str, str] = {}
        named = {name: entry.get("path") for name, entry in saved_searches(root, manifest, damaged).items()}
        listed |= set(named.values())
        listed |= {f"searches/{path.name}" for path in (root / "searches").glob("*.parquet")
                   if path.name.split(".")[0] in damaged}  # a damaged search's files wait for its owner
    now, oldest = fs_now_ns(root), oldest_reader(root)
    kept = {path: record for path, record in records.items() if folders and path.split("/")[0] not in folders}
    for folder, pattern in swept:
        names = listings[folder] if listings is not None else folder_names(root / folder)
        # set arithmetic over the folder's names: O(files) in C, the loop below only sees unlisted files
        unlisted = set(map(f"{folder}/".__add__, names)) - listed
        for relative in sorted(unlisted):
            name = relative[len(folder) + 1:]
            if name.startswith(".") or not fnmatch.fnmatchcase(name, pattern):
                continue
            naming = named.get(name.split(".")[0]) if folder == "searches" else None
            record = records.get(relative)
            if record is not None and record[1] == naming:
                left = record[0]
            else:
                left = since if relative in retired and since is not None else now
            try:
                if oldest is None or oldest > left:
                    (root / relative).unlink(missing_ok=True)
                    continue
            except OSError:
                pass  # cannot delete it now: a later sweep tries again
            kept[relative] = (left, naming)
    if kept != records:
        with contextlib.suppress(StoreError):  # not recorded: those files are dated again when next seen
            atomic_write_bytes(root / RETIRED, json.dumps({path: list(record) for path, record in kept.items()},
                                                          indent=1).encode())


def committed_files(manifest: dict, root: Path | None = None, folders: set[str] | None = None) -> set[str]:
    """Store paths of the files a manifest lists (shards, annotation sets, saved searches of older stores,
    the genomes' sequence copies, sealed genome files, the vector index's parts), or of those under ``folders``.
    Given the store's ``root``, a sealed file's shards and sequences are worked out once per process."""
    every = folders is None
    listed = set()
    if every or folders & {"shards", "sequences"}:
        listed = genome_files(root, manifest) if root is not None else \
            {shard["path"] for shard in manifest["shards"]} | sequence_files(manifest)
    if every or "annotations" in folders:
        listed |= {entry["path"] for entry in (manifest.get("annotations") or {}).values()}
    if every or "searches" in folders:
        listed |= {entry["path"] for entry in (manifest.get("searches") or {}).values()}
    if every or SEALED in folders:
        listed |= sealed_files(manifest)
    return listed | index_files(manifest.get("index")) if every or "index" in folders else listed


def _read_retired(root: Path) -> dict[str, tuple[int, str | None]]:
    """Path -> (since, the version its search's sidecar named then); earlier writers recorded bare dates."""
    try:
        records = json.loads((root / RETIRED).read_bytes())
    except (OSError, ValueError):
        return {}  # none yet, or damaged: every unlisted file is dated now (kept longer, never shorter)
    found = {}
    for path, record in records.items() if isinstance(records, dict) else ():
        if isinstance(record, int):
            found[path] = (record, None)
        elif isinstance(record, list) and len(record) == 2 and isinstance(record[0], int) and \
                (record[1] is None or isinstance(record[1], str)):
            found[path] = (record[0], record[1])
    return found


def retired_files(root: Path) -> set[str]:
    """Store paths a writer left for deletion once older readers are done (not orphans)."""
    return set(_read_retired(root))


def store_holding(path: Path) -> Path | None:
    """The store directory ``path`` is (or lies inside), found by its manifest up the path; None if none."""
    for folder in [path, *path.parents]:
        manifest = folder / "manifest.json"
        try:
            content = json.loads(manifest.read_bytes()) if manifest.is_file() else None
        except (OSError, ValueError):
            continue
        if isinstance(content, dict) and "format_version" in content and "shards" in content:
            return folder
    return None


def saved_searches(root: Path, manifest: dict, damaged: dict[str, str] | None = None) -> dict[str, dict]:
    """Saved searches: name -> entry (path, rows, sha256, ...), from their sidecar files and, for stores
    written before sidecars, from the manifest.

    A damaged sidecar (unreadable, not naming its own search's file, a name that is no identifier) hides
    only its own search: ``damaged`` receives name -> why, for the commands that read it to say so.
    """
    found = {name: entry for name, entry in (manifest.get("searches") or {}).items()}
    directory = root / "searches"
    for sidecar in sorted(directory.glob("*.json")) if directory.is_dir() else ():
        problem = None
        try:
            entry = json.loads(sidecar.read_bytes())
        except (OSError, ValueError) as error:
            entry, problem = None, f"unreadable sidecar ({error})"
        if problem is None:
            problem = search_sidecar_problem(sidecar.stem, entry)
        if problem is None:
            found[sidecar.stem] = entry
        elif damaged is not None:
            damaged[sidecar.stem] = f"{sidecar}: {problem}; delete it and its search, or search again"
    return found


def search_sidecar_problem(name: str, entry) -> str | None:
    """What is wrong with a saved search's sidecar (None: nothing): it must name that search's own file,
    ``searches/NAME.parquet`` (older stores) or a version ``searches/NAME.VERSION.parquet``."""
    if not IDENTIFIER.fullmatch(name):
        return f"saved search name {name!r} is not a plain identifier (it would become SQL)"
    path = entry.get("path") if isinstance(entry, dict) else None
    if not isinstance(path, str) or not re.fullmatch(rf"searches/{name}(\.[0-9a-f]{{16}})?\.parquet", path):
        return f"a saved search's sidecar must describe searches/{name}.parquet or a version of it, it names {path!r}"
    return None
