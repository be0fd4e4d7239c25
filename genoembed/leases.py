"""Reader leases: how a writer knows a file it took out of the store may still be read.

Readers take no lock (they never wait for a writer), so a writer that commits a
manifest without some files (``remove`` rewrites shards; a saved search is
replaced) cannot know whether a reader opened the store a moment before and
is about to read them. Each reader therefore holds a lease while it reads: a
file ``.readers/PID.RANDOM.lease`` that it keeps ``flock``-ed and whose
modification time is when it last read the manifest (touched just before);
the kernel drops the lock when the reader dies, so a dead reader's lease is
recognised whatever its PID became. A file left out of the store at time T is
deleted by a later writer only once no live lease started at or before T
(LanceDB keeps old versions the same way); see
:func:`genoembed.store.sweep_retired`.

Every time compared here is the file system's (:func:`fs_now_ns`: the
modification time of a file just created in the store), never a process's
clock: a store on a shared file system used from two hosts whose clocks
differ orders its leases and retirements by the file server's clock alone.

A store object (:class:`genoembed.store.Store`) holds a lease from before it
reads its manifest until it is dropped; ``refresh()`` moves it on. So a
process that keeps an old store object open (a Python session) keeps that
snapshot's files on disk until it lets go. A store the user cannot write to
gets no leases (and no writer either).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import time
import weakref
from pathlib import Path

READERS = ".readers"
_NAMING_NS = 60 * 10**9  # a lease file this young may be one a reader has created and not yet locked


def fs_now_ns(root: Path) -> int:
    """The store's file system's time now (ns): the modification time of a probe file created in ``.readers``.

    Why not ``time.time_ns()``: readers and writers on different hosts sharing the store (NFS) have different
    clocks, while the file server stamps every file of the store with its own.
    """
    folder = root / READERS
    probe = folder / f".clock.{os.getpid()}.{secrets.token_hex(8)}"
    try:
        folder.mkdir(exist_ok=True)
        descriptor = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError:  # no `.readers` can be made, so no reader holds a lease a date could be compared with
        return time.time_ns()
    try:
        return os.fstat(descriptor).st_mtime_ns
    finally:
        os.close(descriptor)
        probe.unlink(missing_ok=True)


class Lease:
    """A reader's claim: files retired after :attr:`start` (a file-system time) are kept while this object lives."""

    def __init__(self, root: Path):
        self.start: int | None = None  # None: no lease (a read-only store)
        self._descriptor: int | None = None
        self._finalizer = None
        folder = root / READERS
        name = f"{os.getpid()}.{secrets.token_hex(8)}"
        partial, path = folder / f".{name}.lease.partial", folder / f"{name}.lease"
        try:
            folder.mkdir(exist_ok=True)
            descriptor = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return  # a read-only store: nobody can remove files under us either
        try:
            # locked before it gets its lease name, so a sweeper never takes a lease being made for a dead one
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            self.start = _touch(descriptor)
            os.rename(partial, path)  # a rename leaves the modification time as it is
        except OSError:
            _release(descriptor, partial)
            return
        self._descriptor = descriptor
        self._finalizer = weakref.finalize(self, _release, descriptor, path)

    @property
    def held(self) -> bool:
        """False where no lease could be taken (a store this user cannot write to): nothing is kept for it."""
        return self._descriptor is not None

    def renew(self) -> None:
        """The reader is about to read the newest manifest: older snapshots are no longer its concern."""
        if self._descriptor is not None:
            self.start = _touch(self._descriptor)

    def release(self) -> None:
        """The reader is done: files retired since :attr:`start` are no longer its concern."""
        if self._finalizer is not None:
            self._finalizer()


def _touch(descriptor: int) -> int:
    """Set the lease's modification time to the file system's now and return it. No data is written: a write
    cached by an NFS client would move the time later when it is flushed (making the lease look younger than
    it is). Leases of older releases held the time as text; an empty one reads to them as the oldest."""
    os.utime(descriptor)
    return os.fstat(descriptor).st_mtime_ns


def _release(descriptor: int, path: Path) -> None:
    path.unlink(missing_ok=True)  # unlinked first, so no sweeper mistakes a closed lease for a dead one's
    os.close(descriptor)


def oldest_reader(root: Path) -> int | None:
    """The earliest start (file-system time) of a live lease on the store (None: no reader); dead readers'
    leases are deleted."""
    folder = root / READERS
    oldest, now = None, None
    for path in folder.glob("*lease*") if folder.is_dir() else ():  # and partial ones a crash left
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            started = os.fstat(descriptor).st_mtime_ns
            try:
                fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held: a live reader (one still naming its lease counts too)
                oldest = started if oldest is None else min(oldest, started)
                continue
            if path.suffix == ".partial":
                now = fs_now_ns(root) if now is None else now
                if now - started < _NAMING_NS:
                    oldest = 0  # a lease being made (not locked yet): its reader may not have read anything yet
                    continue
            path.unlink(missing_ok=True)  # lockable: its reader died (or released it and is unlinking it)
        finally:
            os.close(descriptor)
    return oldest
